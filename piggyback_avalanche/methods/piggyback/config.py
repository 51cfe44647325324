"""Piggyback's settings, as one typed object (see
:class:`~piggyback_avalanche.task_aware.registration.MethodConfig`)."""

from dataclasses import dataclass
from typing import ClassVar

from piggyback_avalanche.methods.piggyback.model import DEFAULT_MASK_SCALE, DEFAULT_THRESHOLD
from piggyback_avalanche.methods.piggyback.strategy import DEFAULT_MASK_CROSS_WITHIN
from piggyback_avalanche.task_aware.registration import (
    LEARNING_RATE_RANGE,
    MethodConfig,
    SearchRange,
    model_setting,
)

__all__ = ["PiggybackConfig"]


@dataclass(frozen=True, kw_only=True)
class PiggybackConfig(MethodConfig):
    """The settings of :class:`~piggyback_avalanche.methods.piggyback.model.PiggybackModel`
    (the model's) and :class:`~piggyback_avalanche.methods.piggyback.strategy.Piggyback`
    (the others); their docstrings say what each means."""

    threshold_fn: str = model_setting("binarizer")
    mask_init: str = model_setting("1s")
    mask_scale: float = model_setting(DEFAULT_MASK_SCALE)
    threshold: float = model_setting(DEFAULT_THRESHOLD)
    task_batchnorm: bool = model_setting(True)
    task_embeddings: bool = model_setting(False)
    flat_masks: bool | None = model_setting(None)
    mask_lr: float | None = None
    mask_cross_within: float = DEFAULT_MASK_CROSS_WITHIN
    train_backbone_on_first_experience: bool = False
    backbone_lr: float | None = None

    untrained_backbone_setting: ClassVar[str | None] = "train_backbone_on_first_experience"
    # The rule's share, not a rate: the rate follows from the steps an experience gets.
    search_space: ClassVar = {"lr": LEARNING_RATE_RANGE, "mask_cross_within": SearchRange(0.005, 0.5)}
