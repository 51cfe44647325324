"""The paper's reference points as Avalanche strategies."""

from piggyback_avalanche.methods.reference.models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.task_aware.strategy import OneRateStrategy

__all__ = ["IndividualNetworks", "ClassifierOnly"]


class IndividualNetworks(OneRateStrategy):
    """A separate copy of the backbone fine-tuned for each task: the paper's
    upper reference point. Storage is T networks; nothing is forgotten.

    :param model: an :class:`~piggyback_avalanche.methods.reference.models.IndividualNetworksModel`.
    :param lr: learning rate of the task's whole network and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = IndividualNetworksModel


class ClassifierOnly(OneRateStrategy):
    """The backbone frozen, batch norm included, and one head trained per
    task: the paper's lower reference point.

    :param model: a :class:`~piggyback_avalanche.methods.reference.models.ClassifierOnlyModel`.
    :param lr: learning rate of the heads.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = ClassifierOnlyModel
