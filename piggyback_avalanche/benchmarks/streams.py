"""Task-incremental streams from datasets or tensors, with class lists that
every Avalanche model can index with."""

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
from avalanche.benchmarks.scenarios import CLScenario
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

__all__ = ["task_stream", "classes_as_lists", "tensor_task_stream"]


def task_stream(train: Sequence[Any], test: Sequence[Any]) -> CLScenario:
    """A task-incremental benchmark with one experience per task, task label
    ``i`` for the ``i``-th pair of datasets.

    :param train: the tasks' training sets (Avalanche classification datasets
        with task labels).
    :param test: the tasks' test sets, in the same order.
    :return: a benchmark with ``train_stream`` and ``test_stream``; each
        experience has ``task_label``, ``task_labels`` and
        ``classes_in_this_experience``.
    """
    benchmark = with_classes_timeline(with_task_labels(benchmark_from_datasets(train=train, test=test)))
    return classes_as_lists(benchmark)


def classes_as_lists(benchmark: Any) -> Any:
    """Turn every experience's ``classes_in_this_experience`` into a sorted
    list, in place: Avalanche's ``MultiHeadClassifier`` indexes with it,
    which fails on the set that its new benchmark API gives.

    :return: ``benchmark``.
    """
    for stream in benchmark.streams.values():
        for experience in stream:
            experience.classes_in_this_experience = sorted(experience.classes_in_this_experience)
    return benchmark


def tensor_task_stream(
    tasks: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
) -> CLScenario:
    """:func:`task_stream` from tensors.

    :param tasks: ``(train_x, train_y, test_x, test_y)`` per task.
    """
    train, test = [], []
    for task, (train_x, train_y, test_x, test_y) in enumerate(tasks):
        if not len(train_y) or not len(test_y):
            raise ValueError(
                f"Task {task} has {len(train_y)} training and {len(test_y)} test samples; every task needs both."
            )
        train.append(_make_taskaware_tensor_classification_dataset(train_x, train_y, task_labels=task))
        test.append(_make_taskaware_tensor_classification_dataset(test_x, test_y, task_labels=task))
    return task_stream(train, test)
