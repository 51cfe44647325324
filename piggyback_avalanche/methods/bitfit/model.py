"""BitFitModel: any backbone, its biases and normalization learned per task."""

from piggyback_avalanche.methods.bitfit.layers import BIAS_TUNED_LAYER_TYPES
from piggyback_avalanche.task_aware.models import SettingFreeModel

__all__ = ["BitFitModel"]


class BitFitModel(SettingFreeModel):
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
    per_task_norm = True
