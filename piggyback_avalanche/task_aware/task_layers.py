"""Convolutions and linear layers whose effective weight depends on the task:
the base that every method's layers build on, and the one factory that makes
each method's twins of ``nn.Conv1d/2d/3d`` and ``nn.Linear``.

A method writes one class, say ``MaskedLayer(TaskWeightLayer)``, that says
how a task's weight is made and what a task adds, trains and freezes;
:func:`task_layer_types` then gives it a twin of every supported torch layer.
"""

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from piggyback_avalanche.task_aware.entropy_coding import CodeLayout
from piggyback_avalanche.task_aware.task_module import TaskModule, TaskTensorDict, TensorSpec, add_loaded_tasks
from piggyback_avalanche.task_aware.task_state import TaskState, stacked_width
from piggyback_avalanche.task_aware.versioned_cache import VersionedCache

__all__ = ["TaskWeightLayer", "task_layer_types", "SUPPORTED_LAYER_TYPES"]


def _conv_arguments(module: Any) -> dict[str, Any]:
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
    )


def _linear_arguments(module: Any) -> dict[str, Any]:
    return dict(in_features=module.in_features, out_features=module.out_features, bias=module.bias is not None)


def _conv_forward(layer: Any, input: Tensor) -> Tensor:
    return layer._conv_forward(input, *layer.current_weight_and_bias())


