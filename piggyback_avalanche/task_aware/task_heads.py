"""Per-task classifier heads, in place of the backbone's classifier."""

import copy
from collections.abc import Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_module import TaskModule, TensorSpec, task_keys_below
from piggyback_avalanche.task_aware.task_state import TaskState, stacked_width
from piggyback_avalanche.task_aware.versioned_cache import VersionedCache

__all__ = ["ClassifierHead", "TaskHeads", "MASKED_LOGIT", "unmasked"]

MASKED_LOGIT = -1e4
"""The logit of a class that a task's head does not have, and of the columns
beyond its classes: finite, as Avalanche's ``MultiHeadClassifier`` masks its
inactive units, so that losses that weigh every column (Avalanche's
``MaskedCrossEntropy``, one-hot or label-smoothed cross-entropy) stay
finite; far below any trained logit, so it never wins an argmax and its
softmax probability is 0 in float32 (and in float16, where it is exact)."""


def unmasked(logits: Tensor) -> Tensor:
    """``logits`` with the masked columns (:data:`MASKED_LOGIT`, or ``-inf``
    from a stacked pass) at ``-inf``: what task-inference scores read, so
    that a column no task has weighs nothing."""
    return logits.masked_fill(~torch.isfinite(logits) | (logits == MASKED_LOGIT), float("-inf"))


class ClassifierHead(nn.Linear):
    """A task's classifier: one output per class label up to the largest one.

    Outputs of labels the task does not have are :data:`MASKED_LOGIT`, so
    they never win an argmax and get zero probability.

    :param in_features: feature size.
    :param classes: the class labels of the task.
    :param bias: whether the head has a bias.
    """

    inactive_units: Tensor
    masked_logit: Final[float] = MASKED_LOGIT  # a constant TorchScript can read (it reads no module global)
    # Python-side bookkeeping, not for scripted models; TorchScript reads this plain list.
    __jit_unused_properties__ = ["classes"]  # noqa: RUF012

    def __init__(
        self,
        in_features: int,
        *,
        classes: Sequence[int],
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        labels = sorted(int(c) for c in classes)
        super().__init__(in_features, labels[-1] + 1, bias=bias, device=device, dtype=dtype)
        inactive = torch.ones(labels[-1] + 1, dtype=torch.bool, device=device)
        inactive[labels] = False
        self.register_buffer("inactive_units", inactive)

    @property
    def classes(self) -> list[int]:
        """The class labels this head predicts."""
        return torch.nonzero(~self.inactive_units).flatten().tolist()

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias).masked_fill(self.inactive_units, self.masked_logit)


