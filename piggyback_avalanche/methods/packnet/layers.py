"""PackNet's layer: the backbone's weights shared out among tasks by pruning."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.bit_packing import pack_codes, unpack_codes
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "MAX_PACKNET_TASKS",
    "PackNetLayer",
    "PackNetConv1d",
    "PackNetConv2d",
    "PackNetConv3d",
    "PackNetLinear",
    "PACKNET_LAYER_TYPES",
]

MAX_PACKNET_TASKS = 255
"""Tasks one PackNet network can hold: owners are stored in at most 8 bits,
with code 0 for weights no task owns."""


def _owner_bits(num_tasks: int) -> int:
    """Bits per weight that ``num_tasks`` owners plus "free" need."""
    return max(1, math.ceil(math.log2(num_tasks + 1)))


class PackNetLayer(TaskWeightLayer):
    """PackNet's layer.

    ``weight`` holds the values of the frozen tasks' weights (and zeros where
    no task owns a weight); no optimizer ever sees it. ``owner_codes`` says,
    for each weight, which task owns it: code ``c`` is the ``c``-th frozen
    task (``task_order``), code 0 no task. It is stored bit-packed with as
    few bits as the number of tasks needs.

    A task being learned trains ``free_weights`` (a full-size parameter of
    which only the positions in ``usable`` count) and, on the network's first
    task only, the bias.
    """

    task_order: Tensor
    packed_owners: Tensor
    changes_backbone_with_tasks = True  # each frozen task's weights are written into ``weight``
    sized_by_tasks = ("task_order", "packed_owners")

    def _init_task_weights(self) -> None:
        shape = tuple(self.weight.shape)
        self.free_weights = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.usable = TaskTensorDict(trainable=False, holds="learning", shape=shape)
        self.register_buffer("task_order", torch.zeros(0, dtype=torch.long, device=self.weight.device))
        self.register_buffer("packed_owners", torch.zeros(0, dtype=torch.uint8, device=self.weight.device))

    # --- owners ----------------------------------------------------------

    def owner_codes(self) -> Tensor:
        """Per weight: 0 if free, else the 1-based freezing rank of its task.

        Unpacked once and cached until the owners change; do not modify it.
        """
        return self._cached("owners", self._owners_key(), self._unpack_owners)

    def capacity_used(self) -> float:
        """The share of the layer's weights some frozen task owns: no later
        task can train them."""
        return float((self.owner_codes() > 0).float().mean())

    def _owners_key(self) -> tuple:
        # A freeze replaces packed_owners and lengthens task_order; a load
        # writes into packed_owners in place.
        return (self.packed_owners._version, len(self.task_order))

    def _unpack_owners(self) -> Tensor:
        if not len(self.task_order):
            return torch.zeros(self.weight.shape, dtype=torch.uint8, device=self.weight.device)
        codes = unpack_codes(self.packed_owners, numel=self.weight.numel(), bits=_owner_bits(len(self.task_order)))
        return codes.view(self.weight.shape)

    def _code_of(self, task: str) -> int:
        order = self.task_order.tolist()
        if int(task) not in order:
            raise KeyError(f"{type(self).__name__} has no weights for task {task!r}.")
        return order.index(int(task)) + 1

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start learning ``task`` on the free weights, from their current values."""
        if len(self.task_order) + len(self.free_weights.keys()) >= MAX_PACKNET_TASKS:
            raise ValueError(
                f"PackNet holds at most {MAX_PACKNET_TASKS} tasks per network; this one "
                "is full. Start a new PackNetModel for further tasks."
            )
        free = self.owner_codes() == 0
        self.free_weights.add(task, self.weight.detach().clone())
        self.usable.add(task, free)
        if task == self.task_state.backbone_task and self.bias is not None:
            self.bias.requires_grad_(True)

    def prune(self, task: str, ratio: float) -> None:
        """Release the ``ratio`` of ``task``'s usable weights with the smallest
        magnitude; they stay zero for this task and are free for later ones."""
        usable = self.usable[task]
        count = int(usable.sum())
        keep = count - round(ratio * count)
        magnitudes = self.free_weights[task].detach().abs()[usable]
        kept = torch.zeros(count, dtype=torch.bool, device=usable.device)
        kept[torch.topk(magnitudes, keep, sorted=False).indices] = True
        pruned = usable.clone()
        pruned[usable] = kept
        with torch.no_grad():
            # Released weights belong to no task: zero them where the task's
            # forward pass reads them (see task_weight).
            self.weight[usable & ~pruned] = 0
        usable.copy_(pruned)

    def freeze_task(self, task: str) -> None:
        """``task`` owns its usable weights from now on; the rest of the free
        weights are zeroed for later tasks."""
        usable = self.usable.pop(task)
        trained = self.free_weights.pop(task).detach()
        codes = self.owner_codes().clone()
        free = codes == 0
        with torch.no_grad():
            self.weight[free] = torch.where(usable, trained, torch.zeros_like(trained))[free]
        codes[usable] = len(self.task_order) + 1
        self.task_order = torch.cat([self.task_order, self.task_order.new_tensor([int(task)])])
        self.packed_owners = pack_codes(codes, bits=_owner_bits(len(self.task_order)))
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"weights": [...], "backbone": [...]}``: the learning tasks'
        free weights, and the bias while the first task trains."""
        return {
            "weights": [self.free_weights[t] for t in self.free_weights.keys()],  # type: ignore[misc]
            "backbone": [p for p in (self.bias,) if p is not None and p.requires_grad],
        }

    def task_tensor_bytes(self) -> int:
        return self.packed_owners.nbytes

    def task_record_keys(self) -> list[str]:
        return ["packed_owners", "task_order"]

    def code_layouts(self) -> dict[str, CodeLayout]:
        if not len(self.task_order):
            return {}
        bits = _owner_bits(len(self.task_order))
        return {"packed_owners": CodeLayout(numel=self.weight.numel(), bits=bits, rows=self.weight.shape[0])}

    # --- forward ---------------------------------------------------------

    def task_weight(self) -> Tensor:
        """Earlier tasks' frozen weights plus, for a learning task, its own."""
        task = self.task_state.key()
        if task in self.free_weights:
            # Outside its usable weights, ``weight`` holds the earlier tasks'
            # values and zeros where no task owns a weight. A float mask and
            # addcmul cost a tenth of a boolean torch.where on the CPU, and
            # give the same values: weight * 0 + free * 1, weight * 1 + free * 0.
            usable = self.usable[task]
            key = (task, self.weight._version, usable._version)
            mask = self._cached("usable", key, lambda: usable.to(self.weight.dtype))
            others = self._cached("others", key, lambda: self.weight * (1 - mask))
            return torch.addcmul(others, self.free_weights[task], mask)
        code = self._code_of(task)
        key = (self.weight._version, *self._owners_key())
        return self._frozen_weight(
            task, key, lambda: self.weight * ((self.owner_codes() > 0) & (self.owner_codes() <= code))
        )


PACKNET_LAYER_TYPES = task_layer_types(
    PackNetLayer, prefix="PackNet", doc="whose weights are shared out among tasks by pruning."
)
"""Layer types that PackNet shares out, and their twins."""

PackNetConv1d, PackNetConv2d, PackNetConv3d, PackNetLinear = PACKNET_LAYER_TYPES.values()
