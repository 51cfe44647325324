"""What the strategies report: model size, the accuracy-matrix image,
task-inference accuracy, the figures they draw, and one evaluator with every
metric and logger."""

from piggyback_avalanche.evaluation.evaluator import MetricsFileLogger, default_evaluator, tensorboard_command
from piggyback_avalanche.evaluation.task_inference_accuracy import task_inference_accuracy_metrics

__all__ = ["default_evaluator", "tensorboard_command", "MetricsFileLogger", "task_inference_accuracy_metrics"]
