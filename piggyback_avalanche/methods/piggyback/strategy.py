"""Piggyback as an Avalanche strategy."""

from typing import Any

from torch.nn import Module

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.piggyback.model import PiggybackModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TaskAwareStrategy

__all__ = ["Piggyback", "PIGGYBACK_PAPER_SETTINGS", "DEFAULT_MASK_CROSS_WITHIN", "mask_learning_rate"]

DEFAULT_MASK_CROSS_WITHIN = 0.1
"""The share of an experience's optimizer steps within which a score can
first cross the threshold, at the default mask learning rate. Chosen on
validation data only (a fifth of each training experience held out) of the
five offline streams as their presets run them, 3 seeds, as the share whose
largest shortfall against the best fixed ``mask_lr`` was smallest: at most
0.9 points on the four CNN streams and 0.8 on the ViT stream, where the
CNNs' best share, 0.025, fell 7.7 points short (``benchmarks/mask_rate.py``,
BENCHMARKS.md)."""


def mask_learning_rate(*, distance: float, steps: int, cross_within: float) -> float:
    """The mask scores' learning rate at which a score that moves one way
    at every step crosses the threshold within ``cross_within`` of the
    ``steps``: Adam moves a parameter by about its learning rate per step,
    whatever the gradient's scale, so a rate fit for 300 steps learns almost
    nothing in 20, and one fit for 20 overshoots in 300.

    :param distance: how far a score starts from the threshold.
    :param steps: the optimizer steps the experience gives the task.
    :param cross_within: a share of ``steps``, in (0, 1].
    """
    return distance / (cross_within * max(steps, 1))


PIGGYBACK_PAPER_SETTINGS: dict[str, object] = {
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
    :param mask_lr: learning rate of the mask scores; ``None`` (the default):
        one for each experience, from the optimizer steps it gives its task
        (:func:`mask_learning_rate`): scores start at ``mask_scale`` and a
        mask flips only once a score crosses the threshold, and Adam moves a
        score by about its learning rate per step, so the rate that suits 20
        steps is ten times the one that suits 200. The paper's rate, for
        its 30 epochs, is 1e-4.
    :param mask_cross_within: with ``mask_lr=None``, the share of the
        experience's steps within which a score can first cross the
        threshold.
    :param lr: learning rate of the heads and normalization parameters.
    :param train_backbone_on_first_experience: train the backbone's own
        weights (all of them, with the first task's head and normalization) on
        the first experience, then freeze them; for streams without a
        pretrained backbone.
    :param backbone_lr: learning rate of the backbone on the first
        experience; defaults to ``lr``.
    :param recalibrate_norm_statistics: re-estimate the task's batch-norm
        statistics with its final mask before freezing it (on by default; an
        addition to the paper, see ``docs/guide/api.md``).
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s
        arguments: the step schedule (``lr_decay_epochs``,
        ``lr_decay_factor``), ``optimizer_factory`` and Avalanche's usual ones
        (``criterion``, ``train_mb_size=32``, ``train_epochs=5``,
        ``eval_mb_size=256``, ``device``, ``plugins``, ``evaluator``,
        ``eval_every``); all plugins run.
    """

    model_type = PiggybackModel
    recalibrates_norm_statistics = True

    def __init__(
        self,
        *,
        model: PiggybackModel,
        mask_lr: float | None = None,
        mask_cross_within: float = DEFAULT_MASK_CROSS_WITHIN,
        lr: float = DEFAULT_LR,
        train_backbone_on_first_experience: bool = False,
        backbone_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        backbone_lr = lr if backbone_lr is None else backbone_lr
        rates = {"lr": lr, "backbone_lr": backbone_lr, **({"mask_lr": mask_lr} if mask_lr is not None else {})}
        for name, value in rates.items():
            check_positive(name, value)
        check_positive("mask_cross_within", mask_cross_within)
        if mask_cross_within > 1:
            raise ValueError(
                f"mask_cross_within is a share of an experience's steps, at most 1; got {mask_cross_within}."
            )
        self.mask_lr = mask_lr
        self.mask_cross_within = mask_cross_within
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.train_backbone_on_first_experience = train_backbone_on_first_experience
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {"mask_scores": self.current_mask_lr(), "task_parameters": self.lr, "backbone": self.backbone_lr}

    def current_mask_lr(self) -> float:
        """The mask scores' learning rate for the experience being trained:
        ``mask_lr``, or the rate its optimizer steps call for."""
        if self.mask_lr is not None:
            return self.mask_lr
        if self.experience is None:
            raise ValueError("The mask learning rate follows the experience's steps: there is no experience now.")
        return mask_learning_rate(
            distance=self.model.mask_scale - self.model.threshold,
            steps=self.experience_steps(self.experience),
            cross_within=self.mask_cross_within,
        )

    def learning_rate_settings(self) -> dict[str, Any]:
        rates: dict[str, Any] = {"task_parameters": self.lr, "backbone": self.backbone_lr}
        rates["mask_scores"] = self.mask_lr if self.mask_lr is not None else {"cross_within": self.mask_cross_within}
        return rates

    def settings(self) -> dict[str, Any]:
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

    def model_adaptation(self, model: Module | None = None) -> Module:
        """Add the experience's new tasks to the model (Avalanche's adaptation),
        training the backbone itself on the first one if asked to."""
        piggyback = self.model if model is None else model
        if not isinstance(piggyback, PiggybackModel):
            raise TypeError(f"Piggyback adapts a PiggybackModel, got {type(piggyback).__name__}.")
        if self.is_training and self.train_backbone_on_first_experience and not piggyback.tasks:
            for task, classes in self.experience_tasks(self.experience).items():
                piggyback.add_task(task, classes=classes, train_backbone=True)
        return super().model_adaptation(piggyback)
