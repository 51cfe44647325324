"""BitFit's layer: the backbone's weight frozen and shared, a bias per task."""

from collections.abc import Sequence

from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict, TensorSpec

__all__ = [
    "BiasTunedLayer",
    "BIAS_TUNED_LAYER_TYPES",
    "BiasTunedConv1d",
    "BiasTunedConv2d",
    "BiasTunedConv3d",
    "BiasTunedLinear",
]


class BiasTunedLayer(TaskWeightLayer):
    """BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022) per task: every task
    shares the backbone's frozen weight and learns its own copy of the
    layer's bias, starting from the backbone's. A layer without a bias (a
    convolution before batch norm) has nothing of its own: its task's
    normalization carries the shift.
    """

    def _init_task_weights(self) -> None:
        shape = None if self.bias is None else tuple(self.bias.shape)
        self.learning_biases = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.frozen_biases = TaskTensorDict(trainable=False, holds="frozen", shape=shape)

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Copy the backbone's bias for ``task`` (if the layer has one)."""
        if self.bias is not None:
            self.learning_biases.add(task, self.bias.detach().clone())

    def freeze_task(self, task: str) -> None:
        """Keep ``task``'s bias as a buffer."""
        if self.bias is not None:
            self.frozen_biases.add(task, self.learning_biases.pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"biases": [...]}``: the learning tasks' biases."""
        return {"biases": [self.learning_biases[t] for t in self.learning_biases.keys()]}  # type: ignore[misc]

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        return {} if self.bias is None else super().frozen_task_tensor_schema(task)

    def task_tensor_bytes(self) -> int:
        return self.frozen_biases.nbytes()

    def task_weight(self) -> Tensor:
        return self.weight

    def task_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        task = self.task_state.key()
        return self.learning_biases[task] if task in self.learning_biases else self.frozen_biases[task]


BIAS_TUNED_LAYER_TYPES = task_layer_types(BiasTunedLayer, prefix="BiasTuned", doc="with a learned bias per task.")
"""Layer types that get a bias per task, and their twins."""

BiasTunedConv1d, BiasTunedConv2d, BiasTunedConv3d, BiasTunedLinear = BIAS_TUNED_LAYER_TYPES.values()
