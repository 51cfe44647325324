"""Which of Avalanche's plugins the task-aware strategies take, and why not
the others.

A task-aware strategy trains each task's own parameters with a fresh
optimizer, freezes them when the experience ends, and never trains them
again: forgetting is zero by construction. Plugins that protect earlier
tasks (regularisers, gradient projections, replay selected by
interference), that replace or re-initialise the model, or that read
features or heads our models do not have cannot apply; they are refused
when the strategy is built, naming why and what to use instead, before any
work. Every other plugin runs, the user's own included.

:data:`AVALANCHE_PLUGINS` lists every plugin Avalanche 0.6 ships (the plugin
table of the guide, ``docs/guide/avalanche_scripts.md``, is checked against it).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from avalanche.training.losses import ICaRLLossPlugin, MaskedCrossEntropy
from avalanche.training.plugins import (
    AGEMPlugin,
    BiCPlugin,
    CoPEPlugin,
    CurrentDataFeCAMUpdate,
    CurrentDataNCMUpdate,
    CWRStarPlugin,
    EarlyStoppingPlugin,
    EvaluationPlugin,
    EWCPlugin,
    FeatureDistillationPlugin,
    FeCAMOracle,
    FromScratchTrainingPlugin,
    GDumbPlugin,
    GEMPlugin,
    GenerativeReplayPlugin,
    GSS_greedyPlugin,
    LFLPlugin,
    LRSchedulerPlugin,
    LwFPlugin,
    MASPlugin,
    MemoryFeCAMUpdate,
    MemoryNCMUpdate,
    MIRPlugin,
    NCMOracle,
    RARPlugin,
    ReplayPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
    TrainGeneratorAfterExpPlugin,
)
from avalanche.training.plugins.checkpoint import CheckpointPlugin as _DeprecatedCheckpointPlugin

__all__ = ["PluginSupport", "AVALANCHE_PLUGINS", "plugin_support", "refuse_unfit_plugins"]

# Avalanche wraps the retired class in a deprecation function; the class is what its instances are.
CheckpointPlugin: type[Any] = _DeprecatedCheckpointPlugin.__wrapped__


@dataclass(frozen=True)
class PluginSupport:
    """What a task-aware strategy does with one of Avalanche's plugins.

    :param plugins: the plugin classes (their subclasses included).
    :param works: whether the strategies run it.
    :param reason: what it does with the strategies, or why it cannot apply.
    :param instead: for a refused plugin, what to use instead.
    :param unless: for a plugin that works, when it does not:
        ``unless(plugin, infers_tasks)`` says why (and what to do) for a
        configuration of it that cannot apply, or ``""``.
    """

    plugins: tuple[type[Any], ...]
    works: bool
    reason: str
    instead: str = ""
    unless: Callable[[Any, bool], str] | None = None

    def refusal(self, strategy_name: str, plugin: Any, *, infers_tasks: bool) -> str | None:
        """Why ``strategy_name`` refuses ``plugin`` and what to use instead,
        or ``None`` if it runs it."""
        name = type(plugin).__name__
        if not self.works:
            return f"{name} cannot work with {strategy_name}: {self.reason} Instead: {self.instead}"
        why = self.unless(plugin, infers_tasks) if self.unless is not None else ""
        if why:
            return f"{name} cannot work with {strategy_name}{'(task_inference=...)' if infers_tasks else ''}: {why}"
        return None


_NEVER_TRAINED_AGAIN = (
    "{strategy} never trains a learned task's parameters again (its forgetting is zero by construction), "
    "so there is nothing for it to protect."
)
_BASELINE = "compare with the method itself: make_strategy('{name}', backbone)."

AVALANCHE_PLUGINS: tuple[PluginSupport, ...] = (
    PluginSupport(
        (EvaluationPlugin,),
        works=True,
        reason="metrics and loggers run as with every strategy (evaluator=...).",
    ),
    PluginSupport(
        (EarlyStoppingPlugin,),
        works=True,
        reason="stops a task's training and restores its best weights; PackNet's post-prune retraining is a "
        "training phase of its own (see PackNet).",
    ),
    PluginSupport(
        (LwFPlugin,),
        works=True,
        reason="runs and changes nothing: earlier tasks' outputs are frozen, so their distillation loss has "
        "no gradient; it keeps a copy of the model.",
    ),
    PluginSupport(
        (ReplayPlugin,),
        works=True,
        reason="runs and changes nothing: replayed samples pass through their own frozen task, which no "
        "gradient changes; its buffer costs memory and counts in the model size.",
        unless=lambda plugin, infers_tasks: (
            "with task inference every training sample trains the experience's task, so replayed samples of "
            "earlier classes would train its head on classes it does not have. Drop the plugin; task inference "
            "needs no exemplars."
            if infers_tasks
            else ""
        ),
    ),
    PluginSupport(
        (MaskedCrossEntropy,),
        works=True,
        reason="as the criterion, with mask='new': the cross-entropy over the experience's classes, which are its "
        "task's head's classes.",
        unless=lambda plugin, infers_tasks: (
            f"mask={plugin.mask!r} weighs classes of other tasks, which a sample's task has no logit for (each task "
            "has its own head; those columns hold MASKED_LOGIT, whose softmax is 0 and whose log makes the loss "
            "NaN). Use MaskedCrossEntropy(mask='new'), or the default CrossEntropyLoss."
            if getattr(plugin, "mask", "new") != "new"
            else ""
        ),
    ),
    PluginSupport(
        (LRSchedulerPlugin,),
        works=False,
        reason="{strategy} builds a fresh optimizer for each experience, over that experience's task only, so "
        "a scheduler built on another optimizer would change nothing.",
        instead="lr_decay_epochs=(...) and lr_decay_factor=... (a step schedule within each experience), or "
        "optimizer=... / optimizer_factory=... for another optimizer.",
    ),
    PluginSupport(
        (EWCPlugin,),
        works=False,
        reason="it penalises changes to weights that earlier tasks used. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; " + _BASELINE.format(name="ewc"),
    ),
    PluginSupport(
        (SynapticIntelligencePlugin,),
        works=False,
        reason="it penalises changes to weights that earlier tasks used. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; " + _BASELINE.format(name="si"),
    ),
    PluginSupport(
        (MASPlugin,),
        works=False,
        reason="it penalises changes to weights that earlier tasks used. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; " + _BASELINE.format(name="mas"),
    ),
    PluginSupport(
        (RWalkPlugin,),
        works=False,
        reason="it penalises changes to weights that earlier tasks used, by the parameters' names in the "
        "model's state dict, which change as tasks come. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with avalanche.training.supervised.EWC or make_strategy('ewc', backbone).",
    ),
    PluginSupport(
        (AGEMPlugin,),
        works=False,
        reason="it projects every parameter's gradient so that earlier tasks' losses do not rise; earlier tasks' "
        "parameters have no gradient here. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; " + _BASELINE.format(name="agem"),
    ),
    PluginSupport(
        (GEMPlugin,),
        works=False,
        reason="it projects every parameter's gradient so that earlier tasks' losses do not rise; earlier tasks' "
        "parameters have no gradient here. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with avalanche.training.supervised.GEM.",
    ),
    PluginSupport(
        (MIRPlugin,),
        works=False,
        reason="it replays the memory samples that a virtual update of every parameter would hurt most; an "
        "update here never hurts an earlier task. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with avalanche.training.supervised.MIR or make_strategy('replay', backbone).",
    ),
    PluginSupport(
        (GSS_greedyPlugin,),
        works=False,
        reason="it picks memory samples by the gradients they give every parameter, on the model's output as "
        "one tensor; earlier tasks' parameters have no gradient here, and the output of all tasks is one per "
        "task. " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with avalanche.training.supervised.GSS_greedy.",
    ),
    PluginSupport(
        (RARPlugin,),
        works=False,
        reason="it perturbs replayed samples adversarially through the model and traces it; " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with make_strategy('replay', backbone).",
    ),
    PluginSupport(
        (GDumbPlugin,),
        works=False,
        reason="it replaces the strategy's model with a fresh copy of the initial model at every experience and "
        "trains it on its buffer alone, which would discard every frozen task.",
        instead="drop the plugin; " + _BASELINE.format(name="gdumb"),
    ),
    PluginSupport(
        (FromScratchTrainingPlugin,),
        works=False,
        reason="it re-initialises the model's weights at every experience, which would discard the pretrained "
        "backbone and every frozen task.",
        instead="build a new model and strategy for each run you want from scratch.",
    ),
    PluginSupport(
        (BiCPlugin,),
        works=False,
        reason="it corrects the bias of one shared head towards new classes; each task here has its own head, "
        "with no bias across tasks to correct.",
        instead="drop the plugin; compare with avalanche.training.supervised.BiC.",
    ),
    PluginSupport(
        (CoPEPlugin,),
        works=False,
        reason="it replaces the classifier's output and the loss with class prototypes in one shared space; "
        "each task here has its own head.",
        instead="drop the plugin; compare with avalanche.training.supervised.CoPE.",
    ),
    PluginSupport(
        (CWRStarPlugin,),
        works=False,
        reason="it consolidates the weights of one named classifier layer shared by all tasks; each task here "
        "has its own head.",
        instead="drop the plugin; compare with avalanche.training.supervised.CWRStar.",
    ),
    PluginSupport(
        (FeatureDistillationPlugin, LFLPlugin),
        works=False,
        reason="it reads the features of a model that keeps them (model.features, model.get_features) and "
        "distils them from the previous model; " + _NEVER_TRAINED_AGAIN,
        instead="drop the plugin; compare with avalanche.training.supervised.LFL or make_strategy('lwf', backbone).",
    ),
    PluginSupport(
        (ICaRLLossPlugin,),
        works=False,
        reason="it distils the previous model's sigmoid outputs over one shared head; each task here has its "
        "own head, never trained again.",
        instead="the default criterion (cross-entropy) or MaskedCrossEntropy; compare with "
        "avalanche.training.supervised.ICaRL.",
    ),
    PluginSupport(
        (GenerativeReplayPlugin, TrainGeneratorAfterExpPlugin),
        works=False,
        reason="it replays generated samples labelled by the previous model's output as one tensor; "
        + _NEVER_TRAINED_AGAIN,
        instead="drop the plugins; compare with avalanche.training.supervised.GenerativeReplay.",
    ),
    PluginSupport(
        (CurrentDataNCMUpdate, MemoryNCMUpdate, NCMOracle, CurrentDataFeCAMUpdate, MemoryFeCAMUpdate, FeCAMOracle),
        works=False,
        reason="it updates the class means of a model's NCMClassifier or FeCAMClassifier; each task here has its "
        "own head.",
        instead="feature_statistics=True on the model keeps per-task class means and covariances (the "
        "Mahalanobis scores of task inference).",
    ),
    PluginSupport(
        (CheckpointPlugin,),
        works=False,
        reason="Avalanche itself retired it (it pickles the whole strategy, which fails with current torch).",
        instead="save_experience_checkpoint / load_experience_checkpoint "
        "(piggyback_avalanche.training.checkpoints) between experiences.",
    ),
)
"""Every plugin Avalanche 0.6 ships, with what the task-aware strategies do
with it."""


def plugin_support(plugin: Any) -> PluginSupport | None:
    """What the task-aware strategies do with ``plugin`` (``None``: a plugin
    Avalanche does not ship, such as the user's own, which runs)."""
    return next((entry for entry in AVALANCHE_PLUGINS if isinstance(plugin, entry.plugins)), None)


def refuse_unfit_plugins(strategy_name: str, plugins: Sequence[Any], *, infers_tasks: bool) -> None:
    """Refuse the plugins (the criterion included, when it is one) that a
    task-aware strategy cannot run, before any work.

    :raises ValueError: naming the plugin, why it cannot apply and what to
        use instead.
    """
    for plugin in plugins:
        entry = plugin_support(plugin)
        refusal = entry and entry.refusal(strategy_name, plugin, infers_tasks=infers_tasks)
        if refusal:
            raise ValueError(refusal.replace("{strategy}", strategy_name))
