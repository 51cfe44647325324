"""Task-aware layers: masked convolutions and linear layers, per-task
normalization and per-task classifier heads.

All task-aware modules of one model share a :class:`TaskState`: the model
selects the task once per forward pass and every layer reads it, so no
per-layer bookkeeping happens on the hot path. Tasks are identified by their
string keys (``str(task_label)``), the keys under which their tensors appear
in the state dict.

Every per-task container grows itself when a state dict holds tasks it does
not know yet, so ``load_state_dict`` into a freshly built model restores every
task without any extra call.
"""

import copy
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piggyback_avalanche.masks import (
    MaskKind,
    pack_mask,
    packed_mask_bytes,
    unpack_mask,
)

__all__ = [
    "TaskState",
    "TaskTensorDict",
    "TaskWeightLayer",
    "MaskedLayer",
    "MaskedConv1d",
    "MaskedConv2d",
    "MaskedConv3d",
    "MaskedLinear",
    "MASKED_LAYER_TYPES",
    "NORM_LAYER_TYPES",
    "TaskNorm",
    "ClassifierHead",
    "TaskHeads",
]


class TaskState:
    """The task a model computes right now, the tasks it is learning, and the
    learning task (if any) that also trains the backbone's shared parameters.

    One instance is shared by every task-aware module of a model.
    """

    def __init__(self) -> None:
        self.current: Optional[str] = None
        self.learning: Set[str] = set()
        self.backbone_task: Optional[str] = None

    @contextmanager
    def use(self, task: str) -> Iterator[None]:
        """Run the enclosed forward pass for ``task``."""
        previous, self.current = self.current, task
        try:
            yield
        finally:
            self.current = previous

    def key(self) -> str:
        """The current task's key; raises if no task was selected."""
        if self.current is None:
            raise RuntimeError(
                "No task selected: call the owning PiggybackModel as "
                "model(x, task_labels), not a task-aware layer on its own."
            )
        return self.current


