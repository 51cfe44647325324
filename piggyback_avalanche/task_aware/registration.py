"""Registration: how a strategy makes itself known by name, with what
callers such as the benchmark runner need to know of it.

A task-aware method registers itself in its own package, as peft's methods
do: a :class:`MethodConfig` subclass lists the method's own settings (those
of its model and of its strategy, each with its default and type), and
:func:`register_method` ties the name to the config, the model class and the
strategy class::

    @dataclass(frozen=True, kw_only=True)
    class ScaledConfig(MethodConfig):
        scale_lr: float = 1e-2

    register_method("scaled", config=ScaledConfig, model=ScaledModel, strategy=Scaled)

Every other keyword a caller gives goes to the strategy unchanged: the
arguments every task-aware strategy takes (:data:`TASK_AWARE_STRATEGY_SETTINGS`:
Avalanche's ``train_epochs``, ``plugins``, ``evaluator``, ... and ours,
``task_inference``, ``optimizer_factory``, ...). Strategies that are not
task-aware (Avalanche's baselines, a user's own builder) register a builder
with :func:`register_strategy`.

Look strategies up with :mod:`piggyback_avalanche.training.registry`, which
makes sure the built-in ones have registered.
"""

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, TASK_AWARE_STRATEGY_SETTINGS

if TYPE_CHECKING:  # types only: registering imports no model or strategy
    from torch import nn

    from avalanche.training.templates import SupervisedTemplate

__all__ = [
    "SearchRange",
    "LEARNING_RATE_RANGE",
    "StrategyBuilder",
    "RegisteredStrategy",
    "REGISTERED_STRATEGIES",
    "register_strategy",
    "MethodConfig",
    "model_setting",
    "register_method",
]

StrategyBuilder = Callable[..., "SupervisedTemplate"]
"""``builder(backbone, **config) -> strategy``."""


@dataclass(frozen=True)
class SearchRange:
    """The values a setting is tuned over: ``low`` to ``high``, on a log
    scale (rates, weights of regularisers) or a linear one (shares).

    :param low: the smallest value.
    :param high: the largest value.
    :param log: search on a log scale.
    """

    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high if self.log else not self.low < self.high:
            raise ValueError(f"A search range needs low < high (and low > 0 on a log scale), got {self}.")


LEARNING_RATE_RANGE = SearchRange(1e-4, 1e-2)
"""The learning rates every strategy is tuned over."""


