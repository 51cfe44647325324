"""Every strategy by name, on any backbone: ours, the paper's reference
points and Avalanche's baselines, all task-incremental with one head per task.

>>> from piggyback_avalanche import available_strategies, make_strategy
>>> strategy = make_strategy("packnet", backbone, train_epochs=5, evaluator=my_evaluator)

Add your own with :func:`register_strategy`.
"""

import copy
import inspect
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from avalanche.models import FeCAMClassifier, TrainEvalModel
from avalanche.models.packnet import PackNetModel as AvalanchePackNetModel
from avalanche.training import (
    AGEM,
    DER,
    EWC,
    MAS,
    Cumulative,
    GDumb,
    JointTraining,
    LwF,
    Naive,
    Replay,
    SynapticIntelligence,
)
from avalanche.training import PackNet as AvalanchePackNet
from avalanche.training.plugins import CurrentDataFeCAMUpdate
from avalanche.training.templates import SupervisedTemplate

# Importing the methods registers each of them (each method's package registers itself).
import piggyback_avalanche.methods  # noqa: F401
from piggyback_avalanche.checks import without_no_logger_warning
from piggyback_avalanche.methods.packnet.strategy import DEFAULT_POST_PRUNE_EPOCHS, DEFAULT_PRUNE_RATIO
from piggyback_avalanche.task_aware.backbone_conversion import find_classifier
from piggyback_avalanche.task_aware.models import MultiHeadModel
from piggyback_avalanche.task_aware.registration import (
    LEARNING_RATE_RANGE,
    REGISTERED_STRATEGIES,
    MethodConfig,
    RegisteredStrategy,
    SearchRange,
    StrategyBuilder,
    register_method,
    register_strategy,
)
from piggyback_avalanche.task_aware.strategy import (
    DEFAULT_EVAL_MB_SIZE,
    DEFAULT_LR,
    DEFAULT_TRAIN_EPOCHS,
    DEFAULT_TRAIN_MB_SIZE,
    OptimizerFactory,
)
from piggyback_avalanche.task_aware.task_norm import NORM_LAYER_TYPES

__all__ = [
    "SearchRange",
    "COMMON_DEFAULTS",
    "StrategyBuilder",
    "RegisteredStrategy",
    "MethodConfig",
    "register_strategy",
    "register_method",
    "available_strategies",
    "registered_strategy",
    "make_strategy",
]

COMMON_DEFAULTS: dict[str, Any] = {
    "train_mb_size": DEFAULT_TRAIN_MB_SIZE,
    "train_epochs": DEFAULT_TRAIN_EPOCHS,
    "eval_mb_size": DEFAULT_EVAL_MB_SIZE,
}
"""Avalanche arguments every registered strategy gets unless the caller
gives them, so that strategies compare on equal terms."""


def _keywords(function: Callable[..., Any]) -> frozenset[str]:
    """The named parameters of one of Avalanche's functions (not ours: a
    method of this package lists its settings in its :class:`MethodConfig`)."""
    parameters = inspect.signature(function).parameters.values()
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named - {"self", "model", "backbone"})


def _constructor_settings(cls: type) -> frozenset[str]:
    """Every keyword an Avalanche strategy's constructor takes, through its
    bases' ``**kwargs``."""
    return frozenset().union(*(_keywords(vars(c)["__init__"]) for c in cls.__mro__ if "__init__" in vars(c)))


def available_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(REGISTERED_STRATEGIES)


def registered_strategy(name: str) -> RegisteredStrategy:
    """What the registry knows of the strategy ``name``.

    :raises ValueError: for an unknown name, listing the known ones.
    """
    if name not in REGISTERED_STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}. Available: {', '.join(available_strategies())}. "
            "Register your own with @register_strategy(name)."
        )
    return REGISTERED_STRATEGIES[name]


def make_strategy(name: str, backbone: nn.Module, **config: Any) -> SupervisedTemplate:
    """Build a registered strategy on ``backbone`` (which is copied, never
    changed).

    :param name: one of :func:`available_strategies`.
    :param backbone: the network; its last ``nn.Linear`` (or ``classifier=``)
        becomes one head per task.
    :param config: Avalanche's usual arguments (``train_mb_size``,
        ``train_epochs``, ``eval_mb_size``, ``device``, ``plugins``,
        ``evaluator``, ...) and the strategy's own (``lr``, ``mask_lr``,
        ``prune_ratio``, ``ewc_lambda``, ...).
    :raises ValueError: for an unknown name, listing the known ones.
    """
    # evaluator=None asks for no metrics and no logger: Avalanche's warning about it is noise.
    quiet = without_no_logger_warning() if "evaluator" in config and config["evaluator"] is None else nullcontext()
    with quiet:
        return registered_strategy(name).build(backbone, **{**COMMON_DEFAULTS, **config})


def _optimizer(model: nn.Module, lr: float, factory: OptimizerFactory | None) -> torch.optim.Optimizer:
    return (factory or torch.optim.Adam)([{"params": list(model.parameters()), "lr": lr}])


