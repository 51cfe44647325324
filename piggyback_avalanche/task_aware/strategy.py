"""The Avalanche strategy that every method's strategy builds on: each
experience adds its tasks to a task-aware model, trains only them and
freezes them when it ends."""

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Optional

import torch
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.core import BasePlugin
from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import PositionalArgumentsDeprecatedWarning

from piggyback_avalanche.checks import check_count, check_positive, warn_caller, without_no_logger_warning
from piggyback_avalanche.task_aware.experiences import (
    origin_experience_index,
)
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.plugin_support import refuse_unfit_plugins
from piggyback_avalanche.task_aware.refusals import (
    refuse_labels_outside_heads,
    refuse_online_without_boundaries,
    refuse_unfit_model,
)
from piggyback_avalanche.task_aware.restore_point import RestorePoint
from piggyback_avalanche.task_aware.task_inference import InferencePer, TaskInference
from piggyback_avalanche.task_aware.task_scores import TASK_SCORES
from piggyback_avalanche.task_aware.task_sources import TasksByInference, TasksFromLabels, TaskSource
from piggyback_avalanche.training_defaults import (
    DEFAULT_EVAL_MB_SIZE,
    DEFAULT_LR,
    DEFAULT_TRAIN_EPOCHS,
    DEFAULT_TRAIN_MB_SIZE,
)

__all__ = [
    "TaskAwareStrategy",
    "OneRateStrategy",
    "MaskScoreStrategy",
    "DEFAULT_LR",
    "DEFAULT_TRAIN_EPOCHS",
    "DEFAULT_TRAIN_MB_SIZE",
    "DEFAULT_EVAL_MB_SIZE",
    "DEFAULT_NORM_STATISTICS_SAMPLES",
    "TASK_AWARE_STRATEGY_SETTINGS",
    "OptimizerFactory",
    "NonFiniteLossError",
    "TaskOutOfMemoryError",
]

DEFAULT_NORM_STATISTICS_SAMPLES = 512
"""How many of an experience's training samples the pass that re-estimates
batch-norm statistics reads. Chosen on validation data (a fifth of each
training experience held out) of the offline default, digits and
class-incremental MNIST streams, 3 seeds: within 0.1 points of reading
every sample (93.7, 98.9 and 97.0 % against 93.7, 99.0 and 97.0), where 32
samples lost up to 0.8 points (BENCHMARKS.md)."""

OptimizerFactory = Callable[[list[dict]], Optimizer]
"""Builds an optimizer from a list of parameter groups (each with its ``lr``)."""


_AVALANCHE_POSITIONAL_ARGUMENTS = (
    "model",
    "optimizer",
    "criterion",
    "train_mb_size",
    "train_epochs",
    "eval_mb_size",
    "device",
    "plugins",
    "evaluator",
    "eval_every",
)
"""The order in which Avalanche's strategies still take positional arguments
(``Naive(model, optimizer, criterion, ...)``)."""


TASK_AWARE_STRATEGY_SETTINGS = frozenset(
    {
        # Ours: how the optimizer is built and scheduled, the batch-norm pass, task inference.
        "optimizer_factory",
        "lr_decay_epochs",
        "lr_decay_factor",
        "recalibrate_norm_statistics",
        "norm_statistics_samples",
        "task_inference",
        "task_score",
        # Avalanche's template arguments.
        *_AVALANCHE_POSITIONAL_ARGUMENTS[1:],
        "peval_mode",
    }
)
"""The keywords every :class:`TaskAwareStrategy` takes besides the model and
its method's own settings: a registered method passes them to its strategy
unchanged (see :mod:`~piggyback_avalanche.task_aware.registration`)."""


