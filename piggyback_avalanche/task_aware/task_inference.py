"""Task inference: which learned task an input belongs to, when the stream
gives no task label at test time (class-incremental streams, or
task-incremental ones with the labels withheld).

A score (:mod:`~piggyback_avalanche.task_aware.task_scores`) says how much
each task recognises the input as its own, from one pass through the
backbone that every task shares, or from every candidate task's own pass
(all of them in stacked passes, see :meth:`MultiHeadModel.task_outputs`),
and the best-scoring task answers: per sample, or
per mini-batch when every sample of a batch comes from one task (SupSup's
"GNu" setting, an assumption on the data that belongs with every figure).
"""

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

import torch
from torch import Tensor

from piggyback_avalanche.checks import check_count, warn_caller
from piggyback_avalanche.task_aware.models import MultiHeadModel
from piggyback_avalanche.task_aware.task_heads import MASKED_LOGIT
from piggyback_avalanche.task_aware.task_scores import DEFAULT_SCORES, TASK_SCORES, TaskScore

__all__ = [
    "TaskInference",
    "InferredTasks",
    "DEFAULT_TASKS_PER_PASS",
    "InferencePer",
]

InferencePer = Literal["sample", "batch"]
"""Whether each sample gets its own task (``"sample"``) or each evaluation
mini-batch one task for all its samples (``"batch"``)."""

DEFAULT_TASKS_PER_PASS = 8
"""Tasks computed side by side in one pass, for scores that read every
task's outputs; it bounds the activation memory of task inference at this
many times one task's. On 2 CPU cores (BENCHMARKS.md, 100 tasks) it was the
fastest for an MLP (2.2x over one task per pass); a small CNN's convolutions
grouped over many tasks are memory-bound there, and 8 cost 1.6x one per
pass. A GPU may want more."""


@dataclass(frozen=True)
class InferredTasks:
    """What task inference answers for a batch.

    :ivar logits: ``(batch, width)``: each sample's logits under its inferred
        task, :data:`~piggyback_avalanche.task_aware.task_heads.MASKED_LOGIT`
        at classes that task does not have.
    :ivar tasks: ``(batch,)``: the inferred task of each sample.
    """

    logits: Tensor
    tasks: Tensor


