"""Layers that every task uses as the backbone has them, never trained:
what a method that learns elsewhere (heads only, prompts) keeps of the
backbone's convolutions and linear layers."""

from collections.abc import Sequence

from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types

__all__ = ["SharedLayer", "SHARED_LAYER_TYPES", "SharedConv1d", "SharedConv2d", "SharedConv3d", "SharedLinear"]


class SharedLayer(TaskWeightLayer):
    """A layer that every task uses as the backbone has it, never trained."""

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Nothing to add: the layer is shared and frozen."""

    def freeze_task(self, task: str) -> None:
        """Nothing to freeze: the layer never trains."""

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def task_weight(self) -> Tensor:
        return self.weight


SHARED_LAYER_TYPES = task_layer_types(SharedLayer, prefix="Shared", doc="shared by every task, never trained.")
"""Layer types kept frozen and shared, and their twins."""

SharedConv1d, SharedConv2d, SharedConv3d, SharedLinear = SHARED_LAYER_TYPES.values()
