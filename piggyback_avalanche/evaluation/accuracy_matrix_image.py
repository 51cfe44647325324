"""The accuracy matrix as an image after each evaluation.

Unlike Avalanche's ``AccuracyMatrixPluginMetric``, which computes the matrix
itself, this one draws the matrix from the per-experience accuracies that
``accuracy_metrics(experience=True)`` reports in the same evaluator.
"""

import math
from typing import Any

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from piggyback_avalanche.evaluation.figures import accuracy_matrix_figure, rendered

__all__ = ["AccuracyMatrixImagePluginMetric", "accuracy_matrix_image_metrics"]


class AccuracyMatrixImagePluginMetric(PluginMetric[list[list[float]]]):
    """After each evaluation, the accuracy matrix as an image,
    ``AccuracyMatrix/eval_phase/<stream>_stream`` (the evaluated stream:
    ``test``, or ``valid``): row i holds the accuracy on
    each evaluated experience after training experience i. It reads the
    per-experience accuracies of ``accuracy_metrics(experience=True)``, which
    must be in the same evaluator."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[int, float]] = {}

    def reset(self) -> None:
        self.rows = {}

    def result(self) -> list[list[float]]:
        """The matrix, NaN where an experience was not evaluated."""
        columns = 1 + max((c for row in self.rows.values() for c in row), default=-1)
        return [[self.rows[r].get(c, math.nan) for c in range(columns)] for r in sorted(self.rows)]

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        trained = strategy.clock.train_exp_counter - 1
        if trained < 0:
            return []
        stream = next(iter(strategy.current_eval_stream)).origin_stream.name
        prefix = f"Top1_Acc_Exp/eval_phase/{stream}_stream/"
        row = {
            int(name.rsplit("/Exp", 1)[1]): value
            for name, value in strategy.evaluator.get_last_metrics().items()
            if name.startswith(prefix)
        }
        if not row:
            return []
        self.rows[trained] = row
        return [
            MetricValue(
                self,
                f"AccuracyMatrix/eval_phase/{stream}_stream",
                rendered(accuracy_matrix_figure(self.result())),
                strategy.clock.train_iterations,
            )
        ]

    def __str__(self) -> str:
        return "AccuracyMatrix"


def accuracy_matrix_image_metrics() -> list[PluginMetric]:
    """The accuracy-matrix image metric, for an ``EvaluationPlugin``."""
    return [AccuracyMatrixImagePluginMetric()]
