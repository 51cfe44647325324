"""The effective weights of frozen tasks, kept for the tasks used most
recently, within a memory budget: what makes switching between tasks cost
what plain inference costs.

A frozen task's effective weight (for Piggyback, the backbone's weight with
the task's mask folded in) is computed once and kept here until the budget
needs the room for a task used more recently. Every layer of a model shares
one cache (it lives in the model's :class:`~.task_state.TaskState`), so the
budget bounds the whole model and a task is evicted whole. The weights of
several tasks stacked side by side for task inference are kept here too, as
one entry per group of tasks.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["FrozenWeightCache", "DEFAULT_BUDGET_BYTES"]

DEFAULT_BUDGET_BYTES = 256 * 2**20
"""The cache's budget unless set: room for a few tasks of a ResNet-50 (94 MiB
of weights each) and for hundreds of a small network's."""

Cached = Tensor | tuple[Tensor | None, ...]
"""A weight, or a tuple of tensors (a stacked weight and its bias)."""

_GROUP = "tasks:"


def _nbytes(value: Cached) -> int:
    if isinstance(value, Tensor):
        return value.nbytes
    return sum(t.nbytes for t in value if t is not None)


class FrozenWeightCache:
    """Frozen tasks' effective weights, least recently used evicted first.

    The task in use is never evicted, whatever the budget: a budget of 0
    keeps the weights of the last task used only.

    :param budget_bytes: the most bytes the cached weights may take.
    """

    def __init__(self, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._tasks: OrderedDict[str, dict[int, tuple[tuple, Cached]]] = OrderedDict()
        self._nbytes = 0
        self._budget_bytes = 0
        self.budget_bytes = budget_bytes

    @property
    def budget_bytes(self) -> int:
        """The most bytes the cached weights may take; setting it evicts
        the least recently used tasks that no longer fit."""
        return self._budget_bytes

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"budget_bytes must be a non-negative number of bytes, got {value!r}.")
        self._budget_bytes = value
        self._evict(keep=next(reversed(self._tasks), None))

    def get(self, task: str, owner: object, key: tuple, compute: Callable[[], Cached]) -> Any:
        """``owner``'s weight for ``task``: ``compute()`` (without gradients),
        reused while ``key`` stays the same.

        :param owner: the layer the weight belongs to.
        :param key: what the weight was computed from (pointers and version
            counters); a different key recomputes it.
        """
        entry = self._tasks.get(task, {}).get(id(owner))
        if entry is not None and entry[0] == key:
            self._tasks.move_to_end(task)
            return entry[1]
        with torch.no_grad():
            value = compute()  # may cache other tasks' weights (a stacked group's)
        entries = self._tasks.setdefault(task, {})
        self._tasks.move_to_end(task)
        replaced = entries.get(id(owner))
        if replaced is not None:
            self._nbytes -= _nbytes(replaced[1])
        entries[id(owner)] = (key, value)
        self._nbytes += _nbytes(value)
        self._evict(keep=task)
        return value

    def get_for_tasks(self, tasks: Sequence[str], owner: object, key: tuple, compute: Callable[[], Cached]) -> Any:
        """:meth:`get` for several tasks stacked side by side, kept as one
        entry of the group. Evaluation stacks tasks in fixed groups, so a
        cached group that overlaps this one is from an earlier grouping and
        will not come back: it is dropped."""
        name = _GROUP + ",".join(tasks)
        if name not in self._tasks:
            wanted = set(tasks)
            for cached in [n for n in self._tasks if n.startswith(_GROUP)]:
                if wanted & set(cached[len(_GROUP) :].split(",")):
                    self._drop(cached)
        return self.get(name, owner, key, compute)

    def _evict(self, *, keep: Any) -> None:
        while self._nbytes > self._budget_bytes and len(self._tasks) > 1:
            oldest = next(iter(self._tasks))
            if oldest == keep:
                break
            self._drop(oldest)

    def _drop(self, task: str) -> None:
        for _, value in self._tasks.pop(task).values():
            self._nbytes -= _nbytes(value)

    def value(self, task: str, owner: object) -> Cached | None:
        """``owner``'s cached weight for ``task``, ``None`` if none (without
        marking the task as used)."""
        entry = self._tasks.get(task, {}).get(id(owner))
        return None if entry is None else entry[1]

    def tasks(self) -> list[str]:
        """The cached tasks (and groups of stacked tasks, as ``"tasks:0,1"``),
        least recently used first."""
        return list(self._tasks)

    def nbytes(self) -> int:
        """Bytes of the cached weights."""
        return self._nbytes

    def discard(self, task: str) -> None:
        """Forget ``task``'s weights."""
        if task in self._tasks:
            self._drop(task)

    def clear(self) -> None:
        """Forget every weight."""
        self._tasks.clear()
        self._nbytes = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> "FrozenWeightCache":
        # Entries are keyed by the layers' identities, which a copy does not
        # share: a copied model starts with an empty cache and the same budget.
        return FrozenWeightCache(budget_bytes=self._budget_bytes)
