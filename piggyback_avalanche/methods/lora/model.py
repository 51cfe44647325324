"""LoRAModel: any backbone, one low-rank update of every layer per task."""

from torch import nn

from piggyback_avalanche.checks import check_count, check_positive
from piggyback_avalanche.methods.lora.layers import LOW_RANK_LAYER_TYPES
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["LoRAModel", "DEFAULT_RANK", "DEFAULT_ALPHA"]

DEFAULT_RANK = 4
"""Default rank of each layer's update."""

DEFAULT_ALPHA = 8.0
"""Default ``alpha`` (the update is scaled by ``alpha / rank``), as ``peft``'s LoRA."""


class LoRAModel(TaskAwareModel):
    """A low-rank adapter per task (LoRA, Hu et al., ICLR 2022) on the layers
    that Piggyback masks: every convolution and linear layer, attention
    projections included, besides the classifier. The backbone's weights stay
    frozen; each task learns two factors per layer, its normalization and its
    head, and keeps them when frozen, so nothing is forgotten.

    :param backbone: the (pretrained) network; the layers
        :class:`~piggyback_avalanche.PiggybackModel` supports.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param rank: the rank of each layer's update.
    :param alpha: the update is scaled by ``alpha / rank``.
    :param task_batchnorm: each task learns its own normalization parameters
        and statistics; ``False`` keeps the backbone's, frozen.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = LOW_RANK_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        rank: int = DEFAULT_RANK,
        alpha: float = DEFAULT_ALPHA,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
    ) -> None:
        check_count("rank", rank)
        check_positive("alpha", alpha)
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            feature_statistics=feature_statistics,
            layer_settings={"rank": int(rank), "alpha": float(alpha)},
        )
