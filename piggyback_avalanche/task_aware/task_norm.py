"""Per-task normalization: each task its own copy of the backbone's
normalization layer (or one frozen layer shared by all)."""

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_module import TaskModule, TensorSpec, task_keys_below
from piggyback_avalanche.task_aware.task_state import StackingUnsupportedError, TaskState, stacked_width

__all__ = ["TaskNorm", "NORM_LAYER_TYPES"]

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)
"""Normalization layer types that get per-task parameters."""


class TaskNorm(TaskModule, nn.Module):
    """A normalization layer with its own parameters and statistics per task.

    Each task's copy starts from the backbone's layer (``base``). A copy
    trains, and updates its running statistics, only while its task is being
    learned; a frozen task's copy always runs in eval mode.

    With ``per_task=False`` every task shares ``base``, which trains only with
    the task that trains the backbone (``task_state.backbone_task``) and is
    frozen otherwise: the fixed-batch-norm ablation of Piggyback and the
    "nobn" setting of PackNet.

    :param norm: the backbone's normalization layer.
    :param task_state: the owning model's task state.
    :param per_task: whether each task gets its own copy.
    """

    superposes = True  # its stacked output, weighed per task

    def __init__(self, norm: nn.Module, *, task_state: TaskState, per_task: bool = True) -> None:
        super().__init__()
        self.task_state = task_state
        self.per_task = per_task
        self.base = norm.requires_grad_(False).eval()
        self.tasks = nn.ModuleDict()

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Give ``task`` its own copy of the base layer, or let it train the
        shared one if it trains the backbone."""
        if self.per_task:
            self.tasks[task] = copy.deepcopy(self.base).requires_grad_(True)
        elif task == self.task_state.backbone_task:
            self.base.requires_grad_(True)

    def freeze_task(self, task: str) -> None:
        """Stop training ``task``'s layer. If the task trained the backbone,
        its copy becomes the template of later tasks."""
        if not self.per_task:
            self.base.requires_grad_(False)
            return
        self.tasks[task].requires_grad_(False)
        if task == self.task_state.backbone_task:
            self.base.load_state_dict(self.tasks[task].state_dict())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"task_parameters": [...], "backbone": [...]}``: the learning
        tasks' copies, and the shared layer while it trains."""
        learning = self.task_state.learning & set(self.tasks.keys())
        return {
            "task_parameters": [p for t in learning for p in self.tasks[t].parameters()],
            "backbone": [p for p in self.base.parameters() if p.requires_grad],
        }

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"tasks.{task}.{k}" for k in self.tasks[task].state_dict()] if task in self.tasks else []

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        if not self.per_task:
            return {}
        return {
            f"tasks.{task}.{k}": TensorSpec(v.dtype, tuple(v.shape), non_negative=k == "running_var")
            for k, v in self.base.state_dict().items()
        }

    def template_state_keys(self) -> list[str]:
        return [f"base.{k}" for k in self.base.state_dict()] if self.per_task else []

    def plain_bytes(self, task: str) -> int:
        return sum(t.nbytes for t in self.base.state_dict().values())

    def plain_module(self, task: str) -> nn.Module:
        return copy.deepcopy(self.norm_for(task)).requires_grad_(False).eval()

    def norm_for(self, task: str) -> nn.Module:
        """The layer that ``task`` uses."""
        return self.tasks[task] if self.per_task else self.base

    def learning_norms(self) -> list[nn.Module]:
        """The layers that train now: the learning tasks' copies, or the
        shared one while the task that trains the backbone learns."""
        if self.per_task:
            return [self.tasks[t] for t in sorted(self.task_state.learning & set(self.tasks.keys()))]
        return [self.base] if self.task_state.backbone_task in self.task_state.learning else []

    def forward(self, input: Tensor) -> Tensor:
        if self.task_state.stacked is not None:
            stacked = self._stacked_forward(input, self.task_state.stacked)
            return self.task_state.superpose(stacked, -1 if isinstance(self.base, nn.LayerNorm) else 1)
        task = self.task_state.key()
        if self.task_state.untrained:
            return self.base.eval()(input)
        norm = self.norm_for(task)
        if self.per_task:
            learning = self.training and task in self.task_state.learning
        else:
            learning = self.training and task == self.task_state.backbone_task
        if norm.training != learning:
            norm.train(learning)
        return norm(input)

    def _stacked_forward(self, input: Tensor, tasks: tuple[str, ...]) -> Tensor:
        """Every stacked task's layer at once, in eval mode (see
        :meth:`TaskState.use_stacked`)."""
        norms = [self.norm_for(task) for task in tasks]
        base = self.base

        def cat(name: str) -> Tensor | None:
            tensors = [getattr(norm, name) for norm in norms]
            return None if tensors[0] is None else torch.cat(tensors)

        if isinstance(base, nn.modules.batchnorm._BatchNorm):
            if stacked_width(input.shape[1], base.num_features, len(tasks), type(base).__name__) is False:
                input = input.repeat(1, len(tasks), *[1] * (input.dim() - 2))
            batch_statistics = base.running_mean is None
            return F.batch_norm(
                input,
                cat("running_mean"),
                cat("running_var"),
                cat("weight"),
                cat("bias"),
                batch_statistics,
                0.0,
                base.eps,
            )
        if isinstance(base, nn.GroupNorm):
            if stacked_width(input.shape[1], base.num_channels, len(tasks), "GroupNorm") is False:
                input = input.repeat(1, len(tasks), *[1] * (input.dim() - 2))
            return F.group_norm(input, base.num_groups * len(tasks), cat("weight"), cat("bias"), base.eps)
        if isinstance(base, nn.LayerNorm) and len(base.normalized_shape) == 1:
            features = base.normalized_shape[0]
            if stacked_width(input.shape[-1], features, len(tasks), "LayerNorm") is False:
                input = input.repeat(*[1] * (input.dim() - 1), len(tasks))
            per_task = F.layer_norm(input.unflatten(-1, (len(tasks), features)), (features,), eps=base.eps)
            weight, bias = cat("weight"), cat("bias")
            if weight is not None:
                per_task = per_task * weight.view(len(tasks), features)
            if bias is not None:
                per_task = per_task + bias.view(len(tasks), features)
            return per_task.flatten(-2)
        raise StackingUnsupportedError(
            f"{type(base).__name__} cannot compute stacked tasks on a {tuple(input.shape)} input."
        )

    def train(self, mode: bool = True) -> "TaskNorm":
        # The layers' modes are set per forward pass.
        self.training = mode
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        for task in task_keys_below(state_dict, prefix + "tasks.") - set(self.tasks.keys()):
            self.tasks[task] = copy.deepcopy(self.base)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
