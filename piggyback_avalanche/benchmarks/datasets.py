"""Streams of datasets that live on disk, downloaded on first use: Avalanche's
classic benchmarks as task-incremental streams, and the fine-grained task
sequence of the Piggyback paper.

Nothing here is needed offline; without internet access and without a local
copy every builder raises :class:`DatasetUnavailableError`, which says where to
put the data.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

from piggyback_avalanche.benchmarks.streams import classes_as_lists, task_stream

__all__ = [
    "DatasetUnavailableError",
    "CLASSIC_STREAMS",
    "classic_task_stream",
    "FineGrainedDataset",
    "FINE_GRAINED_DATASETS",
    "FINE_GRAINED_TASKS",
    "imagenet_transforms",
    "fine_grained_stream",
]

DataRoot = str | Path | None


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable from here."""


def _unavailable(name: str, data_root: DataRoot, error: BaseException, manual: str = "") -> DatasetUnavailableError:
    where = f"under {data_root}" if data_root is not None else "in Avalanche's default data folder (~/.avalanche/data)"
    return DatasetUnavailableError(
        f"Could not load the {name} dataset {where}, and could not download it "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
        "Without internet access, download it on a machine that has it (a first run "
        "with --data-root DIR there does it), copy DIR here and pass --data-root DIR"
        + (f"; {manual}" if manual else ".")
    )


def _classic(builder_name: str, n_experiences: int, **kwargs: Any) -> Callable[[DataRoot, int], Any]:
    def build(data_root: DataRoot, seed: int) -> Any:
        from avalanche.benchmarks import classic

        return getattr(classic, builder_name)(
            n_experiences=n_experiences, return_task_id=True, seed=seed, dataset_root=data_root, **kwargs
        )

    return build


CLASSIC_STREAMS: dict[str, Callable[[DataRoot, int], Any]] = {
    "split_mnist": _classic("SplitMNIST", 5, class_ids_from_zero_in_each_exp=True),
    "permuted_mnist": _classic("PermutedMNIST", 5),
    "split_cifar100": _classic("SplitCIFAR100", 10, class_ids_from_zero_in_each_exp=True),
    "split_cub200": _classic("SplitCUB200", 10, classes_first_batch=None, class_ids_from_zero_in_each_exp=True),
    "split_tiny_imagenet": _classic("SplitTinyImageNet", 10, class_ids_from_zero_in_each_exp=True),
}
"""Avalanche's classic benchmarks as task-incremental streams (task label =
experience, class ids from 0 in each): ``builder(data_root, seed)``."""


def classic_task_stream(name: str, *, data_root: DataRoot = None, seed: int = 0) -> Any:
    """One of Avalanche's classic benchmarks, task-incremental.

    :param name: a key of :data:`CLASSIC_STREAMS`.
    :param data_root: the folder holding (or to download) the dataset;
        ``None`` is Avalanche's default.
    :param seed: the seed of the class order (or permutations).
    :raises ValueError: for an unknown name.
    :raises DatasetUnavailableError: if the data is missing and cannot be
        downloaded.
    """
    if name not in CLASSIC_STREAMS:
        raise ValueError(f"Unknown classic stream {name!r}; choose from {sorted(CLASSIC_STREAMS)}.")
    try:
        benchmark = CLASSIC_STREAMS[name](data_root, seed)
    except (OSError, RuntimeError) as error:
        raise _unavailable(name, data_root, error) from error
    return classes_as_lists(benchmark)


FineGrainedDataset = Callable[[Path, bool], Dataset]
"""``loader(root, train) -> dataset`` of ``(PIL image, label)`` pairs."""


def _cub200(root: Path, train: bool) -> Dataset:
    from avalanche.benchmarks.datasets import CUB200

    return CUB200(root / "cub200", train=train, download=True)


def _torchvision(class_name: str, train_split: str, test_split: str, **kwargs: Any) -> FineGrainedDataset:
    def load(root: Path, train: bool) -> Dataset:
        import torchvision

        dataset_class = getattr(torchvision.datasets, class_name)
        return dataset_class(str(root), split=train_split if train else test_split, **kwargs)

    return load


