"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) for Avalanche: one learned
binary mask per task over a frozen backbone, next to PackNet, the paper's
reference points, LoRA, BitFit and prompt tuning per task, and Avalanche's
baselines.

The library: :mod:`~piggyback_avalanche.task_aware` (the machinery every
method shares), :mod:`~piggyback_avalanche.methods` (one package per method),
:mod:`~piggyback_avalanche.training`, :mod:`~piggyback_avalanche.evaluation`
and :mod:`~piggyback_avalanche.benchmarks`. The command line lives in
:mod:`~piggyback_avalanche.app`, which the library never imports.

The names below are imported on first use (PEP 562): importing the package,
or one light module of it, does not load Avalanche's thousands of modules.
"""

import importlib
import warnings
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version
from typing import TYPE_CHECKING, Any

from piggyback_avalanche._requirements import check_torch_version

try:
    check_torch_version(_installed_version("torch"))
except PackageNotFoundError:  # torch built from source without metadata: its import says the rest
    pass

# Avalanche's GEM imports qpsolvers, which warns when no solver is installed;
# no strategy here uses GEM, and whichever of our modules first imports
# avalanche.training would show the warning, so it is silenced by message.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

_EXPORTS: dict[str, str] = {
    "PiggybackModel": "piggyback_avalanche.methods.piggyback",
    "Piggyback": "piggyback_avalanche.methods.piggyback",
    "PIGGYBACK_PAPER_SETTINGS": "piggyback_avalanche.methods.piggyback",
    "binarize": "piggyback_avalanche.methods.piggyback",
    "ternarize": "piggyback_avalanche.methods.piggyback",
    "PackNetModel": "piggyback_avalanche.methods.packnet",
    "PackNet": "piggyback_avalanche.methods.packnet",
    "PACKNET_PAPER_SETTINGS": "piggyback_avalanche.methods.packnet",
    "IndividualNetworksModel": "piggyback_avalanche.methods.reference",
    "IndividualNetworks": "piggyback_avalanche.methods.reference",
    "ClassifierOnlyModel": "piggyback_avalanche.methods.reference",
    "ClassifierOnly": "piggyback_avalanche.methods.reference",
    "LoRAModel": "piggyback_avalanche.methods.lora",
    "LoRA": "piggyback_avalanche.methods.lora",
    "BitFitModel": "piggyback_avalanche.methods.bitfit",
    "BitFit": "piggyback_avalanche.methods.bitfit",
    "PromptTuningModel": "piggyback_avalanche.methods.prompt",
    "PromptTuning": "piggyback_avalanche.methods.prompt",
    "make_strategy": "piggyback_avalanche.training.registry",
    "available_strategies": "piggyback_avalanche.training.registry",
    "register_strategy": "piggyback_avalanche.training.registry",
    "TaskNorm": "piggyback_avalanche.task_aware",
}
"""Each public name and the module that defines it."""

__all__ = list(_EXPORTS)

__version__ = "0.2.0"

if TYPE_CHECKING:  # what type checkers and IDEs see (__all__ names them); at run time __getattr__ imports them
    from piggyback_avalanche.methods.bitfit import BitFit, BitFitModel  # noqa: F401
    from piggyback_avalanche.methods.lora import LoRA, LoRAModel  # noqa: F401
    from piggyback_avalanche.methods.packnet import PACKNET_PAPER_SETTINGS, PackNet, PackNetModel  # noqa: F401
    from piggyback_avalanche.methods.piggyback import (  # noqa: F401
        PIGGYBACK_PAPER_SETTINGS,
        Piggyback,
        PiggybackModel,
        binarize,
        ternarize,
    )
    from piggyback_avalanche.methods.prompt import PromptTuning, PromptTuningModel  # noqa: F401
    from piggyback_avalanche.methods.reference import (  # noqa: F401
        ClassifierOnly,
        ClassifierOnlyModel,
        IndividualNetworks,
        IndividualNetworksModel,
    )
    from piggyback_avalanche.task_aware import TaskNorm  # noqa: F401
    from piggyback_avalanche.training.registry import (  # noqa: F401
        available_strategies,
        make_strategy,
        register_strategy,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
