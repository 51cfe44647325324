"""Prompt tuning per task (VPT-shallow, Jia et al., ECCV 2022): a frozen
vision transformer, learned prompt tokens per task."""

from piggyback_avalanche.methods.prompt.model import DEFAULT_PROMPT_LENGTH, PROMPT_SITES, PromptTuningModel
from piggyback_avalanche.methods.prompt.prompts import AppendedPrompts, TaskPrompts
from piggyback_avalanche.methods.prompt.strategy import PromptTuning

__all__ = [
    "PromptTuningModel",
    "PromptTuning",
    "TaskPrompts",
    "AppendedPrompts",
    "DEFAULT_PROMPT_LENGTH",
    "PROMPT_SITES",
]
