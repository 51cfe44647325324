"""Task-inference accuracy: the share of test samples whose inferred task is
the one that learned them, per experience and per stream.

With task inference, training experience ``k`` teaches task ``k``, so a
sample of evaluation experience ``k`` is inferred right when its inferred
task is ``k``. Nothing is emitted for evaluations that inferred no task
(task inference off, or nothing learned yet).
"""

from typing import Any

import torch

from avalanche.evaluation import Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

__all__ = ["TaskInferenceAccuracy", "TaskInferenceAccuracyPluginMetric", "task_inference_accuracy_metrics"]


class TaskInferenceAccuracy(Metric[float | None]):
    """The running share of samples whose inferred task is the right one."""

    def __init__(self) -> None:
        self._right = 0
        self._seen = 0

    def update(self, inferred: torch.Tensor, right_task: int) -> None:
        """Count a batch whose samples all belong to ``right_task``."""
        self._right += int((inferred == right_task).sum())
        self._seen += len(inferred)

    def result(self) -> float | None:
        """The share so far; ``None`` before any sample."""
        return self._right / self._seen if self._seen else None

    def reset(self) -> None:
        self._right = 0
        self._seen = 0


class TaskInferenceAccuracyPluginMetric(PluginMetric[float | None]):
    """Task-inference accuracy of each evaluated experience, or of the whole
    evaluation stream, named like Avalanche's accuracy
    (``TaskInference_Acc_Exp/eval_phase/test_stream/Task000/Exp001``,
    ``TaskInference_Acc_Stream/eval_phase/test_stream``).

    :param per: ``"experience"`` or ``"stream"``.
    """

    def __init__(self, *, per: str) -> None:
        super().__init__()
        if per not in ("experience", "stream"):
            raise ValueError(f"per must be 'experience' or 'stream', got {per!r}.")
        self.per = per
        self._metric = TaskInferenceAccuracy()

    def reset(self) -> None:
        self._metric.reset()

    def result(self) -> float | None:
        return self._metric.result()

    def before_eval(self, strategy: Any) -> None:
        self.reset()

    def before_eval_exp(self, strategy: Any) -> None:
        if self.per == "experience":
            self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        inferred = getattr(strategy, "mb_inferred_tasks", None)
        if inferred is not None:
            self._metric.update(inferred, int(strategy.experience.current_experience))

    def _value(self, strategy: Any, add_experience: bool) -> list[MetricValue]:
        value = self.result()
        if value is None:
            return []
        name = get_metric_name(self, strategy, add_experience=add_experience, add_task=add_experience)
        return [MetricValue(self, name, value, strategy.clock.train_iterations)]

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        return self._value(strategy, True) if self.per == "experience" else []

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        return self._value(strategy, False) if self.per == "stream" else []

    def __str__(self) -> str:
        return "TaskInference_Acc_Exp" if self.per == "experience" else "TaskInference_Acc_Stream"


def task_inference_accuracy_metrics(*, experience: bool = True, stream: bool = True) -> list[PluginMetric]:
    """The task-inference accuracy plugin metrics asked for."""
    return [
        TaskInferenceAccuracyPluginMetric(per=per)
        for per, wanted in (("experience", experience), ("stream", stream))
        if wanted
    ]
