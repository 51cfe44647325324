"""SupSup (Wortsman et al., "Supermasks in Superposition", NeurIPS 2020): a
random network that never trains, one supermask per task, and task
inference from the superposition of every task's mask."""

from piggyback_avalanche.methods.supsup.config import SupSupConfig
from piggyback_avalanche.methods.supsup.layers import SUPERMASK_LAYER_TYPES, SupermaskLayer
from piggyback_avalanche.methods.supsup.model import DEFAULT_DENSITY, WEIGHT_INITS, SupSupModel
from piggyback_avalanche.methods.supsup.strategy import DEFAULT_SCORE_LR, SupSup
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "SupSupModel",
    "SupSup",
    "SupSupConfig",
    "SupermaskLayer",
    "SUPERMASK_LAYER_TYPES",
    "DEFAULT_DENSITY",
    "DEFAULT_SCORE_LR",
    "WEIGHT_INITS",
]

register_method("supsup", config=SupSupConfig, model=SupSupModel, strategy=SupSup)
