"""Every strategy by name, on any backbone: ours, the paper's reference
points and Avalanche's baselines, all task-incremental with one head per task.

>>> from piggyback_avalanche import available_strategies, make_strategy
>>> strategy = make_strategy("packnet", backbone, train_epochs=5, evaluator=my_evaluator)

Add your own with :func:`register_strategy`.
"""

import copy
import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from avalanche.models.packnet import PackNetModel as AvalanchePackNetModel
from avalanche.training import (
    AGEM,
    EWC,
    MAS,
    Cumulative,
    JointTraining,
    LwF,
    Naive,
    Replay,
    SynapticIntelligence,
)
from avalanche.training import PackNet as AvalanchePackNet
from avalanche.training.templates import SupervisedTemplate

from piggyback_avalanche.layers import NORM_LAYER_TYPES
from piggyback_avalanche.model import MultiHeadModel, PiggybackModel
from piggyback_avalanche.packnet import PackNetModel
from piggyback_avalanche.reference_models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.strategies import (
    DEFAULT_LR,
    ClassifierOnly,
    IndividualNetworks,
    OptimizerFactory,
    PackNet,
    Piggyback,
)

__all__ = [
    "COMMON_DEFAULTS",
    "StrategyBuilder",
    "register_strategy",
    "available_strategies",
    "make_strategy",
]

StrategyBuilder = Callable[..., SupervisedTemplate]
"""``builder(backbone, **config) -> strategy``."""

COMMON_DEFAULTS: Dict[str, Any] = {"train_mb_size": 32, "train_epochs": 5, "eval_mb_size": 256}
"""Avalanche arguments every registered strategy gets unless the caller
gives them, so that strategies compare on equal terms."""

_REGISTRY: Dict[str, StrategyBuilder] = {}


def register_strategy(name: str) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Register a strategy builder under ``name``.

    The builder is called as ``builder(backbone, **config)``, where config
    holds the caller's arguments on top of :data:`COMMON_DEFAULTS`, and
    returns an Avalanche strategy. It must not change ``backbone``.

    :raises ValueError: if the name is taken.
    """

    def decorator(builder: StrategyBuilder) -> StrategyBuilder:
        if name in _REGISTRY:
            raise ValueError(f"A strategy named {name!r} is already registered.")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_strategies() -> List[str]:
    """The registered strategy names, sorted."""
    return sorted(_REGISTRY)


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
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown strategy {name!r}. Available: {', '.join(available_strategies())}. "
            "Register your own with @register_strategy(name)."
        )
    return _REGISTRY[name](backbone, **{**COMMON_DEFAULTS, **config})


def _split(config: Dict[str, Any], model_class: type) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The model's keyword arguments, and the rest for the strategy."""
    model_keys = {
        p.name
        for p in inspect.signature(model_class.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    model_config = {k: v for k, v in config.items() if k in model_keys}
    return model_config, {k: v for k, v in config.items() if k not in model_keys}


def _ours(strategy_class: type, model_class: type, **defaults: Any) -> StrategyBuilder:
    def build(backbone: nn.Module, **config: Any) -> SupervisedTemplate:
        model_config, strategy_config = _split({**defaults, **config}, model_class)
        return strategy_class(model=model_class(backbone, **model_config), **strategy_config)

    build.__doc__ = f"{strategy_class.__name__} on a {model_class.__name__}."
    return build


register_strategy("piggyback")(_ours(Piggyback, PiggybackModel))
register_strategy("piggyback_ternary")(
    _ours(Piggyback, PiggybackModel, threshold_fn="ternarizer", mask_init="uniform")
)
register_strategy("packnet")(_ours(PackNet, PackNetModel))
register_strategy("individual")(_ours(IndividualNetworks, IndividualNetworksModel))
register_strategy("classifier_only")(_ours(ClassifierOnly, ClassifierOnlyModel))


def _optimizer(model: nn.Module, lr: float, factory: Optional[OptimizerFactory]) -> torch.optim.Optimizer:
    return (factory or torch.optim.Adam)([{"params": list(model.parameters()), "lr": lr}])


def _avalanche(strategy_class: type, **defaults: Any) -> StrategyBuilder:
    """A builder of an Avalanche baseline that trains the whole network, with
    one head per task (:class:`MultiHeadModel`) and Adam at ``lr``."""

    def build(
        backbone: nn.Module,
        *,
        lr: float = DEFAULT_LR,
        classifier: Any = None,
        optimizer_factory: Optional[OptimizerFactory] = None,
        criterion: nn.Module = CrossEntropyLoss(),
        **config: Any,
    ) -> SupervisedTemplate:
        model = MultiHeadModel(backbone, classifier=classifier)
        return strategy_class(
            model=model,
            optimizer=_optimizer(model, lr, optimizer_factory),
            criterion=criterion,
            **{**defaults, **config},
        )

    build.__doc__ = f"Avalanche's {strategy_class.__name__} with one head per task."
    return build


register_strategy("naive")(_avalanche(Naive))
register_strategy("ewc")(_avalanche(EWC, ewc_lambda=100.0))
register_strategy("si")(_avalanche(SynapticIntelligence, si_lambda=1.0))
register_strategy("lwf")(_avalanche(LwF, alpha=1.0, temperature=2.0))
register_strategy("mas")(_avalanche(MAS, lambda_reg=1.0))
register_strategy("replay")(_avalanche(Replay, mem_size=200))
register_strategy("agem")(_avalanche(AGEM, patterns_per_exp=64, sample_size=64))
register_strategy("joint")(_avalanche(JointTraining))
register_strategy("cumulative")(_avalanche(Cumulative))


@register_strategy("packnet_avalanche")
def _packnet_avalanche(
    backbone: nn.Module,
    *,
    lr: float = DEFAULT_LR,
    prune_ratio: float = 0.5,
    post_prune_epochs: int = 1,
    optimizer_factory: Optional[OptimizerFactory] = None,
    plugins: Optional[List[Any]] = None,
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
