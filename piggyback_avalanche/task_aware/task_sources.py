"""Where a task-aware strategy's tasks come from: the stream's task labels
(:class:`TasksFromLabels`), or, without task labels at test time, the
experiences themselves while training and :class:`TaskInference` while
evaluating (:class:`TasksByInference`). The strategy asks its source and
never branches on which one it has."""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from piggyback_avalanche.task_aware.experiences import (
    experience_classes,
    experience_task_classes,
    experience_task_labels,
    origin_experience_index,
)
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.task_inference import TaskInference

__all__ = ["TaskSource", "TasksFromLabels", "TasksByInference"]

Batch = tuple[Tensor, Tensor, Tensor]
"""Inputs, class labels and task labels of a mini-batch, as Avalanche's loaders give them."""


def _whole(experience: Any) -> Any:
    """The experience an online sub-experience was cut from (or itself)."""
    return getattr(experience, "origin_experience", None) or experience


class TaskSource(ABC):
    """Which tasks an experience trains, which task each sample is computed
    under, and what is refused before training."""

    infers_tasks: bool
    """Whether evaluation infers each sample's task (no task labels read)."""

    @abstractmethod
    def experience_tasks(self, experience: Any) -> dict[int, list[int]]:
        """The tasks that training ``experience`` learns, with their classes."""

    @abstractmethod
    def refuse_before_training(self, experience: Any, model: TaskAwareModel, strategy_name: str) -> None:
        """Raise, naming the problem and the fix, if ``experience`` cannot
        train ``model``'s tasks (a frozen task again, shared task labels)."""

    @abstractmethod
    def sample_tasks(self, experience: Any, task_labels: Tensor) -> Tensor:
        """The task each training sample of ``experience`` is computed under
        (``task_labels``: the stream's, one per sample)."""

    @abstractmethod
    def training_logits(self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any) -> Tensor:
        """A training mini-batch's logits (``task_labels``: the stream's)."""

    @abstractmethod
    def evaluation_logits(
        self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any, *, width: int
    ) -> tuple[Tensor, Tensor | None]:
        """An evaluation mini-batch's logits, ``width`` wide where tasks are
        inferred, and each sample's inferred task (``None`` when not inferred)."""

    def tasks_to_adapt(self, experience: Any) -> dict[int, list[int]] | None:
        """The tasks (with their classes) the model adapts to for
        ``experience`` when the stream's task labels are not read; ``None``:
        Avalanche's adaptation, from the stream's."""
        return None

    def statistics_batches(self, batches: Iterable[Batch], task: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The ``(inputs, labels)`` of ``task`` in a pass over the training
        data, for its feature statistics."""
        for x, y, t in batches:
            yield x[t == task], y[t == task]

    def norm_batches(self, batches: Iterable[Batch], experience: Any) -> Iterator[tuple[Tensor, Tensor]]:
        """``(inputs, tasks)`` of a pass over the training data, for
        re-estimating batch-norm statistics."""
        for x, _, t in batches:
            yield x, self.sample_tasks(experience, t)


class TasksFromLabels(TaskSource):
    """Task labels given by the stream, at training and test time; each
    experience trains the tasks its labels name, once."""

    infers_tasks = False

    def experience_tasks(self, experience: Any) -> dict[int, list[int]]:
        return experience_task_classes(_whole(experience))

    def refuse_before_training(self, experience: Any, model: TaskAwareModel, strategy_name: str) -> None:
        _refuse_shared_task_labels(strategy_name, experience)
        frozen = sorted(set(self.experience_tasks(experience)) & set(model.frozen_tasks))
        if frozen:
            raise ValueError(
                f"Task(s) {frozen} of experience {experience.current_experience} were already learned and are "
                "frozen; a learned task is never changed. Give this experience a new task label."
            )

    def sample_tasks(self, experience: Any, task_labels: Tensor) -> Tensor:
        return task_labels

    def training_logits(self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any) -> Tensor:
        return model(x, task_labels)

    def evaluation_logits(
        self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any, *, width: int
    ) -> tuple[Tensor, Tensor | None]:
        return model(x, task_labels), None


class TasksByInference(TaskSource):
    """No task labels read: training experience ``k`` (of its stream) learns
    task ``k`` over all its classes, and evaluation infers each sample's
    task with ``inference``.

    :param inference: how tasks are inferred.
    """

    infers_tasks = True

    def __init__(self, inference: TaskInference) -> None:
        self.inference = inference

    def experience_tasks(self, experience: Any) -> dict[int, list[int]]:
        return {origin_experience_index(experience): experience_classes(_whole(experience))}

    def refuse_before_training(self, experience: Any, model: TaskAwareModel, strategy_name: str) -> None:
        frozen = sorted(set(self.experience_tasks(experience)) & set(model.frozen_tasks))
        if frozen:
            raise ValueError(
                f"Experience {origin_experience_index(experience)} was learned already: with task inference, "
                f"training experience k learns task k, and task(s) {frozen} are frozen. Train each "
                "experience of a stream once, or start a new model for another stream."
            )

    def sample_tasks(self, experience: Any, task_labels: Tensor) -> Tensor:
        return torch.full_like(task_labels, origin_experience_index(experience))

    def training_logits(self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any) -> Tensor:
        return model(x, origin_experience_index(experience))

    def evaluation_logits(
        self, model: TaskAwareModel, x: Tensor, task_labels: Tensor, experience: Any, *, width: int
    ) -> tuple[Tensor, Tensor | None]:
        if not model.tasks:  # nothing learned yet: the model as it stands before its first task
            return model(x, origin_experience_index(experience)), None
        inferred = self.inference(model, x, width=width)
        return inferred.logits, inferred.tasks

    def tasks_to_adapt(self, experience: Any) -> dict[int, list[int]] | None:
        # The stream's task labels (if any) are never read.
        return self.experience_tasks(experience)

    def statistics_batches(self, batches: Iterable[Batch], task: int) -> Iterator[tuple[Tensor, Tensor]]:
        # The experience is the task: every sample is its.
        for x, y, _ in batches:
            yield x, y


def _refuse_shared_task_labels(strategy_name: str, experience: Any) -> None:
    """Refuse a stream whose experiences share task labels (a
    class-incremental stream) before its first experience trains: a task is
    learned once, in one experience."""
    # An online stream's sub-experiences share their experience's task: its
    # experience is the one compared with the others of its stream.
    experience = _whole(experience)
    stream = getattr(experience, "origin_stream", None)
    if stream is None:
        return
    labels = set(experience_task_labels(experience))
    sharing = [
        other.current_experience
        for other in stream
        if other.current_experience != experience.current_experience and labels & set(experience_task_labels(other))
    ]
    if sharing:
        raise ValueError(
            f"Experience {experience.current_experience} shares task label(s) {sorted(labels)} with "
            f"experience(s) {sharing} of its stream: a class-incremental stream (such as "
            "nc_benchmark(..., task_labels=False), or SplitMNIST without return_task_id=True). "
            f"{strategy_name} learns each task once, in one experience, and needs one task label per "
            "experience: use nc_benchmark(..., task_labels=True), return_task_id=True, or "
            "avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(bm)."
        )
