"""The paper's reference points, built on the same backbone conversion as
Piggyback so that every method shares heads, normalization and routing.

- :class:`IndividualNetworksModel`: a separate copy of the backbone per task,
  all of it fine-tuned (the upper bound; T networks of storage).
- :class:`ClassifierOnlyModel`: the backbone frozen, batch norm included, and
  one trained head per task (the lower bound).
"""

from typing import Union

from torch import nn

from piggyback_avalanche.methods.reference.layers import COPIED_LAYER_TYPES, FROZEN_LAYER_TYPES
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["IndividualNetworksModel", "ClassifierOnlyModel"]


class _ReferenceModel(TaskAwareModel):
    """A reference point: the backbone conversion of every method, with the
    normalization per task or shared as the reference defines it."""

    per_task_norm: bool

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
            task_batchnorm=self.per_task_norm,
            feature_statistics=feature_statistics,
            layer_settings={},
        )


class IndividualNetworksModel(_ReferenceModel):
    """One copy of the backbone per task, all of it trained on that task:
    the reference of separately fine-tuned networks. Storage is T networks;
    forgetting is zero since no copy is trained twice.

    :param backbone: the (pretrained) network every copy starts from.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = COPIED_LAYER_TYPES  # type: ignore[assignment]
    per_task_norm = True


class ClassifierOnlyModel(_ReferenceModel):
    """The backbone frozen, batch norm included, with one trained head per
    task: the lower reference point.

    :param backbone: the (pretrained) feature extractor.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = FROZEN_LAYER_TYPES  # type: ignore[assignment]
    per_task_norm = False
