"""SupSup's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.methods.supsup.model import DEFAULT_DENSITY, WEIGHT_INITS
from piggyback_avalanche.methods.supsup.strategy import DEFAULT_SCORE_LR
from piggyback_avalanche.task_aware.frozen_masks import check_density
from piggyback_avalanche.task_aware.registration import LEARNING_RATE_RANGE, MethodConfig, SearchRange, model_setting

__all__ = ["SupSupConfig"]


@dataclass(frozen=True, kw_only=True)
class SupSupConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.supsup.model.SupSupModel`
    (the model's) and :class:`~piggyback_avalanche.methods.supsup.strategy.SupSup`
    (the others); their docstrings say what each means."""

    density: float = model_setting(DEFAULT_DENSITY)
    weight_init: str = model_setting("signed_constant")
    weight_seed: int | None = model_setting(None)
    task_batchnorm: bool = model_setting(True)
    score_lr: float = DEFAULT_SCORE_LR

    search_space: ClassVar = {
        "lr": LEARNING_RATE_RANGE,
        "score_lr": SearchRange(1e-3, 1e-1),
        "density": SearchRange(0.05, 0.7, log=False),
    }

    def __post_init__(self) -> None:
        check_density(self.density)
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"Unknown weight_init {self.weight_init!r}; choose one of {list(WEIGHT_INITS)}.")
