"""WSN as an Avalanche strategy."""

from typing import Any

from piggyback_avalanche.methods.wsn.model import WSNModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, MaskScoreStrategy

__all__ = ["WSN", "DEFAULT_WSN_SCORE_LR"]

DEFAULT_WSN_SCORE_LR = 1e-2
"""The subnetwork scores' learning rate (Adam). Chosen on validation data
(a fifth of each training experience held out) of the offline default
stream, seeds 0, 1, 2, with the batch-norm pass: the best of 1e-4 to 1e-2
(94.1 %; from 1e-3 on within a standard deviation, BENCHMARKS.md)."""


class WSN(MaskScoreStrategy):
    """WSN (Kang et al., ICML 2022) as an Avalanche strategy.

    For each experience the model adds the new task (scores, free weights,
    normalization copies, head) and a fresh optimizer trains them: the
    scores at ``score_lr``, the weights no earlier task selected, the heads
    and normalization at ``lr``. When the experience ends the task's
    subnetwork is frozen: its mask (1 bit per weight) and its new weights,
    which no later task changes.

    :param model: a :class:`~piggyback_avalanche.methods.wsn.model.WSNModel`.
    :param score_lr: learning rate of the subnetwork scores.
    :param lr: learning rate of the new weights, heads and normalization.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = WSNModel
    lr_groups = ("weights", "task_parameters")
    recalibrates_norm_statistics = True  # 93.8 % against 84.2 on validation data (BENCHMARKS.md)

    def __init__(
        self, *, model: WSNModel, score_lr: float = DEFAULT_WSN_SCORE_LR, lr: float = DEFAULT_LR, **kwargs: Any
    ) -> None:
        super().__init__(model=model, score_lr=score_lr, lr=lr, **kwargs)
