"""The models every method shares: a backbone copy with one classifier head
per task (:class:`MultiHeadModel`), and one whose layers are task-aware too
(:class:`TaskAwareModel`), which each method specialises with its layer type.

Both are Avalanche :class:`~avalanche.models.MultiTaskModule` s: the
strategy's model adaptation adds each new task, and ``model(x, task_labels)``
routes every sample through its own task.
"""

import copy
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche.benchmarks.scenarios import CLExperience

from piggyback_avalanche.task_aware.backbone_conversion import (
    SHARED_EMBEDDINGS,
    find_classifier,
    freeze_shared_embeddings,
    refuse_avalanche_dynamic_modules,
    refuse_unsupported_parameters,
    replace_modules,
)
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.experiences import experience_task_classes
from piggyback_avalanche.task_aware.feature_statistics import TaskFeatureStatistics
from piggyback_avalanche.task_aware.frozen_weight_cache import FrozenWeightCache
from piggyback_avalanche.task_aware.shared_weight_checksum import SharedWeightChecksum
from piggyback_avalanche.task_aware.task_attention import ATTENTION_TYPES
from piggyback_avalanche.task_aware.task_embeddings import give_tasks_their_own
from piggyback_avalanche.task_aware.task_files import load_tasks, save_tasks
from piggyback_avalanche.task_aware.task_heads import MASKED_LOGIT, TaskHeads
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer
from piggyback_avalanche.task_aware.task_module import TaskModule, TensorSpec
from piggyback_avalanche.task_aware.task_norm import NORM_LAYER_TYPES, TaskNorm
from piggyback_avalanche.task_aware.task_passes import TaskPassesModule
from piggyback_avalanche.task_aware.task_state import TaskState, task_key
from piggyback_avalanche.task_aware.task_store import TaskStore, TaskStoreError

__all__ = ["MultiHeadModel", "TaskAwareModel", "SettingFreeModel"]

_TASKS_PER_LOAD = 32
"""Tasks read from a task store per state-dict load when a store is attached."""


def _own_state_bytes(module: nn.Module) -> int:
    """Bytes of a module's own saved parameters and buffers (not its children's)."""
    buffers = [b for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set]
    return sum(t.nbytes for t in chain(module._parameters.values(), buffers) if t is not None)


