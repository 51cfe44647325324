"""The paper's reference points, built on the same backbone conversion as
Piggyback so that every method shares heads, normalization and routing.

- :class:`IndividualNetworksModel`: a separate copy of the backbone per task,
  all of it fine-tuned (the upper bound; T networks of storage).
- :class:`ClassifierOnlyModel`: the backbone frozen, batch norm included, and
  one trained head per task (the lower bound).
"""

from piggyback_avalanche.methods.reference.layers import COPIED_LAYER_TYPES, SHARED_LAYER_TYPES
from piggyback_avalanche.task_aware.models import SettingFreeModel

__all__ = ["IndividualNetworksModel", "ClassifierOnlyModel"]


class IndividualNetworksModel(SettingFreeModel):
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


class ClassifierOnlyModel(SettingFreeModel):
    """The backbone frozen, batch norm included, with one trained head per
    task: the lower reference point.

    :param backbone: the (pretrained) feature extractor.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = SHARED_LAYER_TYPES  # type: ignore[assignment]
    per_task_norm = False