class TaskInference:
    """Infers the task of each input among a model's learned tasks and
    answers with that task's logits.

    :param per: ``"sample"`` (no assumption on the data) or ``"batch"`` (all
        samples of a batch come from one task; SupSup's "GNu" setting).
    :param score: a name from
        :data:`~piggyback_avalanche.task_aware.task_scores.TASK_SCORES`, or
        one the model offers (``"mahalanobis"``, ``"relative_mahalanobis"``
        for a model with feature statistics; ``"backbone_mahalanobis"`` and
        ``"backbone_and_relative_mahalanobis"`` where its backbone stays
        fixed too);
        ``None``: the first of
        :data:`~piggyback_avalanche.task_aware.task_scores.DEFAULT_SCORES`
        that the model offers.
    :param tasks_per_pass: tasks computed side by side in one pass, for
        scores that read every task's outputs.
    """

    def __init__(
        self,
        *,
        per: InferencePer,
        score: str | None = None,
        tasks_per_pass: int = DEFAULT_TASKS_PER_PASS,
    ) -> None:
        if per not in get_args(InferencePer):
            raise ValueError(f"per must be one of {list(get_args(InferencePer))}, got {per!r}.")
        check_count("tasks_per_pass", tasks_per_pass)
        self.per = per
        self.score = score
        self.tasks_per_pass = tasks_per_pass
        # Per model: whether stacked passes agree with one pass per task.
        self._stacking_works: weakref.WeakKeyDictionary[MultiHeadModel, bool] = weakref.WeakKeyDictionary()

    def settings(self) -> dict[str, object]:
        """What the inference was built with, as plain values."""
        return {"per": self.per, "score": self.score, "tasks_per_pass": self.tasks_per_pass}

    def score_name(self, model: MultiHeadModel) -> str:
        """The score used for ``model``."""
        return self._name(self._scores(model))

    def check_model(self, model: MultiHeadModel) -> None:
        """Raise, naming the choices, if ``model`` cannot compute the score."""
        self._score(model)

    def _name(self, offered: dict[str, TaskScore]) -> str:
        if self.score is not None:
            return self.score
        return next(name for name in DEFAULT_SCORES if name in offered)

    def _score(self, model: MultiHeadModel) -> TaskScore:
        """The score for ``model``, from one look at what it offers (once per batch)."""
        offered = self._scores(model)
        name = self._name(offered)
        if name not in offered:
            raise ValueError(
                f"Unknown task-inference score {self.score!r} for a {type(model).__name__}; it offers "
                f"{sorted(offered)}. Feature-statistics scores need a model built with them "
                "(e.g. PiggybackModel(backbone, feature_statistics=True)); backbone_mahalanobis also needs "
                "a backbone that no task changes (not PackNet's)."
            )
        return offered[name]

    @staticmethod
    def _scores(model: MultiHeadModel) -> dict[str, TaskScore]:
        return {**TASK_SCORES, **model.task_scores()}

    def task_scores(self, model: MultiHeadModel, x: Tensor, tasks: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Each task's score for each sample, ``(batch, T)``, and, when the
        score reads every task's outputs, their logits, ``(batch, T, W)``
        (the tasks computed ``tasks_per_pass`` at a time); else ``None``."""
        score = self._score(model)
        total: Tensor | None = None
        logits: Tensor | None = None
        if score.from_backbone_features is not None:
            total = score.from_backbone_features(model.backbone_features(x), model, tasks)
        if score.from_superposition is not None:
            part = score.from_superposition(model, x, tasks)
            total = part if total is None else total + part
        if score.from_task_outputs is not None:
            stacked = self._stacks(model, x, tasks)
            parts: list[Tensor] = []
            groups: list[Tensor] = []
            for start in range(0, len(tasks), self.tasks_per_pass):
                group = list(tasks[start : start + self.tasks_per_pass])
                group_logits, features = model.task_outputs(x, group, stacked=stacked)
                parts.append(score.from_task_outputs(group_logits, features, model, group))
                groups.append(group_logits)
            width = max(part.shape[-1] for part in groups)
            logits = torch.cat(
                [torch.nn.functional.pad(part, (0, width - part.shape[-1]), value=-math.inf) for part in groups], dim=1
            )
            total = torch.cat(parts, dim=1) if total is None else total + torch.cat(parts, dim=1)
        assert total is not None  # a TaskScore has at least one part
        return total, logits

    @torch.no_grad()
    def __call__(self, model: MultiHeadModel, x: Tensor, *, width: int | None = None) -> InferredTasks:
        """Infer the task of each sample of ``x`` among the model's learned
        tasks, and answer with its logits: equal to ``model(x, tasks)`` for
        the inferred tasks up to floating-point rounding (the logits of the
        pass that scored the tasks, when the score read them: stacked tasks
        run other kernels).

        :param model: a model with at least one task, in eval mode.
        :param x: the input batch.
        :param width: the number of logits per sample (the classes of the
            whole stream); at least the widest head's.
        """
        tasks = model.tasks
        if not tasks:
            raise ValueError(f"This {type(model).__name__} has learned no task yet: there is no task to infer.")
        scores, logits = self.task_scores(model, x, tasks)
        chosen = scores.mean(0).argmax().expand(x.shape[0]) if self.per == "batch" else scores.argmax(1)
        inferred = torch.as_tensor(tasks, device=x.device)[chosen]
        if logits is not None:
            answer = logits[torch.arange(x.shape[0], device=x.device), chosen]
        else:  # one pass per chosen task, on its samples
            answer = cast(Tensor, model(x, inferred))
        width = max(width or 0, model.max_class_label)
        if width > answer.shape[1]:
            answer = torch.nn.functional.pad(answer, (0, width - answer.shape[1]), value=MASKED_LOGIT)
        # A stacked pass masks with -inf; the answer masks as the model's forward does.
        return InferredTasks(logits=answer.masked_fill(answer == -math.inf, MASKED_LOGIT), tasks=inferred)

    def _stacks(self, model: MultiHeadModel, x: Tensor, tasks: Sequence[int]) -> bool:
        """Whether stacked passes give this model's outputs: checked once per
        model, on its first batch, against one pass per task."""
        known = self._stacking_works.get(model)
        if known is not None:
            return known
        group = list(tasks[: min(len(tasks), 2)])
        try:
            stacked, stacked_features = model.task_outputs(x, group)
            single, single_features = model.task_outputs(x, group, stacked=False)
            agree = torch.equal(torch.isfinite(stacked), torch.isfinite(single)) and all(
                torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)], rtol=1e-4, atol=1e-4)
                for a, b in ((stacked, single), (stacked_features, single_features))
            )
            why = "its stacked outputs differ from one pass per task"
        except RuntimeError as error:
            # StackingUnsupportedError from a module that knows it cannot, or
            # a shape error from code between modules that cannot carry
            # stacked features (a ViT's reshape of its patch embedding).
            agree, why = False, str(error)
        if not agree:
            cheaper = (
                " task_score='backbone_mahalanobis' scores every task in one pass through the backbone."
                if "backbone_mahalanobis" in self._scores(model) and self.score != "backbone_mahalanobis"
                else ""
            )
            warn_caller(
                f"Task inference computes each task of this {type(model).__name__} in its own pass, "
                f"which costs one pass per task: the network cannot compute tasks side by side ({why}).{cheaper}"
            )
        self._stacking_works[model] = agree
        return agree
