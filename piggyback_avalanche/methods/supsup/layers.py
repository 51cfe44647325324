"""SupSup's layer: a random, never-trained weight and one supermask per
task, the top share of the task's learned scores (edge-popup)."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.frozen_masks import FrozenMaskLayer, top_k_mask
from piggyback_avalanche.task_aware.task_layers import task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "SupermaskLayer",
    "SupermaskConv1d",
    "SupermaskConv2d",
    "SupermaskConv3d",
    "SupermaskLinear",
    "SUPERMASK_LAYER_TYPES",
]


class SupermaskLayer(FrozenMaskLayer):
    """SupSup's layer (Wortsman et al., 2020): the shared ``weight`` and
    ``bias`` never train. Each task being learned owns real-valued
    ``scores`` shaped like the weight (Kaiming-uniform, as edge-popup
    starts them); the forward pass uses ``weight * top_k(|scores|)``, the
    ``density`` share of weights with the largest scores, with
    straight-through gradients. A frozen task keeps its mask, 1 bit per
    weight, in ``packed_masks``.
    """

    setting_names = ("density",)

    def _init_task_weights(self, *, density: float) -> None:  # type: ignore[override]
        self.density = density
        self.scores = TaskTensorDict(trainable=True, holds="learning", shape=tuple(self.weight.shape))
        self._init_mask_store(bits=1)

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start learning ``task``: its scores drawn as edge-popup draws them
        (``kaiming_uniform_`` with ``a=sqrt(5)``, from torch's generator)."""
        scores = torch.empty_like(self.weight)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.scores.add(task, scores)

    def freeze_task(self, task: str) -> None:
        """Replace the task's scores by its bit-packed supermask."""
        with torch.no_grad():
            self._store_mask(task, top_k_mask(self.scores.pop(task).abs(), self.density))

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"mask_scores": [...]}``: the scores of the tasks being learned."""
        return {"mask_scores": [self.scores[t] for t in self.scores.keys()]}  # type: ignore[misc]

    def learning_scores(self, task: str) -> Tensor | None:
        return self.scores[task].detach() if task in self.scores else None

    def learning_mask(self, task: str) -> Tensor | None:
        return top_k_mask(self.scores[task].abs(), self.density) if task in self.scores else None

    def task_weight(self) -> Tensor:
        """The weight of the current task: ``weight * supermask``."""
        task = self.task_state.key()
        mask = self.learning_mask(task)
        if mask is not None:
            return self.weight * mask
        return self._frozen_masked_weight(task)


SUPERMASK_LAYER_TYPES = task_layer_types(
    SupermaskLayer, prefix="Supermask", doc="with a random fixed weight and a learned top-k supermask per task."
)
"""Layer types that get supermasks, and their twins."""

SupermaskConv1d, SupermaskConv2d, SupermaskConv3d, SupermaskLinear = SUPERMASK_LAYER_TYPES.values()
