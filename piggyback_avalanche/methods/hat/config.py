"""HAT's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.hat.model import DEFAULT_MAX_SCALE
from piggyback_avalanche.methods.hat.strategy import DEFAULT_CAPACITY_WEIGHT, DEFAULT_CLIP_GRADIENT, DEFAULT_HAT_LR
from piggyback_avalanche.task_aware.registration import MethodConfig, SearchRange, model_setting

__all__ = ["HATConfig"]


@dataclass(frozen=True, kw_only=True)
class HATConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.hat.model.HATModel`
    (the model's) and :class:`~piggyback_avalanche.methods.hat.strategy.HAT`
    (the others); their docstrings say what each means."""

    max_scale: float = model_setting(DEFAULT_MAX_SCALE)
    task_batchnorm: bool = model_setting(True)
    lr: float = DEFAULT_HAT_LR
    capacity_weight: float = DEFAULT_CAPACITY_WEIGHT
    clip_gradient: float = DEFAULT_CLIP_GRADIENT

    # HAT's own grids (its paper, Sec. 4): c from 0.1 to 4, s_max from 25 to 800.
    search_space: ClassVar = {
        "lr": SearchRange(5e-3, 0.5),
        "capacity_weight": SearchRange(0.1, 4.0),
        "max_scale": SearchRange(25.0, 800.0),
    }

    def __post_init__(self) -> None:
        check_positive("max_scale", self.max_scale)
        check_positive("lr", self.lr)
        check_positive("clip_gradient", self.clip_gradient)
        if self.capacity_weight < 0:
            raise ValueError(f"capacity_weight must be at least 0, got {self.capacity_weight}.")
