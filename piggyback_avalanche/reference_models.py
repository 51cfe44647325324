"""The paper's reference points, built on the same backbone conversion as
Piggyback so that every method shares heads, normalization and routing.

- :class:`IndividualNetworksModel`: a separate copy of the backbone per task,
  all of it fine-tuned (the upper bound; T networks of storage).
- :class:`ClassifierOnlyModel`: the backbone frozen, batch norm included, and
  one trained head per task (the lower bound).
"""

from typing import Dict, List, Optional, Tuple, Union

from torch import Tensor, nn

from piggyback_avalanche.layers import (
    TaskTensorDict,
    TaskWeightLayer,
    _ConvForward,
    _LinearForward,
)
from piggyback_avalanche.model import TaskAwareModel

__all__ = [
    "CopiedLayer",
    "FrozenLayer",
    "IndividualNetworksModel",
    "ClassifierOnlyModel",
]


class CopiedLayer(TaskWeightLayer):
    """A layer with its own copy of the weight and bias per task, each
    starting from the backbone's. Frozen tasks keep theirs as buffers."""

    def _init_task_weights(self) -> None:
        self.learning_weights = TaskTensorDict(trainable=True)
        self.frozen_weights = TaskTensorDict(trainable=False)
        self.learning_biases = TaskTensorDict(trainable=True)
        self.frozen_biases = TaskTensorDict(trainable=False)
        self._set_weight_trainable(False)

    def _task_tensor_shape(self, store: str) -> Optional[Tuple[int, ...]]:
        return tuple((self.weight if store.endswith("weights") else self.bias).shape)

    def add_task(self, task: str) -> None:
        """Copy the backbone's weight and bias for ``task``."""
        self.learning_weights.add(task, self.weight.detach().clone())
        if self.bias is not None:
            self.learning_biases.add(task, self.bias.detach().clone())

    def freeze_task(self, task: str) -> None:
        """Keep ``task``'s weight and bias as buffers."""
        self.frozen_weights.add(task, self.learning_weights.pop(task).detach())
        if self.bias is not None:
            self.frozen_biases.add(task, self.learning_biases.pop(task).detach())

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """``{"network": [...]}``: the learning tasks' weights and biases."""
        keys = self.learning_weights.keys()
        params = [self.learning_weights[t] for t in keys]
        if self.bias is not None:
            params += [self.learning_biases[t] for t in keys]
        return {"network": params}

    def _own(self, learning: TaskTensorDict, frozen: TaskTensorDict) -> Tensor:
        task = self.task_state.key()
        return learning[task] if task in learning else frozen[task]

    def task_weight(self) -> Tensor:
        return self._own(self.learning_weights, self.frozen_weights)

    def task_bias(self) -> Optional[Tensor]:
        if self.bias is None:
            return None
        return self._own(self.learning_biases, self.frozen_biases)


class FrozenLayer(TaskWeightLayer):
    """A layer that every task uses as the backbone has it, never trained."""

    def _init_task_weights(self) -> None:
        self._set_weight_trainable(False)

    def add_task(self, task: str) -> None:
        """Nothing to add: the layer is shared and frozen."""

    def freeze_task(self, task: str) -> None:
        """Nothing to freeze: the layer never trains."""

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {}

    def task_weight(self) -> Tensor:
        return self.weight


class CopiedConv1d(CopiedLayer, _ConvForward, nn.Conv1d):
    """``nn.Conv1d`` with a weight and bias per task."""


class CopiedConv2d(CopiedLayer, _ConvForward, nn.Conv2d):
    """``nn.Conv2d`` with a weight and bias per task."""


class CopiedConv3d(CopiedLayer, _ConvForward, nn.Conv3d):
    """``nn.Conv3d`` with a weight and bias per task."""


class CopiedLinear(CopiedLayer, _LinearForward, nn.Linear):
    """``nn.Linear`` with a weight and bias per task."""


class FrozenConv1d(FrozenLayer, _ConvForward, nn.Conv1d):
    """``nn.Conv1d`` shared by every task, never trained."""


class FrozenConv2d(FrozenLayer, _ConvForward, nn.Conv2d):
    """``nn.Conv2d`` shared by every task, never trained."""


class FrozenConv3d(FrozenLayer, _ConvForward, nn.Conv3d):
    """``nn.Conv3d`` shared by every task, never trained."""


class FrozenLinear(FrozenLayer, _LinearForward, nn.Linear):
    """``nn.Linear`` shared by every task, never trained."""


class IndividualNetworksModel(TaskAwareModel):
    """One copy of the backbone per task, all of it trained on that task:
    the reference of separately fine-tuned networks. Storage is T networks;
    forgetting is zero since no copy is trained twice.

    :param backbone: the (pretrained) network every copy starts from.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    """

    learning_store = "learning_weights"
    layer_types = {
        nn.Conv1d: CopiedConv1d,
        nn.Conv2d: CopiedConv2d,
        nn.Conv3d: CopiedConv3d,
        nn.Linear: CopiedLinear,
    }

    def __init__(self, backbone: nn.Module, *, classifier: Union[str, nn.Module, None] = None) -> None:
        super().__init__(backbone, classifier=classifier, task_batchnorm=True, layer_settings={})



class ClassifierOnlyModel(TaskAwareModel):
    """The backbone frozen, batch norm included, with one trained head per
    task: the lower reference point.

    :param backbone: the (pretrained) feature extractor.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    """

    layer_types = {
        nn.Conv1d: FrozenConv1d,
        nn.Conv2d: FrozenConv2d,
        nn.Conv3d: FrozenConv3d,
        nn.Linear: FrozenLinear,
    }

    def __init__(self, backbone: nn.Module, *, classifier: Union[str, nn.Module, None] = None) -> None:
        super().__init__(backbone, classifier=classifier, task_batchnorm=False, layer_settings={})

