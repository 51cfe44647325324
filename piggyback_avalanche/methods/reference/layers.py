"""The reference points' layers: a copy of the weight per task (individual
networks), or the backbone's weight shared and never trained (classifier
only, with the shared machinery's :class:`SharedLayer`)."""

from collections.abc import Sequence

from torch import Tensor, nn

from piggyback_avalanche.task_aware.shared_layers import (
    SHARED_LAYER_TYPES,
    SharedConv1d,
    SharedConv2d,
    SharedConv3d,
    SharedLayer,
    SharedLinear,
)
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "CopiedLayer",
    "SharedLayer",
    "COPIED_LAYER_TYPES",
    "SHARED_LAYER_TYPES",
    "CopiedConv1d",
    "CopiedConv2d",
    "CopiedConv3d",
    "CopiedLinear",
    "SharedConv1d",
    "SharedConv2d",
    "SharedConv3d",
    "SharedLinear",
]


class CopiedLayer(TaskWeightLayer):
    """A layer with its own copy of the weight and bias per task, each
    starting from the backbone's. Frozen tasks keep theirs as buffers; the
    backbone's weight and bias only seed new tasks."""

    def _init_task_weights(self) -> None:
        shape = tuple(self.weight.shape)
        self.learning_weights = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.frozen_weights = TaskTensorDict(trainable=False, holds="frozen", shape=shape)
        if self.bias is not None:
            bias_shape = tuple(self.bias.shape)
            self.learning_biases = TaskTensorDict(trainable=True, holds="learning", shape=bias_shape)
            self.frozen_biases = TaskTensorDict(trainable=False, holds="frozen", shape=bias_shape)

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Copy the backbone's weight and bias for ``task``."""
        self.learning_weights.add(task, self.weight.detach().clone())
        if self.bias is not None:
            self.learning_biases.add(task, self.bias.detach().clone())

    def freeze_task(self, task: str) -> None:
        """Keep ``task``'s weight and bias as buffers."""
        self.frozen_weights.add(task, self.learning_weights.pop(task).detach())
        if self.bias is not None:
            self.frozen_biases.add(task, self.learning_biases.pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"network": [...]}``: the learning tasks' weights and biases."""
        stores = [self.learning_weights] + ([self.learning_biases] if self.bias is not None else [])
        return {"network": [store[t] for store in stores for t in store.keys()]}  # type: ignore[misc]

    def template_state_keys(self) -> list[str]:
        return ["weight", "bias"] if self.bias is not None else ["weight"]

    def task_tensor_bytes(self) -> int:
        return self.frozen_weights.nbytes()

    def _own(self, learning: TaskTensorDict, frozen: TaskTensorDict) -> Tensor:
        task = self.task_state.key()
        return learning[task] if task in learning else frozen[task]

    def task_weight(self) -> Tensor:
        return self._own(self.learning_weights, self.frozen_weights)

    def task_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        return self._own(self.learning_biases, self.frozen_biases)


COPIED_LAYER_TYPES = task_layer_types(CopiedLayer, prefix="Copied", doc="with a weight and bias per task.")
"""Layer types that individual networks copy per task, and their twins."""


CopiedConv1d, CopiedConv2d, CopiedConv3d, CopiedLinear = COPIED_LAYER_TYPES.values()
