"""The part of a multi-head model that serves task inference: every
learned task's outputs computed side by side in one pass
(:meth:`~TaskState.use_stacked`), the backbone's features from one pass
alone (:meth:`~TaskState.use_backbone`), and the per-task feature statistics
that the Mahalanobis scores read.

:class:`TaskPassesModule` is the base of
:class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`, which
provides the backbone, the heads and the single-task forward pass it names.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from avalanche.models import MultiTaskModule

from piggyback_avalanche.task_aware.feature_statistics import TaskFeatureStatistics
from piggyback_avalanche.task_aware.task_heads import TaskHeads, unmasked
from piggyback_avalanche.task_aware.task_module import TaskModule
from piggyback_avalanche.task_aware.task_scores import TaskScore, one_shot_score
from piggyback_avalanche.task_aware.task_state import StackingUnsupportedError, TaskState, task_key

__all__ = ["TaskPassesModule"]


class TaskPassesModule(MultiTaskModule):
    """A multi-task module that computes several learned tasks in one pass
    and keeps statistics of their features, for task inference.

    A subclass provides :attr:`backbone`, :attr:`task_state`, :attr:`heads`,
    :attr:`tasks`, :meth:`forward_single_task` and
    :meth:`_named_task_modules`; :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel` does.
    """

    backbone: nn.Module
    task_state: TaskState
    feature_statistics: TaskFeatureStatistics | None
    backbone_feature_statistics: TaskFeatureStatistics | None
    _shared_keys: list[str] | None

    # --- what a subclass provides --------------------------------------------

    @property
    def heads(self) -> TaskHeads:
        """The per-task classifier heads."""
        raise NotImplementedError

    @property
    def tasks(self) -> list[int]:
        """Every task the model knows."""
        raise NotImplementedError

    def forward_single_task(self, x: Tensor, task_label: int | Tensor) -> Tensor:
        """The logits of ``x`` under one task."""
        raise NotImplementedError

    def _named_task_modules(self) -> Iterator[tuple[str, TaskModule]]:
        """Every task-aware module, by its state-dict prefix."""
        raise NotImplementedError

    def _unknown_tasks_message(self, unknown: Sequence[int]) -> str:
        """What to say of task labels the model does not know."""
        raise NotImplementedError

    # --- feature statistics ----------------------------------------------------

    def keep_feature_statistics(self) -> None:
        """From now on every task keeps the statistics of its features (and,
        where the backbone stays fixed, of the backbone's), as
        ``feature_statistics=True`` makes it: what the Mahalanobis
        task-inference scores read. A strategy asked to infer tasks calls it
        before the first task.

        :raises ValueError: if the model has learned tasks without them
            (their statistics cannot be made afterwards).
        """
        if self.feature_statistics is not None:
            return
        if self.tasks:
            raise ValueError(
                f"This {type(self).__name__} has learned tasks {self.tasks} without feature statistics, which cannot "
                "be made afterwards; build the model with feature_statistics=True before its first task."
            )
        features, placement = self.heads.in_features, self.heads._placement
        self.feature_statistics = TaskFeatureStatistics(features, task_state=self.task_state, placement=placement)
        if self.backbone_stays_fixed():
            # Its score needs no overall distribution: that would be one more F x F per task.
            self.backbone_feature_statistics = TaskFeatureStatistics(
                features, task_state=self.task_state, placement=placement, relative=False
            )
        for prefix, module in self._named_task_modules():
            module.state_prefix = prefix
        self._shared_keys = None

    def optional_task_tensor_keys(self, task: int) -> list[str]:
        """The keys of :meth:`frozen_task_tensor_schema` that a task file may
        lack: the backbone's feature statistics, which files written before
        they existed do not hold (the task then has none, and the scores
        that read them are not offered)."""
        statistics = self.backbone_feature_statistics
        if statistics is None:
            return []
        return [statistics.state_prefix + k for k in statistics.frozen_task_tensor_schema(task_key(task))]

    def backbone_stays_fixed(self) -> bool:
        """Whether the backbone alone computes the same once no task trains
        it, whatever tasks come later: what statistics of its features need.
        The baselines' multi-head model trains its whole backbone with every
        task, so not here."""
        return False

    def task_scores(self) -> dict[str, TaskScore]:
        """Task-inference scores that need what this model stores, by name
        (see :class:`~piggyback_avalanche.task_aware.task_scores.TaskScore`):
        the Mahalanobis scores when the model keeps feature statistics (a
        task still learning has none yet, and claims no sample); those of
        the backbone's features only while every task with statistics has
        them there too."""
        superposition = {"one_shot": TaskScore(from_superposition=one_shot_score)} if self.superposes() else {}
        statistics, backbone_statistics = self.feature_statistics, self.backbone_feature_statistics
        if statistics is None:
            return superposition

        def mahalanobis(logits: Tensor, features: Tensor, model: Any, tasks: Sequence[int]) -> Tensor:
            return -statistics.squared_distances(features, [task_key(t) for t in tasks])

        def relative_mahalanobis(logits: Tensor, features: Tensor, model: Any, tasks: Sequence[int]) -> Tensor:
            return -statistics.relative_squared_distances(features, [task_key(t) for t in tasks])

        scores = {
            **superposition,
            "mahalanobis": TaskScore(from_task_outputs=mahalanobis),
            "relative_mahalanobis": TaskScore(from_task_outputs=relative_mahalanobis),
        }
        # Tasks loaded from files written before the backbone's statistics existed have none there.
        if backbone_statistics is not None and set(backbone_statistics.tasks()) >= set(statistics.tasks()):

            def backbone_mahalanobis(features: Tensor, model: Any, tasks: Sequence[int]) -> Tensor:
                per_task = features.unsqueeze(1).expand(-1, len(tasks), -1)
                return -backbone_statistics.squared_distances(per_task, [task_key(t) for t in tasks])

            scores["backbone_mahalanobis"] = TaskScore(from_backbone_features=backbone_mahalanobis)
            # Both standardised distances: what the backbone and the task's own features each say.
            scores["backbone_and_relative_mahalanobis"] = TaskScore(
                from_task_outputs=relative_mahalanobis, from_backbone_features=backbone_mahalanobis
            )
        return scores

    @torch.no_grad()
    def fit_feature_statistics(self, task: int, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
        """Estimate ``task``'s feature statistics from ``(inputs, labels)``
        batches of its training data, with the model as it is now (in eval
        mode): those of the task's own features, and of the backbone's where
        the model keeps them. A strategy calls it when the task is frozen.

        :return: the number of samples seen.
        :raises ValueError: if the model keeps no feature statistics.
        """
        if self.feature_statistics is None:
            raise ValueError(f"This {type(self).__name__} was built without feature_statistics=True.")
        was_training = self.training
        self.eval()
        try:
            key = task_key(task)
            classes = self.heads.head(key).classes
            own: list[tuple[Tensor, Tensor]] = []
            backbone: list[tuple[Tensor, Tensor]] = []
            for inputs, labels in batches:
                own.append((self.task_outputs(inputs, [task], stacked=False)[1][:, 0], labels))
                if self.backbone_feature_statistics is not None:
                    backbone.append((self.backbone_features(inputs), labels))
            if self.backbone_feature_statistics is not None:
                self.backbone_feature_statistics.fit(key, backbone, classes=classes)
            return self.feature_statistics.fit(key, own, classes=classes)
        finally:
            self.train(was_training)

    # --- the passes ------------------------------------------------------------

    def _check_input_device(self, x: Tensor) -> None:
        expected = next(self.backbone.parameters()).device
        if x.device != expected:
            raise ValueError(
                f"The input is on {x.device} but the model is on {expected}; move one of them: "
                f"x.to({str(expected)!r}), or model.to(x.device) (strategies: device=...)."
            )

    @torch.no_grad()
    def task_outputs(self, x: Tensor, tasks: Sequence[int], *, stacked: bool = True) -> tuple[Tensor, Tensor]:
        """The logits of ``x`` under each of ``tasks``, and the features that
        each task's head reads, for task inference.

        :param x: the input batch.
        :param tasks: learned tasks (``T`` of them).
        :param stacked: compute every task in one pass through the network
            (:meth:`TaskState.use_stacked`: the tasks' weights side by side);
            ``False``: one pass per task.
        :return: logits ``(batch, T, W)``, ``W`` the widest head's width,
            ``-inf`` where a task has no class; features ``(batch, T, F)``.
        :raises ValueError: for an unknown task, or a model in training mode.
        :raises StackingUnsupportedError: if ``stacked`` and the network
            reshapes or mixes features in a way that cannot carry stacked
            tasks; nothing is changed.
        """
        self._check_input_device(x)
        if self.training:
            raise ValueError(f"task_outputs evaluates learned tasks: call {type(self).__name__}.eval() first.")
        keys = [task_key(task) for task in tasks]
        unknown = [int(key) for key in keys if key not in self.heads.heads]
        if unknown or not keys:
            raise ValueError(self._unknown_tasks_message(unknown))
        captured: list[Tensor] = []
        hook = self.heads.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            if stacked:
                with self.task_state.use_stacked(keys):
                    stacked_logits = self.backbone(x)
                width = max(self.heads.head(key).out_features for key in keys)
                if stacked_logits.shape != (x.shape[0], len(keys) * width):
                    raise StackingUnsupportedError(
                        f"the network's output after its heads has shape {tuple(stacked_logits.shape)}."
                    )
                logits = stacked_logits.view(x.shape[0], len(keys), width)
                features = captured[0]
                if features.shape[-1] == self.heads.in_features:  # the heads read features every task shares
                    features = features.unsqueeze(1).expand(-1, len(keys), -1)
                return logits, features.view(x.shape[0], len(keys), self.heads.in_features)
            outputs = [unmasked(self.forward_single_task(x, int(key))) for key in keys]
            width = max(output.shape[1] for output in outputs)
            logits = outputs[0].new_full((x.shape[0], len(keys), width), float("-inf"))
            for row, output in enumerate(outputs):
                logits[:, row, : output.shape[1]] = output
            return logits, torch.stack(captured, dim=1)
        finally:
            hook.remove()

    def superposes(self) -> bool:
        """Whether every module of the network can compute tasks in
        superposition (:attr:`TaskModule.superposes`): what the
        ``"one_shot"`` score needs."""
        return all(getattr(m, "superposes", not isinstance(m, TaskModule)) for m in self.backbone.modules())

    def superposed_logits(self, x: Tensor, tasks: Sequence[int], weights: Tensor) -> Tensor:
        """The logits of ``x`` under the superposition of ``tasks``
        (:meth:`TaskState.use_superposed`), differentiable in ``weights``:
        every layer's output is the per-sample ``weights``-weighted sum of
        the tasks' outputs, so a linear layer computes with
        ``sum_t weights[t] * W_t`` (SupSup's superposed masks).

        :param x: the input batch.
        :param tasks: learned tasks (``T`` of them).
        :param weights: ``(batch, T)``, each sample's weight of each task.
        :return: ``(batch, W)``, ``-inf`` at classes no task has.
        :raises ValueError: for an unknown task, a model in training mode,
            or one whose modules do not superpose.
        """
        self._check_input_device(x)
        if self.training:
            raise ValueError(f"superposed_logits evaluates learned tasks: call {type(self).__name__}.eval() first.")
        if not self.superposes():
            raise ValueError(f"This {type(self).__name__} has modules that cannot compute tasks in superposition.")
        keys = [task_key(task) for task in tasks]
        unknown = [int(key) for key in keys if key not in self.heads.heads]
        if unknown or not keys:
            raise ValueError(self._unknown_tasks_message(unknown))
        if weights.shape != (x.shape[0], len(keys)):
            raise ValueError(f"weights must be (batch, tasks) = {(x.shape[0], len(keys))}, got {tuple(weights.shape)}.")
        with self.task_state.use_superposed(keys, weights):
            return self.backbone(x)

    @torch.no_grad()
    def backbone_features(self, x: Tensor) -> Tensor:
        """The features the heads read, ``(batch, F)``, from one pass through
        the backbone alone (:meth:`TaskState.use_backbone`): what every task
        shares, for task inference.

        :raises ValueError: for a model in training mode.
        """
        self._check_input_device(x)
        if self.training:
            raise ValueError(f"backbone_features serves task inference: call {type(self).__name__}.eval() first.")
        captured: list[Tensor] = []
        hook = self.heads.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            with self.task_state.use_backbone():
                self.backbone(x)
        finally:
            hook.remove()
        return captured[0]