class MultiHeadModel(TaskPassesModule):
    """A copy of a backbone whose classifier is replaced by one head per task.

    Heads are added by Avalanche's model adaptation (or :meth:`add_task`),
    sized from the experience's classes whether the stream gives them as a
    list or a set, or not at all; ``model(x, task_labels)`` routes every
    sample through its own task, mini-batches may mix tasks. The rest of the
    backbone is left as it is: this is the multi-head model of the baselines
    that train the whole network (fine-tuning, EWC, LwF, replay, ...).

    The model works on a copy of the backbone, which stays yours as it was.
    Hooks registered on it before the model is built come along (a layer's
    hooks move to its task-aware replacement); hooks registered on your
    backbone afterwards never fire in the model: register them on
    ``model.backbone`` (``model.backbone.get_submodule(name)``).

    :param backbone: the network to copy.
    :param classifier: the ``nn.Linear`` replaced by per-task heads, as a
        module of the backbone or its qualified name; ``None`` finds the
        ``nn.Linear`` whose output is the backbone's output (by tracing its
        forward pass with ``torch.fx``), and refuses when that is ambiguous.
    :param feature_statistics: each task also keeps the mean feature of
        each class and the precision of their covariance (see
        :class:`~piggyback_avalanche.task_aware.feature_statistics.TaskFeatureStatistics`),
        of its own features (``feature_statistics``: the ``"mahalanobis"`` and
        ``"relative_mahalanobis"`` task-inference scores) and, where the
        backbone stays fixed (:meth:`backbone_stays_fixed`), of the backbone's
        (``backbone_feature_statistics``: ``"backbone_mahalanobis"``); they
        count in :meth:`stored_bytes`.
    :raises ValueError: for a backbone that holds Avalanche's multi-task or
        dynamic modules (its own heads would fight the per-task heads).
    """

    # Avalanche's MultiTaskModule bookkeeping, kept up to date here.
    known_train_tasks_labels: set[int]
    max_class_label: int

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        feature_statistics: bool = False,
    ) -> None:
        super().__init__()
        refuse_avalanche_dynamic_modules(backbone, type(self).__name__)
        self.task_state = TaskState()
        self._shared_keys: list[str] | None = None
        self._frozen_parts: dict[str, list[Tensor | nn.Module]] = {}
        # Classes of experiences evaluated before their task was learned (not saved).
        self._untrained_task_classes: dict[int, list[int]] = {}
        self._classifier_name = find_classifier(backbone, classifier)
        self.backbone = self._convert(copy.deepcopy(backbone), self._classifier_name)
        self.feature_statistics: TaskFeatureStatistics | None = None
        self.backbone_feature_statistics: TaskFeatureStatistics | None = None
        if feature_statistics:
            self.keep_feature_statistics()
        for prefix, module in self._named_task_modules():
            module.state_prefix = prefix

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        return replace_modules(
            backbone, lambda name, module: self._task_aware(module, is_classifier=name == classifier_name)
        )

    def _task_aware(self, module: nn.Module, *, is_classifier: bool) -> nn.Module:
        """What replaces a backbone module (the module itself if nothing)."""
        if is_classifier:
            return TaskHeads(module, task_state=self.task_state)  # type: ignore[arg-type]  # the classifier is an nn.Linear
        return module

    def _named_task_modules(self) -> Iterator[tuple[str, TaskModule]]:
        """Every task-aware module, by its state-dict prefix.

        The walk stops at each task-aware module: what lies below (a head
        or a norm per task) is the module's own, and walking it would make
        every call cost as much as there are tasks."""
        seen: set[int] = set()

        def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, TaskModule]]:
            for name, child in module._modules.items():
                if child is None or id(child) in seen:
                    continue
                seen.add(id(child))
                if isinstance(child, TaskModule):
                    yield f"{prefix}{name}.", child
                else:
                    yield from walk(child, f"{prefix}{name}.")

        yield from walk(self, "")

    # --- tasks ---------------------------------------------------------------

    @property
    def heads(self) -> TaskHeads:
        """The per-task classifier heads."""
        return self.backbone.get_submodule(self._classifier_name)  # type: ignore[return-value]

    @property
    def tasks(self) -> list[int]:
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
        key = task_key(task)
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
        """Add the experience's new tasks when training. When evaluating, a
        task not learned yet is computed as the model stands before learning
        it (the shared layers, an untrained head over the experience's
        classes), and the model is left as it is.

        :raises ValueError: when training a known task on classes its head
            does not have.
        """
        self.adapt_to_tasks(experience_task_classes(experience))

    def adapt_to_tasks(self, task_classes: dict[int, list[int]]) -> None:
        """:meth:`adaptation` for the given tasks and their classes (what a
        strategy that assigns tasks itself calls)."""
        if not self.training:
            for task, classes in task_classes.items():
                if task_key(task) not in self.heads.heads:
                    self._untrained_task_classes[task] = list(classes)
                    # Its untrained head answers over its classes: the logits widen as in training.
                    self.max_class_label = max(self.max_class_label, max(int(c) for c in classes) + 1)
            return
        for task, classes in task_classes.items():
            if task_key(task) not in self.heads.heads:
                self.add_task(task, classes=classes)
            else:
                self._revisit(task, classes)

    def _revisit(self, task: int, classes: Sequence[int]) -> None:
        """Train a known task again (as cumulative and joint training do)."""
        head = self.heads.head(task_key(task))
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

    # --- what the model stores ----------------------------------------------------

    def task_tensor_keys(self, task: int) -> list[str]:
        """The state-dict keys of what ``task`` holds now, in every module."""
        key = task_key(task)
        return [prefix + k for prefix, module in self._named_task_modules() for k in module.task_tensor_keys(key)]

    def frozen_task_tensor_schema(self, task: int) -> dict[str, TensorSpec]:
        """The state-dict keys that a frozen ``task`` holds (whether or not
        the model has it), with what each tensor must be, in a fixed order."""
        key = task_key(task)
        return {
            prefix + k: spec
            for prefix, module in self._named_task_modules()
            for k, spec in module.frozen_task_tensor_schema(key).items()
        }

    def code_layouts(self) -> dict[str, CodeLayout]:
        """The state-dict keys that hold packed codes (masks, owners), with
        their layouts: what task files and checkpoints store entropy-coded
        (:func:`~piggyback_avalanche.task_aware.entropy_coding.encode_state`)."""
        return {
            prefix + k: layout
            for prefix, module in self._named_task_modules()
            for k, layout in module.code_layouts().items()
        }

    def frozen_code_layouts(self, task: int) -> dict[str, CodeLayout]:
        """The keys of :meth:`frozen_task_tensor_schema` that hold packed
        codes, with their layouts."""
        key = task_key(task)
        return {
            prefix + k: layout
            for prefix, module in self._named_task_modules()
            for k, layout in module.frozen_code_layouts(key).items()
        }

    def template_state_keys(self) -> list[str]:
        """State-dict keys that only seed new tasks and that no learned task reads."""
        return [prefix + k for prefix, module in self._named_task_modules() for k in module.template_state_keys()]

    def frozen_task_parts(self) -> list[Tensor | nn.Module]:
        """What only frozen tasks hold, which nothing ever changes: their
        tensors (parameters and buffers themselves), and the leaf modules
        that hold nothing else (a frozen task's head or norm; never a
        container, to which a new task may be added). Found once per task."""
        learning = self.task_state.learning
        parts: list[Tensor | nn.Module] = []
        for task in self.tasks:
            key = task_key(task)
            if key in learning:
                continue
            if key not in self._frozen_parts:
                tensors = self.task_tensors(task)
                owned = {id(t) for t in tensors.values()}
                owners = {id(m): m for m in (self.get_submodule(k.rpartition(".")[0]) for k in tensors)}
                leaves = [
                    m
                    for m in owners.values()
                    if not m._modules and all(id(t) in owned for t in chain(m.parameters(), m.buffers()))
                ]
                self._frozen_parts[key] = [*tensors.values(), *leaves]
            parts += self._frozen_parts[key]
        return parts

    def shared_state_keys(self) -> list[str]:
        """State-dict keys of what every task shares: all but the tasks' own.

        Tasks come and go with keys of their own only, so the shared keys
        depend on the model's structure alone: they are found once (and
        again after a load), not at every call, whose cost would grow with
        the number of tasks."""
        if self._shared_keys is None:
            own = {k for task in self.tasks for k in self.task_tensor_keys(task)}
            self._shared_keys = [k for k in self.state_dict() if k not in own]
        return list(self._shared_keys)

    def _state_tensor(self, key: str) -> Tensor:
        """The parameter or buffer under a state-dict key, fetched live by
        name (a move to another device replaces buffers; a write through
        ``.data`` replaces a parameter's storage)."""
        owner, _, name = key.rpartition(".")
        module = self.get_submodule(owner)
        tensor = module._parameters.get(name)
        return tensor if tensor is not None else module._buffers[name]

    def shared_state(self) -> dict[str, Tensor]:
        """The shared tensors by state-dict key, fetched live."""
        return {key: self._state_tensor(key) for key in self.shared_state_keys()}

    def task_tensors(self, task: int) -> dict[str, Tensor]:
        """What ``task`` holds in memory now, by state-dict key (without
        building the whole state dict, whose size grows with the tasks)."""
        return {key: self._state_tensor(key) for key in self.task_tensor_keys(task)}

    def stored_bytes(self) -> int:
        """Bytes of what the model must store to compute every learned task:
        its state dict at each tensor's own dtype, without the templates that
        only seed new tasks."""
        skip = set(self.template_state_keys())
        return sum(t.nbytes for k, t in self.state_dict().items() if k not in skip)

    def bytes_per_task(self) -> float:
        """Bytes that each learned task adds, on average: :meth:`stored_bytes`
        less the backbone's tensors that every task shares, over the tasks;
        shared tensors that record the tasks (``TaskModule.task_record_keys``:
        PackNet's owners) count as the tasks'. What methods compare at equal
        cost; ``0.0`` before any task."""
        if not self.tasks:
            return 0.0
        not_backbone = set(self.template_state_keys()) | {
            prefix + k for prefix, module in self._named_task_modules() for k in module.task_record_keys()
        }
        backbone = sum(t.nbytes for k, t in self.shared_state().items() if k not in not_backbone)
        return (self.stored_bytes() - backbone) / len(self.tasks)

    def network_bytes(self, task: int) -> int:
        """Bytes of one plain network for ``task``: the backbone's layers and
        normalization once, with that task's head; T individual networks
        cost the sum of this over the tasks."""
        key = task_key(task)

        def plain(module: nn.Module) -> int:
            if isinstance(module, TaskModule):
                return module.plain_bytes(key)
            return _own_state_bytes(module) + sum(plain(child) for child in module.children())

        return plain(self.backbone)

    # --- deployment -------------------------------------------------------------

    def export_task(self, task: int) -> nn.Module:
        """One task as a plain ``nn.Module`` for deployment: the backbone's
        structure with plain torch layers, the task's effective weights (for
        Piggyback, the mask folded in), its normalization and its head. It
        takes inputs only, with no task label, so ``torch.jit.trace``,
        ``torch.jit.script``, ``torch.export`` and ONNX export take it as it is.

        :raises ValueError: for a task the model does not have, or one still
            being learned.
        """
        key = task_key(task)
        if key not in self.heads.heads:
            raise ValueError(self._unknown_tasks_message([int(key)]))
        if key in self.task_state.learning:
            raise ValueError(f"Task {task} is still being learned; export it once train() has frozen it.")
        # Deep-copy the backbone with every task-aware module replaced by its
        # plain twin for this task: the memo hands the twin to the copy.
        memo: dict[int, Any] = {id(module): module.plain_module(key) for _, module in self._named_task_modules()}
        return copy.deepcopy(self.backbone, memo).eval()

    # --- forward -------------------------------------------------------------

    def forward(self, x: Tensor, task_labels: int | Tensor | None = None) -> Tensor | dict[int, Tensor]:
        """Logits of each sample under its own task, as Avalanche's
        multi-task models give them.

        With one task label per sample (a tensor, what Avalanche's
        strategies pass), the logits are :attr:`max_class_label` wide, as
        wide as the classes of every task the model knows, so that code
        indexing them by class label (``MaskedCrossEntropy``, the cumulative
        accuracy metric) reads every class; with one ``int`` label for the
        batch, as wide as that task's head. A class a task does not have,
        and a column beyond its head, holds :data:`~piggyback_avalanche.task_aware.task_heads.MASKED_LOGIT`:
        finite (losses that weigh every column stay finite), and never
        winning an argmax.

        :param x: the input batch.
        :param task_labels: one task label for the whole batch, one per
            sample, or ``None`` (as ``model(x)`` in Avalanche's MAC metric)
            for a dict of every learned task's logits.
        """
        if torch.jit.is_tracing():
            raise RuntimeError(
                f"Tracing a {type(self).__name__} would bake the traced task into the graph and answer "
                "every later call with it. Deploy one task as a plain module instead: "
                "torch.jit.trace(model.export_task(task), x)."
            )
        self._check_input_device(x)
        self.task_state.passes += 1
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, Tensor) and task_labels.dim() > 0:
            if task_labels.shape[0] != x.shape[0]:
                raise ValueError(f"Got {task_labels.shape[0]} task labels for {x.shape[0]} samples.")
            return self._forward_per_sample(x, task_labels, torch.unique(task_labels).tolist())
        return self.forward_single_task(x, task_labels)

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.to``; a move to the device every tensor is already on
        (what Avalanche asks before every experience) returns at once,
        instead of visiting every task's head and norm."""
        device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and dtype is None and memory_format is None:
            target = torch.device(device)
            if all(t.device == target for t in chain(self.parameters(), self.buffers())):
                return self
        return super().to(*args, **kwargs)

    def mask_sparsity(self, task: int) -> dict[str, dict[str, float]] | None:
        """The share of each layer's weights that ``task``'s mask drops
        (``"zeros"``) and, for masks that can, flips (``"negatives"``), by
        layer label (see :attr:`labelled_task_layers`) and ``"overall"``;
        ``None`` when no layer of this model masks the shared weights (see
        :meth:`TaskWeightLayer.mask_counts`)."""
        counted = {
            name: (counts, layer.weight.numel())
            for name, layer in self.labelled_task_layers.items()
            if (counts := layer.mask_counts(str(task))) is not None
        }
        if not counted:
            return None
        kinds = next(iter(counted.values()))[0].keys()
        weights = sum(numel for _, numel in counted.values())
        sparsity: dict[str, dict[str, float]] = {}
        for kind in kinds:
            shares = {name: counts[kind] / numel for name, (counts, numel) in counted.items()}
            shares["overall"] = sum(counts[kind] for counts, _ in counted.values()) / weights
            sparsity[kind] = shares
        return sparsity

    def _forward_per_sample(self, x: Tensor, task_labels: Tensor, tasks: list[int]) -> Tensor:
        """Each sample's logits under its task, :attr:`max_class_label` wide
        (a mini-batch of one task is computed whole)."""
        if len(tasks) == 1:
            out = self.forward_single_task(x, tasks[0])
            return F.pad(out, (0, self.max_class_label - out.shape[1]), value=MASKED_LOGIT)
        rows = [task_labels == t for t in tasks]
        outputs = [self.forward_single_task(x[r], t) for r, t in zip(rows, tasks)]
        out = outputs[0].new_full((x.shape[0], self.max_class_label), MASKED_LOGIT)
        for r, o in zip(rows, outputs):
            out[r, : o.shape[1]] = o
        return out

    def forward_single_task(self, x: Tensor, task_label: int | Tensor) -> Tensor:
        """Logits of ``x`` under one task."""
        key = task_key(task_label)
        if key not in self.heads.heads:
            classes = self._untrained_task_classes.get(int(key))
            if classes is None or self.training:
                raise ValueError(self._unknown_tasks_message([int(key)]))
            with self.task_state.use_untrained(key, classes):
                return self.backbone(x)
        with self.task_state.use(key):
            return self.backbone(x)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """Logits of ``x`` under every known task."""
        return {t: self.forward_single_task(x, t) for t in self.tasks}

    # --- state dict ------------------------------------------------------------

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._shared_keys = None
        self._frozen_parts = {}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.known_train_tasks_labels = set(self.tasks)
        self.max_class_label = max([self.heads.head(t).out_features for t in self.heads.heads.keys()], default=0)
        return result


