"""WSN's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.methods.wsn.model import DEFAULT_WSN_DENSITY
from piggyback_avalanche.methods.wsn.strategy import DEFAULT_WSN_SCORE_LR
from piggyback_avalanche.task_aware.frozen_masks import check_density
from piggyback_avalanche.task_aware.registration import LEARNING_RATE_RANGE, MethodConfig, SearchRange, model_setting

__all__ = ["WSNConfig"]


@dataclass(frozen=True, kw_only=True)
class WSNConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.wsn.model.WSNModel`
    (the model's) and :class:`~piggyback_avalanche.methods.wsn.strategy.WSN`
    (the others); their docstrings say what each means."""

    density: float = model_setting(DEFAULT_WSN_DENSITY)
    task_batchnorm: bool = model_setting(True)
    score_lr: float = DEFAULT_WSN_SCORE_LR

    search_space: ClassVar = {
        "lr": LEARNING_RATE_RANGE,
        "score_lr": SearchRange(1e-3, 1e-1),
        "density": SearchRange(0.05, 0.7, log=False),
    }

    def __post_init__(self) -> None:
        check_density(self.density)