class TaskHeads(TaskModule, nn.Module):
    """One :class:`ClassifierHead` per task, in place of the backbone's
    classifier.

    :param classifier: the backbone's classifier, whose input size, bias and
        dtype the heads copy.
    :param task_state: the owning model's task state.
    """

    _placement: Tensor
    superposes = True  # the tasks' logits, weighed per task

    def __init__(self, classifier: nn.Linear, *, task_state: TaskState) -> None:
        super().__init__()
        self.task_state = task_state
        self.in_features = classifier.in_features
        self.has_bias = classifier.bias is not None
        self.heads = nn.ModuleDict()
        # Zero-size, not saved: follows the model across devices and dtypes
        # so that new heads are created where the model lives.
        self.register_buffer("_placement", classifier.weight.new_empty(0), persistent=False)
        self._stacked_heads = VersionedCache()

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Create the head of ``task`` for the given class labels."""
        self.heads[task] = ClassifierHead(
            self.in_features,
            classes=classes,
            bias=self.has_bias,
            device=self._placement.device,
            dtype=self._placement.dtype,
        )

    def head(self, task: str) -> ClassifierHead:
        """The head of ``task``.

        :raises KeyError: if there is none.
        """
        return self.heads[task]  # type: ignore[return-value]

    def freeze_task(self, task: str) -> None:
        """Stop training the head of ``task``."""
        self.heads[task].requires_grad_(False)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"task_parameters": [...]}``: the learning tasks' heads."""
        learning = self.task_state.learning & set(self.heads.keys())
        return {"task_parameters": [p for t in learning for p in self.heads[t].parameters()]}

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"heads.{task}.{k}" for k in self.heads[task].state_dict()] if task in self.heads else []

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        # One output per class label up to the largest: a size the task chooses.
        dtype = self._placement.dtype
        schema = {f"heads.{task}.weight": TensorSpec(dtype, ("classes", self.in_features))}
        if self.has_bias:
            schema[f"heads.{task}.bias"] = TensorSpec(dtype, ("classes",))
        schema[f"heads.{task}.inactive_units"] = TensorSpec(torch.bool, ("classes",))
        return schema

    def plain_bytes(self, task: str) -> int:
        head = self.head(task)
        return head.weight.nbytes + (head.bias.nbytes if head.bias is not None else 0)

    def plain_module(self, task: str) -> nn.Module:
        return copy.deepcopy(self.head(task)).requires_grad_(False)

    def forward(self, input: Tensor) -> Tensor:
        if self.task_state.stacked is not None:
            return self._stacked_forward(input, self.task_state.stacked)
        classes = self.task_state.untrained_classes
        if classes is not None:
            # An untrained head knows nothing: equal logits for its classes.
            logits = input.new_full((input.shape[0], max(classes) + 1), MASKED_LOGIT)
            logits[:, list(classes)] = 0.0
            return logits
        return self.heads[self.task_state.key()](input)

    def _stacked_heads_of(self, tasks: tuple[str, ...]) -> tuple[Tensor, Tensor | None, Tensor]:
        """The tasks' heads padded to the widest: weights ``(T, W, F)``,
        biases ``(T, W)`` and inactive units ``(T, W)`` (padding is inactive)."""
        heads = [self.head(task) for task in tasks]

        def compute() -> tuple[Tensor, Tensor | None, Tensor]:
            width = max(head.out_features for head in heads)
            weight = heads[0].weight.new_zeros(len(heads), width, self.in_features)
            bias = weight.new_zeros(len(heads), width) if self.has_bias else None
            inactive = torch.ones(len(heads), width, dtype=torch.bool, device=weight.device)
            for row, head in enumerate(heads):
                weight[row, : head.out_features] = head.weight
                inactive[row, : head.out_features] = head.inactive_units
                if bias is not None:
                    bias[row, : head.out_features] = head.bias
            return weight, bias, inactive

        key = tuple(VersionedCache.state_key(head) for head in heads)
        return self._stacked_heads.get_for_tasks(tasks, key, compute)

    def _stacked_forward(self, input: Tensor, tasks: tuple[str, ...]) -> Tensor:
        """Every stacked task's head at once, their logits side by side:
        ``(batch, T * W)`` for the widest head's ``W``, ``-inf`` where a task
        has no class (for task inference's scores alone)."""
        weight, bias, inactive = self._stacked_heads_of(tasks)
        if stacked_width(input.shape[-1], self.in_features, len(tasks), "TaskHeads"):
            logits = torch.einsum("bti,twi->btw", input.unflatten(-1, (len(tasks), self.in_features)), weight)
        else:
            logits = torch.einsum("bi,twi->btw", input, weight)
        if bias is not None:
            logits = logits + bias
        if self.task_state.superposition is not None:
            # A task without a class adds nothing to its logit; a class no
            # task has is no class of the superposed network.
            mixed = self.task_state.superpose(logits.masked_fill(inactive, 0.0).flatten(1), -1)
            return mixed.masked_fill(inactive.all(0), float("-inf"))
        return logits.masked_fill(inactive, float("-inf")).flatten(1)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        for task in task_keys_below(state_dict, prefix + "heads.") - set(self.heads.keys()):
            inactive = state_dict[f"{prefix}heads.{task}.inactive_units"]
            self.add_task(task, classes=torch.nonzero(~inactive).flatten().tolist())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
