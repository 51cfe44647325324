"""PackNet as an Avalanche strategy."""

from collections.abc import Callable, Sequence
from typing import Any

from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.training.plugins import EarlyStoppingPlugin

from piggyback_avalanche.checks import check_count, check_positive
from piggyback_avalanche.methods.packnet.layers import MAX_PACKNET_TASKS
from piggyback_avalanche.methods.packnet.model import PackNetModel, check_prune_ratio
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TaskAwareStrategy

__all__ = [
    "PackNet",
    "PruneRatio",
    "PACKNET_PAPER_SETTINGS",
    "DEFAULT_PRUNE_RATIO",
    "DEFAULT_POST_PRUNE_EPOCHS",
    "check_packnet_settings",
]

DEFAULT_PRUNE_RATIO = 0.5
"""Default share of each layer's free weights that a task releases."""

DEFAULT_POST_PRUNE_EPOCHS = 1
"""Default retraining epochs after pruning."""

PACKNET_PAPER_SETTINGS: dict[str, object] = {
    "prune_ratio": 0.75,
    "post_prune_epochs": 10,
    "post_prune_lr": 1e-4,
}
"""The paper's settings for a sequence of fine-grained tasks (Mallya &
Lazebnik, 2018, Sec. 4): prune 75 % per task, retrain 10 epochs at 1e-4. For a
first task as large as ImageNet the paper prunes 50 %: pass
``prune_ratio=lambda position: 0.5 if position == 0 else 0.75``."""

PruneRatio = float | Sequence[float] | Callable[[int], float]
"""A prune ratio for every task: one float, one per task in order, or a
function of the task's position in the stream (0 for the first)."""


def _schedule(ratio: Callable[[int], float]) -> list[float | None]:
    """The ratio a prune-ratio function gives each task position a model can
    hold (``None`` where it gives none)."""
    values: list[float | None] = []
    for position in range(MAX_PACKNET_TASKS):
        try:
            values.append(float(ratio(position)))
        except Exception:  # a schedule defined for the first tasks only
            values.append(None)
    return values


def check_packnet_settings(
    *, prune_ratio: PruneRatio, post_prune_epochs: int, lr: float, post_prune_lr: float | None
) -> None:
    """Refuse PackNet settings that cannot work (see :class:`PackNet`).

    :raises ValueError: naming the setting and what it takes.
    """
    for name, value in (("lr", lr), ("post_prune_lr", lr if post_prune_lr is None else post_prune_lr)):
        check_positive(name, value)
    check_count("post_prune_epochs", post_prune_epochs, minimum=0)
    if not callable(prune_ratio):
        ratios = [prune_ratio] if isinstance(prune_ratio, (int, float)) else list(prune_ratio)
        if not ratios:
            raise ValueError("prune_ratio lists no ratio; give one per task, or a float.")
        for ratio in ratios:
            check_prune_ratio(ratio)


