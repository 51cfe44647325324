"""Piggyback's layer: the backbone's weight frozen, one learned mask per task."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.methods.piggyback.flat_masks import FlatMaskSlots, compute_dtype
from piggyback_avalanche.methods.piggyback.masks import MaskKind
from piggyback_avalanche.task_aware.frozen_masks import FrozenMaskLayer
from piggyback_avalanche.task_aware.task_layers import task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = ["MaskedLayer", "MaskedConv1d", "MaskedConv2d", "MaskedConv3d", "MaskedLinear", "MASKED_LAYER_TYPES"]


class MaskedLayer(FrozenMaskLayer):
    """Piggyback's layer: the backbone's ``weight`` and ``bias`` stay frozen.

    Each task being learned owns real-valued ``scores`` shaped like the
    weight; the forward pass uses ``weight * threshold(scores)``. When the
    task is frozen only its thresholded mask is kept, bit-packed in
    ``packed_masks``.
    """

    setting_names = ("mask_kind", "threshold", "mask_init", "mask_scale")

    def _init_task_weights(  # type: ignore[override]
        self, *, mask_kind: MaskKind, threshold: float, mask_init: str, mask_scale: float
    ) -> None:
        self.mask_kind = mask_kind
        self.threshold = threshold
        self.mask_init = mask_init
        self.mask_scale = mask_scale
        self.scores = TaskTensorDict(trainable=True, holds="learning", shape=tuple(self.weight.shape))
        self.flat_masks = FlatMaskSlots()
        self._init_mask_store(bits=mask_kind.bits)

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start learning ``task``: scores initialised as ``mask_init`` says
        (``"1s"``: all ``mask_scale``; ``"uniform"``: in ``[-mask_scale,
        mask_scale]``), or, for the task that trains the backbone, the weight
        and bias themselves under a mask of ones (frozen by :meth:`freeze_task`).
        """
        if task == self.task_state.backbone_task:
            self._set_weight_trainable(True)
            return
        scores = torch.full_like(self.weight, self.mask_scale)
        if self.mask_init == "uniform":
            scores.uniform_(-self.mask_scale, self.mask_scale)
        self.scores.add(task, scores)

    def freeze_task(self, task: str) -> None:
        """Replace the task's scores by its bit-packed thresholded mask."""
        self.flat_masks.pop(task, None)
        if task == self.task_state.backbone_task:
            mask = torch.ones_like(self.weight)
            self._set_weight_trainable(False)
        else:
            with torch.no_grad():
                mask = self.mask_kind.apply(self.scores.pop(task), self.threshold)
        self._store_mask(task, mask)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"mask_scores": [...], "backbone": [...]}``: the scores of the
        tasks being learned, and the weight and bias while the backbone trains."""
        return {
            "mask_scores": [self.scores[t] for t in self.scores.keys()],  # type: ignore[misc]
            "backbone": [p for p in (self.weight, self.bias) if p is not None and p.requires_grad],
        }

    def learning_scores(self, task: str) -> Tensor | None:
        return self.scores[task].detach() if task in self.scores else None

    def learning_mask(self, task: str) -> Tensor | None:
        return self.mask_kind.apply(self.scores[task], self.threshold) if task in self.scores else None

    # --- forward ---------------------------------------------------------

    def task_weight(self) -> Tensor:
        """The weight of the current task: ``weight * mask``."""
        task = self.task_state.key()
        if task in self.scores:
            flat = self.flat_masks.get(task)
            if flat is not None and flat[0].covers(self.weight):
                return flat[0].weight(flat[1], self.task_state.passes, compute_dtype(self.weight))
            return self.mask_kind.masked_weight(self.weight, self.scores[task], self.threshold)
        if task == self.task_state.backbone_task:
            return self.weight
        return self._frozen_masked_weight(task)


MASKED_LAYER_TYPES = task_layer_types(
    MaskedLayer, prefix="Masked", doc="with a learned binary or ternary mask per task."
)
"""Layer types that get masks, and their masked twins."""

MaskedConv1d, MaskedConv2d, MaskedConv3d, MaskedLinear = MASKED_LAYER_TYPES.values()
