"""WSN's layer: each task selects a subnetwork of the shared weights by
learned scores, trains the selected weights no earlier task uses, and
reuses the others frozen."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.frozen_masks import FrozenMaskLayer, pack_mask, top_k_mask, unpack_mask
from piggyback_avalanche.task_aware.task_layers import task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "SubnetworkLayer",
    "SubnetworkConv1d",
    "SubnetworkConv2d",
    "SubnetworkConv3d",
    "SubnetworkLinear",
    "SUBNETWORK_LAYER_TYPES",
]


class SubnetworkLayer(FrozenMaskLayer):
    """WSN's layer (Kang et al., "Forget-free Continual Learning with
    Winning Subnetworks", ICML 2022).

    ``weight`` holds the values of every weight an earlier task selected
    (``used``, kept bit-packed in ``packed_used``), and the backbone's values
    elsewhere. A task being learned owns ``scores`` and ``free_weights``
    (a full-size parameter of which only the unused positions count); its
    weight is ``(used ? weight : free_weights) * top_k(|scores|)``, the
    ``density`` share of weights with the largest scores, so it reuses
    earlier tasks' weights frozen and trains only new ones. Once frozen it
    keeps its mask, 1 bit per weight; its new weights join ``weight``.
    Like WSN, each task's scores start from the previous task's
    (``score_template``), so a task tends to reuse what the last one chose.
    """

    packed_used: Tensor
    score_template: Tensor
    changes_backbone_with_tasks = True  # each frozen task's new weights are written into ``weight``
    setting_names = ("density",)
    sized_by_tasks = ("packed_used", "score_template")

    def _init_task_weights(self, *, density: float) -> None:  # type: ignore[override]
        self.density = density
        shape = tuple(self.weight.shape)
        self.scores = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.free_weights = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self._init_mask_store(bits=1)
        # Both empty until the first task freezes (no weight used yet); then its
        # final scores seed the next task's.
        self.register_buffer("packed_used", torch.zeros(0, dtype=torch.uint8, device=self.weight.device))
        self.register_buffer("score_template", torch.zeros(0, dtype=self.weight.dtype, device=self.weight.device))

    # --- what earlier tasks use ------------------------------------------

    def used(self) -> Tensor:
        """Per weight: whether an earlier (frozen) task selected it. Cached
        until a task freezes; do not modify it."""
        key = (self.packed_used._version, self.packed_used.data_ptr())

        def unpack() -> Tensor:
            if not self.packed_used.numel():
                return torch.zeros(self.weight.shape, dtype=torch.bool, device=self.weight.device)
            return unpack_mask(self.packed_used, shape=self.weight.shape, bits=1, dtype=torch.bool)

        return self._cached("used", key, unpack)

    def capacity_used(self) -> float:
        """The share of the layer's weights some task has selected: when it
        reaches 1, later tasks can only reuse frozen weights."""
        return float(self.used().float().mean())

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start learning ``task``: scores from the last frozen task's (the
        first task's drawn as edge-popup draws them), free weights from the
        layer's current values."""
        if self.score_template.numel():
            scores = self.score_template.clone()
        else:
            scores = torch.empty_like(self.weight)
            nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.scores.add(task, scores)
        self.free_weights.add(task, self.weight.detach().clone())

    def freeze_task(self, task: str) -> None:
        """Keep the task's mask; the weights it selected that no earlier task
        used become its own, frozen from now on."""
        scores = self.scores.pop(task).detach()
        trained = self.free_weights.pop(task).detach()
        mask = top_k_mask(scores.abs(), self.density).bool()
        used = self.used()
        new = mask & ~used
        with torch.no_grad():
            self.weight[new] = trained[new]
        self.packed_used = pack_mask(used | mask, bits=1)
        self.score_template = scores.clone()
        self._store_mask(task, mask)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"mask_scores": [...], "weights": [...]}``: the learning tasks'
        scores, and their free weights."""
        return {
            "mask_scores": [self.scores[t] for t in self.scores.keys()],  # type: ignore[misc]
            "weights": [self.free_weights[t] for t in self.free_weights.keys()],  # type: ignore[misc]
        }

    def task_record_keys(self) -> list[str]:
        return ["packed_used"]

    def template_state_keys(self) -> list[str]:
        return ["score_template"]

    def learning_scores(self, task: str) -> Tensor | None:
        return self.scores[task].detach() if task in self.scores else None

    def learning_mask(self, task: str) -> Tensor | None:
        return top_k_mask(self.scores[task].abs(), self.density) if task in self.scores else None

    # --- forward ---------------------------------------------------------

    def task_weight(self) -> Tensor:
        """Earlier tasks' weights where used, else the learning task's own,
        under the task's mask."""
        task = self.task_state.key()
        mask = self.learning_mask(task)
        if mask is None:
            return self._frozen_masked_weight(task)
        key = (task, self.weight._version, self.packed_used._version)
        free = self._cached("free", key, lambda: (~self.used()).to(self.weight.dtype))
        others = self._cached("others", key, lambda: self.weight * (1 - free))
        # As PackNet's: a float mask and addcmul, so only unused weights get a gradient.
        return torch.addcmul(others, self.free_weights[task], free) * mask


SUBNETWORK_LAYER_TYPES = task_layer_types(
    SubnetworkLayer, prefix="Subnetwork", doc="whose tasks select, train and reuse subnetworks of its weights."
)
"""Layer types that WSN learns subnetworks of, and their twins."""

SubnetworkConv1d, SubnetworkConv2d, SubnetworkConv3d, SubnetworkLinear = SUBNETWORK_LAYER_TYPES.values()
