"""What every task-aware module of a model shares: the task being computed,
the tasks being learned, per-task tensor stores, and what each module says
about the state it keeps.

Tasks are identified inside a model by their string keys (``task_key(label)``),
the keys under which their tensors appear in the state dict.
"""

import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.frozen_weight_cache import FrozenWeightCache

__all__ = [
    "TaskState",
    "TaskTensorDict",
    "TaskModule",
    "TensorSpec",
    "StackingUnsupportedError",
    "StoredParts",
    "VersionedCache",
    "stacked_width",
    "task_key",
    "task_keys_below",
    "add_loaded_tasks",
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


def task_keys_below(state_dict: dict[str, Tensor], prefix: str) -> set[str]:
    """The task keys found directly below ``prefix`` in a state dict."""
    return {k[len(prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}


def add_loaded_tasks(
    stores: dict[str, "TaskTensorDict"],
    state_dict: dict[str, Tensor],
    prefix: str,
    task_state: "TaskState",
    empty: Callable[["TaskTensorDict", Tensor], Tensor],
) -> None:
    """Before a module loads ``state_dict``: give each of its per-task
    ``stores`` (by attribute name) a tensor ``empty(store, incoming)`` for
    every task the state dict holds and the store lacks, for the load to
    fill, and mark the tasks of ``"learning"`` stores as learning (the model
    cleared the set before its modules load)."""
    for name, store in stores.items():
        found = task_keys_below(state_dict, f"{prefix}{name}.")
        for task in found - set(store.keys()):
            store.add(task, empty(store, state_dict[f"{prefix}{name}.{task}"]))
        if store.holds == "learning":
            task_state.learning.update(found)


TaskRole = Literal["learning", "frozen"]


@dataclass(frozen=True)
class TensorSpec:
    """What one tensor of a frozen task must be, so that a file can be
    checked against the model before anything is allocated or changed.

    :param dtype: its dtype.
    :param shape: its sizes; an ``int`` is fixed by the model, a ``str``
        names a size the task chooses (the number of its classes), the same
        wherever the name recurs in the task; ``None``: any shape.
    :param non_negative: every value is at least 0 (a variance).
    """

    dtype: torch.dtype
    shape: tuple[int | str, ...] | None
    non_negative: bool = False

    def problem(self, tensor: Any, sizes: dict[str, int]) -> str | None:
        """What is wrong with ``tensor`` (``None`` if nothing), given the
        named ``sizes`` seen so far in its task (updated with its own)."""
        if not isinstance(tensor, Tensor):
            return f"a {type(tensor).__name__}, not a tensor"
        if tensor.dtype != self.dtype:
            return f"{tensor.dtype}, not {self.dtype}"
        if self.shape is not None:
            expected = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in self.shape)
            shown = str(tuple(expected)).replace("'", "")
            if tensor.dim() != len(self.shape) or any(
                isinstance(e, int) and e != n for e, n in zip(expected, tensor.shape)
            ):
                return f"shape {tuple(tensor.shape)}, not {shown}"
            for name, size in zip(self.shape, tensor.shape):
                if isinstance(name, str):
                    sizes[name] = int(size)
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            if not bool(torch.isfinite(tensor).all()):
                return "values that are not finite (NaN or infinite)"
            if self.non_negative and bool((tensor < 0).any()):
                return "negative values where every value is at least 0"
        return None


class TaskTensorDict(nn.Module):
    """One tensor per task, held as parameters (trainable) or as buffers.

    State-dict keys are ``<prefix><task>``.

    :param trainable: hold the tensors as parameters.
    :param holds: which tasks the store holds: ``"learning"`` ones (they
        leave it when frozen) or ``"frozen"`` ones; a loaded state dict's
        learning tasks are those found in ``"learning"`` stores.
    :param shape: the shape of every task's tensor, ``None`` if it may vary;
        a state dict with another shape is refused as a size mismatch.
    :param dtype: the dtype of every task's tensor when it does not follow
        the model's (bit-packed masks are ``uint8``); ``None``: the layer's
        weight dtype.
    :param code_layout: the tensors are packed codes laid out so
        (bit-packed masks), which files store entropy-coded.
    :param offloadable: a task store may hold a frozen task's tensor
        instead of memory (the large parts of a task, read on demand).
    """

    def __init__(
        self,
        *,
        trainable: bool,
        holds: TaskRole,
        shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
        code_layout: CodeLayout | None = None,
        offloadable: bool = False,
    ) -> None:
        super().__init__()
        self.trainable = trainable
        self.holds = holds
        self.shape = shape
        self.dtype = dtype
        self.code_layout = code_layout
        self.offloadable = offloadable

    def _tensors(self) -> dict[str, Tensor]:
        return self._parameters if self.trainable else self._buffers  # type: ignore[return-value]

    def keys(self) -> list[str]:
        """The task keys, in insertion order."""
        return list(self._tensors())

    def __contains__(self, task: object) -> bool:
        return task in self._tensors()

    def __getitem__(self, task: str) -> Tensor:
        tensor = self._tensors().get(task)
        if tensor is None:
            raise KeyError(task)
        return tensor

    def add(self, task: str, tensor: Tensor) -> None:
        """Store ``tensor`` for ``task``."""
        if self.trainable:
            self.register_parameter(task, nn.Parameter(tensor))
        else:
            self.register_buffer(task, tensor)

    def pop(self, task: str) -> Tensor:
        """Remove and return the tensor of ``task``."""
        return self._tensors().pop(task)

    def nbytes(self) -> int:
        """Bytes of every task's tensor."""
        return sum(t.nbytes for t in self._tensors().values())


class TaskModule:
    """What a task-aware module (a layer, a normalization, the heads) does
    and says about itself, so that models, metrics and files never branch on
    its type or parse its state-dict keys.

    State-dict keys in the answers are relative to the module.
    """

    task_state: TaskState
    state_prefix: str = ""
    """The module's state-dict prefix in its model (set by the model)."""

    changes_backbone_with_tasks: bool = False
    """Whether learning a task changes what this module computes for the
    backbone alone (:meth:`TaskState.use_backbone`) beyond the task that
    trains the backbone: PackNet writes every task's weights into the shared
    weight. Statistics of the backbone's features need it ``False``."""

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Start learning ``task``, whose class labels are ``classes``."""
        raise NotImplementedError

    def freeze_task(self, task: str) -> None:
        """Finish ``task``: from now on its outputs never change."""
        raise NotImplementedError

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters that learning the current tasks trains, by group."""
        raise NotImplementedError

    def task_state_keys(self, task: str) -> list[str]:
        """The state-dict keys of what ``task`` holds here now (none if the
        module keeps nothing of its own for it)."""
        raise NotImplementedError

    def frozen_task_state_schema(self, task: str) -> dict[str, TensorSpec]:
        """The state-dict keys a frozen ``task`` holds here, with what each
        tensor must be, whether or not the module has the task: what a task
        file must give for it, in a fixed order."""
        raise NotImplementedError

    def code_layouts(self) -> dict[str, CodeLayout]:
        """The state-dict keys that hold packed codes now, with their
        layouts: what files store entropy-coded."""
        return {}

    def frozen_code_layouts(self, task: str) -> dict[str, CodeLayout]:
        """The keys of :meth:`frozen_task_state_schema` that hold packed
        codes, with their layouts."""
        return {}

    def offload_task(self, task: str) -> dict[str, Tensor]:
        """Remove from memory the parts of the frozen ``task`` that a task
        store holds instead, and return them by state-dict key; afterwards
        the module reads them through ``task_state.stored_parts``."""
        return {}

    def template_state_keys(self) -> list[str]:
        """State-dict keys that only seed new tasks: no learned task reads
        them, so they do not count in what the model stores."""
        return []

    def task_record_keys(self) -> list[str]:
        """State-dict keys of tensors every task shares that record what the
        tasks learned (PackNet's weight owners): they exist because of the
        tasks, so they count as the tasks' bytes, not the backbone's."""
        return []

    def plain_bytes(self, task: str) -> int:
        """Bytes of the plain layer this module stands for, as ``task`` alone
        would need it in a network of its own."""
        raise NotImplementedError

    def plain_module(self, task: str) -> nn.Module:
        """A plain torch module that computes what this module computes for
        the frozen ``task``, owning copies of its tensors (for deployment)."""
        raise NotImplementedError
