"""LoRA per task as an Avalanche strategy."""

from piggyback_avalanche.methods.lora.model import LoRAModel
from piggyback_avalanche.task_aware.strategy import OneRateStrategy

__all__ = ["LoRA"]


class LoRA(OneRateStrategy):
    """A low-rank adapter per task over a frozen backbone (LoRA, Hu et al.,
    ICLR 2022, one adapter per task as in InfLoRA and SD-LoRA's
    task-incremental setting): each experience trains its task's factors,
    normalization and head at ``lr``, then freezes them.

    :param model: a :class:`~piggyback_avalanche.methods.lora.LoRAModel`.
    :param lr: learning rate of the factors, normalization and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = LoRAModel
