"""What a task-aware module (a layer, a normalization, the heads) is: the
interface every one implements (:class:`TaskModule`, which models, metrics
and files ask instead of branching on types or parsing keys), its per-task
tensor stores (:class:`TaskTensorDict`) and what each frozen tensor must be
(:class:`TensorSpec`)."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.task_state import TaskState

__all__ = [
    "TaskModule",
    "TaskTensorDict",
    "TensorSpec",
    "TaskRole",
    "task_keys_below",
    "add_loaded_tasks",
]


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


class TaskModule(ABC):
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

    superposes: bool = False
    """Whether the module computes a superposition of tasks
    (:meth:`TaskState.use_superposed`), or takes no part in the forward
    pass: what SupSup's one-shot task inference needs of every module."""

    @abstractmethod
    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Start learning ``task``, whose class labels are ``classes``."""
        raise NotImplementedError

    @abstractmethod
    def freeze_task(self, task: str) -> None:
        """Finish ``task``: from now on its outputs never change."""
        raise NotImplementedError

    @abstractmethod
    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters that learning the current tasks trains, by group."""
        raise NotImplementedError

    @abstractmethod
    def task_tensor_keys(self, task: str) -> list[str]:
        """The state-dict keys of what ``task`` holds here now (none if the
        module keeps nothing of its own for it)."""
        raise NotImplementedError

    @abstractmethod
    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        """The state-dict keys a frozen ``task`` holds here, with what each
        tensor must be, whether or not the module has the task: what a task
        file must give for it, in a fixed order."""
        raise NotImplementedError

    def code_layouts(self) -> dict[str, CodeLayout]:
        """The state-dict keys that hold packed codes now, with their
        layouts: what files store entropy-coded."""
        return {}

    def frozen_code_layouts(self, task: str) -> dict[str, CodeLayout]:
        """The keys of :meth:`frozen_task_tensor_schema` that hold packed
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

    @abstractmethod
    def plain_bytes(self, task: str) -> int:
        """Bytes of the plain layer this module stands for, as ``task`` alone
        would need it in a network of its own."""
        raise NotImplementedError

    @abstractmethod
    def plain_module(self, task: str) -> nn.Module:
        """A plain torch module that computes what this module computes for
        the frozen ``task``, owning copies of its tensors (for deployment)."""
        raise NotImplementedError
