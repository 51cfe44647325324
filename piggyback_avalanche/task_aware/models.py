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
from avalanche.models import DynamicModule, MultiTaskModule

from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.experiences import experience_task_classes
from piggyback_avalanche.task_aware.feature_statistics import TaskFeatureStatistics
from piggyback_avalanche.task_aware.frozen_weight_cache import FrozenWeightCache
from piggyback_avalanche.task_aware.task_attention import ATTENTION_TYPES
from piggyback_avalanche.task_aware.task_embeddings import give_tasks_their_own
from piggyback_avalanche.task_aware.task_files import load_tasks, save_tasks
from piggyback_avalanche.task_aware.task_heads import MASKED_LOGIT, TaskHeads, unmasked
from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer
from piggyback_avalanche.task_aware.task_norm import NORM_LAYER_TYPES, TaskNorm
from piggyback_avalanche.task_aware.task_scores import TaskScore
from piggyback_avalanche.task_aware.task_state import (
    StackingUnsupportedError,
    TaskModule,
    TaskState,
    TensorSpec,
    task_key,
)
from piggyback_avalanche.task_aware.task_store import TaskStore, TaskStoreError

__all__ = ["MultiHeadModel", "TaskAwareModel", "SettingFreeModel", "SHARED_EMBEDDINGS", "find_classifier"]

SHARED_EMBEDDINGS = frozenset(
    {
        "class_token",
        "cls_token",
        "dist_token",
        "reg_token",
        "pos_embedding",
        "pos_embed",
        "relative_position_bias_table",
    }
)
"""Names of the parameters that transformers hold outside any layer
(torchvision's and timm's class and distillation tokens, positional
embeddings, relative position bias tables): a task-aware model shares them
frozen, as pretraining left them, like the backbone's weights."""

_TASKS_PER_LOAD = 32
"""Tasks read from a task store per state-dict load when a store is attached."""

_CHECKSUM_SAMPLES = 4096
"""Entries per shared tensor that evaluation's checksum reads."""


def _refuse_avalanche_dynamic_modules(backbone: nn.Module, model_name: str) -> None:
    """Avalanche's multi-task and dynamic models route tasks themselves and
    take task labels in ``forward``: the per-task heads would fight them."""
    dynamic = [
        f"{name or '<backbone>'} ({type(m).__name__})"
        for name, m in backbone.named_modules()
        if isinstance(m, DynamicModule)
    ]
    if dynamic:
        raise ValueError(
            f"The backbone holds Avalanche multi-task or dynamic modules: {', '.join(dynamic)}. "
            f"{model_name} makes its own heads, one per task, so give it the single-head network: "
            "SimpleMLP(...) instead of MTSimpleMLP(...), the model you passed to as_multitask(), or "
            "your network with an nn.Linear in place of IncrementalClassifier / MultiHeadClassifier."
        )


_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)
"""The hooks a module keeps (torch's own dictionaries)."""


def _carry_hooks(module: nn.Module, replacement: nn.Module) -> None:
    """Give ``replacement`` the hooks registered on the backbone's ``module``
    that it stands for, so that they fire in the model too; a replacement
    that runs ``module`` itself (a per-task norm around it) fires them
    already."""
    if replacement is module or any(inner is module for inner in replacement.modules()):
        return
    for name in _HOOKS:
        hooks = getattr(module, name, None)
        if hooks:
            getattr(replacement, name).update(hooks)


def _output_linear(backbone: nn.Module) -> tuple[bool, str | None]:
    """Whether the backbone's forward pass could be traced, and the qualified
    name of the ``nn.Linear`` whose output is the backbone's output (``None``
    if untraced, or if the output is not an ``nn.Linear``'s)."""
    try:
        graph = torch.fx.symbolic_trace(backbone).graph
    except Exception:  # dynamic control flow and the like: torch.fx cannot follow it
        return False, None
    output = next(node for node in graph.nodes if node.op == "output").args[0]
    if isinstance(output, torch.fx.Node) and output.op == "call_module":
        if isinstance(backbone.get_submodule(str(output.target)), nn.Linear):
            return True, str(output.target)
    return True, None


