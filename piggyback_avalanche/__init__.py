"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) for Avalanche: one learned
binary mask per task over a frozen backbone, next to PackNet, the paper's
reference points, LoRA, BitFit and prompt tuning per task, and Avalanche's
baselines.

The library: :mod:`~piggyback_avalanche.task_aware` (the machinery every
method shares), :mod:`~piggyback_avalanche.methods` (one package per method),
:mod:`~piggyback_avalanche.training`, :mod:`~piggyback_avalanche.evaluation`
and :mod:`~piggyback_avalanche.benchmarks`. The command line lives in
:mod:`~piggyback_avalanche.app`, which the library never imports.
"""

import warnings

import torch

from piggyback_avalanche._requirements import check_torch_version

check_torch_version(torch.__version__)

with warnings.catch_warnings():
    # Avalanche's GEM imports qpsolvers, which warns when no solver is
    # installed; no strategy here uses GEM, so the warning is only noise.
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    import avalanche.training  # noqa: F401, E402

from piggyback_avalanche.methods.bitfit import BitFit, BitFitModel  # noqa: E402
from piggyback_avalanche.methods.lora import LoRA, LoRAModel  # noqa: E402
from piggyback_avalanche.methods.packnet import PACKNET_PAPER_SETTINGS, PackNet, PackNetModel  # noqa: E402
from piggyback_avalanche.methods.piggyback import (  # noqa: E402
    PIGGYBACK_PAPER_SETTINGS,
    Piggyback,
    PiggybackModel,
    binarize,
    ternarize,
)
from piggyback_avalanche.methods.prompt import PromptTuning, PromptTuningModel  # noqa: E402
from piggyback_avalanche.methods.reference import (  # noqa: E402
    ClassifierOnly,
    ClassifierOnlyModel,
    IndividualNetworks,
    IndividualNetworksModel,
)
from piggyback_avalanche.task_aware import TaskNorm  # noqa: E402
from piggyback_avalanche.training.registry import available_strategies, make_strategy, register_strategy  # noqa: E402

__all__ = [
    "PiggybackModel",
    "Piggyback",
    "PIGGYBACK_PAPER_SETTINGS",
    "PackNetModel",
    "PackNet",
    "PACKNET_PAPER_SETTINGS",
    "IndividualNetworksModel",
    "IndividualNetworks",
    "ClassifierOnlyModel",
    "ClassifierOnly",
    "LoRAModel",
    "LoRA",
    "BitFitModel",
    "BitFit",
    "PromptTuningModel",
    "PromptTuning",
    "make_strategy",
    "available_strategies",
    "register_strategy",
    "TaskNorm",
    "binarize",
    "ternarize",
]

__version__ = "0.2.0"