@dataclass(frozen=True)
class RegisteredStrategy:
    """A registered strategy, and what a caller such as the benchmark runner
    needs to know of it without knowing its type.

    :param name: the registered name.
    :param build: ``build(backbone, **config) -> strategy``.
    :param description: one line for listings.
    :param setting_names: the configuration keys the builder takes; ``None``: any.
    :param untrained_backbone_setting: a boolean keyword that makes the
        strategy train the backbone itself on the first experience, for
        streams without a pretrained backbone (``None``: it has none).
    :param trains_on_whole_stream: ``train()`` takes the whole stream at once
        (joint training) instead of one experience at a time.
    :param class_incremental_settings: the settings that make the strategy
        learn a stream without task labels at test time (class-incremental):
        task inference for ours, one head over all classes for Avalanche's
        baselines; ``None``: it cannot.
    :param task_incremental: the strategy learns a stream with task labels,
        one head per task; ``False`` for one that only classifies among
        every class seen (class-incremental only).
    :param search_space: the settings the runner's tuning mode searches,
        with their ranges (empty: nothing to tune).
    :param config: the method's :class:`MethodConfig` subclass, for a
        method registered with :func:`register_method`.
    :param model_class: the method's model class (likewise).
    :param strategy_class: the method's strategy class (likewise).
    """

    name: str
    build: StrategyBuilder
    description: str
    setting_names: frozenset[str] | None
    untrained_backbone_setting: str | None = None
    trains_on_whole_stream: bool = False
    class_incremental_settings: Mapping[str, Any] | None = None
    task_incremental: bool = True
    search_space: Mapping[str, SearchRange] = field(default_factory=dict)
    config: "type[MethodConfig] | None" = None
    model_class: type | None = None
    strategy_class: type | None = None

    def accepted(self, config: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``config`` the builder takes."""
        return {k: v for k, v in config.items() if self.setting_names is None or k in self.setting_names}

    def check_settings(self, config: dict[str, Any]) -> None:
        """Refuse the method's own settings in ``config`` that its
        :class:`MethodConfig` refuses, before any work (nothing for a
        strategy registered without one).

        :raises ValueError: naming the setting and what it takes.
        """
        if self.config is not None:
            names = self.config.setting_names()
            self.config(**{k: v for k, v in config.items() if k in names})


REGISTERED_STRATEGIES: dict[str, RegisteredStrategy] = {}
"""Every registered strategy by name (the built-in ones once
:mod:`piggyback_avalanche.training.registry` is imported)."""


def _named_parameters(builder: StrategyBuilder) -> frozenset[str] | None:
    """The keywords a user's builder takes, or ``None`` if it takes
    ``**config`` (any key)."""
    parameters = inspect.signature(builder).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named - {"backbone"})


def register_strategy(
    name: str,
    *,
    settings: Iterable[str] | None = None,
    description: str | None = None,
    untrained_backbone_setting: str | None = None,
    trains_on_whole_stream: bool = False,
    class_incremental_settings: Mapping[str, Any] | None = None,
    task_incremental: bool = True,
    search_space: Mapping[str, SearchRange] | None = None,
    config: "type[MethodConfig] | None" = None,
    model_class: type | None = None,
    strategy_class: type | None = None,
) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Register a strategy builder under ``name``, with what callers need to
    know of it (see :class:`RegisteredStrategy`).

    The builder is called as ``builder(backbone, **config)``, where config
    holds the caller's arguments on top of the registry's common defaults,
    and returns an Avalanche strategy. It must not change ``backbone``.

    :param settings: the configuration keys the builder takes; by default the
        named parameters of its signature, or any key if it takes ``**config``.
    :param description: defaults to the first line of the builder's docstring.
    :param search_space: see :class:`RegisteredStrategy`; every key must be
        one of its settings.
    :param config: the method's config class; see :class:`RegisteredStrategy`
        (:func:`register_method` gives it, and the two below).
    :param model_class: the model class the builder makes.
    :param strategy_class: the strategy class the builder makes.
    :raises ValueError: if the name is taken, or the search space names a
        setting the builder does not take.
    """

    def decorator(builder: StrategyBuilder) -> StrategyBuilder:
        if name in REGISTERED_STRATEGIES:
            raise ValueError(f"A strategy named {name!r} is already registered.")
        registered = RegisteredStrategy(
            name=name,
            build=builder,
            description=description or (builder.__doc__ or name).strip().splitlines()[0],
            setting_names=frozenset(settings) if settings is not None else _named_parameters(builder),
            untrained_backbone_setting=untrained_backbone_setting,
            trains_on_whole_stream=trains_on_whole_stream,
            class_incremental_settings=class_incremental_settings,
            task_incremental=task_incremental,
            search_space=dict(search_space or {}),
            config=config,
            model_class=model_class,
            strategy_class=strategy_class,
        )
        unknown = sorted(set(registered.search_space) - set(registered.accepted(dict(registered.search_space))))
        if unknown:
            raise ValueError(f"The search space of {name!r} names settings it does not take: {unknown}.")
        REGISTERED_STRATEGIES[name] = registered
        return builder

    return decorator


_GOES_TO_MODEL = "goes to the model"


def model_setting(default: Any) -> Any:
    """A :class:`MethodConfig` field that the model's constructor takes
    (every other field goes to the strategy's)."""
    return field(default=default, metadata={_GOES_TO_MODEL: True})


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """The settings of a task-aware method besides the backbone: the fields
    made with :func:`model_setting` go to its model's constructor, the others
    to its strategy's. A method subclasses it with its own settings (each
    with the default its constructors use) and registers it with
    :func:`register_method`.

    :ivar classifier: the ``nn.Linear`` replaced by per-task heads, or its
        name; ``None`` finds it.
    :ivar feature_statistics: every task keeps statistics of its features,
        for task inference.
    :ivar lr: the learning rate of the task's normalization and head.

    A subclass checks its values in ``__post_init__`` (with the checks its
    constructors use), so that a caller such as the runner refuses bad
    settings before any work.
    """

    classifier: "str | nn.Module | None" = model_setting(None)
    feature_statistics: bool = model_setting(False)
    lr: float = DEFAULT_LR

    untrained_backbone_setting: ClassVar[str | None] = None
    """The strategy setting that trains an untrained backbone on the first
    experience (see :class:`RegisteredStrategy`)."""

    search_space: ClassVar[Mapping[str, SearchRange]] = {"lr": LEARNING_RATE_RANGE}
    """The method's settings the runner's tuning mode searches."""

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The method's own settings: the config's fields."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    def model_settings(self) -> dict[str, Any]:
        """The settings the model's constructor takes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get(_GOES_TO_MODEL)}

    def strategy_settings(self) -> dict[str, Any]:
        """The settings the strategy's constructor takes (besides the model)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get(_GOES_TO_MODEL)}


def register_method(
    name: str,
    *,
    config: type[MethodConfig],
    model: type["nn.Module"],
    strategy: type["SupervisedTemplate"],
    description: str | None = None,
    **defaults: Any,
) -> None:
    """Register a task-aware method: ``make_strategy(name, backbone, **kw)``
    builds ``strategy(model=model(backbone, **model settings), **strategy
    settings, **the rest)``, the settings from ``config(**defaults, **the
    method's keys of kw)``, the rest being :data:`TASK_AWARE_STRATEGY_SETTINGS`.
    Without task labels at test time, the strategy infers them per sample.

    :param config: the method's settings (see :class:`MethodConfig`).
    :param model: its model class (a ``TaskAwareModel``).
    :param strategy: its strategy class (a ``TaskAwareStrategy``).
    :param description: one line for listings; by default the strategy's
        and model's class names.
    :param defaults: settings of ``config`` that this registration sets
        otherwise (a variant such as ternary Piggyback).
    :raises ValueError: if the name is taken, or ``defaults`` names a
        setting the config does not have.
    """
    unknown = sorted(set(defaults) - config.setting_names())
    if unknown:
        raise ValueError(f"{name!r}: {config.__name__} has no setting(s) {unknown}.")

    def build(backbone: "nn.Module", **given: Any) -> "SupervisedTemplate":
        own = config(**{**defaults, **{k: v for k, v in given.items() if k in config.setting_names()}})
        rest = {k: v for k, v in given.items() if k not in config.setting_names()}
        return strategy(model=model(backbone, **own.model_settings()), **own.strategy_settings(), **rest)

    build.__doc__ = description or f"{strategy.__name__} on a {model.__name__}."
    register_strategy(
        name,
        # The strategy builds its own optimizer from the model's parameter groups.
        settings=(TASK_AWARE_STRATEGY_SETTINGS - {"optimizer"}) | config.setting_names(),
        untrained_backbone_setting=config.untrained_backbone_setting,
        class_incremental_settings={"task_inference": "sample"},
        search_space=config.search_space,
        config=config,
        model_class=model,
        strategy_class=strategy,
    )(build)
