"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a frozen backbone, one
learned binary (or ternary) mask per task."""

from piggyback_avalanche.methods.piggyback.config import PiggybackConfig
from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES, MaskedLayer
from piggyback_avalanche.methods.piggyback.masks import binarize, ternarize
from piggyback_avalanche.methods.piggyback.model import MASK_INITS, PiggybackModel
from piggyback_avalanche.methods.piggyback.strategy import (
    DEFAULT_MASK_CROSS_WITHIN,
    PIGGYBACK_PAPER_SETTINGS,
    Piggyback,
    mask_learning_rate,
)
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "PiggybackModel",
    "Piggyback",
    "PiggybackConfig",
    "PIGGYBACK_PAPER_SETTINGS",
    "DEFAULT_MASK_CROSS_WITHIN",
    "mask_learning_rate",
    "MASK_INITS",
    "MaskedLayer",
    "MASKED_LAYER_TYPES",
    "binarize",
    "ternarize",
]

register_method("piggyback", config=PiggybackConfig, model=PiggybackModel, strategy=Piggyback)
register_method(
    "piggyback_ternary",
    config=PiggybackConfig,
    model=PiggybackModel,
    strategy=Piggyback,
    description="Piggyback with ternary masks in {-1, 0, 1} (2 bits per weight).",
    threshold_fn="ternarizer",
    mask_init="uniform",
)
