"""Masks over the shared weight, kept bit-packed once a task is frozen: the
packing of binary and ternary masks, the top-k selection that supermask
methods learn their masks by, and :class:`FrozenMaskLayer`, the layer base
of every method whose frozen task is ``weight * mask`` (Piggyback, SupSup,
WSN), which stores, reads, offloads, counts and caches those masks.
"""

import math

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.bit_packing import pack_codes, unpack_codes
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "pack_mask",
    "unpack_mask",
    "top_k_mask",
    "kept_count",
    "check_density",
    "signed_constant_",
    "FrozenMaskLayer",
]

# A stored code is the mask value modulo 3, so -1 is stored as 2. The unused
# 2-bit code 3 decodes to 0, a value every mask may hold.
_CODE_VALUES: dict[int, tuple[float, ...]] = {1: (0.0, 1.0), 2: (0.0, 1.0, -1.0, 0.0)}


def pack_mask(mask: Tensor, *, bits: int) -> Tensor:
    """Pack a mask of {0, 1} (``bits=1``) or {-1, 0, 1} (``bits=2``) values into
    a flat ``uint8`` tensor of ``ceil(numel * bits / 8)`` bytes.

    Works on any device; the result stays on the mask's device.

    :param mask: the mask, any shape.
    :param bits: 1 for binary masks, 2 for ternary ones.
    :return: the packed bytes, little-endian within each byte.
    """
    if bits not in _CODE_VALUES:
        raise ValueError(f"A mask takes 1 or 2 bits per weight, got {bits}.")
    codes = torch.remainder(mask.detach().flatten(), 3).to(torch.uint8)
    if bits == 1 and bool((codes > 1).any()):
        raise ValueError("A 1-bit mask may only hold 0 and 1.")
    return pack_codes(codes, bits=bits)


def unpack_mask(
    packed: Tensor,
    *,
    shape: torch.Size | tuple[int, ...],
    bits: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`pack_mask`.

    :param packed: the bytes from :func:`pack_mask`.
    :param shape: the shape of the original mask.
    :param bits: 1 or 2, as given to :func:`pack_mask`.
    :param dtype: dtype of the returned mask.
    :return: the mask, on ``packed``'s device.
    """
    if bits not in _CODE_VALUES:
        raise ValueError(f"A mask takes 1 or 2 bits per weight, got {bits}.")
    codes = unpack_codes(packed, numel=torch.Size(shape).numel(), bits=bits)
    values = torch.tensor(_CODE_VALUES[bits], dtype=dtype, device=packed.device)
    return values[codes.long()].view(shape)


def kept_count(numel: int, density: float) -> int:
    """How many of ``numel`` weights a top-k mask of ``density`` keeps: all
    but the ``int((1 - density) * numel)`` lowest-scored, as edge-popup
    (Ramanujan et al., 2020) and SupSup count them."""
    return numel - int((1 - density) * numel)


def check_density(density: object) -> None:
    """Refuse a top-k density outside ``(0, 1]``.

    :raises ValueError: naming the value.
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density is the share of weights a mask keeps, in (0, 1]; got {density!r}.")


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, density: float) -> Tensor:
        flat = scores.flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, kept_count(flat.numel(), density), sorted=False).indices] = 1
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad_mask: Tensor) -> tuple[Tensor, None]:
        return grad_mask, None  # straight through the selection


def top_k_mask(scores: Tensor, density: float) -> Tensor:
    """The edge-popup mask: 1 at the ``density`` share of ``scores`` with the
    largest values (:func:`kept_count` of them), else 0; the gradient passes
    straight through to ``scores``.

    :param scores: real-valued scores, any shape.
    :param density: the share of weights kept, in (0, 1].
    :return: a tensor of 0s and 1s with the dtype of ``scores``.
    """
    return _TopK.apply(scores, density)


