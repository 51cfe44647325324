"""Threshold functions that turn real-valued mask scores into masks (a
finished task's mask is bit-packed at 1 or 2 bits per weight by
:func:`~piggyback_avalanche.task_aware.frozen_masks.pack_mask`, re-exported
here).

Piggyback learns a real-valued score per weight and uses ``threshold(score)``
as the mask in the forward pass. The threshold is not differentiable, so the
backward pass is straight-through: the gradient that reaches the mask is
handed to the scores unchanged. Since the layer computes ``W * mask``, the
scores' gradient is the gradient w.r.t. the masked weight times ``W``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from piggyback_avalanche.task_aware.frozen_masks import pack_mask, unpack_mask

__all__ = [
    "MaskKind",
    "MASK_KINDS",
    "get_mask_kind",
    "binarize",
    "ternarize",
    "binary_masked_weight",
    "pack_mask",
    "unpack_mask",
]


class _Binarizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask: Tensor) -> tuple[Tensor, None]:
        return grad_mask, None


class _Ternarizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return (scores > threshold).to(scores.dtype) - (scores < 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask: Tensor) -> tuple[Tensor, None]:
        return grad_mask, None


class _BinaryMaskedWeight(torch.autograd.Function):
    """``weight * binarize(scores)`` in one pass, without a float mask: the
    forward selects, the backward multiplies once."""

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, threshold: float) -> Tensor:
        keep = scores > threshold
        ctx.save_for_backward(weight, keep if ctx.needs_input_grad[0] else None)
        return torch.where(keep, weight, weight.new_zeros(()))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight if ctx.needs_input_grad[1] else None  # straight through the threshold
        return grad_weight, grad_scores, None


def binary_masked_weight(weight: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """``weight * binarize(scores, threshold)``, computed in one pass.

    :return: ``weight`` where ``scores > threshold``, else 0; the scores'
        gradient is the output's gradient times ``weight``.
    """
    return _BinaryMaskedWeight.apply(weight, scores, threshold)


def _mask_times_weight(apply: Callable[[Tensor, float], Tensor]) -> Callable[[Tensor, Tensor, float], Tensor]:
    return lambda weight, scores, threshold: weight * apply(scores, threshold)


def binarize(scores: Tensor, threshold: float) -> Tensor:
    """Binary mask: 1 where ``scores > threshold``, else 0.

    The gradient passes straight through to ``scores``.

    :param scores: real-valued mask scores.
    :param threshold: the threshold tau (strict inequality).
    :return: a tensor of 0s and 1s with the dtype of ``scores``.
    """
    return _Binarizer.apply(scores, threshold)


def ternarize(scores: Tensor, threshold: float) -> Tensor:
    """Ternary mask: -1 where ``scores < 0``, 0 where ``0 <= scores <= threshold``,
    1 where ``scores > threshold``.

    The gradient passes straight through to ``scores``.

    :param scores: real-valued mask scores.
    :param threshold: the threshold tau.
    :return: a tensor of -1s, 0s and 1s with the dtype of ``scores``.
    """
    return _Ternarizer.apply(scores, threshold)


@dataclass(frozen=True)
class MaskKind:
    """What a threshold function produces and how its masks are stored.

    :param name: the name users pass as ``threshold_fn``.
    :param apply: ``apply(scores, threshold) -> mask`` with straight-through
        gradients.
    :param bits: storage bits per weight of a frozen mask.
    :param masked_weight: ``masked_weight(weight, scores, threshold) ->
        weight * apply(scores, threshold)``, the training forward's hot path.
    """

    name: str
    apply: Callable[[Tensor, float], Tensor]
    bits: int
    masked_weight: Callable[[Tensor, Tensor, float], Tensor]


MASK_KINDS: dict[str, MaskKind] = {
    "binarizer": MaskKind("binarizer", binarize, bits=1, masked_weight=binary_masked_weight),
    "ternarizer": MaskKind("ternarizer", ternarize, bits=2, masked_weight=_mask_times_weight(ternarize)),
}


def get_mask_kind(name: str) -> MaskKind:
    """Look up a threshold function by name.

    :param name: ``"binarizer"`` or ``"ternarizer"``.
    :raises ValueError: for any other name, listing the known ones.
    """
    try:
        return MASK_KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown threshold_fn {name!r}; choose one of {sorted(MASK_KINDS)}.") from None
