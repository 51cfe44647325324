"""PackNet (Mallya & Lazebnik, CVPR 2018): one network, its weights shared
out among tasks by iterative pruning."""

from piggyback_avalanche.methods.packnet.config import PackNetConfig
from piggyback_avalanche.methods.packnet.layers import MAX_PACKNET_TASKS, PACKNET_LAYER_TYPES, PackNetLayer
from piggyback_avalanche.methods.packnet.model import PackNetModel
from piggyback_avalanche.methods.packnet.strategy import (
    DEFAULT_POST_PRUNE_EPOCHS,
    DEFAULT_PRUNE_RATIO,
    PACKNET_PAPER_SETTINGS,
    PackNet,
    PruneRatio,
)
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "PackNetModel",
    "PackNet",
    "PackNetConfig",
    "PACKNET_PAPER_SETTINGS",
    "PruneRatio",
    "DEFAULT_PRUNE_RATIO",
    "DEFAULT_POST_PRUNE_EPOCHS",
    "PackNetLayer",
    "PACKNET_LAYER_TYPES",
    "MAX_PACKNET_TASKS",
]

register_method("packnet", config=PackNetConfig, model=PackNetModel, strategy=PackNet)
