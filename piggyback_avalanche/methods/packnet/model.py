"""PackNet (Mallya & Lazebnik, CVPR 2018): one network, its weights assigned
to tasks by iterative pruning.

Each task trains the weights that no earlier task owns, prunes a fraction of
them by magnitude, retrains the rest and then owns them. Task ``t`` computes
with the weights of every task up to ``t``. Unlike Avalanche's PackNet this
one handles batch norm (one copy per task), layers without bias, optimizers
with momentum or weight decay (frozen weights live outside any optimizer),
mixed-task mini-batches and user plugins.
"""

from collections.abc import Sequence
from typing import Any

from torch import nn

from piggyback_avalanche.methods.packnet.layers import MAX_PACKNET_TASKS, PACKNET_LAYER_TYPES, PackNetLayer
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["PackNetModel", "check_prune_ratio"]


def check_prune_ratio(ratio: Any) -> None:
    """Refuse a prune ratio outside ``[0, 1)``.

    :raises ValueError: naming the value.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"prune_ratio must be in [0, 1), got {ratio!r}.")


class PackNetModel(TaskAwareModel):
    """PackNet over any backbone, with per-task heads and normalization.

    :param backbone: the network; its convolutions and linear layers are
        shared out among tasks, its normalization layers copied per task.
    :param classifier: the ``nn.Linear`` replaced by per-task heads (``None``:
        the ``nn.Linear`` whose output is the backbone's output).
    :param task_batchnorm: each task gets its own normalization copy;
        ``False`` shares the backbone's, trained with the first task and then
        frozen (the paper's "nobn" setting).

    :param feature_statistics: each task also keeps its features' class
        means and covariance, for task inference by Mahalanobis distance
        (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = PACKNET_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            feature_statistics=feature_statistics,
            layer_settings={},
        )

    def add_task(self, task: int, *, classes: Sequence[int], train_backbone: bool | None = None) -> None:
        """Add a task to learn. As in the paper, the first task also trains the
        shared parameters (biases, and the normalization layers with
        ``task_batchnorm=False``), which later tasks keep frozen.

        :param train_backbone: override that choice.
        """
        if self.task_state.learning:
            raise ValueError(
                f"PackNet learns one task at a time and task(s) {self.learning_tasks} are "
                "being learned: give each experience a single task label."
            )
        if len(self.tasks) >= MAX_PACKNET_TASKS:  # refused before any module has the task
            raise ValueError(
                f"PackNet holds at most {MAX_PACKNET_TASKS} tasks per network; this one is full. "
                "Start a new PackNetModel for further tasks."
            )
        if train_backbone is None:
            train_backbone = not self.tasks
        super().add_task(task, classes=classes, train_backbone=train_backbone)

    def prune(self, ratio: float) -> None:
        """Prune every learning task's weights, layer by layer, by magnitude.

        :param ratio: the share of each layer's free weights to release, in
            ``[0, 1)``.
        """
        check_prune_ratio(ratio)
        for key in self.task_state.learning:
            for layer in self.packnet_layers.values():
                layer.prune(key, ratio)

    @property
    def packnet_layers(self) -> dict[str, PackNetLayer]:
        """The layers whose weights are shared out, by qualified name."""
        return self.task_layers  # type: ignore[return-value]
