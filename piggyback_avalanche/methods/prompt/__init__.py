"""Prompt tuning per task (VPT-shallow, Jia et al., ECCV 2022): a frozen
vision transformer, learned prompt tokens per task."""

from piggyback_avalanche.methods.prompt.config import PromptTuningConfig
from piggyback_avalanche.methods.prompt.model import DEFAULT_PROMPT_LENGTH, PROMPT_SITES, PromptTuningModel
from piggyback_avalanche.methods.prompt.prompts import AppendedPrompts, TaskPrompts
from piggyback_avalanche.methods.prompt.strategy import PromptTuning
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "PromptTuningModel",
    "PromptTuning",
    "PromptTuningConfig",
    "TaskPrompts",
    "AppendedPrompts",
    "DEFAULT_PROMPT_LENGTH",
    "PROMPT_SITES",
]

register_method("prompt", config=PromptTuningConfig, model=PromptTuningModel, strategy=PromptTuning)
