"""What the strategies report: model size, the accuracy-matrix image, the
figures they draw, and one evaluator with every metric and logger."""

from piggyback_avalanche.evaluation.evaluator import MetricsFileLogger, default_evaluator

__all__ = ["default_evaluator", "MetricsFileLogger"]
