"""Prompt tuning per task as an Avalanche strategy."""

from piggyback_avalanche.methods.prompt.model import PromptTuningModel
from piggyback_avalanche.task_aware.strategy import OneRateStrategy

__all__ = ["PromptTuning"]


class PromptTuning(OneRateStrategy):
    """Prompt tokens per task over a frozen vision transformer (VPT-shallow,
    Jia et al., ECCV 2022, one prompt set per task, selected by the task
    label): each experience trains its task's prompts and head at ``lr``,
    then freezes them.

    :param model: a :class:`~piggyback_avalanche.methods.prompt.PromptTuningModel`.
    :param lr: learning rate of the prompts and head.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = PromptTuningModel
