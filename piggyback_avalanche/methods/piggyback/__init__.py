"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a frozen backbone, one
learned binary (or ternary) mask per task."""

from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES, MaskedLayer
from piggyback_avalanche.methods.piggyback.masks import binarize, ternarize
from piggyback_avalanche.methods.piggyback.model import MASK_INITS, PiggybackModel
from piggyback_avalanche.methods.piggyback.strategy import (
    DEFAULT_MASK_CROSS_WITHIN,
    PIGGYBACK_PAPER_SETTINGS,
    Piggyback,
    mask_learning_rate,
)
from piggyback_avalanche.methods.piggyback.task_files import TaskFileError, backbone_fingerprint
from piggyback_avalanche.methods.piggyback.task_store import TaskStore, TaskStoreError

__all__ = [
    "PiggybackModel",
    "Piggyback",
    "PIGGYBACK_PAPER_SETTINGS",
    "DEFAULT_MASK_CROSS_WITHIN",
    "mask_learning_rate",
    "MASK_INITS",
    "MaskedLayer",
    "MASKED_LAYER_TYPES",
    "binarize",
    "ternarize",
    "TaskFileError",
    "backbone_fingerprint",
    "TaskStore",
    "TaskStoreError",
]