def _taking_avalanche_positional_arguments(init: Callable[..., None], class_name: str) -> Callable[..., None]:
    """``init``, also taking positional arguments in Avalanche's order (with
    Avalanche's deprecation warning), whatever order ``init`` declares its
    keyword-only arguments in."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            if len(args) > len(_AVALANCHE_POSITIONAL_ARGUMENTS):
                raise TypeError(
                    f"{class_name} takes at most {len(_AVALANCHE_POSITIONAL_ARGUMENTS)} positional arguments, in "
                    f"Avalanche's order ({', '.join(_AVALANCHE_POSITIONAL_ARGUMENTS)}); got {len(args)}. Pass "
                    "the others by name."
                )
            named = dict(zip(_AVALANCHE_POSITIONAL_ARGUMENTS, args))
            twice = sorted(set(named) & set(kwargs))
            if twice:
                raise TypeError(f"{class_name} got {twice} both by position and by name; pass each once.")
            warn_caller(
                f"{class_name} got {len(args)} positional argument(s), taken as {list(named)} in Avalanche's order; "
                "as Avalanche asks, pass them by name.",
                PositionalArgumentsDeprecatedWarning,
            )
            kwargs.update(named)
        init(self, **kwargs)

    __init__.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
    return __init__


def _optimizer_factory(optimizer: Any, optimizer_factory: Optional["OptimizerFactory"]) -> "OptimizerFactory":
    """The factory that builds each experience's optimizer, from Avalanche's
    ``optimizer=`` (a class or a factory) or ``optimizer_factory=``."""
    if optimizer is not None and optimizer_factory is not None:
        raise ValueError("Pass optimizer= or optimizer_factory=, not both: they say the same thing.")
    if isinstance(optimizer, Optimizer):
        raise ValueError(
            f"optimizer= got an optimizer ({type(optimizer).__name__}) built over a model's parameters; these "
            "strategies build a fresh one for each experience, over that experience's task only. Pass its class "
            f"(optimizer=torch.optim.{type(optimizer).__name__}) or a factory of parameter groups "
            f"(optimizer=lambda groups: torch.optim.{type(optimizer).__name__}(groups, momentum=0.9)); the "
            "learning rates are the strategy's own (lr=..., and mask_lr=... for Piggyback)."
        )
    if optimizer is None:
        return optimizer_factory or _adam
    if not callable(optimizer):
        raise ValueError(f"optimizer= takes an optimizer class or a factory of parameter groups, got {optimizer!r}.")
    return optimizer  # a class takes the parameter groups as its first argument, as a factory does


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class TaskOutOfMemoryError(RuntimeError):
    """The device ran out of memory while a task trained."""


def _is_out_of_memory(error: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError.
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def _adam(param_groups: list[dict]) -> Optimizer:
    """Adam, fused into one kernel per step where torch supports it for these
    parameters (several times faster than the default on CPU and GPU)."""
    params = [p for group in param_groups for p in group["params"]]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(param_groups, fused=fusable or None)


class TaskAwareStrategy(SupervisedTemplate):
    """What Piggyback and PackNet share: each experience adds its tasks to a
    :class:`~piggyback_avalanche.task_aware.models.TaskAwareModel`, trains only them with a
    fresh optimizer (one parameter group per kind, each with its learning
    rate) and a step schedule, and freezes them when the experience ends,
    before the plugins' ``after_training_exp``.

    :param model: the task-aware model (``model_type``).
    :param lr_decay_epochs: epochs (counted within each training phase) after
        which every learning rate is multiplied by ``lr_decay_factor``.
    :param lr_decay_factor: the factor of the step schedule.
    :param optimizer: Avalanche's argument, for the optimizer each experience
        gets: an optimizer class (``torch.optim.SGD``) or a factory of
        parameter groups; ``None``: ``torch.optim.Adam``, fused where torch
        supports it. An optimizer already built over a model's parameters is
        refused, naming what to pass instead: each experience's optimizer
        covers that experience's task only, at the strategy's learning rates.
    :param optimizer_factory: the same, by this package's older name.
    :param recalibrate_norm_statistics: before freezing, re-estimate the
        learning tasks' batch-norm running statistics with one pass over
        ``norm_statistics_samples`` of the experience's training samples
        (eval transforms) through the final layers; see
        :meth:`TaskAwareModel.recalibrate_norm_statistics`. ``None``: the
        method's choice (:attr:`recalibrates_norm_statistics`).
    :param norm_statistics_samples: how many training samples (at random)
        that pass reads, so that its cost does not grow with the
        experience; ``None``: all of them.
    :param task_inference: ``None`` (the default): task labels are required
        and used, at training and at evaluation. Otherwise the stream's task
        labels are never read: training experience ``k`` becomes the
        model's task ``k`` (its head over the experience's classes, in the
        stream's label space), and evaluation infers each sample's task
        among the learned ones: ``"sample"`` (each sample on its own) or
        ``"batch"`` (every evaluation mini-batch comes from one task), or a
        :class:`~piggyback_avalanche.task_aware.task_inference.TaskInference`
        for full control. For class-incremental streams, and
        task-incremental ones evaluated without their labels.
    :param task_score: with ``task_inference="sample"`` or ``"batch"``, the
        score (see :class:`~piggyback_avalanche.task_aware.task_inference.TaskInference`);
        ``None``: the model's default. Unless it is a logit score, a model
        that has learned nothing yet is made to keep the feature statistics
        it reads (``model.keep_feature_statistics()``).
    :param base_kwargs: Avalanche's usual arguments, passed to
        ``SupervisedTemplate`` (``criterion``, ``train_mb_size``,
        ``train_epochs``, ``eval_mb_size``, ``device``, ``plugins``,
        ``evaluator``, ``eval_every``, ...). As with Avalanche's strategies,
        the first of them may come by position, in Avalanche's order
        (``Piggyback(model, optimizer, criterion, ...)``, with Avalanche's
        deprecation warning). Plugins that cannot apply are refused here
        (:mod:`~piggyback_avalanche.task_aware.plugin_support`).

    **Online streams** (Avalanche's ``split_online_stream``): a task learns
    over all of its sub-experiences, with one optimizer, and is frozen at its
    last one (``access_task_boundaries=True``), or, without task boundaries,
    when the data of another task arrives. The passes that re-estimate its
    batch-norm statistics and fit its feature statistics read its last
    sub-experience: online data is seen once.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # Avalanche wraps __init__ in its own positional-argument support
        cls.__init__ = _taking_avalanche_positional_arguments(cls.__init__, cls.__name__)  # type: ignore[method-assign]

    model_type: type[TaskAwareModel] = TaskAwareModel
    model: TaskAwareModel
    recalibrates_norm_statistics: bool = False
    """Whether the method re-estimates a task's batch-norm statistics before
    freezing it unless told otherwise: the masking methods do (a mask that
    changed while the statistics ran leaves them stale; chosen on validation
    data, BENCHMARKS.md)."""
    forgets_nothing: bool = True
    """Whether a frozen task's outputs stay bit-identical whatever later
    tasks learn (a method that trains shared weights under soft gates, as
    HAT does, keeps them within rounding instead)."""
    optimizer: Optimizer | None
    train_epochs: int

    def __init__(
        self,
        *,
        model: TaskAwareModel,
        optimizer: type[Optimizer] | OptimizerFactory | None = None,
        lr_decay_epochs: Sequence[int] = (),
        lr_decay_factor: float = 0.1,
        optimizer_factory: OptimizerFactory | None = None,
        recalibrate_norm_statistics: bool | None = None,
        norm_statistics_samples: int | None = DEFAULT_NORM_STATISTICS_SAMPLES,
        task_inference: InferencePer | TaskInference | None = None,
        task_score: str | None = None,
        criterion: Module = CrossEntropyLoss(),
        train_mb_size: int = DEFAULT_TRAIN_MB_SIZE,
        train_epochs: int = DEFAULT_TRAIN_EPOCHS,
        eval_mb_size: int = DEFAULT_EVAL_MB_SIZE,
        device: str | torch.device = "cpu",
        plugins: Sequence[BasePlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] = default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ) -> None:
        name = type(self).__name__
        refuse_unfit_model(name, model, self.model_type)
        refuse_unfit_plugins(name, [*(plugins or []), criterion], infers_tasks=task_inference is not None)
        check_positive("lr_decay_factor", lr_decay_factor)
        check_count("train_mb_size", train_mb_size)
        check_count("train_epochs", train_epochs)
        decay_epochs = sorted(int(e) for e in lr_decay_epochs)
        if any(e < 1 for e in decay_epochs):
            raise ValueError(f"lr_decay_epochs must be positive epoch counts, got {decay_epochs}.")
        self.lr_decay_epochs = decay_epochs
        self.lr_decay_factor = lr_decay_factor
        self.optimizer_factory: OptimizerFactory = _optimizer_factory(optimizer, optimizer_factory)
        self.recalibrate_norm_statistics = (
            self.recalibrates_norm_statistics if recalibrate_norm_statistics is None else recalibrate_norm_statistics
        )
        if norm_statistics_samples is not None:
            check_count("norm_statistics_samples", norm_statistics_samples)
        self.norm_statistics_samples = norm_statistics_samples
        if task_score is not None and not isinstance(task_inference, str):
            raise ValueError(
                f"task_score={task_score!r} needs task_inference='sample' or 'batch' (a TaskInference "
                "carries its own score)."
            )
        if isinstance(task_inference, str):
            task_inference = TaskInference(per=task_inference, score=task_score)
        if task_inference is not None:
            offered = {**TASK_SCORES, **model.task_scores()}
            if task_inference.score not in offered and model.feature_statistics is None and not model.tasks:
                # Asking for task inference (or a statistics score) is enough: the model
                # has learned nothing yet, so it can still keep what those scores read.
                model.keep_feature_statistics()
            task_inference.check_model(model)
            if task_inference.score is None and task_inference.score_name(model) in TASK_SCORES:
                warn_caller(
                    f"{name} will infer tasks by the entropy of each task's head, which is near chance per sample "
                    f"when heads train briefly: the model learned tasks {model.tasks} without feature statistics. "
                    "Build the model with feature_statistics=True for the Mahalanobis scores, or pass task_score= "
                    "to choose a logit score on purpose."
                )
        self.task_source: TaskSource = TasksFromLabels() if task_inference is None else TasksByInference(task_inference)
        self.mb_inferred_tasks: torch.Tensor | None = None
        """The inferred task of each sample of the last evaluation mini-batch
        (``None`` when tasks were not inferred)."""
        self._eval_width = 0
        self._optimized: list[int] = []  # the parameters the optimizer was built over
        self._sub_experiences_trained: dict[int, int] = {}  # of each experience of an online stream
        self.lr_scheduler: MultiStepLR | None = None
        # evaluator=None asks for no metrics and no logger: Avalanche's warning about it is noise.
        quiet = without_no_logger_warning() if evaluator is None else contextlib.nullcontext()
        with quiet:
            super().__init__(
                model=model,
                # Built per experience by make_optimizer: before the first task the
                # model has nothing to train.
                optimizer=None,
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

    def group_learning_rates(self) -> dict[str, float]:
        """The learning rate of each parameter group of
        ``model.trainable_parameters()``."""
        raise NotImplementedError

    def learning_rate_settings(self) -> dict[str, Any]:
        """The learning rates as configured, by parameter group (a rate that
        follows each experience says its rule): what checkpoints record."""
        return self.group_learning_rates()

    def experience_steps(self, experience: Any) -> int:
        """The optimizer steps that training ``experience`` gives its task:
        its batches (of an online sub-experience's whole experience) times
        the epochs."""
        whole = getattr(experience, "origin_experience", None) or experience
        return math.ceil(len(whole.dataset) / self.train_mb_size) * self.train_epochs

    def settings(self) -> dict[str, Any]:
        """What the strategy trains with, as plain values: a checkpoint is
        refused by a strategy whose settings differ."""
        return {
            "strategy": type(self).__name__,
            "train_mb_size": self.train_mb_size,
            "train_epochs": self.train_epochs,
            "lr_decay_epochs": list(self.lr_decay_epochs),
            "lr_decay_factor": self.lr_decay_factor,
            "recalibrate_norm_statistics": self.recalibrate_norm_statistics,
            "norm_statistics_samples": self.norm_statistics_samples,
            "learning_rates": dict(sorted(self.learning_rate_settings().items())),
            # How experiences become tasks (the inference itself may change); only
            # when on, so that checkpoints written before the option still load.
            **({"infers_tasks": True} if self.task_source.infers_tasks else {}),
        }

    def check_model_and_optimizer(self, **kwargs) -> None:
        # Every experience adds a task and starts a fresh optimizer over it
        # (an online task's sub-experiences go on with the one they have).
        self.model = self.model_adaptation()
        if self.is_training:
            self._check_labels_fit_heads()
        # The optimizer holds the parameters it was built over, so their ids stay theirs.
        if self.optimizer is None or self._optimized != self._trainable_parameter_ids():
            self.make_optimizer(**kwargs)

    def _trainable_parameter_ids(self) -> list[int]:
        return [id(p) for params in self.model.trainable_parameters().values() for p in params]

    def _check_labels_fit_heads(self) -> None:
        if self.task_source.infers_tasks and not self.is_training:
            return  # the inferred task's head answers; a wrong guess is an error, not a bad input
        dataset = self.experience.dataset
        tasks = self.task_source.sample_tasks(self.experience, torch.as_tensor(list(dataset.targets_task_labels)))
        refuse_labels_outside_heads(
            self.model, self.experience, torch.as_tensor(list(dataset.targets)), tasks, training=self.is_training
        )

    def model_adaptation(self, model: Module | None = None) -> Any:  # Avalanche's is untyped
        """Avalanche's adaptation; when evaluating, it also refuses samples of
        classes the task's head does not have, naming them (instead of an
        index error inside the loss)."""
        tasks = self.task_source.tasks_to_adapt(self.experience)
        if tasks is not None:
            adapted: TaskAwareModel = self.model if model is None else model  # type: ignore[assignment]
            adapted.adapt_to_tasks(tasks)
            self._eval_width = max(c for classes in tasks.values() for c in classes) + 1
            return adapted.to(self.device)
        adapted = super().model_adaptation(model)
        if not self.is_training:
            self._check_labels_fit_heads()
        return adapted

    @property
    def task_inference(self) -> TaskInference | None:
        """How evaluation infers tasks (``None``: the stream's task labels)."""
        return self.task_source.inference if isinstance(self.task_source, TasksByInference) else None

    def experience_tasks(self, experience: Any) -> dict[int, list[int]]:
        """The tasks that training ``experience`` learns, with their classes:
        the stream's task labels, or with task inference the experience's
        number as the one task, over all its classes (for an online
        sub-experience, those of the experience it was cut from)."""
        return self.task_source.experience_tasks(experience)

    def forward(self) -> Any:
        """Avalanche's forward pass; with task inference, training passes the
        experience's task and evaluation infers the task of every sample
        (the stream's task labels are never read)."""
        # Avalanche passes the batch's task labels only when the experience says it
        # has them; an online sub-experience carries them in its data alone (mb_task_id).
        if self.is_training:
            self.mb_inferred_tasks = None
            return self.task_source.training_logits(self.model, self.mb_x, self.mb_task_id, self.experience)
        logits, self.mb_inferred_tasks = self.task_source.evaluation_logits(
            self.model, self.mb_x, self.mb_task_id, self.experience, width=self._eval_width
        )
        return logits

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``, after checking that every experience has
        task labels and samples.

        An experience that fails (any exception, an interrupt included)
        leaves the model, the random generators and the clock as they were
        before it, so training it again gives what a clean run gives; an
        out-of-memory error is re-raised as :class:`TaskOutOfMemoryError`,
        with what to change."""
        for experience in experiences if isinstance(experiences, Iterable) else [experiences]:
            self.refuse_before_training(experience)
        self._restore_point: RestorePoint | None = None
        try:
            return super().train(experiences, eval_streams, **kwargs)
        except BaseException as error:
            if self._restore_point is not None:
                self._restore_point.restore()
                self.model = self._restore_point.model
            if not _is_out_of_memory(error):
                raise
            experience = getattr(self.experience, "current_experience", "?")
            raise TaskOutOfMemoryError(
                f"Out of memory while training experience {experience} with train_mb_size="
                f"{self.train_mb_size}: {str(error).splitlines()[0]} Lower train_mb_size (or eval_mb_size), "
                "then resume: load_experience_checkpoint(strategy, path, accept_changed_settings={'train_mb_size'}) "
                "restores the last completed experience, and train() again continues this one."
            ) from error

    def refuse_before_training(self, experience: Any) -> None:
        """Raise, naming the problem and the fix, if ``experience`` cannot be
        trained; called for every experience before ``train`` does any work."""
        refuse_online_without_boundaries(type(self).__name__, experience)
        self.task_source.refuse_before_training(experience, self.model, type(self).__name__)

    def backward(self) -> None:
        if not torch.isfinite(self.loss):
            cause, fix = self._non_finite_loss_cause()
            raise NonFiniteLossError(
                f"The loss is {self.loss.item()} at experience {self.experience.current_experience} "
                f"(tasks {self.model.learning_tasks}), epoch {self.clock.train_exp_epochs}, iteration "
                f"{self.clock.train_epoch_iterations} of the epoch: {cause}. Nothing was frozen or saved, so the "
                f"last checkpoint is intact. {fix}"
            )
        super().backward()

    def _non_finite_loss_cause(self) -> tuple[str, str]:
        """What made the loss NaN or infinite (the inputs, the model's
        outputs, or the criterion on finite outputs), and what to do."""
        inputs, outputs = self.mb_x, self.mb_output
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            return "the inputs hold NaN or infinite values", "Clean the data, then resume from the checkpoint."
        if isinstance(outputs, torch.Tensor) and not bool(torch.isfinite(outputs).all()):
            return (
                "the model's outputs are NaN or infinite on finite inputs: training diverged",
                "Lower the learning rates, then resume from the checkpoint.",
            )
        return (
            f"the inputs and the model's outputs are finite, so the criterion ({type(self._criterion).__name__}) "
            "made it: it does not fit these outputs (the task's logits, as wide as every class the model knows, "
            "masked classes at a finite MASKED_LOGIT) or these targets",
            "Use a criterion that takes logits and class labels, such as the default CrossEntropyLoss, then resume "
            "from the checkpoint.",
        )

    def make_optimizer(self, **kwargs) -> None:
        """A fresh optimizer over the learning tasks' parameters only.

        :raises ValueError: if no task is being learned (before the first
            experience, the model has nothing to train): ``train`` builds it
            for every experience, after adding the experience's task.
        """
        groups = {name: params for name, params in self.model.trainable_parameters().items() if params}
        if not groups:
            raise ValueError(
                f"{type(self).__name__} has no task being learned, so there is nothing to optimise: train() "
                "builds a fresh optimizer for every experience, after adding the experience's task. Call "
                "train(experience) instead of make_optimizer()."
            )
        # Asked only now: a rate may follow the experience being learned.
        lrs = self.group_learning_rates()
        param_groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in groups.items()]
        self.optimizer = self.optimizer_factory(param_groups)
        self._optimized = self._trainable_parameter_ids()
        self.lr_scheduler = MultiStepLR(self.optimizer, milestones=self.lr_decay_epochs, gamma=self.lr_decay_factor)

    def _after_training_epoch(self, **kwargs: Any) -> None:
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        super()._after_training_epoch(**kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        # Before the model adapts to the experience: what a failure returns to.
        self._restore_point = RestorePoint(self.model, self.clock, unchanging=self.model.frozen_task_parts())
        super()._before_training_exp(**kwargs)

    def _task_ends_with(self, experience: Any) -> bool:
        """Whether ``experience`` ends its task: any experience but an online
        stream's sub-experience, and that at the last of its experience."""
        if not isinstance(experience, OnlineCLExperience):
            return True
        origin = origin_experience_index(experience)
        self._sub_experiences_trained[origin] = self._sub_experiences_trained.get(origin, 0) + 1
        # Avalanche 0.6 does not mark the last sub-experience of an experience
        # whose size is a multiple of experience_size: the count says it too.
        return bool(experience.is_last_subexp) or self._sub_experiences_trained[origin] == experience.sub_stream_length

    def _after_training_exp(self, **kwargs) -> None:
        # An online task goes on learning until its last sub-experience.
        if self._task_ends_with(self.experience):
            if self.recalibrate_norm_statistics and self.model.has_norm_statistics():
                self._recalibrate_norm_statistics()
            # Freeze before the plugins run, so metrics see the final state.
            for task in self.model.learning_tasks:
                self.model.freeze_task(task)
            if self.model.feature_statistics is not None:
                # Once frozen: a task that trained the backbone has now handed it its final norms.
                self._fit_feature_statistics()
        self._restore_point = None  # the experience is complete
        super()._after_training_exp(**kwargs)

    def _training_data_pass(self, samples: int | None = None) -> Any:
        """One pass over the experience's training data with the eval
        transforms, in mixed-class batches as in training; over ``samples``
        of them drawn at random (without replacement), if given."""
        dataset = self.experience.dataset.eval()
        generator = torch.Generator().manual_seed(0)
        count = len(dataset) if samples is None else min(samples, len(dataset))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.train_mb_size,
            sampler=torch.utils.data.RandomSampler(dataset, num_samples=count, generator=generator),
            collate_fn=getattr(dataset, "collate_fn", None),
        )

    def _fit_feature_statistics(self) -> None:
        for task in self.experience_tasks(self.experience):
            batches = self.task_source.statistics_batches(self._training_data_pass(), task)
            self.model.fit_feature_statistics(task, ((x.to(self.device), y) for x, y in batches))

    def _recalibrate_norm_statistics(self) -> None:
        loader = self._training_data_pass(self.norm_statistics_samples)
        batches = self.task_source.norm_batches(loader, self.experience)
        self.model.recalibrate_norm_statistics(
            (inputs.to(self.device), task_labels.to(self.device)) for inputs, task_labels in batches
        )


class OneRateStrategy(TaskAwareStrategy):
    """A task-aware strategy that trains every parameter group at one
    learning rate, ``lr``: for methods whose groups need no rates of their own.

    :param model: the task-aware model (``model_type``).
    :param lr: the learning rate of every parameter group.
    :param kwargs: :class:`TaskAwareStrategy`'s arguments.
    """

    def __init__(self, *, model: TaskAwareModel, lr: float = DEFAULT_LR, **kwargs: Any) -> None:
        check_positive("lr", lr)
        self.lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {name: self.lr for name in self.model.trainable_parameters()}


class MaskScoreStrategy(TaskAwareStrategy):
    """A task-aware strategy whose tasks are chosen by learned mask scores
    (a supermask, a subnetwork): it trains the ``"mask_scores"`` group at
    ``score_lr`` and its other groups (``lr_groups``) at ``lr``, the two
    rates such methods tune apart.

    :param model: the task-aware model (``model_type``).
    :param score_lr: learning rate of the mask scores.
    :param lr: learning rate of the other groups.
    :param kwargs: :class:`TaskAwareStrategy`'s arguments.
    """

    lr_groups: ClassVar[tuple[str, ...]] = ("task_parameters",)
    """The parameter groups, besides the scores, that train at ``lr``."""

    def __init__(self, *, model: TaskAwareModel, score_lr: float, lr: float = DEFAULT_LR, **kwargs: Any) -> None:
        check_positive("score_lr", score_lr)
        check_positive("lr", lr)
        self.score_lr = score_lr
        self.lr = lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {"mask_scores": self.score_lr, **dict.fromkeys(self.lr_groups, self.lr)}
