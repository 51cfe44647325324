"""The base of plugin metrics measured after each training experience."""

from typing import Any

from avalanche.evaluation import Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue

__all__ = ["AfterTrainingExpPluginMetric"]


class AfterTrainingExpPluginMetric(PluginMetric[Any]):
    """A plugin metric that updates a standalone metric after each training
    experience and emits values named ``<label>/train_phase/train_stream<suffix>``.

    :param metric: the standalone metric, updated with the strategy.
    """

    name: str

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self._metric = metric

    def reset(self) -> None:
        self._metric.reset()

    def result(self) -> Any:
        return self._metric.result()

    def _values(self, strategy: Any) -> list[MetricValue]:
        raise NotImplementedError

    def after_training_exp(self, strategy: Any) -> list[MetricValue]:
        self._metric.update(strategy)
        return self._values(strategy)

    def _emit(self, label: str, suffix: str, value: Any, strategy: Any) -> MetricValue:
        return MetricValue(self, f"{label}/train_phase/train_stream{suffix}", value, strategy.clock.train_iterations)

    def __str__(self) -> str:
        return self.name