@torch.no_grad()
def signed_constant_(weight: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Replace ``weight`` in place by SupSup's signed constant initialisation:
    ``±gain / sqrt(fan_in)`` with ReLU's gain and a random sign per weight
    (the signs of a Kaiming-normal draw), the random network whose
    supermasks SupSup learns.

    :param weight: a convolution's or linear layer's weight.
    :param generator: the random generator (``None``: torch's global one).
    :return: ``weight``.
    """
    fan_in = nn.init._calculate_correct_fan(weight, "fan_in")
    scale = nn.init.calculate_gain("relu") / math.sqrt(fan_in)
    signs = torch.randn(weight.shape, generator=generator, device=weight.device).sign()
    signs[signs == 0] = 1
    return weight.copy_(signs * scale)


class FrozenMaskLayer(TaskWeightLayer):
    """A layer whose frozen task computes with ``weight * mask``, the mask
    kept bit-packed (1 or 2 bits per weight) in ``packed_masks``, entropy
    coded in files and offloadable to a task store.

    A subclass calls :meth:`_init_mask_store` from its ``_init_task_weights``,
    says what mask a learning task has (:meth:`learning_mask`) and stores a
    task's final mask with :meth:`_store_mask`; reading, counting, byte
    counts and the cache of frozen tasks' weights are this class's.
    """

    packed_masks: TaskTensorDict

    def _init_mask_store(self, *, bits: int) -> None:
        """Create ``packed_masks`` for masks of ``bits`` bits per weight."""
        self.mask_bits = bits
        self._mask_layout = CodeLayout(numel=self.weight.numel(), bits=bits, rows=self.weight.shape[0])
        self.packed_masks = TaskTensorDict(
            trainable=False,
            holds="frozen",
            shape=(self._mask_layout.packed_bytes,),
            dtype=torch.uint8,
            code_layout=self._mask_layout,
            offloadable=True,
        )

    def learning_mask(self, task: str) -> Tensor | None:
        """The mask of ``task`` while it learns (``None`` if it is not learning)."""
        raise NotImplementedError

    def _store_mask(self, task: str, mask: Tensor) -> None:
        """Keep ``mask`` as frozen ``task``'s, bit-packed."""
        self.packed_masks.add(task, pack_mask(mask, bits=self.mask_bits))

    def mask(self, task: str) -> Tensor:
        """The mask of ``task`` as a tensor shaped like the weight: a
        learning task's current one, ones for the task that trains the
        backbone itself, else the stored one."""
        learning = self.learning_mask(task)
        if learning is not None:
            return learning
        if task == self.task_state.backbone_task:
            return torch.ones_like(self.weight)
        return unpack_mask(
            self._frozen_tensor("packed_masks", task),
            shape=self.weight.shape,
            bits=self.mask_bits,
            dtype=self.weight.dtype,
        )

    def task_tensor_bytes(self) -> int:
        # A task whose mask lives in the model's task store costs the same.
        stored = len(self.task_state.stored_tasks.difference(self.packed_masks.keys()))
        return self.packed_masks.nbytes() + stored * self._mask_layout.packed_bytes

    def mask_counts(self, task: str) -> dict[str, int]:
        mask = self.mask(task)
        counts = {"zeros": int((mask == 0).sum())}
        if self.mask_bits == 2:  # a ternary mask also flips weights
            counts["negatives"] = int((mask < 0).sum())
        return counts

    def _frozen_masked_weight(self, task: str) -> Tensor:
        """``weight * mask`` of the frozen ``task``, kept in the model's
        frozen-weight cache while neither changes."""
        if task in self.packed_masks:
            mask_version = self.packed_masks[task]._version
        elif task in self.task_state.stored_tasks:
            mask_version = -1  # a stored task never changes
        else:
            raise KeyError(f"{type(self).__name__} has no mask for task {task!r}.")
        if self.weight.requires_grad and torch.is_grad_enabled():
            # The weight itself trains: the product must stay in the graph.
            return self.weight * self.mask(task)
        # _version counts in-place writes, so an optimizer step or a
        # load_state_dict into the weight or the mask invalidates the cache.
        key = (self.weight._version, mask_version)
        return self._frozen_weight(task, key, lambda: self.weight * self.mask(task))
