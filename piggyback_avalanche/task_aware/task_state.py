"""What every task-aware module of a model shares: the task being computed,
the tasks being learned, and where stored tasks' parts are read from
(:class:`TaskState`, the routing object); and how a task label becomes the
key its tensors are stored under.

Tasks are identified inside a model by their string keys (``task_key(label)``),
the keys under which their tensors appear in the state dict.
"""

import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor

from piggyback_avalanche.task_aware.frozen_weight_cache import FrozenWeightCache

__all__ = [
    "TaskState",
    "StackingUnsupportedError",
    "StoredParts",
    "stacked_width",
    "task_key",
]


class StoredParts(Protocol):
    """Where the frozen tasks of :attr:`TaskState.stored_tasks` keep the
    parts that are not in memory (a task store)."""

    def read_part(self, task: str, key: str) -> Tensor:
        """The tensor of ``task`` under the model's state-dict ``key``."""
        ...


# The key of the untrained task that TaskState.use_backbone runs: not a task
# label's key (those are digits), so no task's state is ever read for it.
_BACKBONE_PASS = "backbone"


class TaskState:
    """The task a model computes right now, the tasks it is learning, and the
    learning task (if any) that also trains the backbone's shared parameters.

    One instance is shared by every task-aware module of a model: the model
    selects the task once per forward pass and every layer reads it, so no
    per-layer bookkeeping happens on the hot path. It also holds what every
    layer shares about frozen tasks: the cache of their effective weights,
    and, for a model whose frozen tasks live in a task store, which tasks do
    and how a layer reads its part of one.
    """

    def __init__(self) -> None:
        self.current: str | None = None
        self.learning: set[str] = set()
        self.backbone_task: str | None = None
        self.untrained_classes: tuple[int, ...] | None = None
        self.stacked: tuple[str, ...] | None = None
        self.superposition: Tensor | None = None
        self.frozen_weights = FrozenWeightCache()
        self.stored_tasks: set[str] = set()
        self.stored_parts: StoredParts | None = None
        self.passes = 0
        """Forward passes of the model so far: what per-pass caches key on."""

    @contextmanager
    def use(self, task: str) -> Iterator[None]:
        """Run the enclosed forward pass for ``task``."""
        previous, self.current = self.current, task
        try:
            yield
        finally:
            self.current = previous

    @contextmanager
    def use_untrained(self, task: str, classes: Sequence[int]) -> Iterator[None]:
        """Run the enclosed forward pass for ``task``, which the model has
        not learned, as the model stands before learning it: every layer
        with the shared weights, the backbone's normalization, and an
        untrained head that gives ``classes`` equal logits."""
        previous = self.current, self.untrained_classes
        self.current, self.untrained_classes = task, tuple(int(c) for c in classes)
        try:
            yield
        finally:
            self.current, self.untrained_classes = previous

    @contextmanager
    def use_backbone(self) -> Iterator[None]:
        """Run the enclosed forward pass through the backbone alone, as an
        untrained task computes it (:meth:`use_untrained`): the features
        every task shares, whatever each task has learned."""
        with self.use_untrained(_BACKBONE_PASS, classes=(0,)):
            yield

    @contextmanager
    def use_stacked(self, tasks: Sequence[str]) -> Iterator[None]:
        """Run the enclosed forward pass for several frozen ``tasks`` side by
        side: every task-aware module computes all of them in one call, the
        features of the ``i``-th task in the ``i``-th block of the channel
        (or last) dimension, so that one pass through Python evaluates them
        all. Inputs that are not stacked yet (the network's input) are
        shared by every task."""
        previous = self.stacked
        self.stacked = tuple(tasks)
        try:
            yield
        finally:
            self.stacked = previous

    @contextmanager
    def use_superposed(self, tasks: Sequence[str], weights: Tensor) -> Iterator[None]:
        """Run the enclosed forward pass for the superposition of frozen
        ``tasks`` (SupSup's): every task-aware module computes each task side
        by side, as :meth:`use_stacked` does, and answers their sum weighted
        per sample by ``weights`` ``(batch, T)``, so that what the next module
        reads is the superposed network's, differentiable in ``weights``.
        Every module the pass goes through must be able to
        (:attr:`~piggyback_avalanche.task_aware.task_module.TaskModule.superposes`)."""
        previous = self.stacked, self.superposition
        self.stacked, self.superposition = tuple(tasks), weights
        try:
            yield
        finally:
            self.stacked, self.superposition = previous

    def superpose(self, output: Tensor, dim: int) -> Tensor:
        """``output`` of a stacked pass (the tasks' blocks along ``dim``), as
        the superposition weighs it; unchanged outside :meth:`use_superposed`."""
        weights = self.superposition
        if weights is None:
            return output
        tasks = weights.shape[1]
        dim = dim % output.dim()
        blocks = output.unflatten(dim, (tasks, output.shape[dim] // tasks))
        shape = [1] * blocks.dim()
        shape[0], shape[dim] = weights.shape[0], tasks
        return (blocks * weights.view(shape).to(blocks.dtype)).sum(dim)

    @property
    def untrained(self) -> bool:
        """Whether the current task is one the model has not learned."""
        return self.untrained_classes is not None

    def key(self) -> str:
        """The current task's key; raises if no task was selected."""
        if self.current is None:
            raise RuntimeError(
                "No task selected: call the owning model as model(x, task_labels), not a task-aware layer on its own."
            )
        return self.current


class StackingUnsupportedError(RuntimeError):
    """A module cannot compute several tasks side by side on this input."""


def stacked_width(size: int, expected: int, tasks: int, what: str) -> bool:
    """Whether a stacked dimension of ``size`` holds ``tasks`` blocks of
    ``expected`` (``True``) or one block shared by every task (``False``).

    :raises StackingUnsupportedError: for anything else.
    """
    if size == expected * tasks and tasks > 1:
        return True
    if size == expected:
        return False
    raise StackingUnsupportedError(
        f"{what} got {size} features where it expects {expected} (shared) or {expected * tasks} (stacked tasks)."
    )


def task_key(task: int | Tensor) -> str:
    """The string key of a task label.

    :raises ValueError: for anything but one non-negative integer.
    """
    if isinstance(task, Tensor):
        if task.numel() != 1 or task.dtype.is_floating_point or task.dtype == torch.bool:
            raise ValueError(f"A task label must be one integer, got {task!r}.")
        task = int(task.item())
    try:
        label = operator.index(task)
    except TypeError:
        label = -1
    if isinstance(task, bool) or label < 0:
        raise ValueError(f"A task label must be a non-negative int, got {task!r}.")
    return str(label)
