"""Per-task statistics of features: the basis of task-inference scores
that tell a task's own data from the others' better than its logits do.

A model keeps one set for the features each task's head reads under the
task's own weights, and, where its backbone stays fixed, one for the
features of the backbone alone, which every task shares (see
:meth:`~piggyback_avalanche.task_aware.models.MultiHeadModel.fit_feature_statistics`).
Each task keeps the mean feature of each of its classes and the precision
(inverse) of their pooled within-class covariance, estimated once it is
frozen from its training data. The Mahalanobis score of a sample under a
task is minus its squared distance to the nearest class mean of that task
(Lee et al., 2018); the relative score subtracts the distance to the task's
overall feature distribution (Ren et al., 2021), a likelihood ratio between
"this task's classes" and "this task's inputs", as task predictors such as
TPL use. Both are standardised by the mean and spread of the task's
distances on its own training data before tasks are compared: a task whose
own data lies far from its means (its own feature space, or a covariance
estimated from few samples) does not lose every sample for that.
"""

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_module import TaskModule, TaskTensorDict, TensorSpec, task_keys_below
from piggyback_avalanche.task_aware.task_state import TaskState
from piggyback_avalanche.task_aware.versioned_cache import VersionedCache

__all__ = ["TaskFeatureStatistics", "DEFAULT_SHRINKAGE"]

DEFAULT_SHRINKAGE = 0.01
"""Weight of the scaled identity mixed into each covariance: a few hundred
samples per task cannot estimate a full covariance of many features
(chosen on class-incremental Split MNIST, see BENCHMARKS.md)."""

_STATISTICS = ("class_means", "precisions", "means", "overall_precisions", "calibrations")
_OVERALL_STATISTICS = ("means", "overall_precisions")


def _uncalibrated(relative: bool) -> list[float]:
    """Calibrations that leave distances as they are: mean 0 and spread 1
    for the class distances (and the relative ones)."""
    return [0.0, 1.0] * (2 if relative else 1)


class _Stacked(NamedTuple):
    """The statistics of several tasks side by side (zeros for a task
    without statistics): class means padded to the most classes ``(T, C, F)``
    with a padding mask ``(T, C)``, precisions ``(T, F, F)``, calibrations
    ``(T, 2)`` or ``(T, 4)``, each class mean's ``m'Pm`` ``(T, C)``, and,
    for relative statistics, overall means ``(T, F)`` and precisions
    ``(T, F, F)``."""

    means: Tensor
    padding: Tensor
    precisions: Tensor
    calibrations: Tensor
    constants: Tensor
    overall_means: Tensor | None
    overall_precisions: Tensor | None


