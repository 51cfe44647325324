"""Learned prompt tokens per task, appended to a transformer's token sequence."""

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_module import TaskModule, TaskTensorDict, TensorSpec, add_loaded_tasks
from piggyback_avalanche.task_aware.task_state import StackingUnsupportedError, TaskState

__all__ = ["TaskPrompts", "AppendedPrompts"]


class AppendedPrompts(nn.Module):
    """A module followed by fixed prompt tokens appended to its output
    sequence: one task's :class:`TaskPrompts`, for deployment.

    :param module: the module whose output gets the prompts.
    :param prompts: ``(length, width)`` tokens.
    """

    prompts: Tensor

    def __init__(self, module: nn.Module, prompts: Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("prompts", prompts)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = self.module(tokens)
        return torch.cat([tokens, self.prompts.expand(tokens.shape[0], -1, -1)], dim=1)


class TaskPrompts(TaskModule, nn.Module):
    """Prompt tuning per task (VPT-shallow, Jia et al., ECCV 2022): each task
    learns ``length`` tokens that join the token sequence where ``module``
    leaves it (after the positional embedding, before the first encoder
    block), so every block attends to them; the head reads the class token,
    which keeps its place at the start of the sequence. A task not learned
    yet (evaluated before training) runs without prompts.

    :param module: the backbone's module whose output ``(batch, tokens,
        width)`` gets the prompts (torchvision's ``encoder.dropout``, timm's
        ``pos_drop``); kept as it is.
    :param width: the tokens' width.
    :param length: prompt tokens per task.
    :param task_state: the owning model's task state.
    """

    def __init__(self, module: nn.Module, *, width: int, length: int, task_state: TaskState) -> None:
        super().__init__()
        self.module = module
        self.task_state = task_state
        self.length = length
        self.width = width
        shape = (length, width)
        self.learning_prompts = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.frozen_prompts = TaskTensorDict(trainable=False, holds="frozen", shape=shape)

    def _stores(self) -> dict[str, TaskTensorDict]:
        return {"learning_prompts": self.learning_prompts, "frozen_prompts": self.frozen_prompts}

    def _tensor_options(self) -> dict[str, Any]:
        """The dtype and device of the module's tensors, which prompts follow."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            return {"dtype": tensor.dtype, "device": tensor.device}
        return {"dtype": torch.get_default_dtype()}

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """New prompts, drawn as VPT draws them (uniform, Xavier's bound)."""
        bound = (6.0 / (self.length + self.width)) ** 0.5
        prompts = torch.empty(self.length, self.width, **self._tensor_options()).uniform_(-bound, bound)
        self.learning_prompts.add(task, prompts)

    def freeze_task(self, task: str) -> None:
        self.frozen_prompts.add(task, self.learning_prompts.pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"prompts": [...]}``: the learning tasks' prompts."""
        return {"prompts": [self.learning_prompts[t] for t in self.learning_prompts.keys()]}  # type: ignore[misc]

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"{name}.{task}" for name, store in self._stores().items() if task in store]

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        return {f"frozen_prompts.{task}": TensorSpec(self._tensor_options()["dtype"], (self.length, self.width))}

    def plain_bytes(self, task: str) -> int:
        return sum(t.nbytes for t in self.module.state_dict().values())

    def plain_module(self, task: str) -> nn.Module:
        return AppendedPrompts(copy.deepcopy(self.module), self._prompts(task).detach().clone())

    def _prompts(self, task: str) -> Tensor:
        for store in self._stores().values():
            if task in store:
                return store[task]
        raise KeyError(f"TaskPrompts has no prompts for task {task!r}.")

    def forward(self, tokens: Tensor) -> Tensor:
        if self.task_state.stacked is not None:
            raise StackingUnsupportedError("prompt tokens differ in number from the backbone's sequence per task.")
        tokens = self.module(tokens)
        if self.task_state.untrained:
            return tokens
        prompts = self._prompts(self.task_state.key())
        return torch.cat([tokens, prompts.expand(tokens.shape[0], -1, -1)], dim=1)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        def empty(store: TaskTensorDict, incoming: Tensor) -> Tensor:
            return torch.empty(self.length, self.width, **self._tensor_options())

        add_loaded_tasks(self._stores(), state_dict, prefix, self.task_state, empty)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
