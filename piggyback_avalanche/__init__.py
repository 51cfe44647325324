"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) for Avalanche: one learned
binary mask per task over a frozen backbone."""

from piggyback_avalanche.layers import TaskNorm
from piggyback_avalanche.masks import binarize, ternarize
from piggyback_avalanche.model import PiggybackModel
from piggyback_avalanche.packnet import PackNetModel
from piggyback_avalanche.reference_models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.registry import available_strategies, make_strategy, register_strategy
from piggyback_avalanche.strategies import (
    PACKNET_PAPER_SETTINGS,
    PIGGYBACK_PAPER_SETTINGS,
    ClassifierOnly,
    IndividualNetworks,
    PackNet,
    Piggyback,
)

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
    "make_strategy",
    "available_strategies",
    "register_strategy",
    "TaskNorm",
    "binarize",
    "ternarize",
]

__version__ = "0.1.0"
