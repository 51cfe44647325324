"""One evaluator for every strategy: Avalanche's accuracy, forgetting, BWT and
timing, this package's model size, mask sparsity and accuracy matrix, and the
loggers a researcher reads (progress bars, TensorBoard, CSV and JSON files)."""

import contextlib
import csv
import json
import shlex
import sys
from pathlib import Path
from typing import IO, Any

from avalanche.evaluation.metrics import (
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
    timing_metrics,
)
from avalanche.logging import BaseLogger, InteractiveLogger, TensorboardLogger
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin

from piggyback_avalanche.checks import without_no_logger_warning
from piggyback_avalanche.evaluation.accuracy_matrix_image import accuracy_matrix_image_metrics
from piggyback_avalanche.evaluation.mask_sparsity import mask_sparsity_metrics
from piggyback_avalanche.evaluation.model_size import model_size_metrics
from piggyback_avalanche.evaluation.task_inference_accuracy import task_inference_accuracy_metrics
from piggyback_avalanche.files import PathLike, write_atomically

__all__ = ["MetricsFileLogger", "ExperienceAxisTensorboardLogger", "default_evaluator", "tensorboard_command"]


class MetricsFileLogger(BaseLogger, SupervisedPlugin):
    """Every numeric metric value, as rows ``name, x, value`` in a CSV file
    and a JSON list, rewritten after each training experience and each
    evaluation.

    :param csv_path: where the CSV goes (``None``: no CSV).
    :param json_path: where the JSON goes (``None``: no JSON).
    """

    def __init__(self, *, csv_path: PathLike | None = None, json_path: PathLike | None = None) -> None:
        super().__init__()
        self.csv_path = Path(csv_path) if csv_path else None
        self.json_path = Path(json_path) if json_path else None
        self.rows: list[dict[str, Any]] = []

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.rows.append({"name": name, "x": int(x_plot), "value": float(value)})

    def state_dict(self) -> list[dict[str, Any]]:
        """The rows logged so far, for a checkpoint."""
        return [dict(row) for row in self.rows]

    def load_state_dict(self, rows: list[dict[str, Any]]) -> None:
        """Continue after the rows of a checkpoint."""
        self.rows = [dict(row) for row in rows]

    def flush(self) -> None:
        """Write the files now."""
        if self.csv_path:

            def write_csv(file: IO[str]) -> None:
                writer = csv.DictWriter(file, fieldnames=["name", "x", "value"])
                writer.writeheader()
                writer.writerows(self.rows)

            write_atomically(self.csv_path, write_csv)
        if self.json_path:
            write_atomically(self.json_path, lambda file: json.dump(self.rows, file, indent=1))

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.flush()

    def after_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.flush()


class ExperienceAxisTensorboardLogger(TensorboardLogger):
    """Avalanche's TensorBoard logger, which logs every value against the
    training iteration, plus every numeric stream-level evaluation metric
    again against the number of experiences trained, under
    ``ExperiencesTrained/<metric name>``. Strategies run different numbers
    of iterations per experience (PackNet retrains after pruning), so only
    this axis lines their runs up task by task.
    """

    def after_eval(self, strategy: Any, metric_values: list[Any]) -> None:
        for value in metric_values:
            stream_level = "/eval_phase/" in value.name and "/Exp" not in value.name
            if stream_level and isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
                self.writer.add_scalar(
                    f"ExperiencesTrained/{value.name}", value.value, global_step=strategy.clock.train_exp_counter
                )


def default_evaluator(
    *,
    tb_dir: PathLike | None = None,
    csv_path: PathLike | None = None,
    json_path: PathLike | None = None,
    interactive: bool = True,
) -> EvaluationPlugin:
    """An ``EvaluationPlugin`` with everything this package reports.

    Metrics: accuracy per experience and stream, forgetting and BWT per
    experience and stream, model size, mask sparsity (Piggyback), the accuracy
    matrix image, task-inference accuracy (strategies that infer tasks) and
    epoch/experience timing.

    :param tb_dir: a TensorBoard log directory (``None``: no TensorBoard),
        written by :class:`ExperienceAxisTensorboardLogger`.
    :param csv_path: a CSV file with every numeric value.
    :param json_path: a JSON file with every numeric value.
    :param interactive: progress bars and a text summary on stdout.
    """
    loggers: list[BaseLogger] = []
    if interactive:
        loggers.append(InteractiveLogger())
    if tb_dir is not None:
        loggers.append(ExperienceAxisTensorboardLogger(tb_log_dir=tb_dir))
    if csv_path is not None or json_path is not None:
        loggers.append(MetricsFileLogger(csv_path=csv_path, json_path=json_path))
    # No logger asked for: the metrics are read with get_last_metrics, as the runner does.
    with without_no_logger_warning() if not loggers else contextlib.nullcontext():
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            timing_metrics(epoch=True, experience=True),
            *model_size_metrics(),
            *mask_sparsity_metrics(),
            *accuracy_matrix_image_metrics(),
            *task_inference_accuracy_metrics(),
            loggers=loggers,
        )


def tensorboard_command(log_dir: PathLike) -> str:
    """The shell command that opens TensorBoard on ``log_dir``: the
    ``tensorboard`` installed next to this Python (a virtual environment's
    ``bin``) when there is one, so that it works without activating it."""
    beside = Path(sys.executable).parent / "tensorboard"
    program = str(beside) if beside.is_file() else "tensorboard"
    return f"{shlex.quote(program)} --logdir {shlex.quote(str(log_dir))}"
