"""Avalanche strategies for mask-based continual learning."""

import math
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Type, Union

import torch
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from avalanche.core import BasePlugin
from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
from avalanche.training.templates import SupervisedTemplate

from piggyback_avalanche.model import PiggybackModel, TaskAwareModel, experience_task_classes
from piggyback_avalanche.packnet import PackNetModel
from piggyback_avalanche.reference_models import ClassifierOnlyModel, IndividualNetworksModel

__all__ = [
    "TaskAwareStrategy",
    "Piggyback",
    "PackNet",
    "PruneRatio",
    "PACKNET_PAPER_SETTINGS",
    "IndividualNetworks",
    "ClassifierOnly",
    "PIGGYBACK_PAPER_SETTINGS",
    "DEFAULT_MASK_LR",
    "DEFAULT_LR",
    "OptimizerFactory",
    "NonFiniteLossError",
    "TaskOutOfMemoryError",
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


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class TaskOutOfMemoryError(RuntimeError):
    """The device ran out of memory while a task trained."""


def _is_out_of_memory(error: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError.
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def _adam(param_groups: List[Dict]) -> Optimizer:
    """Adam, fused into one kernel per step where torch supports it for these
    parameters (several times faster than the default on CPU and GPU)."""
    params = [p for group in param_groups for p in group["params"]]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(param_groups, fused=fusable or None)


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _check_count(name: str, value: int, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}.")


class TaskAwareStrategy(SupervisedTemplate):
    """What Piggyback and PackNet share: each experience adds its tasks to a
    :class:`~piggyback_avalanche.model.TaskAwareModel`, trains only them with a
    fresh optimizer (one parameter group per kind, each with its learning
    rate) and a step schedule, and freezes them when the experience ends,
    before the plugins' ``after_training_exp``.

    :param model: the task-aware model (``model_type``).
    :param lr_decay_epochs: epochs (counted within each training phase) after
        which every learning rate is multiplied by ``lr_decay_factor``.
    :param lr_decay_factor: the factor of the step schedule.
    :param optimizer_factory: builds the optimizer from the parameter groups;
        defaults to ``torch.optim.Adam``, fused where torch supports it.
    :param recalibrate_norm_statistics: before freezing, re-estimate the
        learning tasks' batch-norm running statistics with one pass over the
        experience's training data (eval transforms) through the final
        layers; see :meth:`TaskAwareModel.recalibrate_norm_statistics`.
    :param base_kwargs: Avalanche's usual arguments, passed to
        ``SupervisedTemplate`` (``criterion``, ``train_mb_size``,
        ``train_epochs``, ``eval_mb_size``, ``device``, ``plugins``,
        ``evaluator``, ``eval_every``, ...).
    """

    model_type: Type[TaskAwareModel] = TaskAwareModel

    def __init__(
        self,
        *,
        model: TaskAwareModel,
        lr_decay_epochs: Sequence[int] = (),
        lr_decay_factor: float = 0.1,
        optimizer_factory: Optional[OptimizerFactory] = None,
        recalibrate_norm_statistics: bool = False,
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
        name, model_name = type(self).__name__, self.model_type.__name__
        if not isinstance(model, self.model_type):
            raise TypeError(
                f"{name} trains a {model_name}, got {type(model).__name__}. "
                f"Wrap your network: {name}(model={model_name}(backbone), ...)."
            )
        _check_positive("lr_decay_factor", lr_decay_factor)
        _check_count("train_mb_size", train_mb_size)
        _check_count("train_epochs", train_epochs)
        decay_epochs = sorted(int(e) for e in lr_decay_epochs)
        if any(e < 1 for e in decay_epochs):
            raise ValueError(f"lr_decay_epochs must be positive epoch counts, got {decay_epochs}.")
        self.lr_decay_epochs = decay_epochs
        self.lr_decay_factor = lr_decay_factor
        self.optimizer_factory: OptimizerFactory = optimizer_factory or _adam
        self.recalibrate_norm_statistics = recalibrate_norm_statistics
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

    def group_learning_rates(self) -> Dict[str, float]:
        """The learning rate of each parameter group of
        ``model.trainable_parameters()``."""
        raise NotImplementedError

    def check_model_and_optimizer(self, **kwargs) -> None:
        # Every experience adds a task and starts a fresh optimizer over it.
        self.model = self.model_adaptation()
        if self.is_training:
            self._check_labels_fit_heads()
        self.make_optimizer(**kwargs)

    def _check_labels_fit_heads(self) -> None:
        """Refuse an experience whose samples carry class labels that its
        task's head lacks, before any step: the loss would be infinite (or,
        on CUDA, a device-side assert)."""
        dataset = self.experience.dataset
        targets = torch.as_tensor(list(dataset.targets))
        tasks = torch.as_tensor(list(dataset.targets_task_labels))
        for task in torch.unique(tasks).tolist():
            head = self.model.heads.heads[str(task)]
            extra = sorted(set(torch.unique(targets[tasks == task]).tolist()) - set(head.classes))
            if extra:
                raise ValueError(
                    f"Experience {self.experience.current_experience}: task {task} has samples labelled "
                    f"{extra}, but its head has classes {head.classes} (from the experience's "
                    "classes_in_this_experience). Make that attribute list every label of the experience."
                )

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``, after checking that every experience has
        task labels and samples; an out-of-memory error is re-raised as
        :class:`TaskOutOfMemoryError`, with what to change."""
        for experience in experiences if isinstance(experiences, Iterable) else [experiences]:
            experience_task_classes(experience)  # raises, naming the problem
        try:
            return super().train(experiences, eval_streams, **kwargs)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not _is_out_of_memory(error):
                raise
            experience = getattr(self.experience, "current_experience", "?")
            raise TaskOutOfMemoryError(
                f"Out of memory while training experience {experience} with train_mb_size="
                f"{self.train_mb_size}: {str(error).splitlines()[0]} Lower train_mb_size (or eval_mb_size), "
                "then resume: load_checkpoint() restores the last completed experience, and train() "
                "again continues this one."
            ) from error

    def backward(self) -> None:
        if not torch.isfinite(self.loss):
            raise NonFiniteLossError(
                f"The loss is {self.loss.item()} at experience {self.experience.current_experience} "
                f"(tasks {self.model.learning_tasks}), epoch {self.clock.train_exp_epochs}, iteration "
                f"{self.clock.train_epoch_iterations} of the epoch. Nothing was frozen or saved, so the last "
                "checkpoint is intact. Check the inputs for NaN or infinite values, or lower the learning "
                "rates, then resume from the checkpoint."
            )
        super().backward()

    def make_optimizer(self, **kwargs) -> None:
        """A fresh optimizer over the learning tasks' parameters only."""
        lrs = self.group_learning_rates()
        param_groups = [
            {"params": params, "lr": lrs[name], "name": name}
            for name, params in self.model.trainable_parameters().items()
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
        if self.recalibrate_norm_statistics:
            self._recalibrate_norm_statistics()
        # Freeze before the plugins run, so metrics see the final state.
        for task in self.model.learning_tasks:
            self.model.freeze_task(task)
        super()._after_training_exp(**kwargs)


    def _recalibrate_norm_statistics(self) -> None:
        dataset = self.experience.dataset.eval()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.train_mb_size,
            shuffle=True,  # batches of mixed classes, as in training
            generator=torch.Generator().manual_seed(0),
            collate_fn=getattr(dataset, "collate_fn", None),
        )
        self.model.recalibrate_norm_statistics(
            (inputs.to(self.device), task_labels.to(self.device)) for inputs, _, task_labels in loader
        )


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
    :param kwargs: :class:`TaskAwareStrategy`'s arguments: the step schedule
        (``lr_decay_epochs``, ``lr_decay_factor``), ``optimizer_factory`` and
        Avalanche's usual ones (``criterion``, ``train_mb_size=32``,
        ``train_epochs=30``, ``eval_mb_size=256``, ``device``, ``plugins``,
        ``evaluator``, ``eval_every``); all plugins run.
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
        **kwargs,
    ) -> None:
        backbone_lr = lr if backbone_lr is None else backbone_lr
        for name, value in (("mask_lr", mask_lr), ("lr", lr), ("backbone_lr", backbone_lr)):
            _check_positive(name, value)
        self.mask_lr = mask_lr
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.train_backbone_on_first_experience = train_backbone_on_first_experience
        super().__init__(model=model, recalibrate_norm_statistics=recalibrate_norm_statistics, **kwargs)

    def group_learning_rates(self) -> Dict[str, float]:
        return {"mask_scores": self.mask_lr, "task_parameters": self.lr, "backbone": self.backbone_lr}

    def model_adaptation(self, model: Optional[Module] = None) -> Module:
        """Add the experience's new tasks to the model (Avalanche's adaptation),
        training the backbone itself on the first one if asked to."""
        model = self.model if model is None else model
        if self.is_training and self.train_backbone_on_first_experience and not model.tasks:
            for task, classes in experience_task_classes(self.experience).items():
                model.add_task(task, classes=classes, train_backbone=True)
        return super().model_adaptation(model)


PACKNET_PAPER_SETTINGS: Dict[str, object] = {
    "prune_ratio": 0.75,
    "post_prune_epochs": 10,
    "post_prune_lr": 1e-4,
}
"""The paper's settings for a sequence of fine-grained tasks (Mallya &
Lazebnik, 2018, Sec. 4): prune 75 % per task, retrain 10 epochs at 1e-4. For a
first task as large as ImageNet the paper prunes 50 %: pass
``prune_ratio=lambda position: 0.5 if position == 0 else 0.75``."""

PruneRatio = Union[float, Sequence[float], Callable[[int], float]]
"""A prune ratio for every task: one float, one per task in order, or a
function of the task's position in the stream (0 for the first)."""


class PackNet(TaskAwareStrategy):
    """PackNet (Mallya & Lazebnik, CVPR 2018) as an Avalanche strategy.

    Each experience trains its task on the weights no earlier task owns for
    ``train_epochs``, prunes ``prune_ratio`` of them per layer by magnitude,
    retrains the kept ones for ``post_prune_epochs`` at ``post_prune_lr`` with
    a fresh optimizer, then freezes them. Earlier tasks' weights sit outside
    every optimizer, so momentum and weight decay cannot move them.

    :param model: a :class:`~piggyback_avalanche.packnet.PackNetModel`.
    :param prune_ratio: the share of each layer's free weights to release
        after training a task (see :data:`PruneRatio`). The paper uses 0.75
        per task for fine-grained tasks (0.5 for ImageNet first).
    :param post_prune_epochs: retraining epochs after pruning (paper: 10).
    :param lr: learning rate of the task's weights, heads and normalization
        (and of the biases, which train on the first task only).
    :param post_prune_lr: learning rate of the retraining phase; defaults to
        ``lr`` (paper: 1e-4).
    :param kwargs: :class:`TaskAwareStrategy`'s arguments.
    """

    model_type = PackNetModel

    def __init__(
        self,
        *,
        model: PackNetModel,
        prune_ratio: PruneRatio = 0.5,
        post_prune_epochs: int = 1,
        lr: float = DEFAULT_LR,
        post_prune_lr: Optional[float] = None,
        **kwargs,
    ) -> None:
        post_prune_lr = lr if post_prune_lr is None else post_prune_lr
        for name, value in (("lr", lr), ("post_prune_lr", post_prune_lr)):
            _check_positive(name, value)
        _check_count("post_prune_epochs", post_prune_epochs, minimum=0)
        if not callable(prune_ratio):
            ratios = [prune_ratio] if isinstance(prune_ratio, (int, float)) else list(prune_ratio)
            bad = [r for r in ratios if not isinstance(r, (int, float)) or not 0 <= r < 1]
            if bad or not ratios:
                raise ValueError(f"prune_ratio values must be in [0, 1), got {prune_ratio!r}.")
        self.prune_ratio = prune_ratio
        self.post_prune_epochs = post_prune_epochs
        self.lr = lr
        self.post_prune_lr = post_prune_lr
        self._phase_lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> Dict[str, float]:
        return {"weights": self._phase_lr, "task_parameters": self._phase_lr, "backbone": self._phase_lr}

    def ratio_for(self, position: int) -> float:
        """The prune ratio of the task at ``position`` in the stream."""
        if callable(self.prune_ratio):
            return self.prune_ratio(position)
        if isinstance(self.prune_ratio, (int, float)):
            return float(self.prune_ratio)
        if position >= len(self.prune_ratio):
            raise ValueError(
                f"prune_ratio lists {len(self.prune_ratio)} ratios but this is task "
                f"number {position + 1}; give one ratio per task, or a float."
            )
        return float(self.prune_ratio[position])

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        # Looked up first, so that a missing ratio stops before any training.
        ratio = self.ratio_for(len(self.model.frozen_tasks))
        super()._train_exp(experience, eval_streams, **kwargs)
        self.model.prune(ratio)
        if not self.post_prune_epochs:
            return
        epochs, self.train_epochs, self._phase_lr = self.train_epochs, self.post_prune_epochs, self.post_prune_lr
        try:
            self.make_optimizer()
            super()._train_exp(experience, eval_streams, **kwargs)
        finally:
            self.train_epochs, self._phase_lr = epochs, self.lr


class _OneLearningRate(TaskAwareStrategy):
    """A task-aware strategy that trains every parameter group at ``lr``."""

    def __init__(self, *, model: TaskAwareModel, lr: float = DEFAULT_LR, **kwargs) -> None:
        _check_positive("lr", lr)
        self.lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> Dict[str, float]:
        return defaultdict(lambda: self.lr)


class IndividualNetworks(_OneLearningRate):
    """A separate copy of the backbone fine-tuned for each task: the paper's
    upper reference point. Storage is T networks; nothing is forgotten.

    :param model: an :class:`~piggyback_avalanche.reference_models.IndividualNetworksModel`.
    :param lr: learning rate of the task's whole network and head.
    :param kwargs: :class:`TaskAwareStrategy`'s arguments.
    """

    model_type = IndividualNetworksModel


class ClassifierOnly(_OneLearningRate):
    """The backbone frozen, batch norm included, and one head trained per
    task: the paper's lower reference point.

    :param model: a :class:`~piggyback_avalanche.reference_models.ClassifierOnlyModel`.
    :param lr: learning rate of the heads.
    :param kwargs: :class:`TaskAwareStrategy`'s arguments.
    """

    model_type = ClassifierOnlyModel
