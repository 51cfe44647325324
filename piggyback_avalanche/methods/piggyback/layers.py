"""Piggyback's layer: the backbone's weight frozen, one learned mask per task."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.methods.piggyback.flat_masks import FlatMaskSlots, compute_dtype
from piggyback_avalanche.methods.piggyback.masks import MaskKind, pack_mask, unpack_mask
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = ["MaskedLayer", "MaskedConv1d", "MaskedConv2d", "MaskedConv3d", "MaskedLinear", "MASKED_LAYER_TYPES"]


class MaskedLayer(TaskWeightLayer):
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
        layout = CodeLayout(numel=self.weight.numel(), bits=mask_kind.bits, rows=self.weight.shape[0])
        self._layout = layout
        self.packed_masks = TaskTensorDict(
            trainable=False,
            holds="frozen",
            shape=(layout.packed_bytes,),
            dtype=torch.uint8,
            code_layout=layout,
            offloadable=True,
        )

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
        self.packed_masks.add(task, pack_mask(mask, bits=self.mask_kind.bits))

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"mask_scores": [...], "backbone": [...]}``: the scores of the
        tasks being learned, and the weight and bias while the backbone trains."""
        return {
            "mask_scores": [self.scores[t] for t in self.scores.keys()],  # type: ignore[misc]
            "backbone": [p for p in (self.weight, self.bias) if p is not None and p.requires_grad],
        }

    def task_tensor_bytes(self) -> int:
        # A task whose mask lives in the model's task store costs the same.
        stored = len(self.task_state.stored_tasks.difference(self.packed_masks.keys()))
        return self.packed_masks.nbytes() + stored * self._layout.packed_bytes

    def mask_counts(self, task: str) -> dict[str, int]:
        mask = self.mask(task)
        counts = {"zeros": int((mask == 0).sum())}
        if self.mask_kind.bits == 2:  # a ternary mask also flips weights
            counts["negatives"] = int((mask < 0).sum())
        return counts

    def learning_scores(self, task: str) -> Tensor | None:
        return self.scores[task].detach() if task in self.scores else None

    def mask(self, task: str) -> Tensor:
        """The mask of ``task`` as a tensor shaped like the weight."""
        if task in self.scores:
            return self.mask_kind.apply(self.scores[task], self.threshold)
        if task == self.task_state.backbone_task:
            return torch.ones_like(self.weight)
        return unpack_mask(
            self._frozen_tensor("packed_masks", task),
            shape=self.weight.shape,
            bits=self.mask_kind.bits,
            dtype=self.weight.dtype,
        )

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
        if task in self.packed_masks:
            mask_version = self.packed_masks[task]._version
        elif task in self.task_state.stored_tasks:
            mask_version = -1  # a stored task never changes
        else:
            raise KeyError(f"{type(self).__name__} has no mask for task {task!r}.")
        if self.weight.requires_grad and torch.is_grad_enabled():
            # The backbone itself trains: the product must stay in the graph.
            return self.weight * self.mask(task)
        # _version counts in-place writes, so an optimizer step or a
        # load_state_dict into the weight or the mask invalidates the cache.
        key = (self.weight._version, mask_version)
        return self._frozen_weight(task, key, lambda: self.weight * self.mask(task))


MASKED_LAYER_TYPES = task_layer_types(
    MaskedLayer, prefix="Masked", doc="with a learned binary or ternary mask per task."
)
"""Layer types that get masks, and their masked twins."""

MaskedConv1d, MaskedConv2d, MaskedConv3d, MaskedLinear = MASKED_LAYER_TYPES.values()