def find_classifier(backbone: nn.Module, classifier: str | nn.Module | None) -> str:
    """The qualified name of the backbone's classifier: ``classifier`` (a
    module of the backbone or its name), or the ``nn.Linear`` whose output
    is the backbone's output.

    :raises ValueError: for a classifier that is not an ``nn.Linear`` of the
        backbone, or none found.
    """
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
    linears = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
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
    traced, found = _output_linear(backbone)
    if found is not None:
        return found
    if not traced and len(linears) == 1:
        return linears[0]
    why = (
        "its output is not the output of an nn.Linear (it is transformed after it, or a tuple)"
        if traced
        else "its forward pass cannot be traced with torch.fx"
    )
    raise ValueError(
        f"Cannot tell which nn.Linear is the backbone's classifier: {why}, and it has "
        f"{len(linears)} nn.Linear layers ({', '.join(linears)}). Pass classifier='<qualified name>'."
    )


def _own_state_bytes(module: nn.Module) -> int:
    """Bytes of a module's own saved parameters and buffers (not its children's)."""
    buffers = [b for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set]
    return sum(t.nbytes for t in chain(module._parameters.values(), buffers) if t is not None)


class MultiHeadModel(MultiTaskModule):
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
        _refuse_avalanche_dynamic_modules(backbone, type(self).__name__)
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

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        replaced: dict[int, nn.Module] = {}
        replaced_names: list[str] = []
        for name, module in list(backbone.named_modules(remove_duplicate=False)):
            if any(name.startswith(f"{above}.") for above in replaced_names):
                continue  # what lies below a replaced module is the replacement's
            if id(module) not in replaced:
                replaced[id(module)] = self._task_aware(module, is_classifier=name == classifier_name)
                _carry_hooks(module, replaced[id(module)])
            new = replaced[id(module)]
            if new is module:
                continue
            if not name:
                return new
            replaced_names.append(name)
            parent, _, attr = name.rpartition(".")
            setattr(backbone.get_submodule(parent), attr, new)
        return backbone

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

    def task_state_keys(self, task: int) -> list[str]:
        """The state-dict keys of what ``task`` holds now, in every module."""
        key = task_key(task)
        return [prefix + k for prefix, module in self._named_task_modules() for k in module.task_state_keys(key)]

    def frozen_task_state_schema(self, task: int) -> dict[str, TensorSpec]:
        """The state-dict keys that a frozen ``task`` holds (whether or not
        the model has it), with what each tensor must be, in a fixed order."""
        key = task_key(task)
        return {
            prefix + k: spec
            for prefix, module in self._named_task_modules()
            for k, spec in module.frozen_task_state_schema(key).items()
        }

    def optional_task_state_keys(self, task: int) -> list[str]:
        """The keys of :meth:`frozen_task_state_schema` that a task file may
        lack: the backbone's feature statistics, which files written before
        they existed do not hold (the task then has none, and the scores
        that read them are not offered)."""
        statistics = self.backbone_feature_statistics
        if statistics is None:
            return []
        return [statistics.state_prefix + k for k in statistics.frozen_task_state_schema(task_key(task))]

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
        """The keys of :meth:`frozen_task_state_schema` that hold packed
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
            own = {k for task in self.tasks for k in self.task_state_keys(task)}
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
        return {key: self._state_tensor(key) for key in self.task_state_keys(task)}

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

    def mask_sparsity(self, task: int) -> dict[str, dict[str, float]] | None:
        """The share of each layer's weights that ``task``'s mask drops
        (``"zeros"``) and, for masks that can, flips (``"negatives"``), by
        layer name and ``"overall"``; ``None`` when no layer of this model
        masks the shared weights (see :meth:`TaskWeightLayer.mask_counts`)."""
        counted = {
            name: (counts, layer.weight.numel())
            for name, layer in self.task_layers.items()
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
        statistics, backbone_statistics = self.feature_statistics, self.backbone_feature_statistics
        if statistics is None:
            return {}

        def mahalanobis(logits: Tensor, features: Tensor, model: Any, tasks: Sequence[int]) -> Tensor:
            return -statistics.squared_distances(features, [task_key(t) for t in tasks])

        def relative_mahalanobis(logits: Tensor, features: Tensor, model: Any, tasks: Sequence[int]) -> Tensor:
            return -statistics.relative_squared_distances(features, [task_key(t) for t in tasks])

        scores = {
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
        self._record_shared_checksum()

    # --- building ----------------------------------------------------------

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        attention = [name for name, module in backbone.named_modules() if type(module) in ATTENTION_TYPES]
        unsupported = [
            f"{name or '<backbone>'} ({type(module).__name__}: {', '.join(names)})"
            for name, module in backbone.named_modules()
            if name != classifier_name
            and type(module) not in self.layer_types
            and not isinstance(module, NORM_LAYER_TYPES)
            and not any(name == above or name.startswith(f"{above}.") for above in attention)
            for names in [[n for n, p in module._parameters.items() if p is not None and n not in SHARED_EMBEDDINGS]]
            if names
        ]
        if unsupported:
            raise ValueError(
                f"{type(self).__name__} cannot handle these modules' parameters: "
                + ", ".join(unsupported)
                + ". Supported: "
                + ", ".join(t.__name__ for t in self.layer_types)
                + " (task-aware weights), "
                + ", ".join(t.__name__ for t in ATTENTION_TYPES)
                + " (task-aware projections), "
                + ", ".join(t.__name__ for t in NORM_LAYER_TYPES)
                + " (per task), and parameters named "
                + ", ".join(sorted(SHARED_EMBEDDINGS))
                + " (shared and frozen). Express them with these layers, or fold them into the classifier."
            )
        for module in backbone.modules():
            for name in SHARED_EMBEDDINGS & set(module._parameters):
                if module._parameters[name] is not None:
                    module._parameters[name].requires_grad_(False)  # type: ignore[union-attr]
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
            self._record_shared_checksum()
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

    def task_state_bits_per_weight(self) -> float:
        """Bits of per-task state stored per weight of the task-aware layers,
        for all frozen tasks together."""
        layers = self.task_layers.values()
        return 8.0 * sum(layer.task_state_bytes() for layer in layers) / sum(layer.weight.numel() for layer in layers)

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

    def _shared_tensors(self) -> list[Tensor]:
        """The floating-point shared tensors, fetched live."""
        shared = self.shared_state()
        return [shared[key] for key in self._shared_float_keys]

    def _checksum(self, *, sampled: bool) -> Tensor:
        """Sum and sum of squares per shared tensor, in float64; ``sampled``:
        of at most ``_CHECKSUM_SAMPLES`` evenly strided entries per tensor."""
        rows = []
        for tensor in self._shared_tensors():
            flat = tensor.detach().reshape(-1)
            if sampled and flat.numel() > _CHECKSUM_SAMPLES:
                flat = flat[:: flat.numel() // _CHECKSUM_SAMPLES]
            flat = flat.double()
            rows.append(torch.stack([flat.sum(), flat.square().sum()]))
        return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)

    def _record_shared_checksum(self) -> None:
        self._shared_float_keys = [k for k, t in self.shared_state().items() if t.is_floating_point()]
        self._shared_checksums = {sampled: self._checksum(sampled=sampled) for sampled in (False, True)}

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
            ``_CHECKSUM_SAMPLES`` entries), as evaluation does to stay as fast
            as plain inference: any write to a whole tensor (``.data.add_``,
            ``copy_``, other weights loaded) changes it, a write to a few
            entries may not. Training an experience and :meth:`export_task`
            check every entry.
        :raises RuntimeError: naming what to do, if they changed.
        """
        if self.task_state.learning or not self.tasks:
            return
        if not torch.equal(self._checksum(sampled=sampled), self._shared_checksums[sampled]):
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
        self._record_shared_checksum()
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