def _linear_forward(layer: Any, input: Tensor) -> Tensor:
    return F.linear(input, *layer.current_weight_and_bias())


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_stacked_forward(layer: Any, input: Tensor) -> Tensor:
    """Every stacked task at once: the tasks' weights stacked along the
    output channels, as one convolution (grouped by task when the input is
    stacked too)."""
    tasks = len(layer.task_state.stacked)
    weight, bias = layer.stacked_weight_and_bias()
    stacked = stacked_width(input.shape[1], layer.in_channels, tasks, type(layer).__name__)
    if not stacked and layer.groups == 1:
        return layer._conv_forward(input, weight, bias)
    if not stacked:
        input = input.repeat(1, tasks, *[1] * (input.dim() - 2))
    padding = layer.padding
    if layer.padding_mode != "zeros":
        input = F.pad(input, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    convolution = _CONVOLUTIONS[input.dim() - 2]
    return convolution(input, weight, bias, layer.stride, padding, layer.dilation, layer.groups * tasks)


def _linear_stacked_forward(layer: Any, input: Tensor) -> Tensor:
    """Every stacked task at once: one matrix product with the tasks'
    weights stacked along the outputs (a batched one for stacked inputs)."""
    tasks = len(layer.task_state.stacked)
    weight, bias = layer.stacked_weight_and_bias()
    if not stacked_width(input.shape[-1], layer.in_features, tasks, type(layer).__name__):
        return F.linear(input, weight, bias)
    per_task = input.unflatten(-1, (tasks, layer.in_features))
    output = torch.einsum("...ti,toi->...to", per_task, weight.view(tasks, layer.out_features, layer.in_features))
    if bias is not None:
        output = output + bias.view(tasks, layer.out_features)
    return output.flatten(-2)


class _LayerKind(NamedTuple):
    arguments: Callable[[Any], dict[str, Any]]
    forward: Callable[[Any, Tensor], Tensor]
    stacked_forward: Callable[[Any, Tensor], Tensor]
    task_dim: int
    """The dimension along which a stacked output holds the tasks' blocks."""


SUPPORTED_LAYER_TYPES: dict[type[nn.Module], _LayerKind] = {
    nn.Conv1d: _LayerKind(_conv_arguments, _conv_forward, _conv_stacked_forward, 1),
    nn.Conv2d: _LayerKind(_conv_arguments, _conv_forward, _conv_stacked_forward, 1),
    nn.Conv3d: _LayerKind(_conv_arguments, _conv_forward, _conv_stacked_forward, 1),
    nn.Linear: _LayerKind(_linear_arguments, _linear_forward, _linear_stacked_forward, -1),
}
"""The torch layers that get a task-aware twin: their constructor arguments
(read from an instance), the forward pass with the task's weight, the
forward pass of several stacked tasks (see :meth:`TaskState.use_stacked`)
and the dimension of its tasks' blocks."""


class TaskWeightLayer(TaskModule, nn.Module):
    """A convolution or linear layer whose effective weight depends on the
    task: the base of every method's layers, mixed with a torch layer by
    :func:`task_layer_types` (which comes before ``nn.Module`` in the MRO).

    The layer shares the backbone's ``weight`` and ``bias``, which start
    frozen. A subclass says how a task's weight is made (:meth:`task_weight`)
    and what a task adds, trains and freezes; the effective weight of a
    frozen task is cached until the task, the stored tensors, the device or
    the dtype changes.

    A concrete layer comes from :func:`task_layer_types` and is built like
    its torch layer plus the subclass's settings::

        layer = MaskedConv2d(3, 8, 3, task_state=TaskState(), mask_kind=..., ...)

    or from an existing layer with :meth:`from_module`.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    superposes = True  # its stacked output, weighed per task

    setting_names: ClassVar[tuple[str, ...]] = ()
    """The keyword-only settings of the subclass's :meth:`_init_task_weights`
    (a model passes them to every layer), apart from the torch layer's."""

    sized_by_tasks: ClassVar[tuple[str, ...]] = ()
    """Buffers whose size depends on the tasks learned (empty before the
    first, growing with their number): a load takes their stored size."""

    def __init__(self, *args: Any, task_state: TaskState, **kwargs: Any) -> None:
        settings = {name: kwargs.pop(name) for name in self.setting_names if name in kwargs}
        super().__init__(*args, **kwargs)  # the torch layer's
        self.task_state = task_state
        self._caches = VersionedCache()
        self._init_task_weights(**settings)
        self._set_weight_trainable(False)

    @classmethod
    def from_module(cls, module: nn.Module, *, task_state: TaskState, **settings: Any) -> "TaskWeightLayer":
        """Build the task-aware twin of ``module``, sharing its weight and bias.

        :param module: an instance of the torch layer this class twins.
        :param task_state: the owning model's task state.
        :param settings: the subclass's settings (see its ``_init_task_weights``).
        """
        arguments = SUPPORTED_LAYER_TYPES[cls.torch_type()].arguments
        # Built on the meta device so that no weight is allocated only to be
        # replaced by the module's own.
        layer = cls(**arguments(module), device="meta", dtype=module.weight.dtype, task_state=task_state, **settings)
        layer.weight = module.weight  # type: ignore[assignment]  # an nn.Parameter: the module is a torch layer
        layer.bias = module.bias  # type: ignore[assignment]
        layer._set_weight_trainable(False)
        # What the layer registered for itself is empty so far: recreate it
        # where the shared weight lives.
        device = layer.weight.device
        for owner in layer.modules():
            for name, buffer in owner._buffers.items():
                if buffer is not None and buffer.is_meta:
                    owner._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device=device)
        return layer

    @classmethod
    def torch_type(cls) -> type[nn.Module]:
        """The torch layer this class twins (``nn.Conv2d``, ``nn.Linear``, ...)."""
        return next(base for base in cls.__mro__ if base in SUPPORTED_LAYER_TYPES)

    def _init_task_weights(self) -> None:
        """Create the layer's per-task stores; keyword-only arguments are its
        settings, named in :attr:`setting_names`."""

    # --- what a subclass says ----------------------------------------------

    def task_weight(self) -> Tensor:
        """The weight of the current task."""
        raise NotImplementedError

    def task_bias(self) -> Tensor | None:
        """The bias of the current task: the shared one unless a subclass
        keeps one per task."""
        return self.bias

    def task_tensor_bytes(self) -> int:
        """Bytes this layer stores for its frozen tasks beyond the shared
        weight (for the bits-per-weight figure)."""
        return 0

    def capacity_used(self) -> float:
        """The share of this layer's weights that earlier tasks have taken
        from later ones (a fraction, each weight weighed by how far it is
        taken): 0 for a layer whose tasks never train the shared weight, so
        that every task finds all of it, as the first did."""
        return 0.0

    def mask_counts(self, task: str) -> dict[str, int] | None:
        """How many of the layer's weights ``task``'s mask drops
        (``"zeros"``) and, for masks that can, flips (``"negatives"``);
        ``None`` for a layer whose tasks have no mask over the shared weight."""
        return None

    def learning_scores(self, task: str) -> Tensor | None:
        """The real-valued scores a learning ``task`` trains its mask by, to
        watch them move; ``None`` for a layer without such scores."""
        return None

    def current_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias the current task computes with: the shared
        ones for a task the model has not learned (as it stands before
        learning it), else the task's own."""
        if self.task_state.untrained:
            return self.weight, self.bias
        return self.task_weight(), self.task_bias()

    def stacked_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """The weights and biases of the stacked tasks
        (:meth:`TaskState.use_stacked`), concatenated along the outputs;
        kept in the model's :class:`FrozenWeightCache` (within its budget)
        until the tasks or any tensor of the layer change."""
        tasks = self.task_state.stacked
        if tasks is None:
            raise RuntimeError("No stacked tasks: call the owning model's task_outputs(x, tasks).")

        def compute() -> tuple[Tensor, Tensor | None]:
            weights, biases = [], []
            for task in tasks:
                with self.task_state.use(task):
                    weight, bias = self.current_weight_and_bias()
                weights.append(weight)
                biases.append(bias)
            bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
            return torch.cat(weights), bias

        return self.task_state.frozen_weights.get_for_tasks(tasks, self, VersionedCache.state_key(self), compute)

    # --- what the layer says about its state -----------------------------------

    def _stores(self) -> dict[str, TaskTensorDict]:
        return {n: m for n, m in self._modules.items() if isinstance(m, TaskTensorDict)}

    def task_tensor_keys(self, task: str) -> list[str]:
        return [f"{name}.{task}" for name, store in self._stores().items() if task in store]

    def frozen_task_tensor_schema(self, task: str) -> dict[str, TensorSpec]:
        return {
            f"{name}.{task}": TensorSpec(store.dtype or self.weight.dtype, store.shape)
            for name, store in self._stores().items()
            if store.holds == "frozen"
        }

    def offload_task(self, task: str) -> dict[str, Tensor]:
        return {
            f"{name}.{task}": store.pop(task)
            for name, store in self._stores().items()
            if store.offloadable and task in store
        }

    def code_layouts(self) -> dict[str, CodeLayout]:
        return {
            f"{name}.{task}": store.code_layout
            for name, store in self._stores().items()
            if store.code_layout is not None
            for task in store.keys()
        }

    def frozen_code_layouts(self, task: str) -> dict[str, CodeLayout]:
        return {
            f"{name}.{task}": store.code_layout
            for name, store in self._stores().items()
            if store.code_layout is not None and store.holds == "frozen"
        }

    def plain_bytes(self, task: str) -> int:
        return sum(p.nbytes for p in (self.weight, self.bias) if p is not None)

    def plain_module(self, task: str) -> nn.Module:
        """The torch layer with ``task``'s effective weight and bias folded in."""
        torch_type = self.torch_type()
        arguments = SUPPORTED_LAYER_TYPES[torch_type].arguments
        layer = torch_type(**arguments(self), device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad(), self.task_state.use(task):
            weight, bias = self.current_weight_and_bias()
            layer.weight = nn.Parameter(weight.clone(), requires_grad=False)
            if bias is not None:
                layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return layer

    # --- shared mechanics ---------------------------------------------------------

    def _set_weight_trainable(self, trainable: bool) -> None:
        self.weight.requires_grad_(trainable)
        if self.bias is not None:
            self.bias.requires_grad_(trainable)

    def _frozen_tensor(self, store: str, task: str) -> Tensor:
        """The frozen ``task``'s tensor in the per-task ``store``: from
        memory, or read from the model's task store."""
        stores = self._stores()
        if task in stores[store]:
            return stores[store][task]
        if task in self.task_state.stored_tasks and self.task_state.stored_parts is not None:
            return self.task_state.stored_parts.read_part(task, f"{self.state_prefix}{store}.{task}")
        raise KeyError(f"{type(self).__name__} has nothing of task {task!r} in {store}.")

    def _frozen_weight(self, task: str, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``, the frozen ``task``'s effective weight, kept in the
        model's :class:`FrozenWeightCache` while ``key`` (and the shared
        weight) stay the same."""
        return self.task_state.frozen_weights.get(task, self, (self.weight.data_ptr(), *key), compute)

    def _cached(self, name: str, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``, reused while ``key`` stays the same; one entry per
        ``name``, all dropped when the layer moves or changes dtype."""
        # A write that replaces the weight's storage (weight.data = ...,
        # vector_to_parameters) does not change its version counter.
        return self._caches.get(name, (self.weight.data_ptr(), *key), compute)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # Avalanche moves the model to its device before every evaluation: a
        # move to where the weight already is keeps the frozen tasks' weights.
        before = (self.weight.device, self.weight.dtype, self.weight.data_ptr())
        result = super()._apply(fn, recurse)
        if (self.weight.device, self.weight.dtype, self.weight.data_ptr()) != before:
            self._caches.clear()
            self.task_state.frozen_weights.clear()
        return result

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        def empty(store: TaskTensorDict, incoming: Tensor) -> Tensor:
            shape = incoming.shape if store.shape is None else store.shape
            return torch.empty(shape, dtype=incoming.dtype, device=self.weight.device)

        add_loaded_tasks(self._stores(), state_dict, prefix, self.task_state, empty)
        for name in self.sized_by_tasks:
            incoming = state_dict.get(prefix + name)
            if incoming is not None:
                setattr(self, name, torch.empty_like(incoming, device=self.weight.device))
        self._caches.clear()
        self.task_state.frozen_weights.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


Layer = TypeVar("Layer", bound=TaskWeightLayer)


def _dispatching_forward(kind: _LayerKind) -> Callable[[Any, Tensor], Tensor]:
    def forward(layer: Any, input: Tensor) -> Tensor:
        if layer.task_state.stacked is not None:
            return layer.task_state.superpose(kind.stacked_forward(layer, input), kind.task_dim)
        return kind.forward(layer, input)

    return forward


def task_layer_types(base: type[Layer], *, prefix: str, doc: str) -> dict[type[nn.Module], type[Layer]]:
    """The twins of every supported torch layer (:data:`SUPPORTED_LAYER_TYPES`)
    for one method's layer class.

    The twins live in ``base``'s module under ``prefix + torch name``
    (``MaskedConv2d``); assign them there so that they can be imported and
    pickled by name.

    :param base: the method's :class:`TaskWeightLayer` subclass.
    :param prefix: the start of the twins' names.
    :param doc: what the twins are, after ``nn.Conv2d`` in their docstring.
    :return: ``{torch layer type: twin type}``.
    """
    twins: dict[type[nn.Module], type[Layer]] = {}
    for torch_type, kind in SUPPORTED_LAYER_TYPES.items():
        name = prefix + torch_type.__name__
        namespace = {
            "__module__": base.__module__,
            "__qualname__": name,
            "__doc__": f"``nn.{torch_type.__name__}`` {doc}",
            "forward": _dispatching_forward(kind),
        }
        twins[torch_type] = type(name, (base, torch_type), namespace)
    return twins
