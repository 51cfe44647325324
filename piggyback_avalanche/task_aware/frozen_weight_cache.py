"""The effective weights of frozen tasks, kept for the tasks used most
recently, within a memory budget: what makes switching between tasks cost
what plain inference costs.

A frozen task's effective weight (for Piggyback, the backbone's weight with
the task's mask folded in) is computed once and kept here until the budget
needs the room for a task used more recently. Every layer of a model shares
one cache (it lives in the model's :class:`~.task_state.TaskState`), so the
budget bounds the whole model and a task is evicted whole.
"""

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["FrozenWeightCache"]


class FrozenWeightCache:
    """Frozen tasks' effective weights, least recently used evicted first.

    The task in use is never evicted, whatever the budget: a budget of 0
    keeps the weights of the last task used only.

    :param budget_bytes: the most bytes the cached weights may take.
    """

    def __init__(self, *, budget_bytes: int = 0) -> None:
        self._tasks: "OrderedDict[str, Dict[int, Tuple[Tuple, Tensor]]]" = OrderedDict()
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

    def get(self, task: str, owner: object, key: Tuple, compute: Callable[[], Tensor]) -> Tensor:
        """``owner``'s weight for ``task``: ``compute()`` (without gradients),
        reused while ``key`` stays the same.

        :param owner: the layer the weight belongs to.
        :param key: what the weight was computed from (pointers and version
            counters); a different key recomputes it.
        """
        entries = self._tasks.get(task)
        if entries is None:
            entries = self._tasks[task] = {}
        else:
            self._tasks.move_to_end(task)
        entry = entries.get(id(owner))
        if entry is not None and entry[0] == key:
            return entry[1]
        with torch.no_grad():
            value = compute()
        if entry is not None:
            self._nbytes -= entry[1].nbytes
        entries[id(owner)] = (key, value)
        self._nbytes += value.nbytes
        self._evict(keep=task)
        return value

    def _evict(self, *, keep: Any) -> None:
        while self._nbytes > self._budget_bytes and len(self._tasks) > 1:
            oldest = next(iter(self._tasks))
            if oldest == keep:
                break
            self._drop(oldest)

    def _drop(self, task: str) -> None:
        for _, value in self._tasks.pop(task).values():
            self._nbytes -= value.nbytes

    def value(self, task: str, owner: object) -> Optional[Tensor]:
        """``owner``'s cached weight for ``task``, ``None`` if none (without
        marking the task as used)."""
        entry = self._tasks.get(task, {}).get(id(owner))
        return None if entry is None else entry[1]

    def tasks(self) -> List[str]:
        """The cached tasks, least recently used first."""
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

    def __deepcopy__(self, memo: Dict[int, Any]) -> "FrozenWeightCache":
        # Entries are keyed by the layers' identities, which a copy does not
        # share: a copied model starts with an empty cache and the same budget.
        return FrozenWeightCache(budget_bytes=self._budget_bytes)
