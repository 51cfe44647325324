"""HAT (Serra et al., "Overcoming Catastrophic Forgetting with Hard
Attention to the Task", ICML 2018): one network that every task trains,
each task gating the units it uses by a learned, all but binary attention,
and the units earlier tasks use taking no further gradient."""

from piggyback_avalanche.methods.hat.config import HATConfig
from piggyback_avalanche.methods.hat.layers import UNIT_ATTENTION_LAYER_TYPES, AttentionScale, UnitAttentionLayer
from piggyback_avalanche.methods.hat.model import DEFAULT_MAX_SCALE, HATModel
from piggyback_avalanche.methods.hat.strategy import DEFAULT_CAPACITY_WEIGHT, DEFAULT_CLIP_GRADIENT, DEFAULT_HAT_LR, HAT
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "HATModel",
    "HAT",
    "HATConfig",
    "UnitAttentionLayer",
    "UNIT_ATTENTION_LAYER_TYPES",
    "AttentionScale",
    "DEFAULT_MAX_SCALE",
    "DEFAULT_HAT_LR",
    "DEFAULT_CAPACITY_WEIGHT",
    "DEFAULT_CLIP_GRADIENT",
]

register_method("hat", config=HATConfig, model=HATModel, strategy=HAT)
