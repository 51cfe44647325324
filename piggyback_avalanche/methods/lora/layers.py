"""LoRA's layer: the backbone's weight frozen, a learned low-rank update per task."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "LowRankLayer",
    "LOW_RANK_LAYER_TYPES",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankConv3d",
    "LowRankLinear",
]


class LowRankLayer(TaskWeightLayer):
    """LoRA (Hu et al., ICLR 2022) per task: the effective weight is
    ``weight + (alpha / rank) * up @ down``, reshaped like the weight, with
    ``down`` (``rank x fan_in``) and ``up`` (``out x rank``) learned per
    task and the backbone's weight and bias frozen. A convolution's update is
    low-rank in its ``out x (in / groups * kernel)`` matrix. A frozen task
    keeps its two factors; nothing of it changes again.
    """

    setting_names = ("rank", "alpha")

    def _init_task_weights(self, *, rank: int, alpha: float) -> None:  # type: ignore[override]
        self.rank = rank
        self.alpha = alpha
        out_features, fan_in = self.weight.shape[0], self.weight[0].numel()
        self._shapes = {"down": (rank, fan_in), "up": (out_features, rank)}
        for kind, shape in self._shapes.items():
            self.register_module(f"learning_{kind}", TaskTensorDict(trainable=True, holds="learning", shape=shape))
            self.register_module(f"frozen_{kind}", TaskTensorDict(trainable=False, holds="frozen", shape=shape))

    @property
    def scale(self) -> float:
        """``alpha / rank``: the update's scale."""
        return self.alpha / self.rank

    def _store(self, role: str, kind: str) -> TaskTensorDict:
        return self._modules[f"{role}_{kind}"]  # type: ignore[return-value]

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start ``task`` with the identity update: ``down`` initialised as
        ``nn.Linear`` initialises weights, ``up`` zero (as LoRA does)."""
        down = torch.empty(self._shapes["down"], dtype=self.weight.dtype, device=self.weight.device)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self._store("learning", "down").add(task, down)
        self._store("learning", "up").add(task, torch.zeros(self._shapes["up"], dtype=down.dtype, device=down.device))

    def freeze_task(self, task: str) -> None:
        """Keep ``task``'s two factors as buffers."""
        for kind in self._shapes:
            self._store("frozen", kind).add(task, self._store("learning", kind).pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"low_rank": [...]}``: the learning tasks' factors."""
        stores = [self._store("learning", kind) for kind in self._shapes]
        return {"low_rank": [store[t] for store in stores for t in store.keys()]}  # type: ignore[misc]

    def task_tensor_bytes(self) -> int:
        return sum(self._store("frozen", kind).nbytes() for kind in self._shapes)

    # --- forward ---------------------------------------------------------

    def _factors(self, task: str) -> list[Tensor]:
        role = "learning" if task in self._store("learning", "down") else "frozen"
        stores = [self._store(role, kind) for kind in self._shapes]
        if task not in stores[0]:
            raise KeyError(f"{type(self).__name__} has no update for task {task!r}.")
        return [store[task] for store in stores]

    def task_weight(self) -> Tensor:
        """The weight of the current task: ``weight + scale * up @ down``."""
        task = self.task_state.key()
        down, up = self._factors(task)

        def compute() -> Tensor:
            return self.weight + self.scale * (up @ down).view_as(self.weight)

        if task in self._store("learning", "down"):
            return compute()
        return self._frozen_weight(task, (self.weight._version, down._version, up._version), compute)


LOW_RANK_LAYER_TYPES = task_layer_types(LowRankLayer, prefix="LowRank", doc="with a learned low-rank update per task.")
"""Layer types that get a low-rank update per task, and their twins."""

LowRankConv1d, LowRankConv2d, LowRankConv3d, LowRankLinear = LOW_RANK_LAYER_TYPES.values()
