"""Prompt tuning's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass

from piggyback_avalanche.methods.prompt.model import DEFAULT_PROMPT_LENGTH
from piggyback_avalanche.task_aware.registration import MethodConfig, model_setting

__all__ = ["PromptTuningConfig"]


@dataclass(frozen=True, kw_only=True)
class PromptTuningConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.prompt.model.PromptTuningModel`;
    its docstring says what each means."""

    prompt_length: int = model_setting(DEFAULT_PROMPT_LENGTH)
    prompt_after: str | None = model_setting(None)
