"""PackNet (Mallya & Lazebnik, CVPR 2018): one network, its weights shared
out among tasks by iterative pruning."""

from piggyback_avalanche.methods.packnet.layers import MAX_PACKNET_TASKS, PACKNET_LAYER_TYPES, PackNetLayer
from piggyback_avalanche.methods.packnet.model import PackNetModel
from piggyback_avalanche.methods.packnet.strategy import (
    DEFAULT_POST_PRUNE_EPOCHS,
    DEFAULT_PRUNE_RATIO,
    PACKNET_PAPER_SETTINGS,
    PackNet,
    PruneRatio,
)

__all__ = [
    "PackNetModel",
    "PackNet",
    "PACKNET_PAPER_SETTINGS",
    "PruneRatio",
    "DEFAULT_PRUNE_RATIO",
    "DEFAULT_POST_PRUNE_EPOCHS",
    "PackNetLayer",
    "PACKNET_LAYER_TYPES",
    "MAX_PACKNET_TASKS",
]