def _task_keys(state_dict: Dict[str, Tensor], prefix: str) -> Set[str]:
    """The task keys found directly below ``prefix`` in a state dict."""
    return {k[len(prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}


class TaskTensorDict(nn.Module):
    """Per-task tensors, held as parameters (trainable) or as buffers (frozen).

    State-dict keys are ``<prefix><task>``.
    """

    def __init__(self, *, trainable: bool) -> None:
        super().__init__()
        self.trainable = trainable

    def keys(self) -> List[str]:
        """The task keys, in insertion order."""
        return list(self._parameters if self.trainable else self._buffers)

    def __contains__(self, task: str) -> bool:
        return task in (self._parameters if self.trainable else self._buffers)

    def __getitem__(self, task: str) -> Tensor:
        tensor = (self._parameters if self.trainable else self._buffers).get(task)
        if tensor is None:
            raise KeyError(task)
        return tensor

    def add(self, task: str, tensor: Tensor) -> None:
        """Store ``tensor`` for ``task``."""
        if self.trainable:
            self.register_parameter(task, nn.Parameter(tensor))
        else:
            self.register_buffer(task, tensor)

    def pop(self, task: str) -> Tensor:
        """Remove and return the tensor of ``task``."""
        return (self._parameters if self.trainable else self._buffers).pop(task)


class TaskWeightLayer:
    """Mixin for a convolution or linear layer whose effective weight depends
    on the task: the base of Piggyback's and PackNet's layers.

    The layer shares the backbone's ``weight`` and ``bias``. A concrete layer
    also mixes in ``_ConvForward`` or ``_LinearForward``, which construct it
    and run it with :meth:`task_weight`. Subclasses say how
    a task's weight is made (:meth:`task_weight`) and what a task adds,
    trains and freezes; the effective weight of a frozen task is cached until
    the task, the stored tensors, the device or the dtype changes.
    """

    weight: nn.Parameter
    bias: Optional[nn.Parameter]
    task_state: TaskState

    @classmethod
    def from_module(cls, module: nn.Module, *, task_state: TaskState, **settings) -> "TaskWeightLayer":
        """Build the task-aware twin of ``module``, sharing its weight and bias.

        :param module: an ``nn.Conv1d/2d/3d`` or ``nn.Linear``.
        :param task_state: the owning model's task state.
        :param settings: the subclass's settings (see its ``_init_task_weights``).
        """
        # Built on the meta device so that no weight is allocated only to be
        # replaced by the module's own.
        layer = cls(**cls._constructor_args(module), device="meta")
        layer.weight = module.weight
        layer.bias = module.bias
        layer.task_state = task_state
        layer._caches = {}
        layer._init_task_weights(**settings)
        return layer

    def _init_task_weights(self, **settings) -> None:
        raise NotImplementedError

    def task_weight(self) -> Tensor:
        """The weight of the current task."""
        raise NotImplementedError

    def task_bias(self) -> Optional[Tensor]:
        """The bias of the current task: the shared one unless a subclass
        keeps one per task."""
        return self.bias

    def add_task(self, task: str) -> None:
        """Start learning ``task`` (which also trains the backbone's shared
        parameters if it is ``task_state.backbone_task``)."""
        raise NotImplementedError

    def freeze_task(self, task: str) -> None:
        """Finish ``task``: from now on its weight never changes."""
        raise NotImplementedError

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """The parameters that learning the current tasks trains, by group."""
        raise NotImplementedError

    def _set_weight_trainable(self, trainable: bool) -> None:
        self.weight.requires_grad_(trainable)
        if self.bias is not None:
            self.bias.requires_grad_(trainable)

    def _cached(self, name: str, key: Tuple, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``, reused while ``key`` stays the same; one entry per
        ``name``, all dropped when the layer moves or changes dtype."""
        entry = self._caches.get(name)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = self._caches[name] = (key, compute())
        return entry[1]

    def _apply(self, fn, recurse: bool = True):
        self._caches.clear()
        return super()._apply(fn, recurse)  # type: ignore[misc]

    def _task_tensor_shape(self, store: str) -> Optional[Tuple[int, ...]]:
        """The shape every task's tensor in the store ``store`` must have;
        ``None`` if it may vary. A state dict with another shape is then
        refused as a size mismatch instead of being taken as it is."""
        return None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, store in self._modules.items():  # type: ignore[attr-defined]
            if isinstance(store, TaskTensorDict):
                shape = self._task_tensor_shape(name)
                for task in _task_keys(state_dict, f"{prefix}{name}.") - set(store.keys()):
                    incoming = state_dict[f"{prefix}{name}.{task}"]
                    store.add(task, torch.empty(
                        incoming.shape if shape is None else shape, dtype=incoming.dtype, device=self.weight.device
                    ))
        self._caches.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class _ConvForward:
    @staticmethod
    def _constructor_args(module: nn.Module) -> Dict:
        return dict(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            dtype=module.weight.dtype,
        )

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.task_weight(), self.task_bias())


class _LinearForward:
    @staticmethod
    def _constructor_args(module: nn.Module) -> Dict:
        return dict(
            in_features=module.in_features,
            out_features=module.out_features,
            bias=module.bias is not None,
            dtype=module.weight.dtype,
        )

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.task_weight(), self.task_bias())


class MaskedLayer(TaskWeightLayer):
    """Piggyback's layer: the backbone's ``weight`` and ``bias`` stay frozen.

    Each task being learned owns real-valued ``scores`` shaped like the
    weight; the forward pass uses ``weight * threshold(scores)``. When the
    task is frozen only its thresholded mask is kept, bit-packed in
    ``packed_masks``.
    """

    def _init_task_weights(
        self, *, mask_kind: MaskKind, threshold: float, mask_init: str, mask_scale: float
    ) -> None:
        self.mask_kind = mask_kind
        self.threshold = threshold
        self.mask_init = mask_init
        self.mask_scale = mask_scale
        self.scores = TaskTensorDict(trainable=True)
        self.packed_masks = TaskTensorDict(trainable=False)
        self._set_weight_trainable(False)

    def _task_tensor_shape(self, store: str) -> Optional[Tuple[int, ...]]:
        if store == "packed_masks":
            return (packed_mask_bytes(self.weight.numel(), self.mask_kind.bits),)
        return tuple(self.weight.shape)

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str) -> None:
        """Start learning ``task``: scores initialised as ``mask_init`` says
        (``"1s"``: all ``mask_scale``; ``"uniform"``: in ``[-mask_scale,
        mask_scale]``), or, for the task that trains the backbone, the weight
        and bias themselves under a mask of ones (frozen by :meth:`freeze_task`).
        """
        if task == self.task_state.backbone_task:
            self._set_weight_trainable(True)
            return
        scores = torch.full_like(self.weight, self.mask_scale)
        if self.mask_init == "uniform":
            scores.uniform_(-self.mask_scale, self.mask_scale)
        self.scores.add(task, scores)

    def freeze_task(self, task: str) -> None:
        """Replace the task's scores by its bit-packed thresholded mask."""
        if task == self.task_state.backbone_task:
            mask = torch.ones_like(self.weight)
            self._set_weight_trainable(False)
        else:
            with torch.no_grad():
                mask = self.mask_kind.apply(self.scores.pop(task), self.threshold)
        self.packed_masks.add(task, pack_mask(mask, bits=self.mask_kind.bits))

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """``{"mask_scores": [...], "backbone": [...]}``: the scores of the
        tasks being learned, and the weight and bias while the backbone trains."""
        return {
            "mask_scores": [self.scores[t] for t in self.scores.keys()],
            "backbone": [p for p in (self.weight, self.bias) if p is not None and p.requires_grad],
        }

    def mask(self, task: str) -> Tensor:
        """The mask of ``task`` as a tensor shaped like the weight."""
        if task in self.scores:
            return self.mask_kind.apply(self.scores[task], self.threshold)
        if task == self.task_state.backbone_task:
            return torch.ones_like(self.weight)
        return unpack_mask(
            self.packed_masks[task],
            shape=self.weight.shape,
            bits=self.mask_kind.bits,
            dtype=self.weight.dtype,
        )

    # --- forward ---------------------------------------------------------

    def task_weight(self) -> Tensor:
        """The weight of the current task: ``weight * mask``."""
        task = self.task_state.key()
        if task in self.scores:
            return self.mask_kind.masked_weight(self.weight, self.scores[task], self.threshold)
        if task == self.task_state.backbone_task:
            return self.weight
        if task not in self.packed_masks:
            raise KeyError(f"{type(self).__name__} has no mask for task {task!r}.")
        if self.weight.requires_grad and torch.is_grad_enabled():
            # The backbone itself trains: the product must stay in the graph.
            return self.weight * self.mask(task)
        # _version counts in-place writes, so an optimizer step or a
        # load_state_dict into the weight or the mask invalidates the cache.
        key = (task, self.weight._version, self.packed_masks[task]._version)
        return self._cached("weight", key, lambda: self.weight * self.mask(task))


class MaskedConv1d(MaskedLayer, _ConvForward, nn.Conv1d):
    """``nn.Conv1d`` with a learned binary or ternary mask per task."""


class MaskedConv2d(MaskedLayer, _ConvForward, nn.Conv2d):
    """``nn.Conv2d`` with a learned binary or ternary mask per task."""


class MaskedConv3d(MaskedLayer, _ConvForward, nn.Conv3d):
    """``nn.Conv3d`` with a learned binary or ternary mask per task."""


class MaskedLinear(MaskedLayer, _LinearForward, nn.Linear):
    """``nn.Linear`` with a learned binary or ternary mask per task."""


MASKED_LAYER_TYPES: Dict[Type[nn.Module], Type[MaskedLayer]] = {
    nn.Conv1d: MaskedConv1d,
    nn.Conv2d: MaskedConv2d,
    nn.Conv3d: MaskedConv3d,
    nn.Linear: MaskedLinear,
}
"""Layer types that get masks, and their masked twins."""

NORM_LAYER_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)
"""Normalization layer types that get per-task parameters."""


class TaskNorm(nn.Module):
    """A normalization layer with its own parameters and statistics per task.

    Each task's copy starts from the backbone's layer (``base``). A copy
    trains, and updates its running statistics, only while its task is being
    learned; a frozen task's copy always runs in eval mode.

    With ``per_task=False`` every task shares ``base``, which trains only with
    the task that trains the backbone (``task_state.backbone_task``) and is
    frozen otherwise: the fixed-batch-norm ablation of Piggyback and the
    "nobn" setting of PackNet.

    :param norm: the backbone's normalization layer.
    :param task_state: the owning model's task state.
    :param per_task: whether each task gets its own copy.
    """

    def __init__(self, norm: nn.Module, *, task_state: TaskState, per_task: bool = True) -> None:
        super().__init__()
        self.task_state = task_state
        self.per_task = per_task
        self.base = norm.requires_grad_(False).eval()
        self.tasks = nn.ModuleDict()

    def add_task(self, task: str) -> None:
        """Give ``task`` its own copy of the base layer, or let it train the
        shared one if it trains the backbone."""
        if self.per_task:
            self.tasks[task] = copy.deepcopy(self.base).requires_grad_(True)
        elif task == self.task_state.backbone_task:
            self.base.requires_grad_(True)

    def freeze_task(self, task: str) -> None:
        """Stop training ``task``'s layer. If the task trained the backbone,
        its copy becomes the template of later tasks."""
        if not self.per_task:
            self.base.requires_grad_(False)
            return
        self.tasks[task].requires_grad_(False)
        if task == self.task_state.backbone_task:
            self.base.load_state_dict(self.tasks[task].state_dict())

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """``{"task_parameters": [...], "backbone": [...]}``: the learning
        tasks' copies, and the shared layer while it trains."""
        learning = self.task_state.learning & set(self.tasks.keys())
        return {
            "task_parameters": [p for t in learning for p in self.tasks[t].parameters()],
            "backbone": [p for p in self.base.parameters() if p.requires_grad],
        }

    def norm_for(self, task: str) -> nn.Module:
        """The layer that ``task`` uses."""
        return self.tasks[task] if self.per_task else self.base

    def learning_norms(self) -> List[nn.Module]:
        """The layers that train now: the learning tasks' copies, or the
        shared one while the task that trains the backbone learns."""
        if self.per_task:
            return [self.tasks[t] for t in sorted(self.task_state.learning & set(self.tasks.keys()))]
        return [self.base] if self.task_state.backbone_task in self.task_state.learning else []

    def forward(self, input: Tensor) -> Tensor:
        task = self.task_state.key()
        norm = self.norm_for(task)
        if self.per_task:
            learning = self.training and task in self.task_state.learning
        else:
            learning = self.training and task == self.task_state.backbone_task
        if norm.training != learning:
            norm.train(learning)
        return norm(input)

    def train(self, mode: bool = True) -> "TaskNorm":
        # The layers' modes are set per forward pass.
        self.training = mode
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for task in _task_keys(state_dict, prefix + "tasks.") - set(self.tasks.keys()):
            self.tasks[task] = copy.deepcopy(self.base)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ClassifierHead(nn.Linear):
    """A task's classifier: one output per class label up to the largest one.

    Outputs of labels the task does not have are ``-inf``, so they never win
    an argmax and get zero probability.

    :param in_features: feature size.
    :param classes: the class labels of the task.
    :param bias: whether the head has a bias.
    """

    def __init__(
        self,
        in_features: int,
        *,
        classes: Sequence[int],
        bias: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        classes = sorted(int(c) for c in classes)
        super().__init__(in_features, classes[-1] + 1, bias=bias, device=device, dtype=dtype)
        inactive = torch.ones(classes[-1] + 1, dtype=torch.bool, device=device)
        inactive[classes] = False
        self.register_buffer("inactive_units", inactive)

    @property
    def classes(self) -> List[int]:
        """The class labels this head predicts."""
        return torch.nonzero(~self.inactive_units).flatten().tolist()

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input).masked_fill(self.inactive_units, float("-inf"))


class TaskHeads(nn.Module):
    """One :class:`ClassifierHead` per task, in place of the backbone's
    classifier.

    :param classifier: the backbone's classifier, whose input size, bias and
        dtype the heads copy.
    :param task_state: the owning model's task state.
    """

    def __init__(self, classifier: nn.Linear, *, task_state: TaskState) -> None:
        super().__init__()
        self.task_state = task_state
        self.in_features = classifier.in_features
        self.bias = classifier.bias is not None
        self.heads = nn.ModuleDict()
        # Zero-size, not saved: follows the model across devices and dtypes
        # so that new heads are created where the model lives.
        self.register_buffer(
            "_placement", classifier.weight.new_empty(0), persistent=False
        )

    def add_task(self, task: str, *, classes: Sequence[int]) -> None:
        """Create the head of ``task`` for the given class labels."""
        self.heads[task] = ClassifierHead(
            self.in_features,
            classes=classes,
            bias=self.bias,
            device=self._placement.device,
            dtype=self._placement.dtype,
        )

    def freeze_task(self, task: str) -> None:
        """Stop training the head of ``task``."""
        self.heads[task].requires_grad_(False)

    def trainable_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """``{"task_parameters": [...]}``: the learning tasks' heads."""
        learning = self.task_state.learning & set(self.heads.keys())
        return {"task_parameters": [p for t in learning for p in self.heads[t].parameters()]}

    def forward(self, input: Tensor) -> Tensor:
        return self.heads[self.task_state.key()](input)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for task in _task_keys(state_dict, prefix + "heads.") - set(self.heads.keys()):
            inactive = state_dict[f"{prefix}heads.{task}.inactive_units"]
            classes = torch.nonzero(~inactive).flatten().tolist()
            self.add_task(task, classes=classes)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
