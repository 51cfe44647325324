"""Offline task-incremental streams built from data that installed packages
ship, so that everything runs on a machine without internet access."""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
from avalanche.benchmarks.scenarios import CLScenario
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

__all__ = ["DIGITS_TRANSFORMS", "digits_task_stream", "tensor_task_stream"]


def _permute_pixels(images: Tensor, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images[0].numel(), generator=generator)
    return images.flatten(1)[:, order].view_as(images)


DIGITS_TRANSFORMS: Dict[str, Callable[[Tensor], Tensor]] = {
    "original": lambda x: x,
    "rotated90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "flipped": lambda x: torch.flip(x, dims=(-1,)),
    "inverted": lambda x: 1.0 - x,
    "transposed": lambda x: x.transpose(-2, -1),
    "permuted": _permute_pixels,
}
"""Input transformations that make a new task from scikit-learn's digits."""


def tensor_task_stream(
    tasks: Sequence[Tuple[Tensor, Tensor, Tensor, Tensor]],
) -> CLScenario:
    """A task-incremental benchmark with one experience per task, task label
    ``i`` for the ``i``-th task.

    :param tasks: ``(train_x, train_y, test_x, test_y)`` per task.
    :return: a benchmark with ``train_stream`` and ``test_stream``; each
        experience has ``task_label``, ``task_labels`` and
        ``classes_in_this_experience``.
    """
    train, test = [], []
    for task, (train_x, train_y, test_x, test_y) in enumerate(tasks):
        train.append(_make_taskaware_tensor_classification_dataset(train_x, train_y, task_labels=task))
        test.append(_make_taskaware_tensor_classification_dataset(test_x, test_y, task_labels=task))
    benchmark = with_classes_timeline(
        with_task_labels(benchmark_from_datasets(train=train, test=test))
    )
    # Avalanche's MultiHeadClassifier indexes with this attribute, which
    # fails on the set that with_classes_timeline gives.
    for stream in benchmark.streams.values():
        for experience in stream:
            experience.classes_in_this_experience = sorted(experience.classes_in_this_experience)
    return benchmark


def digits_task_stream(
    transforms: Sequence[str] = ("original", "rotated90", "inverted", "flipped", "transposed"),
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> CLScenario:
    """Tasks made from scikit-learn's bundled 8x8 digits (1,797 images), one
    input transformation per task, 10 classes each.

    The train/test split is the same for every task, and stratified by class.

    :param transforms: names from :data:`DIGITS_TRANSFORMS`, one per task.
    :param test_fraction: share of images held out for testing.
    :param seed: seed of the split.
    :return: a task-incremental benchmark with 1x8x8 inputs in [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    unknown = [t for t in transforms if t not in DIGITS_TRANSFORMS]
    if unknown or not transforms:
        raise ValueError(
            f"Unknown digits transform(s) {unknown or list(transforms)}; choose from "
            f"{sorted(DIGITS_TRANSFORMS)}."
        )
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    tasks: List[Tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for name in transforms:
        x = DIGITS_TRANSFORMS[name](images)
        tasks.append((x[train_idx], labels[train_idx], x[test_idx], labels[test_idx]))
    return tensor_task_stream(tasks)
