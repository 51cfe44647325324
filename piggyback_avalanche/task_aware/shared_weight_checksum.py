"""A checksum of the tensors every task shares: what catches a write that
bypasses PyTorch's version counters (``.data``, ``vector_to_parameters``)
after the tasks that were learned for those tensors froze."""

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["SharedWeightChecksum", "CHECKSUM_SAMPLES"]

CHECKSUM_SAMPLES = 4096
"""Entries per shared tensor that a sampled check reads."""


class SharedWeightChecksum:
    """Sum and sum of squares (float64) of each floating-point shared tensor,
    recorded whole and over a fixed strided sample, and compared later.

    :param shared_state: returns the shared tensors by state-dict key,
        fetched live (a move or a load replaces them).
    """

    def __init__(self, shared_state: Callable[[], dict[str, Tensor]]) -> None:
        self._shared_state = shared_state
        self._keys: list[str] = []
        self._recorded: dict[bool, Tensor] = {}

    def _compute(self, *, sampled: bool) -> Tensor:
        shared = self._shared_state()
        rows = []
        for key in self._keys:
            flat = shared[key].detach().reshape(-1)
            if sampled and flat.numel() > CHECKSUM_SAMPLES:
                flat = flat[:: flat.numel() // CHECKSUM_SAMPLES]
            flat = flat.double()
            rows.append(torch.stack([flat.sum(), flat.square().sum()]))
        return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)

    def record(self) -> None:
        """Record the shared tensors as they are now (which ones: those that
        are floating point now)."""
        self._keys = [k for k, t in self._shared_state().items() if t.is_floating_point()]
        self._recorded = {sampled: self._compute(sampled=sampled) for sampled in (False, True)}

    def unchanged(self, *, sampled: bool = False) -> bool:
        """Whether the shared tensors are as recorded; ``sampled``: compare
        at most :data:`CHECKSUM_SAMPLES` evenly strided entries per tensor (any
        write to a whole tensor changes them, a write to a few entries may
        not)."""
        return torch.equal(self._compute(sampled=sampled), self._recorded[sampled])