class TaskFeatureStatistics(TaskModule, nn.Module):
    """Class means and shared precision of each frozen task's features.

    :param features: the size of the features (the heads' input).
    :param task_state: the owning model's task state.
    :param placement: a tensor on the device and of the dtype the statistics take.
    :param shrinkage: see :data:`DEFAULT_SHRINKAGE`.
    :param relative: also keep the mean and precision of all the task's
        features, for :meth:`relative_squared_distances` (one more ``F x F``
        matrix per task).
    """

    superposes = True  # it takes no part in the forward pass

    _placement: Tensor

    def __init__(
        self,
        features: int,
        *,
        task_state: TaskState,
        placement: Tensor,
        shrinkage: float = DEFAULT_SHRINKAGE,
        relative: bool = True,
    ) -> None:
        super().__init__()
        self.features = features
        self.task_state = task_state
        self.shrinkage = shrinkage
        self.relative = relative
        self._names = tuple(n for n in _STATISTICS if relative or n not in _OVERALL_STATISTICS)
        # (classes, F) per task: the class means, in the order of the head's classes.
        self.class_means = TaskTensorDict(trainable=False, holds="frozen")
        # (F, F): precision of the pooled within-class covariance.
        self.precisions = TaskTensorDict(trainable=False, holds="frozen", shape=(features, features))
        if relative:
            # (F,) and (F, F): mean and precision of all the task's features.
            self.means = TaskTensorDict(trainable=False, holds="frozen", shape=(features,))
            self.overall_precisions = TaskTensorDict(trainable=False, holds="frozen", shape=(features, features))
        # Mean and standard deviation of the class (and relative) distances on the task's own data.
        self.calibrations = TaskTensorDict(trainable=False, holds="frozen", shape=(len(_uncalibrated(relative)),))
        self._cache = VersionedCache()
        # Zero-size, not saved: where and in which dtype new statistics go.
        self.register_buffer("_placement", placement.new_empty(0), persistent=False)

    # --- fitting -------------------------------------------------------------

    @torch.no_grad()
    def fit(self, task: str, batches: Iterable[tuple], *, classes: Sequence[int]) -> int:
        """Estimate ``task``'s statistics from ``(features, labels)`` batches.

        :return: the number of samples seen.
        :raises ValueError: if a class of the task has no sample.
        """
        index = {int(c): i for i, c in enumerate(classes)}
        parts = [(features.detach().double().cpu(), labels) for features, labels in batches]
        features = torch.cat([f for f, _ in parts])
        rows = torch.tensor([index[int(label)] for _, labels in parts for label in labels])
        counts = torch.bincount(rows, minlength=len(classes)).double()
        if (counts == 0).any():
            missing = [c for c, n in zip(classes, counts.tolist()) if n == 0]
            raise ValueError(f"Task {task}: no training sample of class(es) {missing} to estimate feature statistics.")
        class_means = torch.zeros(len(classes), self.features, dtype=torch.float64).index_add_(0, rows, features)
        class_means /= counts[:, None]
        centred = features - class_means[rows]
        place = self._placement
        self._store(self.class_means, task, class_means.to(place))
        self._store(self.precisions, task, self._precision(centred.T @ centred / len(features)).to(place))
        self._store(self.calibrations, task, self._uncalibrated())
        if self.relative:
            mean = features.mean(0)
            overall = (features - mean).T @ (features - mean) / len(features)
            self._store(self.means, task, mean.to(place))
            self._store(self.overall_precisions, task, self._precision(overall).to(place))
        own = features.to(place)[:, None, :]
        distances = [self.squared_distances(own, [task], calibrated=False)[:, 0]]
        if self.relative:
            distances.append(self.relative_squared_distances(own, [task], calibrated=False)[:, 0])
        calibration = [value for d in distances for value in (d.mean(), d.std().clamp_min(1e-6))]
        self._store(self.calibrations, task, torch.stack(calibration))
        return len(features)

    def _uncalibrated(self) -> Tensor:
        return self._placement.new_tensor(_uncalibrated(self.relative))

    @staticmethod
    def _store(store: TaskTensorDict, task: str, tensor: Tensor) -> None:
        if task in store:
            store.pop(task)
        store.add(task, tensor)

    def _precision(self, covariance: Tensor) -> Tensor:
        scale = covariance.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(len(covariance), dtype=covariance.dtype)
        shrunk = (1 - self.shrinkage) * covariance + self.shrinkage * scale * eye
        return torch.linalg.inv(shrunk)

    # --- scores --------------------------------------------------------------

    def has(self, task: str) -> bool:
        """Whether ``task`` has statistics."""
        return task in self.precisions

    def tasks(self) -> list[str]:
        """The tasks that have statistics."""
        return self.precisions.keys()

    def _stacked(self, tasks: Sequence[str]) -> _Stacked:
        """The statistics of ``tasks`` side by side, cached while they stay as they are."""

        def compute() -> _Stacked:
            have = [t for t in tasks if self.has(t)]
            most = max((len(self.class_means[t]) for t in have), default=1)
            place, count, f = self._placement, len(tasks), self.features
            means = place.new_zeros(count, most, f)
            padding = torch.ones(count, most, dtype=torch.bool, device=place.device)
            precisions = place.new_zeros(count, f, f)
            calibrations = self._uncalibrated().repeat(count, 1)
            overall_means = place.new_zeros(count, f) if self.relative else None
            overall = place.new_zeros(count, f, f) if self.relative else None
            for row, task in enumerate(tasks):
                if task in have:
                    classes = len(self.class_means[task])
                    means[row, :classes] = self.class_means[task]
                    padding[row, :classes] = False
                    precisions[row] = self.precisions[task]
                    calibrations[row] = self.calibrations[task]
                    if overall_means is not None and overall is not None:
                        overall_means[row] = self.means[task]
                        overall[row] = self.overall_precisions[task]
            constants = torch.einsum("tcf,tfg,tcg->tc", means, precisions, means)
            return _Stacked(means, padding, precisions, calibrations, constants, overall_means, overall)

        return self._cache.get_for_tasks(tasks, VersionedCache.state_key(self), compute)

    def _missing(self, tasks: Sequence[str], like: Tensor) -> Tensor:
        return torch.tensor([not self.has(t) for t in tasks], dtype=torch.bool, device=like.device)

    def squared_distances(self, features: Tensor, tasks: Sequence[str], *, calibrated: bool = True) -> Tensor:
        """Squared Mahalanobis distance of each sample to the nearest class
        mean of each task, ``(batch, T)``, from features ``(batch, T, F)``;
        ``calibrated``: standardised by the task's distances on its own
        training data. ``inf`` for a task without statistics yet (one still
        learning: its statistics are estimated when it ends)."""
        stacked = self._stacked(tasks)
        distances = self._class_distances(features, stacked)
        if calibrated:
            distances = (distances - stacked.calibrations[:, 0]) / stacked.calibrations[:, 1]
        return distances.masked_fill(self._missing(tasks, features), float("inf"))

    def relative_squared_distances(self, features: Tensor, tasks: Sequence[str], *, calibrated: bool = True) -> Tensor:
        """:meth:`squared_distances` minus the squared distance to each
        task's overall feature distribution, ``(batch, T)``; ``inf`` for a
        task without statistics.

        :raises ValueError: for statistics kept without ``relative``.
        """
        stacked = self._stacked(tasks)
        if stacked.overall_means is None or stacked.overall_precisions is None:
            raise ValueError("These statistics keep no overall distribution: build them with relative=True.")
        diff = features - stacked.overall_means  # (batch, T, F)
        background = (torch.einsum("btf,tfg->btg", diff, stacked.overall_precisions) * diff).sum(-1)
        distances = self._class_distances(features, stacked) - background
        if calibrated:
            distances = (distances - stacked.calibrations[:, 2]) / stacked.calibrations[:, 3]
        return distances.masked_fill(self._missing(tasks, features), float("inf"))

    @staticmethod
    def _class_distances(features: Tensor, stacked: _Stacked) -> Tensor:
        # (x - m)' P (x - m) = x'Px - 2 m'Px + m'Pm: one product with P per
        # sample and task, not one per class.
        projected = torch.einsum("btf,tfg->btg", features, stacked.precisions)  # Px, P symmetric
        own = (projected * features).sum(-1, keepdim=True)  # (batch, T, 1)
        cross = torch.einsum("btg,tcg->btc", projected, stacked.means)  # m'Px
        return (own - 2 * cross + stacked.constants).masked_fill(stacked.padding, float("inf")).amin(-1)

    # --- what the module says about its state ----------------------------------

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Nothing until the task's statistics are estimated (:meth:`fit`)."""

    def freeze_task(self, task: str) -> None:
        """The statistics never change once estimated."""

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"{name}.{task}" for name in self._names if task in getattr(self, name)]

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        dtype = self._placement.dtype
        # The class means: one row per class of the task, a number the task chooses.
        shapes = {name: getattr(self, name).shape or ("task classes", self.features) for name in self._names}
        return {f"{name}.{task}": TensorSpec(dtype, shapes[name]) for name in self._names}

    def plain_bytes(self, task: str) -> int:
        return 0  # a network of its own needs no task inference

    def plain_module(self, task: str) -> nn.Module:
        return nn.Identity()

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self._names:
            store: TaskTensorDict = getattr(self, name)
            for task in task_keys_below(state_dict, f"{prefix}{name}.") - set(store.keys()):
                store.add(task, torch.empty_like(state_dict[f"{prefix}{name}.{task}"]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
