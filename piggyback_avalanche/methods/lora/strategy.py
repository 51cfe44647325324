"""LoRA per task as an Avalanche strategy."""

from typing import Any

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.lora.model import LoRAModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TaskAwareStrategy

__all__ = ["LoRA", "DEFAULT_LORA_LR"]

DEFAULT_LORA_LR = 3e-3
"""Default learning rate of the low-rank factors: the best of 1e-3, 3e-3 and
1e-2 on the offline transformer stream (BENCHMARKS.md)."""


class LoRA(TaskAwareStrategy):
    """A low-rank adapter per task over a frozen backbone (LoRA, Hu et al.,
    ICLR 2022, one adapter per task as in InfLoRA and SD-LoRA's
    task-incremental setting): each experience trains its task's factors at
    ``lora_lr`` and its normalization and head at ``lr``, then freezes them.

    :param model: a :class:`~piggyback_avalanche.methods.lora.LoRAModel`.
    :param lora_lr: learning rate of the low-rank factors.
    :param lr: learning rate of the normalization and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = LoRAModel

    def __init__(self, *, model: LoRAModel, lora_lr: float = DEFAULT_LORA_LR, lr: float = DEFAULT_LR, **kwargs: Any):
        check_positive("lora_lr", lora_lr)
        check_positive("lr", lr)
        self.lora_lr = lora_lr
        self.lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {"low_rank": self.lora_lr, "task_parameters": self.lr, "backbone": self.lr}