FINE_GRAINED_DATASETS: dict[str, FineGrainedDataset] = {
    "cub200": _cub200,
    # torchvision cannot download Stanford Cars any more: place it by hand.
    "stanford_cars": _torchvision("StanfordCars", "train", "test", download=False),
    "flowers102": _torchvision("Flowers102", "train", "test", download=True),
    "fgvc_aircraft": _torchvision("FGVCAircraft", "trainval", "test", download=True),
    "dtd": _torchvision("DTD", "train", "test", download=True),
    "food101": _torchvision("Food101", "train", "test", download=True),
}
"""The fine-grained datasets available, by name."""

FINE_GRAINED_TASKS = ("cub200", "stanford_cars", "flowers102", "fgvc_aircraft", "dtd")
"""The paper's sequence (CUBS, Stanford Cars, Flowers, WikiArt, Sketch), with
FGVC-Aircraft and DTD from torchvision in place of WikiArt and Sketch."""

_MANUAL = {
    "stanford_cars": "torchvision no longer downloads Stanford Cars: get it from Kaggle and place it as "
    "DIR/stanford_cars (see torchvision.datasets.StanfordCars)",
}

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_transforms(crop_size: int = 224) -> dict[str, Any]:
    """The paper's preprocessing for ImageNet-pretrained backbones: random
    resized crops and flips for training; resize to 8/7 of the crop and a
    centre crop for evaluation; ImageNet normalization.

    :return: Avalanche transform groups ``{"train": ..., "eval": ...}``.
    """
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    return {
        "train": T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), *normalize]),
        "eval": T.Compose([T.Resize(crop_size * 8 // 7), T.CenterCrop(crop_size), *normalize]),
    }


def _targets(dataset: Any) -> Sequence[int]:
    """Labels of a torchvision-style dataset without decoding its images
    where the dataset keeps them in a list."""
    for attribute in ("targets", "_labels"):
        if hasattr(dataset, attribute):
            return [int(t) for t in getattr(dataset, attribute)]
    if hasattr(dataset, "_samples"):
        return [int(label) for _, label in dataset._samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def fine_grained_stream(
    tasks: Sequence[str] = FINE_GRAINED_TASKS,
    *,
    data_root: str | Path,
    crop_size: int = 224,
    datasets: dict[str, FineGrainedDataset] | None = None,
) -> Any:
    """The paper's protocol: one task per fine-grained dataset, with its own
    label space and task label, in ``tasks`` order.

    :param tasks: names from ``datasets``.
    :param data_root: the folder holding (or to download) the datasets.
    :param crop_size: the side of the crops (224 in the paper).
    :param datasets: the loaders by name; :data:`FINE_GRAINED_DATASETS` by
        default.
    :raises ValueError: for an unknown task name.
    :raises DatasetUnavailableError: if a dataset is missing and cannot be
        downloaded.
    """
    datasets = FINE_GRAINED_DATASETS if datasets is None else datasets
    unknown = [t for t in tasks if t not in datasets]
    if unknown or not tasks:
        raise ValueError(f"Unknown fine-grained task(s) {unknown or list(tasks)}; choose from {sorted(datasets)}.")
    groups = {name: (transform, None) for name, transform in imagenet_transforms(crop_size).items()}
    splits: dict[bool, list] = {True: [], False: []}
    for task, name in enumerate(tasks):
        for train in (True, False):
            try:
                dataset = datasets[name](Path(data_root), train)
            except (OSError, RuntimeError) as error:
                raise _unavailable(name, data_root, error, _MANUAL.get(name, "")) from error
            splits[train].append(
                _make_taskaware_classification_dataset(
                    dataset,
                    task_labels=task,
                    targets=_targets(dataset),
                    transform_groups=groups,
                    initial_transform_group="train" if train else "eval",
                )
            )
    return task_stream(splits[True], splits[False])
