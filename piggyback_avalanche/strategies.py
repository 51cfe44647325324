"""Avalanche strategies for mask-based continual learning."""

import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from avalanche.core import BasePlugin
from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
from avalanche.training.templates import SupervisedTemplate

from piggyback_avalanche.model import PiggybackModel, experience_task_classes

__all__ = [
    "Piggyback",
    "PIGGYBACK_PAPER_SETTINGS",
    "DEFAULT_MASK_LR",
    "DEFAULT_LR",
    "OptimizerFactory",
]

DEFAULT_MASK_LR = 3e-4
"""Default learning rate of the mask scores, chosen for short runs (see the README)."""

DEFAULT_LR = 1e-3
"""Default learning rate of the per-task heads and normalization layers."""

OptimizerFactory = Callable[[List[Dict]], Optimizer]
"""Builds an optimizer from a list of parameter groups (each with its ``lr``)."""

PIGGYBACK_PAPER_SETTINGS: Dict[str, object] = {
    "mask_lr": 1e-4,
    "lr": 1e-4,
    "train_mb_size": 32,
    "train_epochs": 30,
    "lr_decay_epochs": (15,),
    "lr_decay_factor": 0.1,
}
"""The paper's training settings (Mallya et al., 2018, Sec. 4), for
``Piggyback(model=..., **PIGGYBACK_PAPER_SETTINGS)``. They assume 30 epochs over
thousands of images per task; the constructor's defaults suit short runs."""


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


class Piggyback(SupervisedTemplate):
    """Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) as an Avalanche strategy.

    For each experience the model adds the new task (mask scores,
    normalization copies, head) and a fresh optimizer trains only those: the
    scores at ``mask_lr``, the heads and normalization at ``lr``. When the
    experience ends the task is frozen, its mask bit-packed, so later
    experiences never change its outputs.

    :param model: a :class:`~piggyback_avalanche.PiggybackModel`.
    :param mask_lr: learning rate of the mask scores. Scores start at
        ``mask_scale`` and a mask flips only once a score crosses the
        threshold; Adam moves a score by about ``mask_lr`` per step, so short
        runs need a larger rate than the paper's 1e-4 (see the README).
    :param lr: learning rate of the heads and normalization parameters.
    :param lr_decay_epochs: epochs (counted within each experience) after
        which every learning rate is multiplied by ``lr_decay_factor``.
    :param lr_decay_factor: the factor of the step schedule.
    :param train_backbone_on_first_experience: train the backbone's own
        weights (all of them, with the first task's head and normalization) on
        the first experience, then freeze them; for streams without a
        pretrained backbone.
    :param backbone_lr: learning rate of the backbone on the first
        experience; defaults to ``lr``.
    :param optimizer_factory: builds the optimizer from the parameter groups;
        defaults to ``torch.optim.Adam``.
    :param criterion: the loss.
    :param train_mb_size: training mini-batch size.
    :param train_epochs: epochs per experience.
    :param eval_mb_size: evaluation mini-batch size.
    :param device: where the model trains.
    :param plugins: Avalanche plugins; all of them run.
    :param evaluator: an ``EvaluationPlugin`` or a factory of one.
    :param eval_every: Avalanche's periodic evaluation setting.
    :param base_kwargs: passed on to ``SupervisedTemplate``.
    """

    def __init__(
        self,
        *,
        model: PiggybackModel,
        mask_lr: float = DEFAULT_MASK_LR,
        lr: float = DEFAULT_LR,
        lr_decay_epochs: Sequence[int] = (),
        lr_decay_factor: float = 0.1,
        train_backbone_on_first_experience: bool = False,
        backbone_lr: Optional[float] = None,
        optimizer_factory: Optional[OptimizerFactory] = None,
        criterion: Module = CrossEntropyLoss(),
        train_mb_size: int = 32,
        train_epochs: int = 30,
        eval_mb_size: int = 256,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[BasePlugin]] = None,
        evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin]] = default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ) -> None:
        if not isinstance(model, PiggybackModel):
            raise TypeError(
                f"Piggyback trains a PiggybackModel, got {type(model).__name__}. "
                "Wrap your network: Piggyback(model=PiggybackModel(backbone), ...)."
            )
        backbone_lr = lr if backbone_lr is None else backbone_lr
        for name, value in (
            ("mask_lr", mask_lr),
            ("lr", lr),
            ("backbone_lr", backbone_lr),
            ("lr_decay_factor", lr_decay_factor),
        ):
            _check_positive(name, value)
        for name, value in (("train_mb_size", train_mb_size), ("train_epochs", train_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        decay_epochs = sorted(int(e) for e in lr_decay_epochs)
        if any(e < 1 for e in decay_epochs):
            raise ValueError(f"lr_decay_epochs must be positive epoch counts, got {decay_epochs}.")
        self.mask_lr = mask_lr
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.lr_decay_epochs = decay_epochs
        self.lr_decay_factor = lr_decay_factor
        self.train_backbone_on_first_experience = train_backbone_on_first_experience
        self.optimizer_factory: OptimizerFactory = optimizer_factory or torch.optim.Adam
        self.lr_scheduler: Optional[MultiStepLR] = None
        super().__init__(
            model=model,
            # Built per experience by make_optimizer: before the first task the
            # model has nothing to train.
            optimizer=None,  # type: ignore[arg-type]
            criterion=criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def model_adaptation(self, model: Optional[Module] = None) -> Module:
        """Add the experience's new tasks to the model (Avalanche's adaptation),
        training the backbone itself on the first one if asked to."""
        model = self.model if model is None else model
        if self.is_training and self.train_backbone_on_first_experience and not model.tasks:
            for task, classes in experience_task_classes(self.experience).items():
                model.add_task(task, classes=classes, train_backbone=True)
        return super().model_adaptation(model)

    def check_model_and_optimizer(self, **kwargs) -> None:
        # Every experience adds a task and starts a fresh optimizer over it.
        self.model = self.model_adaptation()
        self.make_optimizer(**kwargs)

    def make_optimizer(self, **kwargs) -> None:
        """A fresh optimizer over the learning tasks' parameters only."""
        groups = self.model.trainable_parameters()
        lrs = {"mask_scores": self.mask_lr, "task_parameters": self.lr, "backbone": self.backbone_lr}
        param_groups = [
            {"params": params, "lr": lrs[name], "name": name}
            for name, params in groups.items()
            if params
        ]
        self.optimizer = self.optimizer_factory(param_groups)
        self.lr_scheduler = MultiStepLR(
            self.optimizer, milestones=self.lr_decay_epochs, gamma=self.lr_decay_factor
        )

    def _after_training_epoch(self, **kwargs) -> None:
        self.lr_scheduler.step()
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        # Freeze before the plugins run, so metrics see the stored masks.
        for task in self.model.learning_tasks:
            self.model.freeze_task(task)
        super()._after_training_exp(**kwargs)
