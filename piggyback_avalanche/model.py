"""PiggybackModel: any backbone, one binary (or ternary) mask per task.

The model is an Avalanche :class:`~avalanche.models.MultiTaskModule`: the
strategy's model adaptation adds each new task's mask scores, normalization
copies and classifier head, and ``model(x, task_labels)`` routes every sample
through its own task.
"""

import copy
import math
import operator
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
from torch import Tensor, nn

from avalanche.benchmarks.scenarios import CLExperience
from avalanche.models import MultiTaskModule

from piggyback_avalanche.layers import (
    MASKED_LAYER_TYPES,
    NORM_LAYER_TYPES,
    MaskedLayer,
    TaskHeads,
    TaskNorm,
    TaskState,
    TaskWeightLayer,
)
from piggyback_avalanche.masks import get_mask_kind

__all__ = ["MultiHeadModel", "TaskAwareModel", "PiggybackModel", "experience_task_classes", "MASK_INITS"]

MASK_INITS = ("1s", "uniform")
"""Ways to initialise a new task's mask scores."""


def experience_task_classes(experience: CLExperience) -> Dict[int, List[int]]:
    """The class labels of each task label in an experience.

    Works with the classic and the new Avalanche benchmark APIs: it reads
    ``classes_in_this_experience`` (a list or a set) when the experience has a
    single task and the attribute exists, and the dataset's targets otherwise.

    :param experience: an Avalanche experience with task labels.
    :return: ``{task_label: sorted class labels}``.
    :raises ValueError: if the experience has no task labels or no data.
    """
    dataset = getattr(experience, "dataset", None)
    # Avalanche's templates pass task labels to the model only when the
    # experience itself has them, so the dataset's labels are not enough.
    task_labels = getattr(experience, "task_labels", None)
    if task_labels is None:
        raise ValueError(
            "The experience has no task labels, but Piggyback learns one mask per "
            "task. Make the stream task-aware, e.g. with "
            "avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(bm) "
            "or with_task_labels(bm)."
        )
    tasks = sorted({int(t) for t in task_labels})
    if dataset is not None and len(dataset) == 0:
        raise ValueError(
            f"Experience {getattr(experience, 'current_experience', '?')} (task(s) {tasks}) holds no samples: "
            "every experience needs at least one labelled sample per task. Drop it from the stream."
        )
    classes = getattr(experience, "classes_in_this_experience", None)
    if len(tasks) == 1 and classes is not None:
        found = {tasks[0]: sorted(int(c) for c in classes)}
    else:
        if dataset is None:
            raise ValueError("The experience has neither class labels nor a dataset.")
        targets = torch.as_tensor(list(dataset.targets))
        labels = torch.as_tensor(list(dataset.targets_task_labels))
        found = {t: torch.unique(targets[labels == t]).tolist() for t in tasks}
    empty = [t for t, c in found.items() if not c]
    if empty or not found:
        raise ValueError(
            f"The experience holds no samples for task(s) {empty or tasks}: "
            "every experience needs at least one labelled sample per task."
        )
    return found


def _find_classifier(backbone: nn.Module, classifier: Union[str, nn.Module, None]) -> str:
    """The qualified name of the backbone's classifier."""
    if isinstance(classifier, str):
        try:
            module = backbone.get_submodule(classifier)
        except AttributeError:
            raise ValueError(f"The backbone has no submodule named {classifier!r}.") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"classifier {classifier!r} is a {type(module).__name__}; it must be an "
                "nn.Linear, which is replaced by one head per task."
            )
        return classifier
    linears = [
        name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)
    ]
    if classifier is not None:
        named = [name for name, module in backbone.named_modules() if module is classifier]
        if not named or named[0] not in linears:
            raise ValueError(
                "classifier must be an nn.Linear inside the backbone (or its qualified "
                "name); the given module is not one."
            )
        return named[0]
    if not linears:
        raise ValueError(
            "The backbone has no nn.Linear to replace by per-task heads. Pass "
            "classifier='<qualified name>' of its final nn.Linear."
        )
    return linears[-1]


