"""How sparse each task's masks are, as an Avalanche plugin metric: the
share of each layer's weights a task's mask drops (or flips), as scalars and
a per-layer chart, and histograms of the mask scores while a task learns.

It asks the model (:meth:`TaskAwareModel.mask_sparsity`) and its layers
(:meth:`TaskWeightLayer.learning_scores`), so it reports every method whose
tasks mask the shared weights, and nothing for the others."""

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from avalanche.evaluation import Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from piggyback_avalanche.evaluation.after_training_exp import AfterTrainingExpPluginMetric
from piggyback_avalanche.evaluation.figures import bar_chart, rendered
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["MaskSparsity", "MaskSparsityPluginMetric", "mask_sparsity_metrics"]


class MaskSparsity(Metric[dict[int, dict[str, dict[str, float]]]]):
    """The standalone mask-sparsity metric of a task-aware model whose tasks
    mask the shared weights (Piggyback's).

    ``result()`` maps each frozen task to ``{"zeros": {layer: fraction, ...,
    "overall": fraction}, "negatives": {...}}`` (negatives for the ternary
    masks only): the share of each layer's weights that the task's mask drops
    (or flips).
    """

    def __init__(self) -> None:
        self._result: dict[int, dict[str, dict[str, float]]] = {}

    def update(self, model: nn.Module, tasks: Iterable[int] | None = None) -> None:
        """Measure ``tasks`` (default: every frozen task) of ``model``."""
        if not isinstance(model, TaskAwareModel):
            return
        for task in model.frozen_tasks if tasks is None else tasks:
            sparsity = model.mask_sparsity(task)
            if sparsity is not None:
                self._result[int(task)] = sparsity

    def result(self) -> dict[int, dict[str, dict[str, float]]]:
        return {t: {k: dict(v) for k, v in c.items()} for t, c in self._result.items()}

    def reset(self) -> None:
        self._result = {}


class MaskSparsityPluginMetric(AfterTrainingExpPluginMetric):
    """After each training experience, for each task it trained:
    ``MaskZeros/train_phase/train_stream/TaskTTT/<layer>`` (and
    ``.../overall``), ``MaskNegatives/...`` for ternary masks, and a per-layer
    bar chart ``MaskSparsityChart/train_phase/train_stream/TaskTTT``.

    While a task trains it also emits a histogram of each layer's mask scores
    after every epoch, ``MaskScores/train_phase/train_stream/TaskTTT/<layer>``
    (at most ``histogram_samples`` scores per layer, sampled evenly).
    """

    name = "MaskSparsity"

    def __init__(self, *, histogram_samples: int = 10_000) -> None:
        super().__init__(MaskSparsity())
        self.histogram_samples = histogram_samples

    def _values(self, strategy: Any) -> list[MetricValue]:
        model = strategy.model
        if not isinstance(model, TaskAwareModel):
            return []
        tasks = sorted(strategy.experience_tasks(strategy.experience))
        self._metric.update(model, tasks)
        result = self._metric.result()
        trained = [task for task in tasks if task in result]  # those whose masks it could measure
        if not trained:
            return []
        values = []
        for task in trained:
            for kind, fractions in result[task].items():
                label = "MaskZeros" if kind == "zeros" else "MaskNegatives"
                for layer, fraction in fractions.items():
                    values.append(self._emit(label, f"/Task{task:03d}/{layer}", fraction, strategy))
        latest = trained[-1]
        values.append(
            self._emit("MaskSparsityChart", f"/Task{latest:03d}", rendered(bar_chart(result[latest])), strategy)
        )
        return values

    def after_training_epoch(self, strategy: Any) -> list[MetricValue]:
        model = strategy.model
        if not isinstance(model, TaskAwareModel):
            return []
        values = []
        for task in model.learning_tasks:
            for name, layer in model.labelled_task_layers.items():
                scores = layer.learning_scores(str(task))
                if scores is not None:
                    flat = scores.flatten()
                    step = max(1, math.ceil(flat.numel() / self.histogram_samples))
                    values.append(self._emit("MaskScores", f"/Task{task:03d}/{name}", flat[::step].cpu(), strategy))
        return values


def mask_sparsity_metrics(*, histogram_samples: int = 10_000) -> list[PluginMetric]:
    """The mask-sparsity plugin metrics, for an ``EvaluationPlugin``."""
    return [MaskSparsityPluginMetric(histogram_samples=histogram_samples)]
