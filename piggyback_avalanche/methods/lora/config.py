"""LoRA's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.methods.lora.model import DEFAULT_ALPHA, DEFAULT_RANK
from piggyback_avalanche.methods.lora.strategy import DEFAULT_LORA_LR
from piggyback_avalanche.task_aware.registration import LEARNING_RATE_RANGE, MethodConfig, model_setting

__all__ = ["LoRAConfig"]


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.lora.model.LoRAModel`
    (the model's) and :class:`~piggyback_avalanche.methods.lora.strategy.LoRA`
    (the others); their docstrings say what each means."""

    rank: int = model_setting(DEFAULT_RANK)
    alpha: float = model_setting(DEFAULT_ALPHA)
    task_batchnorm: bool = model_setting(True)
    lora_lr: float = DEFAULT_LORA_LR

    search_space: ClassVar = {"lr": LEARNING_RATE_RANGE, "lora_lr": LEARNING_RATE_RANGE}
