"""The learning task's masked weights of every layer at once: the GPU
training path.

Per layer, a training step computes ``weight * threshold(scores)`` and casts
it to the compute dtype (two or three small kernels), and the backward pass
multiplies each layer's gradient by its weight: on a GPU, a ResNet-50's 53
layers make some 150 small launches a step, each reading the fp32 weight
and scores again. Here the learning task's scores of every layer are one
flat buffer (each layer's score parameter a view of it, so the optimizer,
the state dict and freezing see them as before) next to a flat copy of the
frozen weights; one pass writes every layer's masked weight in the compute
dtype, and one pass turns the gradients of all of them into the scores'
gradients. The logits and score gradients equal the per-layer path's (a
test checks them on the CPU); which path runs is chosen per device
(:attr:`PiggybackModel.flat_masks`).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from piggyback_avalanche.methods.piggyback.masks import MaskKind

__all__ = ["FlatMasks", "FlatMaskSlots", "compute_dtype"]


def _memory_order(weight: Tensor) -> tuple[int, ...]:
    """The order in which ``weight``'s dimensions lie in memory: a
    channels-last convolution weight must stay so, or every convolution of a
    channels-last network converts it again at each step."""
    for dims, memory_format in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if weight.dim() == dims and not weight.is_contiguous() and weight.is_contiguous(memory_format=memory_format):
            return (0, *range(2, dims), 1)
    return tuple(range(weight.dim()))


def _flatten(t: Tensor, order: tuple[int, ...]) -> Tensor:
    return t.permute(order).reshape(-1)


def _unflatten(flat: Tensor, shape: tuple[int, ...], order: tuple[int, ...]) -> Tensor:
    """``flat`` (in ``order``) as a tensor of ``shape`` laid out in that order: a view."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return flat.view([shape[d] for d in order]).permute(inverse)


class _MaskedWeights(torch.autograd.Function):
    """Every layer's masked weight from the flat buffers; straight-through
    gradients to every layer's scores."""

    @staticmethod
    def forward(ctx: Any, flat: "FlatMasks", dtype: torch.dtype, *scores: Tensor) -> tuple[Tensor, ...]:
        ctx.flat = flat
        return tuple(flat.layer_views(flat.masked(dtype)))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        flat: FlatMasks = ctx.flat
        parts = [
            torch.zeros(size, dtype=flat.weights.dtype, device=flat.weights.device) if g is None else _flatten(g, order)
            for g, size, order in zip(grads, flat.sizes, flat.orders)
        ]
        # Straight through the threshold: d(weight * mask)/d(scores) taken as weight.
        grad = torch.cat(parts).to(flat.weights.dtype).mul_(flat.weights)
        return (None, None, *flat.layer_views(grad))


class FlatMasks:
    """One learning task's scores of every masked layer as one flat buffer,
    and a flat copy of those layers' frozen weights.

    Building it moves the task's score parameters into the buffer (each
    stays the same ``nn.Parameter`` object, now a view of it). Each layer's
    part lies in its weight's memory order, so masked weights and scores keep
    the weight's layout (channels-last networks stay channels-last).

    :param weights: the layers' frozen weights, in order.
    :param scores: the task's score parameters of the same layers.
    :param threshold: the threshold tau.
    :param mask_kind: the layers' threshold function, whose masked weight
        the flat pass computes.
    """

    def __init__(
        self, weights: Sequence[Tensor], scores: Sequence[Tensor], *, threshold: float, mask_kind: MaskKind
    ) -> None:
        self.shapes = [tuple(w.shape) for w in weights]
        self.sizes = [w.numel() for w in weights]
        self.orders = [_memory_order(w) for w in weights]
        self.threshold = threshold
        self.mask_kind = mask_kind
        with torch.no_grad():
            self.weights = torch.cat([_flatten(w.detach(), order) for w, order in zip(weights, self.orders)])
            self.scores = torch.cat([_flatten(s.detach(), order) for s, order in zip(scores, self.orders)])
        for parameter, view in zip(scores, self.layer_views(self.scores)):
            parameter.data = view
        self.parameters = list(scores)
        self._pass: tuple[int, torch.dtype] | None = None
        self._outputs: dict[int, Tensor] = {}

    def layer_views(self, flat: Tensor) -> list[Tensor]:
        """Each layer's part of a flat buffer, shaped and laid out as its weight."""
        return [
            _unflatten(part, shape, order)
            for part, shape, order in zip(flat.split(self.sizes), self.shapes, self.orders)
        ]

    def masked(self, dtype: torch.dtype) -> Tensor:
        """Every layer's masked weight, flat, in ``dtype``: the threshold
        function's masked weight, once over both buffers (its gradient is
        :class:`_MaskedWeights`')."""
        with torch.no_grad():
            return self.mask_kind.masked_weight(self.weights, self.scores, self.threshold).to(dtype)

    def weight(self, index: int, pass_id: int, dtype: torch.dtype) -> Tensor:
        """The masked weight of layer ``index`` for forward pass ``pass_id``,
        computed for every layer at the pass's first call."""
        if self._pass != (pass_id, dtype):
            outputs = _MaskedWeights.apply(self, dtype, *self.parameters)
            self._outputs = dict(enumerate(outputs))
            self._pass = (pass_id, dtype)
        return self._outputs[index]

    def covers(self, weight: Tensor) -> bool:
        """Whether the buffers still describe the layers: on the weight's
        device and dtype, the score parameters still views of the buffer (a
        move to another device replaces every parameter's storage)."""
        return (
            self.weights.device == weight.device
            and self.weights.dtype == weight.dtype
            and self.parameters[0].data_ptr() == self.scores.data_ptr()
        )


class FlatMaskSlots(dict[str, tuple[FlatMasks, int]]):
    """What a layer keeps of the flat path: per learning task, its
    :class:`FlatMasks` and the layer's index in it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "FlatMaskSlots":
        # A copy's parameters are copies too, no views of these buffers: the
        # copy (a restore point's) builds its own when it trains.
        return FlatMaskSlots()


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's for the weight's device, if on."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype
