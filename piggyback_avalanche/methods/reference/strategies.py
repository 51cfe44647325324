"""The paper's reference points as Avalanche strategies."""

from typing import Any, Dict

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.reference.models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TaskAwareStrategy

__all__ = ["IndividualNetworks", "ClassifierOnly"]


class _OneLearningRate(TaskAwareStrategy):
    """A task-aware strategy that trains every parameter group at ``lr``."""

    def __init__(self, *, model: TaskAwareModel, lr: float = DEFAULT_LR, **kwargs: Any) -> None:
        check_positive("lr", lr)
        self.lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> Dict[str, float]:
        return {name: self.lr for name in self.model.trainable_parameters()}


class IndividualNetworks(_OneLearningRate):
    """A separate copy of the backbone fine-tuned for each task: the paper's
    upper reference point. Storage is T networks; nothing is forgotten.

    :param model: an :class:`~piggyback_avalanche.methods.reference.models.IndividualNetworksModel`.
    :param lr: learning rate of the task's whole network and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = IndividualNetworksModel


class ClassifierOnly(_OneLearningRate):
    """The backbone frozen, batch norm included, and one head trained per
    task: the paper's lower reference point.

    :param model: a :class:`~piggyback_avalanche.methods.reference.models.ClassifierOnlyModel`.
    :param lr: learning rate of the heads.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = ClassifierOnlyModel