class TaskAwareModel(MultiHeadModel):
    """A backbone whose layers are task-aware: the machinery that every
    method shares.

    Besides the heads of :class:`MultiHeadModel`, the backbone's convolutions
    and linear layers become the method's
    :class:`~piggyback_avalanche.task_aware.task_layers.TaskWeightLayer`
    twins (``layer_types``, from
    :func:`~piggyback_avalanche.task_aware.task_layers.task_layer_types`) and
    its normalization layers :class:`TaskNorm`. Tasks end with
    :meth:`freeze_task`, and a frozen task is never trained again.

    :param backbone: the network to copy and convert.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param task_batchnorm: each task learns its own normalization parameters
        and statistics; ``False`` shares the backbone's.
    :param task_embeddings: each task learns its own copy of the backbone's
        :data:`SHARED_EMBEDDINGS` (a transformer's class token, positional
        embedding, relative position tables), trained with its head
        (:class:`~piggyback_avalanche.task_aware.task_embeddings.TaskEmbedding`);
        ``False`` shares them frozen.
    :param feature_statistics: see :class:`MultiHeadModel`.
    :param layer_settings: passed to every task-aware layer's ``from_module``.
    :raises ValueError: for parameters the model cannot handle, named, and
        for ``task_embeddings`` on a backbone without embeddings.
    """

    layer_types: ClassVar[dict[type[nn.Module], type[TaskWeightLayer]]] = {}
    """Backbone layer types and the task-aware types that replace them."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        task_batchnorm: bool = True,
        task_embeddings: bool = False,
        feature_statistics: bool = False,
        layer_settings: dict[str, Any],
    ) -> None:
        self.task_batchnorm = bool(task_batchnorm)
        self.task_embeddings = bool(task_embeddings)
        self._layer_settings = layer_settings
        # Per stored task: the state-dict keys of its parts the store holds, with their bytes in memory.
        self._offloaded: dict[str, dict[str, int]] = {}
        super().__init__(backbone, classifier=classifier, feature_statistics=feature_statistics)
        self.shared_weight_checksum = SharedWeightChecksum(self.shared_state)
        self.shared_weight_checksum.record()

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        refuse_unsupported_parameters(backbone, classifier_name, self.layer_types, type(self).__name__)
        freeze_shared_embeddings(backbone)
        backbone = super()._convert(backbone, classifier_name)
        if not any(isinstance(m, TaskWeightLayer) for m in backbone.modules()):
            raise ValueError(
                "The backbone has no convolution or linear layer besides the "
                f"classifier, so {type(self).__name__} has nothing to learn per task."
            )
        for module in backbone.modules():
            if isinstance(module, nn.TransformerEncoder):
                # Its nested-tensor path runs fused kernels on its layers' own
                # tensors: the shared weights, not the task's.
                module.use_nested_tensor = False
        if self.task_embeddings and not give_tasks_their_own(backbone, SHARED_EMBEDDINGS, task_state=self.task_state):
            raise ValueError(
                f"task_embeddings=True gives each task its own {', '.join(sorted(SHARED_EMBEDDINGS))}, but the "
                "backbone has none of them; build the model with task_embeddings=False."
            )
        return backbone

    def _task_aware(self, module: nn.Module, *, is_classifier: bool) -> nn.Module:
        if not is_classifier and type(module) in ATTENTION_TYPES:
            twin = partial(self._task_aware, is_classifier=False)
            return ATTENTION_TYPES[type(module)](module, twin=twin)
        if not is_classifier and type(module) in self.layer_types:
            return self.layer_types[type(module)].from_module(
                module, task_state=self.task_state, **self._layer_settings
            )
        if not is_classifier and isinstance(module, NORM_LAYER_TYPES):
            return TaskNorm(module, task_state=self.task_state, per_task=self.task_batchnorm)
        return super()._task_aware(module, is_classifier=is_classifier)

    # --- tasks ---------------------------------------------------------------

    @property
    def task_layers(self) -> dict[str, TaskWeightLayer]:
        """The task-aware convolution and linear layers by qualified name."""
        return {n: m for n, m in self.backbone.named_modules() if isinstance(m, TaskWeightLayer)}

    def capacity_used(self) -> float:
        """The share of the task-aware layers' weights that earlier tasks
        have taken from later ones (each layer's
        :meth:`~piggyback_avalanche.task_aware.task_layers.TaskWeightLayer.capacity_used`,
        weighed by its weights): how close the network is to having no room
        for a new task. 0 for methods whose tasks add tensors of their own
        over a shared weight that never trains."""
        layers = list(self.task_layers.values())
        taken = sum(layer.capacity_used() * layer.weight.numel() for layer in layers)
        return taken / max(1, sum(layer.weight.numel() for layer in layers))

    @property
    def labelled_task_layers(self) -> dict[str, TaskWeightLayer]:
        """:attr:`task_layers` by label, module path and torch type
        (``"0:Conv2d"``, ``"layer1.0.conv1:Conv2d"``): how metrics, charts and
        TensorBoard name a layer, since a path alone is often an index."""
        return {f"{n}:{m.torch_type().__name__}": m for n, m in self.task_layers.items()}

    def backbone_stays_fixed(self) -> bool:
        """The backbone trains only with the task that trains it (if any),
        unless a task-aware module changes it with every task (PackNet's)."""
        return not any(module.changes_backbone_with_tasks for _, module in self._named_task_modules())

    @property
    def frozen_weight_cache(self) -> FrozenWeightCache:
        """The effective weights of the frozen tasks used most recently,
        shared by every layer; set its ``budget_bytes`` to keep more or
        fewer of them."""
        return self.task_state.frozen_weights

    @property
    def frozen_tasks(self) -> list[int]:
        """Tasks that are finished and never change again."""
        return sorted(int(t) for t in self.heads.heads.keys() if t not in self.task_state.learning)

    @property
    def learning_tasks(self) -> list[int]:
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
                raise ValueError(f"Task {self.task_state.backbone_task} is already training the backbone.")
            self.task_state.backbone_task = key
        self.task_state.learning.add(key)
        for _, module in self._named_task_modules():
            module.add_task(key, classes=classes)
        self._register_task(task, classes)

    def freeze_task(self, task: int) -> None:
        """Finish a task: after this its outputs never change. With a task
        store attached, append it there and drop its offloadable parts from
        memory.

        :raises TaskStoreError: if the store cannot take the task (a full
            disk, a removed folder); the task stays frozen in memory, whole,
            and :meth:`save_task` can write it elsewhere.
        """
        key = task_key(task)
        if key not in self.task_state.learning:
            raise ValueError(f"Task {task} is not being learned; learning: {self.learning_tasks}.")
        for _, module in self._named_task_modules():
            module.freeze_task(key)
        self.task_state.learning.discard(key)
        if self.task_state.backbone_task == key:
            self.task_state.backbone_task = None
        if not self.task_state.learning:
            self.shared_weight_checksum.record()
        if self.task_store is not None:
            self._store(task)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters that learning the current tasks trains, by group:
        ``"task_parameters"`` (the learning tasks' normalization and heads),
        ``"backbone"`` (shared parameters while a task trains the backbone)
        and the task-aware layers' own groups."""
        groups: dict[str, list[nn.Parameter]] = {"task_parameters": [], "backbone": []}
        for _, module in self._named_task_modules():
            for name, params in module.trainable_parameters().items():
                groups.setdefault(name, []).extend(params)
        return groups

    def settings(self) -> dict[str, Any]:
        """What the model was built with, as plain values: a checkpoint is
        refused by a model whose settings differ."""
        plain = {k: v for k, v in self._layer_settings.items() if isinstance(v, (bool, int, float, str))}
        return {
            "model": type(self).__name__,
            "task_batchnorm": self.task_batchnorm,
            **plain,
            # Only when on, so that checkpoints written before the options still load.
            **({"feature_statistics": True} if self.feature_statistics is not None else {}),
            **({"task_embeddings": True} if self.task_embeddings else {}),
        }

    def task_file_settings(self) -> dict[str, Any]:
        """The settings that decide what a frozen task's tensors mean, as
        plain values: task files and task stores record them, and refuse
        tasks saved under other ones (a method adds its own, such as
        Piggyback's threshold)."""
        return {
            "model": type(self).__name__,
            "task_batchnorm": self.task_batchnorm,
            "dtype": str(next(self.parameters()).dtype),
        }

    def task_tensor_bits_per_weight(self) -> float:
        """Bits of per-task tensors stored per weight of the task-aware layers,
        for all frozen tasks together."""
        layers = self.task_layers.values()
        return 8.0 * sum(layer.task_tensor_bytes() for layer in layers) / sum(layer.weight.numel() for layer in layers)

    @torch.no_grad()
    def _learning_batch_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The learning tasks' batch norms that keep running statistics."""
        return [
            norm
            for _, module in self._named_task_modules()
            if isinstance(module, TaskNorm)
            for norm in module.learning_norms()
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
        ]

    def has_norm_statistics(self) -> bool:
        """Whether a learning task keeps batch-norm running statistics, which
        :meth:`recalibrate_norm_statistics` re-estimates (a network without
        batch norm has none, and needs no pass)."""
        return bool(self._learning_batch_norms())

    def recalibrate_norm_statistics(self, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
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
        norms = self._learning_batch_norms()
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
        # Adapting to an experience again (Avalanche may, through pre_adapt and
        # its recursion) changes nothing; training a frozen task again is
        # refused by the strategy, before any work.
        super()._revisit(task, classes)

    # --- task files ------------------------------------------------------------

    def save_task(self, path: str | Path, task: int) -> None:
        """Write one frozen task (what it adds to the backbone: Piggyback's
        packed masks, another method's per-task tensors, its normalization
        and head; with :meth:`task_file_settings`, a format version and the
        backbone's fingerprint) to ``path``, atomically. See
        :mod:`~piggyback_avalanche.task_aware.task_files`."""
        self.save_tasks(path, [task])

    def save_tasks(self, path: str | Path, tasks: Iterable[int] | None = None) -> None:
        """Write ``tasks`` (all frozen tasks by default) to one task file."""
        save_tasks(self, path, tasks)

    def load_task(self, path: str | Path, task: int, *, as_task: int | None = None) -> int:
        """Add ``task`` from a task file as a frozen task, under the label
        ``as_task`` (default: the same). The model is unchanged on error.

        :return: the task's label in this model.
        :raises TaskFileError: for a file that is truncated, corrupt, of
            another version, from another backbone or setting, or
            that does not fit the layers, and for a label already taken.
        """
        rename = None if as_task is None else {task: as_task}
        return self.load_tasks(path, [task], rename=rename)[0]

    # --- the task store ----------------------------------------------------------

    @property
    def task_store(self) -> TaskStore | None:
        """The task store that holds this model's frozen tasks' offloadable
        parts (Piggyback's masks), if any."""
        return self.task_state.stored_parts  # type: ignore[return-value]  # only attach_task_store sets it

    def attach_task_store(self, path: str | Path, *, cache_budget_bytes: int | None = None) -> list[int]:
        """Keep the frozen tasks' offloadable parts (Piggyback's masks; see
        ``TaskTensorDict(offloadable=...)``) in the task store at ``path``
        (:mod:`~piggyback_avalanche.task_aware.task_store`) instead of
        memory: the store's tasks join the model, the model's frozen tasks
        are appended to the store, and every task frozen from now on is
        appended when it freezes. A task's parts are read when the task is
        used and its effective weights not cached; memory holds the
        backbone, every task's normalization and head, and the
        :attr:`frozen_weight_cache`.

        Everything is checked first (the manifest, every task file against
        its SHA-256, the backbone fingerprint and task-file settings, free
        labels); on any error the model is unchanged.

        :param path: the store's folder (made if new).
        :param cache_budget_bytes: set the :attr:`frozen_weight_cache`'s budget.
        :return: the tasks added from the store.
        :raises TaskStoreError: naming what does not fit and what to do.
        :raises ValueError: while a task learns, or if a store is attached.
        """
        if self.task_store is not None:
            raise ValueError(f"This model keeps its tasks in {self.task_store.path} already.")
        if self.task_state.learning:
            raise ValueError(
                f"Tasks {self.learning_tasks} are still being learned; attach a task store between experiences."
            )
        store = TaskStore(path)
        store.check_model(self)
        added = store.tasks
        clashing = sorted(set(added) & set(self.tasks))
        if clashing:
            raise TaskStoreError(
                f"Task label(s) {clashing} are in the model and in the task store {store.path}; attach the "
                "store to a model without them (a model built on the same backbone)."
            )
        for task in added:  # every file, checked before anything changes
            store.entries(self, task)
        # The model's own frozen tasks go to the store first, all or none: if
        # the folder cannot take them, neither the store nor the model changes.
        own = [t for t in self.frozen_tasks if task_key(t) not in self.task_state.stored_tasks]
        if own:
            store.append_tasks(self, own)
        if cache_budget_bytes is not None:
            self.frozen_weight_cache.budget_bytes = cache_budget_bytes
        self.task_state.stored_parts = store
        # A few tasks per load: each load visits the whole model, and each
        # task's offloadable parts leave memory right after.
        for start in range(0, len(added), _TASKS_PER_LOAD):
            chunk = added[start : start + _TASKS_PER_LOAD]
            self.load_state_dict(
                {**self.state_dict(), **{k: v for t in chunk for k, v in store.entries(self, t).items()}}
            )
            for task in chunk:
                self._offload(task)
        for task in own:
            self._offload(task)
        return added

    def _store(self, task: int) -> None:
        self.task_store.append(self, task)  # type: ignore[union-attr]
        self._offload(task)

    def _offload(self, task: int) -> None:
        key = task_key(task)
        parts = {
            prefix + k: tensor
            for prefix, module in self._named_task_modules()
            for k, tensor in module.offload_task(key).items()
        }
        self._offloaded[key] = {k: t.nbytes for k, t in parts.items()}
        self._frozen_parts.pop(key, None)  # it held the parts that just left memory
        self.task_state.stored_tasks.add(key)

    def stored_task_parts(self, task: int) -> dict[str, Tensor]:
        """The parts of ``task`` that its task store holds instead of memory,
        read from the store (none for a task in memory)."""
        key = task_key(task)
        store = self.task_store
        if key not in self.task_state.stored_tasks or store is None:
            return {}
        return {k: store.read_part(key, k) for k in self._offloaded[key]}

    def stored_bytes(self) -> int:
        """Bytes the model stores, in memory or in its task store (the
        stored tasks' parts counted as in memory, masks bit-packed)."""
        return super().stored_bytes() + sum(sum(parts.values()) for parts in self._offloaded.values())

    def load_tasks(
        self,
        path: str | Path,
        tasks: Iterable[int] | None = None,
        *,
        rename: dict[int, int] | None = None,
    ) -> list[int]:
        """Add ``tasks`` (all of the file's by default) from a task file;
        ``rename`` maps the file's labels to this model's.

        :return: the labels added.
        """
        return load_tasks(self, path, tasks, rename=rename)

    # --- the shared tensors stay as the frozen tasks learned them ----------------

    def verify_shared_state(self, *, sampled: bool = False) -> None:
        """Check that no shared tensor (the backbone's weights, biases and
        normalization) changed since the tasks were frozen.

        Every frozen task was learned for those tensors, so there is no
        supported way to change them in a model with frozen tasks: build a
        new model on the new backbone. Writes through ``.data`` or
        ``torch.nn.utils.vector_to_parameters`` bypass PyTorch's version
        counters; Avalanche's model adaptation (before every ``train`` and
        ``eval`` of an experience) and :meth:`export_task` call this to catch
        them. Checked only while no task learns (learning may change them).

        :param sampled: check a fixed strided sample of each tensor (at most
            :data:`~piggyback_avalanche.task_aware.shared_weight_checksum.CHECKSUM_SAMPLES`
            entries), as evaluation does to stay as fast
            as plain inference: any write to a whole tensor (``.data.add_``,
            ``copy_``, other weights loaded) changes it, a write to a few
            entries may not. Training an experience and :meth:`export_task`
            check every entry.
        :raises RuntimeError: naming what to do, if they changed.
        """
        if self.task_state.learning or not self.tasks:
            return
        if not self.shared_weight_checksum.unchanged(sampled=sampled):
            raise RuntimeError(
                f"The shared weights of this {type(self).__name__} changed after its tasks {self.frozen_tasks} "
                "were frozen (a write through .data or vector_to_parameters?). Every frozen task was learned "
                "for the old weights, and cached weights would answer with them: there is no supported way to "
                "change the backbone of a model with frozen tasks. Build a new model on the new backbone."
            )

    def adapt_to_tasks(self, task_classes: dict[int, list[int]]) -> None:
        self.verify_shared_state(sampled=not self.training)
        super().adapt_to_tasks(task_classes)

    def export_task(self, task: int) -> nn.Module:
        self.verify_shared_state()
        return super().export_task(task)

    # --- state dict ------------------------------------------------------------

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.shared_weight_checksum.record()
        return result

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The task-aware layers below, loaded after this, add the tasks that
        # their learning stores hold.
        self.task_state.learning = set()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SettingFreeModel(TaskAwareModel):
    """A task-aware model whose layers take no settings and whose
    normalization is per task or shared as the method defines it
    (``per_task_norm``), never as the caller chooses: the reference points
    and BitFit.

    :param backbone: the network to copy and convert.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param feature_statistics: see :class:`MultiHeadModel`.
    """

    per_task_norm: bool

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        feature_statistics: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=self.per_task_norm,
            feature_statistics=feature_statistics,
            layer_settings={},
        )
