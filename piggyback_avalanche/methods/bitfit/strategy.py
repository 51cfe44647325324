"""BitFit per task as an Avalanche strategy."""

from piggyback_avalanche.methods.bitfit.model import BitFitModel
from piggyback_avalanche.task_aware.strategy import OneRateStrategy

__all__ = ["BitFit"]


class BitFit(OneRateStrategy):
    """Biases and normalization per task over a frozen backbone (BitFit, Ben
    Zaken et al., ACL 2022): each experience trains its task's biases,
    normalization and head at ``lr``, then freezes them.

    :param model: a :class:`~piggyback_avalanche.methods.bitfit.BitFitModel`.
    :param lr: learning rate of the biases, normalization and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = BitFitModel
