"""BitFitModel: any backbone, its biases and normalization learned per task."""

from typing import Union

from torch import nn

from piggyback_avalanche.methods.bitfit.layers import BIAS_TUNED_LAYER_TYPES
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["BitFitModel"]


class BitFitModel(TaskAwareModel):
    """BitFit per task (Ben Zaken, Ravfogel & Goldberg, ACL 2022): the
    backbone's weights frozen and shared; each task learns its own biases,
    normalization layers (parameters and statistics) and head.

    :param backbone: the (pretrained) network; the layers
        :class:`~piggyback_avalanche.PiggybackModel` supports.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = BIAS_TUNED_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: Union[str, nn.Module, None] = None,
        feature_statistics: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=True,
            feature_statistics=feature_statistics,
            layer_settings={},
        )
