"""Per-task copies of a transformer's embeddings (class token, positional
embedding), as parametrizations: the module that holds the parameter reads
it as always, and gets the current task's copy.

A task-aware model shares these embeddings frozen by default
(:data:`~piggyback_avalanche.task_aware.backbone_conversion.SHARED_EMBEDDINGS`);
``task_embeddings=True`` gives each task its own, learned with its head.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from piggyback_avalanche.task_aware.task_module import TaskModule, TaskTensorDict, TensorSpec, add_loaded_tasks
from piggyback_avalanche.task_aware.task_state import TaskState

__all__ = ["TaskEmbedding", "FixedEmbedding", "give_tasks_their_own"]


class FixedEmbedding(nn.Module):
    """The parametrization that one exported task keeps: its embedding."""

    embedding: Tensor

    def __init__(self, embedding: Tensor) -> None:
        super().__init__()
        self.register_buffer("embedding", embedding)

    def forward(self, original: Tensor) -> Tensor:
        return self.embedding


class TaskEmbedding(TaskModule, nn.Module):
    """A parametrization that hands each task its own copy of an embedding
    parameter, starting from the backbone's (``original``, shared and
    frozen, read by tasks the model has not learned).

    :param original: the backbone's embedding parameter.
    :param task_state: the owning model's task state.
    """

    def __init__(self, original: Tensor, *, task_state: TaskState) -> None:
        super().__init__()
        self.task_state = task_state
        self.shape = tuple(original.shape)
        self.learning = TaskTensorDict(trainable=True, holds="learning", shape=self.shape)
        self.frozen = TaskTensorDict(trainable=False, holds="frozen", shape=self.shape)
        self._see(original)

    def _see(self, original: Tensor) -> None:
        # Kept outside nn.Module's registry: the owner's parametrization
        # holds and saves it; this only reads it to seed new tasks.
        self.__dict__["_original"] = original

    def _stores(self) -> dict[str, TaskTensorDict]:
        return {"learning": self.learning, "frozen": self.frozen}

    _original: Tensor

    def forward(self, original: Tensor) -> Tensor:
        self._see(original)
        task = self.task_state.current
        if task is None or self.task_state.untrained:
            return original
        for store in self._stores().values():
            if task in store:
                return store[task]
        raise KeyError(f"TaskEmbedding has no embedding for task {task!r}.")

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        self.learning.add(task, self._original.detach().clone())

    def freeze_task(self, task: str) -> None:
        self.frozen.add(task, self.learning.pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"task_parameters": [...]}``: trained with the task's head and norms."""
        return {"task_parameters": [self.learning[t] for t in self.learning.keys()]}  # type: ignore[misc]

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"{name}.{task}" for name, store in self._stores().items() if task in store]

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        return {f"frozen.{task}": TensorSpec(self._original.dtype, self.shape)}

    def plain_bytes(self, task: str) -> int:
        return self._original.nbytes

    def plain_module(self, task: str) -> nn.Module:
        with torch.no_grad(), self.task_state.use(task):
            return FixedEmbedding(self(self._original).detach().clone())

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        def empty(store: TaskTensorDict, incoming: Tensor) -> Tensor:
            return torch.empty(self.shape, dtype=self._original.dtype, device=self._original.device)

        add_loaded_tasks(self._stores(), state_dict, prefix, self.task_state, empty)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def give_tasks_their_own(backbone: nn.Module, names: "frozenset[str]", *, task_state: TaskState) -> int:
    """Parametrize every parameter of ``backbone`` named in ``names`` with a
    :class:`TaskEmbedding`.

    :return: how many were parametrized.
    """
    found = [
        (module, name)
        for module in backbone.modules()
        for name, parameter in module._parameters.items()
        if name in names and parameter is not None
    ]
    for module, name in found:
        embedding = TaskEmbedding(getattr(module, name), task_state=task_state)
        parametrize.register_parametrization(module, name, embedding, unsafe=True)
    return len(found)