class MultiHeadModel(MultiTaskModule):
    """A copy of a backbone whose classifier is replaced by one head per task.

    Heads are added by Avalanche's model adaptation (or :meth:`add_task`),
    sized from the experience's classes whether the stream gives them as a
    list or a set, or not at all; ``model(x, task_labels)`` routes every
    sample through its own task, mini-batches may mix tasks. The rest of the
    backbone is left as it is: this is the multi-head model of the baselines
    that train the whole network (fine-tuning, EWC, LwF, replay, ...).

    :param backbone: the network to copy.
    :param classifier: the ``nn.Linear`` replaced by per-task heads, as a
        module of the backbone or its qualified name; ``None`` picks the
        backbone's last ``nn.Linear``.
    """

    def __init__(self, backbone: nn.Module, *, classifier: Union[str, nn.Module, None] = None) -> None:
        super().__init__()
        self.task_state = TaskState()
        self._classifier_name = _find_classifier(backbone, classifier)
        self.backbone = self._convert(copy.deepcopy(backbone), self._classifier_name)

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        replaced: Dict[int, nn.Module] = {}
        for name, module in list(backbone.named_modules(remove_duplicate=False)):
            if id(module) not in replaced:
                replaced[id(module)] = self._task_aware(module, is_classifier=name == classifier_name)
            new = replaced[id(module)]
            if new is module:
                continue
            if not name:
                return new
            parent, _, attr = name.rpartition(".")
            setattr(backbone.get_submodule(parent), attr, new)
        return backbone

    def _task_aware(self, module: nn.Module, *, is_classifier: bool) -> nn.Module:
        """What replaces a backbone module (the module itself if nothing)."""
        if is_classifier:
            return TaskHeads(module, task_state=self.task_state)
        return module

    # --- tasks ---------------------------------------------------------------

    @property
    def heads(self) -> TaskHeads:
        """The per-task classifier heads."""
        return self.backbone.get_submodule(self._classifier_name)

    @property
    def tasks(self) -> List[int]:
        """Every task the model knows."""
        return sorted(int(t) for t in self.heads.heads.keys())

    def add_task(self, task: int, *, classes: Sequence[int]) -> None:
        """Add the head of a new task.

        :param task: the task label.
        :param classes: the class labels of the task.
        :raises ValueError: if the task already exists or has no classes.
        """
        key = self._new_task_key(task, classes)
        self.heads.add_task(key, classes=classes)
        self._register_task(task, classes)

    def _new_task_key(self, task: int, classes: Sequence[int]) -> str:
        key = _task_key(task)
        if key in self.heads.heads:
            raise ValueError(
                f"Task {task} already exists in this {type(self).__name__} (tasks "
                f"{self.tasks}); a learned task is never changed. Give the new data "
                "a new task label."
            )
        if not classes or min(int(c) for c in classes) < 0:
            raise ValueError(f"Task {task} needs non-negative class labels, got {list(classes)}.")
        return key

    def _register_task(self, task: int, classes: Sequence[int]) -> None:
        self.known_train_tasks_labels.add(int(task))
        self.max_class_label = max(self.max_class_label, max(int(c) for c in classes) + 1)

    def adaptation(self, experience: CLExperience) -> None:
        """Add the experience's new tasks when training; when evaluating,
        check that the model knows the experience's tasks.

        :raises ValueError: when evaluating a task the model never learned,
            or training a known task on classes its head does not have.
        """
        task_classes = experience_task_classes(experience)
        if not self.training:
            unknown = sorted(set(task_classes) - set(self.tasks))
            if unknown:
                raise ValueError(self._unknown_tasks_message(unknown))
            return
        for task, classes in task_classes.items():
            key = _task_key(task)
            if key not in self.heads.heads:
                self.add_task(task, classes=classes)
            else:
                self._revisit(task, classes)

    def _revisit(self, task: int, classes: Sequence[int]) -> None:
        """Train a known task again (as cumulative and joint training do)."""
        head = self.heads.heads[_task_key(task)]
        unknown = sorted(set(int(c) for c in classes) - set(head.classes))
        if unknown:
            raise ValueError(
                f"Task {task} comes back with classes {unknown} its head does not "
                f"have (it has {head.classes}); give classes of a new task a new task label."
            )

    def _unknown_tasks_message(self, unknown: Sequence[int]) -> str:
        return (
            f"Task label(s) {list(unknown)} unknown to this {type(self).__name__}; it "
            f"knows tasks {self.tasks}. Train an experience with that task label first, "
            "or evaluate only the experiences trained so far, e.g. "
            "strategy.eval(test_stream[: i + 1])."
        )

    # --- forward -------------------------------------------------------------

    def forward(self, x: Tensor, task_labels: Union[int, Tensor, None]) -> Tensor:
        """Logits of each sample under its own task.

        Mini-batches may mix tasks; heads of different widths are padded with
        ``-inf``, which never wins an argmax.

        :param x: the input batch.
        :param task_labels: one task label for the whole batch, one per
            sample, or ``None`` for a dict of every task's logits.
        """
        expected = next(self.backbone.parameters()).device
        if x.device != expected:
            raise ValueError(
                f"The input is on {x.device} but the model is on {expected}; move one of them: "
                f"x.to({str(expected)!r}), or model.to(x.device) (strategies: device=...)."
            )
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, Tensor) and task_labels.dim() > 0:
            if task_labels.shape[0] != x.shape[0]:
                raise ValueError(
                    f"Got {task_labels.shape[0]} task labels for {x.shape[0]} samples."
                )
            tasks = torch.unique(task_labels).tolist()
            if len(tasks) > 1:
                return self._forward_mixed(x, task_labels, tasks)
            task_labels = tasks[0]
        return self.forward_single_task(x, task_labels)

    def _forward_mixed(self, x: Tensor, task_labels: Tensor, tasks: List[int]) -> Tensor:
        rows = [task_labels == t for t in tasks]
        outputs = [self.forward_single_task(x[r], t) for r, t in zip(rows, tasks)]
        width = max(o.shape[1] for o in outputs)
        out = outputs[0].new_full((x.shape[0], width), float("-inf"))
        for r, o in zip(rows, outputs):
            out[r, : o.shape[1]] = o
        return out

    def forward_single_task(self, x: Tensor, task_label: Union[int, Tensor]) -> Tensor:
        """Logits of ``x`` under one task."""
        key = _task_key(task_label)
        if key not in self.heads.heads:
            raise ValueError(self._unknown_tasks_message([int(key)]))
        with self.task_state.use(key):
            return self.backbone(x)

    def forward_all_tasks(self, x: Tensor) -> Dict[int, Tensor]:
        """Logits of ``x`` under every known task."""
        return {t: self.forward_single_task(x, t) for t in self.tasks}

    # --- state dict ------------------------------------------------------------

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.known_train_tasks_labels = set(self.tasks)
        self.max_class_label = max(
            [head.out_features for head in self.heads.heads.values()], default=0
        )
        return result


