"""Computed tensors kept while what they were computed from stays as it is
(a layer's effective weights, stacked statistics)."""

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = ["VersionedCache"]


class VersionedCache:
    """Computed tensors kept while the tensors they were computed from stay
    as they are: entries are keyed by name and recomputed when their key
    (data pointers and version counters, which count in-place writes)
    changes."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, Any]] = {}

    @staticmethod
    def state_key(module: nn.Module) -> tuple:
        """A key that changes when any parameter or buffer of ``module`` is
        replaced or written in place (a write through ``.data`` replaces the
        storage, and so changes the pointer)."""
        return tuple((t.data_ptr(), t._version) for t in chain(module.parameters(), module.buffers()))

    def get(self, name: str, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``, reused while ``key`` stays the same."""
        entry = self._entries.get(name)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = self._entries[name] = (key, compute())
        return entry[1]

    def value(self, name: str) -> Any:
        """The value kept under ``name``, ``None`` if none."""
        entry = self._entries.get(name)
        return None if entry is None else entry[1]

    def get_for_tasks(self, tasks: Sequence[str], key: tuple, compute: Callable[[], Any]) -> Any:
        """:meth:`get` for a group of stacked tasks. Evaluation passes the
        tasks in fixed groups, so a cached group that overlaps this one is
        from an earlier set of tasks and will not come back: it is dropped."""
        name = "tasks:" + ",".join(tasks)
        wanted = set(tasks)
        self._entries = {
            n: e
            for n, e in self._entries.items()
            if n == name or not n.startswith("tasks:") or not wanted & set(n[len("tasks:") :].split(","))
        }
        return self.get(name, key, compute)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
