"""PackNet's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.methods.packnet.strategy import (
    DEFAULT_POST_PRUNE_EPOCHS,
    DEFAULT_PRUNE_RATIO,
    PruneRatio,
    check_packnet_settings,
)
from piggyback_avalanche.task_aware.registration import LEARNING_RATE_RANGE, MethodConfig, SearchRange, model_setting

__all__ = ["PackNetConfig"]


@dataclass(frozen=True, kw_only=True)
class PackNetConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.packnet.model.PackNetModel`
    (the model's) and :class:`~piggyback_avalanche.methods.packnet.strategy.PackNet`
    (the others); their docstrings say what each means."""

    task_batchnorm: bool = model_setting(True)
    prune_ratio: PruneRatio = DEFAULT_PRUNE_RATIO
    post_prune_epochs: int = DEFAULT_POST_PRUNE_EPOCHS
    post_prune_lr: float | None = None

    search_space: ClassVar = {"lr": LEARNING_RATE_RANGE, "prune_ratio": SearchRange(0.25, 0.9, log=False)}

    def __post_init__(self) -> None:
        check_packnet_settings(
            prune_ratio=self.prune_ratio,
            post_prune_epochs=self.post_prune_epochs,
            lr=self.lr,
            post_prune_lr=self.post_prune_lr,
        )