class PackNet(TaskAwareStrategy):
    """PackNet (Mallya & Lazebnik, CVPR 2018) as an Avalanche strategy.

    Each experience trains its task on the weights no earlier task owns for
    ``train_epochs``, prunes ``prune_ratio`` of them per layer by magnitude,
    retrains the kept ones for ``post_prune_epochs`` at ``post_prune_lr`` with
    a fresh optimizer, then freezes them. Earlier tasks' weights sit outside
    every optimizer, so momentum and weight decay cannot move them.

    An experience has ``train_epochs + post_prune_epochs`` epochs, counted on
    by Avalanche's clock: periodic evaluation (``eval_every``) counts them
    all and always evaluates the pruned, retrained model last. The
    retraining is a training phase of its own for ``EarlyStoppingPlugin``:
    it stops (and restores the best weights of) each phase apart, so it can
    never undo the pruning.

    :param model: a :class:`~piggyback_avalanche.methods.packnet.model.PackNetModel`.
    :param prune_ratio: the share of each layer's free weights to release
        after training a task (see :data:`PruneRatio`). The paper uses 0.75
        per task for fine-grained tasks (0.5 for ImageNet first).
    :param post_prune_epochs: retraining epochs after pruning (paper: 10).
    :param lr: learning rate of the task's weights, heads and normalization
        (and of the biases, which train on the first task only).
    :param post_prune_lr: learning rate of the retraining phase; defaults to
        ``lr`` (paper: 1e-4).
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = PackNetModel

    def __init__(
        self,
        *,
        model: PackNetModel,
        prune_ratio: PruneRatio = DEFAULT_PRUNE_RATIO,
        post_prune_epochs: int = DEFAULT_POST_PRUNE_EPOCHS,
        lr: float = DEFAULT_LR,
        post_prune_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_packnet_settings(
            prune_ratio=prune_ratio, post_prune_epochs=post_prune_epochs, lr=lr, post_prune_lr=post_prune_lr
        )
        post_prune_lr = lr if post_prune_lr is None else post_prune_lr
        self.prune_ratio = prune_ratio
        self.post_prune_epochs = post_prune_epochs
        self.lr = lr
        self.post_prune_lr = post_prune_lr
        self._phase_lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {"weights": self._phase_lr, "task_parameters": self._phase_lr, "backbone": self._phase_lr}

    def settings(self) -> dict[str, Any]:
        ratio = self.prune_ratio
        return {
            **super().settings(),
            # A function cannot be compared: the ratios it gives every task it can hold can.
            "prune_ratio": _schedule(ratio) if callable(ratio) else ratio,
            "post_prune_epochs": self.post_prune_epochs,
            "post_prune_lr": self.post_prune_lr,
        }

    def ratio_for(self, position: int) -> float:
        """The prune ratio of the task at ``position`` in the stream."""
        if callable(self.prune_ratio):
            ratio = self.prune_ratio(position)
            try:
                check_prune_ratio(ratio)
            except ValueError as error:
                raise ValueError(f"prune_ratio({position}) gave {ratio!r}: {error}") from None
            return float(ratio)
        if isinstance(self.prune_ratio, (int, float)):
            return float(self.prune_ratio)
        if position >= len(self.prune_ratio):
            raise ValueError(
                f"prune_ratio lists {len(self.prune_ratio)} ratios but this is task "
                f"number {position + 1}; give one ratio per task, or a float."
            )
        return float(self.prune_ratio[position])

    def refuse_before_training(self, experience: Any) -> None:
        if isinstance(experience, OnlineCLExperience):
            raise ValueError(
                "PackNet trains a task on the whole experience, prunes it, then retrains it on the whole "
                "experience again; an online stream gives a task's data once, in pieces. Train PackNet on the "
                "stream the online one was cut from, or use Piggyback, which learns online."
            )
        super().refuse_before_training(experience)

    def _before_training_exp(self, **kwargs: Any) -> None:
        # Periodic evaluation plans the experience's last evaluation from
        # train_epochs; this experience has the retraining epochs too.
        epochs, self.train_epochs = self.train_epochs, self.train_epochs + self.post_prune_epochs
        try:
            super()._before_training_exp(**kwargs)
        finally:
            self.train_epochs = epochs

    def _train_exp(self, experience: Any, eval_streams: Any = None, **kwargs: Any) -> None:
        # Looked up first, so that a missing ratio stops before any training.
        ratio = self.ratio_for(len(self.model.frozen_tasks))
        super()._train_exp(experience, eval_streams, **kwargs)
        self.model.prune(ratio)
        if not self.post_prune_epochs:
            return
        # The retraining is a training phase of its own: a stop requested in
        # the last epoch of training ended that phase, not this one, and early
        # stopping starts again from the pruned model (restoring its best
        # weights from before the pruning would undo it). Avalanche has no
        # callback for a phase within an experience, so the one plugin that
        # keeps per-phase state is reset here.
        self._stop_training = False
        for plugin in self.plugins:
            if isinstance(plugin, EarlyStoppingPlugin):
                plugin.before_training_exp(self)
        epochs, self.train_epochs, self._phase_lr = self.train_epochs, self.post_prune_epochs, self.post_prune_lr
        try:
            self.make_optimizer()
            super()._train_exp(experience, eval_streams, **kwargs)
        finally:
            self.train_epochs, self._phase_lr = epochs, self.lr
