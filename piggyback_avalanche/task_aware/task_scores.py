"""Task-inference scores: how strongly each learned task claims each sample.

A score reads the outputs of every task's own pass (its logits, and the
features its head reads), or the features of one pass through the backbone
alone, which every task shares, or both, or the gradient of the network with
every task in superposition (SupSup's one-shot inference); it says which, so
that task inference computes only what the score reads. Scores built on the logits
are offered by every model; those built on feature statistics by a model
that keeps them (:meth:`~piggyback_avalanche.task_aware.task_passes.TaskPassesModule.task_scores`).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_heads import MASKED_LOGIT, unmasked

__all__ = [
    "TaskScore",
    "TaskOutputScore",
    "BackboneFeatureScore",
    "TASK_SCORES",
    "DEFAULT_SCORES",
    "entropy_score",
    "max_logit_score",
    "energy_score",
    "SuperpositionScore",
    "one_shot_score",
]

TaskOutputScore = Callable[[Tensor, Tensor, nn.Module, Sequence[int]], Tensor]
"""``score(logits, features, model, tasks) -> (batch, T)`` from each task's
pass: ``logits`` ``(batch, T, W)`` with ``-inf`` where a task has no class,
``features`` ``(batch, T, F)`` (what each task's head reads)."""

BackboneFeatureScore = Callable[[Tensor, nn.Module, Sequence[int]], Tensor]
"""``score(features, model, tasks) -> (batch, T)`` from one pass through the
backbone alone: ``features`` ``(batch, F)``, what the heads read."""

SuperpositionScore = Callable[[nn.Module, Tensor, Sequence[int]], Tensor]
"""``score(model, x, tasks) -> (batch, T)`` from the network with every task
in superposition (``model.superposed_logits``), forward and backward."""


@dataclass(frozen=True)
class TaskScore:
    """How strongly each task claims each sample, ``(batch, T)``, higher is
    more: the sum of the parts it has.

    :ivar from_task_outputs: the part read from every task's own pass; task
        inference then runs all the tasks (stacked where the network allows).
    :ivar from_backbone_features: the part read from one pass through the
        backbone alone, whatever the number of tasks; a score with only this
        part costs one pass to score every task, and one more for the chosen
        tasks' logits.
    :ivar from_superposition: the part read from the network with every
        task in superposition: one pass computing the tasks side by side and
        one backward pass, then one more pass for the chosen tasks' logits.
    """

    from_task_outputs: TaskOutputScore | None = None
    from_backbone_features: BackboneFeatureScore | None = None
    from_superposition: SuperpositionScore | None = None

    def __post_init__(self) -> None:
        parts = (self.from_task_outputs, self.from_backbone_features, self.from_superposition)
        if all(part is None for part in parts):
            raise ValueError(
                "A TaskScore reads the tasks' outputs, the backbone's features or their superposition; it has none."
            )

    @property
    def reads_task_outputs(self) -> bool:
        """Whether every task's pass has to run."""
        return self.from_task_outputs is not None


def entropy_score(logits: Tensor, features: Tensor, model: nn.Module, tasks: Sequence[int]) -> Tensor:
    """Minus the entropy of each task's softmax over its classes (SupSup):
    a task is confident on its own data."""
    log_p = torch.log_softmax(unmasked(logits), dim=-1)
    p = log_p.exp()
    return torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def max_logit_score(logits: Tensor, features: Tensor, model: nn.Module, tasks: Sequence[int]) -> Tensor:
    """The largest logit of each task (Hendrycks et al., 2022)."""
    return logits.amax(-1)


def energy_score(logits: Tensor, features: Tensor, model: nn.Module, tasks: Sequence[int]) -> Tensor:
    """Minus the free energy, ``logsumexp`` of each task's logits over its
    classes (Liu et al., 2020)."""
    return torch.logsumexp(logits, dim=-1)


def one_shot_score(model: nn.Module, x: Tensor, tasks: Sequence[int]) -> Tensor:
    """SupSup's one-shot task inference (Wortsman et al., 2020, Sec. 3.3):
    with every task in superposition at weight ``1/T``, minus the gradient
    of the output's entropy with respect to each task's weight, per sample.
    The task whose weight, raised, lowers the entropy most claims the
    sample; per batch, the mean over the batch is SupSup's batch gradient.

    :param model: a model whose modules superpose (``model.superposes()``).
    """
    with torch.enable_grad():
        weights = x.new_full((x.shape[0], len(tasks)), 1 / len(tasks), dtype=torch.float32, requires_grad=True)
        logits = model.superposed_logits(x, tasks, weights)  # type: ignore[operator]
        # A finite stand-in for absent classes: exp gives 0 and the gradient stays finite.
        log_p = torch.log_softmax(logits.float().masked_fill(torch.isinf(logits), MASKED_LOGIT), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        (gradient,) = torch.autograd.grad(entropy.sum(), weights)
    return -gradient


TASK_SCORES: dict[str, TaskScore] = {
    "entropy": TaskScore(from_task_outputs=entropy_score),
    "max_logit": TaskScore(from_task_outputs=max_logit_score),
    "energy": TaskScore(from_task_outputs=energy_score),
}
"""The scores every model offers, by name; a model that keeps feature
statistics adds its own (see :meth:`~piggyback_avalanche.task_aware.task_passes.TaskPassesModule.task_scores`)."""

DEFAULT_SCORES: tuple[str, ...] = (
    "backbone_and_relative_mahalanobis",
    "relative_mahalanobis",
    "backbone_mahalanobis",
    "entropy",
)
"""The default score: the first of these that the model offers. The sum of
the backbone's and the tasks' own feature statistics infers the task best
per sample (chosen on validation data, BENCHMARKS.md), at the cost of every
task's pass (stacked where the network allows); ``"backbone_mahalanobis"``
alone costs one pass for every task, for models with very many tasks. A
model whose backbone changes with its tasks (PackNet) falls back to its
tasks' own features, and one without statistics to the best logit score."""