def _register_avalanche(
    name: str,
    strategy_class: type,
    search_space: Mapping[str, SearchRange] | None = None,
    *,
    trains_on_whole_stream: bool = False,
    single_head_only: bool = False,
    **defaults: Any,
) -> None:
    """Register an Avalanche baseline that trains the whole network, with
    one head per task (:class:`MultiHeadModel`), or with ``single_head=True``
    the backbone's own classifier over every class (class-incremental), and
    Adam at ``lr``."""

    def build(
        backbone: nn.Module,
        *,
        lr: float = DEFAULT_LR,
        classifier: Any = None,
        single_head: bool = False,
        optimizer_factory: OptimizerFactory | None = None,
        criterion: nn.Module = CrossEntropyLoss(),
        **config: Any,
    ) -> SupervisedTemplate:
        if single_head_only and not single_head:
            raise ValueError(
                f"{name} calls the model without task labels, so it runs only class-incrementally, with one "
                f"head over all classes: make_strategy({name!r}, backbone, single_head=True), or the runner's "
                "--scenario class_incremental."
            )
        model = copy.deepcopy(backbone) if single_head else MultiHeadModel(backbone, classifier=classifier)
        return strategy_class(
            model=model,
            optimizer=_optimizer(model, lr, optimizer_factory),
            criterion=criterion,
            **{**defaults, **config},
        )

    build.__doc__ = f"Avalanche's {strategy_class.__name__} with one head per task (or one for all)."
    register_strategy(
        name,
        settings=_keywords(build) | _constructor_settings(strategy_class),
        trains_on_whole_stream=trains_on_whole_stream,
        class_incremental_settings={"single_head": True},
        task_incremental=not single_head_only,
        search_space={"lr": LEARNING_RATE_RANGE, **(search_space or {})},
    )(build)


_register_avalanche("naive", Naive)
_register_avalanche("ewc", EWC, {"ewc_lambda": SearchRange(1.0, 1e4)}, ewc_lambda=100.0)
_register_avalanche("si", SynapticIntelligence, {"si_lambda": SearchRange(0.01, 100.0)}, si_lambda=1.0)
_register_avalanche("lwf", LwF, {"alpha": SearchRange(0.1, 10.0)}, alpha=1.0, temperature=2.0)
_register_avalanche("mas", MAS, {"lambda_reg": SearchRange(0.01, 100.0)}, lambda_reg=1.0)
_register_avalanche("replay", Replay, mem_size=200)
_register_avalanche("agem", AGEM, patterns_per_exp=64, sample_size=64)
_register_avalanche("joint", JointTraining, trains_on_whole_stream=True)
_register_avalanche("cumulative", Cumulative)
_register_avalanche("gdumb", GDumb, mem_size=500)
_register_avalanche("der", DER, single_head_only=True, mem_size=500)


class _FixedFeatures(nn.Module):
    """A network's features, frozen: never trained, always in evaluation
    mode (its batch norm keeps the statistics it came with)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "_FixedFeatures":
        return self  # stays in evaluation mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


@register_strategy(
    "fecam",
    settings=_constructor_settings(Naive) - {"optimizer", "train_epochs"} | {"classifier", "single_head"},
    class_incremental_settings={"single_head": True},
    task_incremental=False,
)
def _fecam(
    backbone: nn.Module,
    *,
    classifier: Any = None,
    single_head: bool = False,
    plugins: list[Any] | None = None,
    **config: Any,
) -> SupervisedTemplate:
    """A per-class Mahalanobis classifier on the frozen backbone's features
    (FeCAM, Goswami et al., NeurIPS 2023; Avalanche's FeCAMClassifier): no
    exemplar, nothing trained, class-incremental only."""
    if not single_head:
        raise ValueError(
            "fecam classifies among every class seen, without task labels: make_strategy('fecam', backbone, "
            "single_head=True), or the runner's --scenario class_incremental."
        )
    network = copy.deepcopy(backbone)
    name = find_classifier(network, classifier)
    features = int(network.get_submodule(name).in_features)  # type: ignore[arg-type]  # an nn.Linear
    parent, _, attribute = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, attribute, nn.Identity())
    # What trains is a placeholder that Avalanche's loop needs; evaluation reads the class statistics.
    model = TrainEvalModel(_FixedFeatures(network), nn.Linear(features, 1), FeCAMClassifier())
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.train_classifier.parameters(), lr=0.0),
        plugins=[CurrentDataFeCAMUpdate(), *(plugins or [])],
        **{**config, "train_epochs": 0},
    )


@register_strategy(
    "packnet_avalanche", settings=_constructor_settings(AvalanchePackNet) | {"lr", "prune_ratio", "optimizer_factory"}
)
def _packnet_avalanche(
    backbone: nn.Module,
    *,
    lr: float = DEFAULT_LR,
    prune_ratio: float = DEFAULT_PRUNE_RATIO,
    post_prune_epochs: int = DEFAULT_POST_PRUNE_EPOCHS,
    optimizer_factory: OptimizerFactory | None = None,
    plugins: list[Any] | None = None,
    **config: Any,
) -> SupervisedTemplate:
    """Avalanche 0.6's own PackNet, as a cross-check on MLP backbones. Its
    network keeps the backbone's single classifier for every task."""
    norms = [type(m).__name__ for m in backbone.modules() if isinstance(m, NORM_LAYER_TYPES)]
    if norms:
        raise ValueError(
            f"packnet_avalanche cannot take a backbone with {sorted(set(norms))}: Avalanche's "
            "PackNet rejects normalization layers. Use 'packnet', which handles them."
        )
    model = AvalanchePackNetModel(copy.deepcopy(backbone))
    strategy = AvalanchePackNet(
        model=model,
        optimizer=_optimizer(model, lr, optimizer_factory),
        prune_proportion=prune_ratio,
        post_prune_epochs=post_prune_epochs,
        **config,
    )
    # Avalanche nests the user's plugin list inside its own, so it never calls
    # them; put them back as plugins, ahead of the evaluator and clock.
    strategy.plugins = [p for p in strategy.plugins if p is not None and not isinstance(p, list)]
    strategy.plugins[1:1] = list(plugins or [])
    return strategy
