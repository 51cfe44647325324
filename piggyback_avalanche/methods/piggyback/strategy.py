"""Piggyback as an Avalanche strategy."""

from typing import Any, Dict, Optional

from torch.nn import Module

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.piggyback.model import PiggybackModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TaskAwareStrategy

__all__ = ["Piggyback", "PIGGYBACK_PAPER_SETTINGS", "DEFAULT_MASK_LR"]

DEFAULT_MASK_LR = 3e-4
"""Default learning rate of the mask scores, chosen for short runs (see the README)."""

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


class Piggyback(TaskAwareStrategy):
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
    :param train_backbone_on_first_experience: train the backbone's own
        weights (all of them, with the first task's head and normalization) on
        the first experience, then freeze them; for streams without a
        pretrained backbone.
    :param backbone_lr: learning rate of the backbone on the first
        experience; defaults to ``lr``.
    :param recalibrate_norm_statistics: re-estimate the task's batch-norm
        statistics with its final mask before freezing it (on by default; an
        addition to the paper, see the README).
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s
        arguments: the step schedule (``lr_decay_epochs``,
        ``lr_decay_factor``), ``optimizer_factory`` and Avalanche's usual ones
        (``criterion``, ``train_mb_size=32``, ``train_epochs=5``,
        ``eval_mb_size=256``, ``device``, ``plugins``, ``evaluator``,
        ``eval_every``); all plugins run.
    """

    model_type = PiggybackModel

    def __init__(
        self,
        *,
        model: PiggybackModel,
        mask_lr: float = DEFAULT_MASK_LR,
        lr: float = DEFAULT_LR,
        train_backbone_on_first_experience: bool = False,
        backbone_lr: Optional[float] = None,
        recalibrate_norm_statistics: bool = True,
        **kwargs: Any,
    ) -> None:
        backbone_lr = lr if backbone_lr is None else backbone_lr
        for name, value in (("mask_lr", mask_lr), ("lr", lr), ("backbone_lr", backbone_lr)):
            check_positive(name, value)
        self.mask_lr = mask_lr
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.train_backbone_on_first_experience = train_backbone_on_first_experience
        super().__init__(model=model, recalibrate_norm_statistics=recalibrate_norm_statistics, **kwargs)

    def group_learning_rates(self) -> Dict[str, float]:
        return {"mask_scores": self.mask_lr, "task_parameters": self.lr, "backbone": self.backbone_lr}

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "train_backbone_on_first_experience": self.train_backbone_on_first_experience}

    def refuse_before_training(self, experience: Any) -> None:
        super().refuse_before_training(experience)
        tasks = sorted(self.experience_tasks(experience))
        if self.train_backbone_on_first_experience and not self.model.tasks and len(tasks) > 1:
            raise ValueError(
                f"train_backbone_on_first_experience=True trains the backbone with the first experience's "
                f"task, but experience {experience.current_experience} holds tasks {tasks}. Give the first "
                "experience a single task label, or start from a pretrained backbone with "
                "train_backbone_on_first_experience=False."
            )

    def model_adaptation(self, model: Optional[Module] = None) -> Module:
        """Add the experience's new tasks to the model (Avalanche's adaptation),
        training the backbone itself on the first one if asked to."""
        piggyback = self.model if model is None else model
        if not isinstance(piggyback, PiggybackModel):
            raise TypeError(f"Piggyback adapts a PiggybackModel, got {type(piggyback).__name__}.")
        if self.is_training and self.train_backbone_on_first_experience and not piggyback.tasks:
            for task, classes in self.experience_tasks(self.experience).items():
                piggyback.add_task(task, classes=classes, train_backbone=True)
        return super().model_adaptation(piggyback)