class TaskAwareModel(MultiHeadModel):
    """A backbone whose layers are task-aware: the machinery that Piggyback,
    PackNet and the reference points share.

    Besides the heads of :class:`MultiHeadModel`, the backbone's convolutions
    and linear layers become the subclass's
    :class:`~piggyback_avalanche.layers.TaskWeightLayer` types
    (``layer_types``) and its normalization layers :class:`TaskNorm`. Tasks
    end with :meth:`freeze_task`, and a frozen task is never trained again.

    :param backbone: the network to copy and convert.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param task_batchnorm: each task learns its own normalization parameters
        and statistics; ``False`` shares the backbone's.
    :param layer_settings: passed to every task-aware layer's ``from_module``.
    """

    layer_types: Dict[Type[nn.Module], Type[TaskWeightLayer]] = {}
    """Backbone layer types and the task-aware types that replace them."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: Union[str, nn.Module, None] = None,
        task_batchnorm: bool = True,
        layer_settings: Dict[str, Any],
    ) -> None:
        self.task_batchnorm = bool(task_batchnorm)
        self._layer_settings = layer_settings
        super().__init__(backbone, classifier=classifier)

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        unsupported = [
            f"{name or '<backbone>'} ({type(module).__name__})"
            for name, module in backbone.named_modules()
            if any(p is not None for p in module._parameters.values())
            and name != classifier_name
            and type(module) not in self.layer_types
            and not isinstance(module, NORM_LAYER_TYPES)
        ]
        if unsupported:
            raise ValueError(
                f"{type(self).__name__} cannot handle these modules with parameters: "
                + ", ".join(unsupported)
                + ". Supported: "
                + ", ".join(t.__name__ for t in self.layer_types)
                + " (task-aware weights), "
                + ", ".join(t.__name__ for t in NORM_LAYER_TYPES)
                + " (per task). Express them with these layers, or fold them into "
                "the classifier."
            )
        backbone = super()._convert(backbone, classifier_name)
        if not any(isinstance(m, TaskWeightLayer) for m in backbone.modules()):
            raise ValueError(
                "The backbone has no convolution or linear layer besides the "
                f"classifier, so {type(self).__name__} has nothing to learn per task."
            )
        return backbone

    def _task_aware(self, module: nn.Module, *, is_classifier: bool) -> nn.Module:
        if not is_classifier and type(module) in self.layer_types:
            return self.layer_types[type(module)].from_module(
                module, task_state=self.task_state, **self._layer_settings
            )
        if not is_classifier and isinstance(module, NORM_LAYER_TYPES):
            return TaskNorm(module, task_state=self.task_state, per_task=self.task_batchnorm)
        return super()._task_aware(module, is_classifier=is_classifier)

    def _task_modules(self) -> Iterable[nn.Module]:
        return (
            m
            for m in self.backbone.modules()
            if isinstance(m, (TaskWeightLayer, TaskNorm, TaskHeads))
        )

    # --- tasks ---------------------------------------------------------------

    @property
    def task_layers(self) -> Dict[str, TaskWeightLayer]:
        """The task-aware convolution and linear layers by qualified name."""
        return {n: m for n, m in self.backbone.named_modules() if isinstance(m, TaskWeightLayer)}

    @property
    def frozen_tasks(self) -> List[int]:
        """Tasks that are finished and never change again."""
        return sorted(int(t) for t in self.heads.heads.keys() if t not in self.task_state.learning)

    @property
    def learning_tasks(self) -> List[int]:
        """Tasks being learned now."""
        return sorted(int(t) for t in self.task_state.learning)

    def add_task(self, task: int, *, classes: Sequence[int], train_backbone: bool = False) -> None:
        """Add a task to learn: its layer state, normalization and head.

        Avalanche's model adaptation calls this for each new task label; call
        it directly to use the model outside Avalanche.

        :param task: the task label.
        :param classes: the class labels of the task.
        :param train_backbone: this task also trains the backbone's shared
            parameters (what that means is up to the layers: Piggyback trains
            the weights themselves, PackNet the biases); they freeze with it.
        :raises ValueError: if the task already exists or has no classes, or
            another task is training the backbone.
        """
        key = self._new_task_key(task, classes)
        if train_backbone:
            if self.task_state.backbone_task is not None:
                raise ValueError(
                    f"Task {self.task_state.backbone_task} is already training the backbone."
                )
            self.task_state.backbone_task = key
        self.task_state.learning.add(key)
        for module in self._task_modules():
            if isinstance(module, TaskHeads):
                module.add_task(key, classes=classes)
            else:
                module.add_task(key)
        self._register_task(task, classes)

    def freeze_task(self, task: int) -> None:
        """Finish a task: after this its outputs never change."""
        key = _task_key(task)
        if key not in self.task_state.learning:
            raise ValueError(f"Task {task} is not being learned; learning: {self.learning_tasks}.")
        for module in self._task_modules():
            module.freeze_task(key)
        self.task_state.learning.discard(key)
        if self.task_state.backbone_task == key:
            self.task_state.backbone_task = None

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """The parameters that learning the current tasks trains, by group:
        ``"task_parameters"`` (the learning tasks' normalization and heads),
        ``"backbone"`` (shared parameters while a task trains the backbone)
        and the task-aware layers' own groups."""
        groups: Dict[str, List[nn.Parameter]] = {"task_parameters": [], "backbone": []}
        for module in self._task_modules():
            for name, params in module.trainable_parameters().items():
                groups.setdefault(name, []).extend(params)
        return groups

    @torch.no_grad()
    def recalibrate_norm_statistics(self, batches: Iterable[Tuple[Tensor, Tensor]]) -> int:
        """Re-estimate the running statistics of the learning tasks' batch
        norm from ``batches``, as a plain average over them, with the layers
        as they are now.

        While a task learns, its masks (or weights) change every step, so the
        running averages that batch norm keeps mix statistics of many
        different networks; with small datasets the mismatch with the final
        network can cost tens of accuracy points at evaluation. One pass
        over the training data with the final layers fixes that. Frozen
        tasks are not touched.

        :param batches: ``(inputs, task_labels)`` pairs, on the model's device.
        :return: the number of samples seen.
        :raises ValueError: if ``batches`` is empty; the statistics are then
            left as they were.
        """
        norms = [
            norm
            for module in self._task_modules() if isinstance(module, TaskNorm)
            for norm in module.learning_norms()
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
        ]
        saved = [copy.deepcopy(norm.state_dict()) for norm in norms]
        momenta = [norm.momentum for norm in norms]
        was_training = self.training
        samples = 0
        try:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average
            self.train()
            for inputs, task_labels in batches:
                self(inputs, task_labels)
                samples += len(inputs)
            if not samples:
                raise ValueError("No batches to estimate normalization statistics from.")
        except BaseException:
            for norm, state in zip(norms, saved):
                norm.load_state_dict(state)
            raise
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            self.train(was_training)
        return samples

    def _revisit(self, task: int, classes: Sequence[int]) -> None:
        if _task_key(task) not in self.task_state.learning:
            raise ValueError(
                f"Task {task} was already learned and is frozen; a learned task is "
                "never changed. Give this experience a new task label."
            )

    # --- state dict ------------------------------------------------------------

    learning_store: Optional[str] = None
    """The per-task store of the layers that holds only tasks still being
    learned (``None``: a state dict cannot tell learning tasks apart, so
    loaded tasks count as frozen)."""

    def _learning_tasks_in(self, state_dict: Dict[str, Tensor], prefix: str) -> Set[str]:
        """The tasks that a state dict holds as still being learned."""
        if self.learning_store is None:
            return set()
        marker = f".{self.learning_store}."
        return {k[len(prefix) :].rsplit(".", 1)[1] for k in state_dict if k.startswith(prefix) and marker in k}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The per-task containers below create every task they meet.
        self.task_state.learning = self._learning_tasks_in(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PiggybackModel(TaskAwareModel):
    """Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a frozen backbone that
    learns one mask per task.

    The backbone is copied; the copy's convolutions and linear layers get
    per-task masks, its normalization layers per-task parameters and its
    classifier is replaced by one head per task. Its weights are never written
    again (except on the first task with
    ``Piggyback(train_backbone_on_first_experience=True)``).

    :param backbone: the (preferably pretrained) network. Supported layers
        with parameters: ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (masked),
        ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, ``nn.LayerNorm``,
        ``nn.GroupNorm`` (per task).
    :param classifier: the ``nn.Linear`` replaced by per-task heads, as a
        module of the backbone or its qualified name; ``None`` picks the
        backbone's last ``nn.Linear``.
    :param threshold_fn: ``"binarizer"`` (masks in {0, 1}, 1 bit per weight)
        or ``"ternarizer"`` (masks in {-1, 0, 1}, 2 bits per weight).
    :param mask_init: ``"1s"``: every score starts at ``mask_scale``, so each
        task starts from the backbone; ``"uniform"``: scores uniform in
        ``[-mask_scale, mask_scale]``.
    :param mask_scale: initial score scale.
    :param threshold: the threshold tau above which a score keeps its weight.
    :param task_batchnorm: each task learns its own normalization parameters
        and statistics; ``False`` keeps the backbone's frozen for all tasks
        (trained only on the first experience with
        ``train_backbone_on_first_experience``).
    """

    layer_types = MASKED_LAYER_TYPES
    learning_store = "scores"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: Union[str, nn.Module, None] = None,
        threshold_fn: str = "binarizer",
        mask_init: str = "1s",
        mask_scale: float = 1e-2,
        threshold: float = 5e-3,
        task_batchnorm: bool = True,
    ) -> None:
        mask_kind = get_mask_kind(threshold_fn)
        _check_mask_settings(mask_init=mask_init, mask_scale=mask_scale, threshold=threshold)
        self.mask_kind = mask_kind
        self.mask_init = mask_init
        self.mask_scale = float(mask_scale)
        self.threshold = float(threshold)
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            layer_settings=dict(
                mask_kind=mask_kind,
                threshold=self.threshold,
                mask_init=mask_init,
                mask_scale=self.mask_scale,
            ),
        )

    @property
    def threshold_fn(self) -> str:
        """The name of the threshold function."""
        return self.mask_kind.name

    @property
    def masked_layers(self) -> Dict[str, MaskedLayer]:
        """The masked layers by qualified name."""
        return self.task_layers

    # --- task files ------------------------------------------------------------

    def save_task(self, path: Union[str, Path], task: int) -> None:
        """Write one frozen task (its packed masks, normalization and head,
        with the mask settings, a format version and the backbone's
        fingerprint) to ``path``, atomically. See
        :mod:`~piggyback_avalanche.task_files`."""
        self.save_tasks(path, [task])

    def save_tasks(self, path: Union[str, Path], tasks: Optional[Iterable[int]] = None) -> None:
        """Write ``tasks`` (all frozen tasks by default) to one task file."""
        from piggyback_avalanche.task_files import save_tasks

        save_tasks(self, path, tasks)

    def load_task(self, path: Union[str, Path], task: int, *, as_task: Optional[int] = None) -> int:
        """Add ``task`` from a task file as a frozen task, under the label
        ``as_task`` (default: the same). The model is unchanged on error.

        :return: the task's label in this model.
        :raises TaskFileError: for a file that is truncated, corrupt, of
            another version, from another backbone or mask setting, or
            that does not fit the layers, and for a label already taken.
        """
        rename = None if as_task is None else {task: as_task}
        return self.load_tasks(path, [task], rename=rename)[0]

    def load_tasks(
        self, path: Union[str, Path], tasks: Optional[Iterable[int]] = None, *,
        rename: Optional[Dict[int, int]] = None,
    ) -> List[int]:
        """Add ``tasks`` (all of the file's by default) from a task file;
        ``rename`` maps the file's labels to this model's.

        :return: the labels added.
        """
        from piggyback_avalanche.task_files import load_tasks

        return load_tasks(self, path, tasks, rename=rename)



def _task_key(task: Union[int, Tensor]) -> str:
    """The string key of a task label; rejects labels that are not integers."""
    if isinstance(task, Tensor):
        if task.numel() != 1 or task.dtype.is_floating_point or task.dtype == torch.bool:
            raise ValueError(f"A task label must be one integer, got {task!r}.")
        task = int(task.item())
    try:
        label = operator.index(task)
    except TypeError:
        label = -1
    if isinstance(task, bool) or label < 0:
        raise ValueError(f"A task label must be a non-negative int, got {task!r}.")
    return str(label)


def _check_mask_settings(*, mask_init: str, mask_scale: float, threshold: float) -> None:
    if mask_init not in MASK_INITS:
        raise ValueError(f"Unknown mask_init {mask_init!r}; choose one of {list(MASK_INITS)}.")
    for name, value in (("threshold", threshold), ("mask_scale", mask_scale)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    if mask_scale <= threshold:
        raise ValueError(
            f"mask_scale ({mask_scale}) must exceed threshold ({threshold}): "
            + (
                "with mask_init='1s' every score would start at or below the "
                "threshold, so every mask would start at zero."
                if mask_init == "1s"
                else "with mask_init='uniform' no score would start above the threshold."
            )
        )
