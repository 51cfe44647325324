"""LoRA (Hu et al., ICLR 2022) per task: a frozen backbone, one learned
low-rank update of every layer per task."""

from piggyback_avalanche.methods.lora.config import LoRAConfig
from piggyback_avalanche.methods.lora.layers import LOW_RANK_LAYER_TYPES, LowRankLayer
from piggyback_avalanche.methods.lora.model import DEFAULT_ALPHA, DEFAULT_RANK, LoRAModel
from piggyback_avalanche.methods.lora.strategy import DEFAULT_LORA_LR, LoRA
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "LoRAModel",
    "LoRA",
    "LoRAConfig",
    "DEFAULT_LORA_LR",
    "LowRankLayer",
    "LOW_RANK_LAYER_TYPES",
    "DEFAULT_RANK",
    "DEFAULT_ALPHA",
]

register_method("lora", config=LoRAConfig, model=LoRAModel, strategy=LoRA)
