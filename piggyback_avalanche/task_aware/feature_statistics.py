"""Per-task statistics of the features a task's head reads: the basis of
task-inference scores that tell a task's own data from the others' better
than its logits do.

Each task keeps the mean feature of each of its classes and the precision
(inverse) of their pooled within-class covariance, estimated after it
trains from its training data under its final mask. The Mahalanobis score
of a sample under a task is minus its squared distance to the nearest class
mean of that task (Lee et al., 2018); the relative score subtracts the
distance to the task's overall feature distribution (Ren et al., 2021), a
likelihood ratio between "this task's classes" and "this task's inputs",
as task predictors such as TPL use.
"""

from typing import Any, Dict, Iterable, List, Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_state import TaskModule, TaskState, TaskTensorDict, task_keys_below

__all__ = ["TaskFeatureStatistics", "DEFAULT_SHRINKAGE"]

DEFAULT_SHRINKAGE = 0.1
"""Weight of the scaled identity mixed into each covariance: a few hundred
samples per task cannot estimate a full covariance of a few hundred
features."""

_STATISTICS = ("class_means", "precisions", "means", "overall_precisions")


class TaskFeatureStatistics(TaskModule, nn.Module):
    """Class means and shared precision of each frozen task's features.

    :param features: the size of the features (the heads' input).
    :param task_state: the owning model's task state.
    :param placement: a tensor on the device and of the dtype the statistics take.
    :param shrinkage: see :data:`DEFAULT_SHRINKAGE`.
    """

    _placement: Tensor

    def __init__(
        self, features: int, *, task_state: TaskState, placement: Tensor, shrinkage: float = DEFAULT_SHRINKAGE
    ) -> None:
        super().__init__()
        self.features = features
        self.task_state = task_state
        self.shrinkage = shrinkage
        # (classes, F) per task: the class means, in the order of the head's classes.
        self.class_means = TaskTensorDict(trainable=False, holds="frozen")
        # (F, F): precision of the pooled within-class covariance.
        self.precisions = TaskTensorDict(trainable=False, holds="frozen", shape=(features, features))
        # (F,) and (F, F): mean and precision of all the task's features.
        self.means = TaskTensorDict(trainable=False, holds="frozen", shape=(features,))
        self.overall_precisions = TaskTensorDict(trainable=False, holds="frozen", shape=(features, features))
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
        sums = torch.zeros(len(classes), self.features, dtype=torch.float64)
        counts = torch.zeros(len(classes), dtype=torch.float64)
        products = torch.zeros(self.features, self.features, dtype=torch.float64)
        for features, labels in batches:
            features = features.detach().double().cpu()
            rows = torch.tensor([index[int(label)] for label in labels])
            sums.index_add_(0, rows, features)
            counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
            products += features.T @ features
        if (counts == 0).any():
            missing = [c for c, n in zip(classes, counts.tolist()) if n == 0]
            raise ValueError(f"Task {task}: no training sample of class(es) {missing} to estimate feature statistics.")
        total = counts.sum()
        class_means = sums / counts[:, None]
        mean = sums.sum(0) / total
        overall = products / total - torch.outer(mean, mean)
        within = (products - (class_means.T * counts) @ class_means) / total
        place = self._placement
        self._store(self.class_means, task, class_means.to(place))
        self._store(self.means, task, mean.to(place))
        self._store(self.precisions, task, self._precision(within).to(place))
        self._store(self.overall_precisions, task, self._precision(overall).to(place))
        return int(total)

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

    def squared_distances(self, features: Tensor, tasks: Sequence[str]) -> Tensor:
        """Squared Mahalanobis distance of each sample to the nearest class
        mean of each task, ``(batch, T)``, from features ``(batch, T, F)``;
        ``inf`` for a task without statistics yet (one still learning: its
        statistics are estimated when it ends)."""
        distances = features.new_full(features.shape[:2], float("inf"))
        for row, task in enumerate(tasks):
            if self.has(task):
                diff = features[:, row, None, :] - self.class_means[task]  # (batch, classes, F)
                distances[:, row] = torch.einsum("bcf,fg,bcg->bc", diff, self.precisions[task], diff).amin(1)
        return distances

    def relative_squared_distances(self, features: Tensor, tasks: Sequence[str]) -> Tensor:
        """:meth:`squared_distances` minus the squared distance to each
        task's overall feature distribution, ``(batch, T)``; ``inf`` for a
        task without statistics."""
        distances = self.squared_distances(features, tasks)
        for row, task in enumerate(tasks):
            if self.has(task):
                diff = features[:, row, :] - self.means[task]
                distances[:, row] -= torch.einsum("bf,fg,bg->b", diff, self.overall_precisions[task], diff)
        return distances

    # --- what the module says about its state ----------------------------------

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Nothing until the task's statistics are estimated (:meth:`fit`)."""

    def freeze_task(self, task: str) -> None:
        """The statistics never change once estimated."""

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {}

    def task_state_keys(self, task: str) -> List[str]:
        return [f"{name}.{task}" for name in _STATISTICS if task in getattr(self, name)]

    def frozen_task_state_schema(self, task: str) -> Dict[str, torch.dtype]:
        dtype = self._placement.dtype
        return {f"{name}.{task}": dtype for name in _STATISTICS}

    def plain_bytes(self, task: str) -> int:
        return 0  # a network of its own needs no task inference

    def plain_module(self, task: str) -> nn.Module:
        return nn.Identity()

    def _load_from_state_dict(self, state_dict: Dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in _STATISTICS:
            store: TaskTensorDict = getattr(self, name)
            for task in task_keys_below(state_dict, f"{prefix}{name}.") - set(store.keys()):
                store.add(task, torch.empty_like(state_dict[f"{prefix}{name}.{task}"]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
