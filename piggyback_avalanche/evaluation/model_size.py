"""What storing everything learned so far costs, as an Avalanche plugin
metric in the style of Avalanche's ``evaluation/metrics/disk_usage.py``: the
stored bytes of the model and of the strategy's state, their ratio to
separately stored networks, and the bits of per-task tensors per weight."""

from typing import Any, ClassVar

from torch import Tensor, nn

from avalanche.evaluation import Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.templates.base_sgd import PeriodicEval

from piggyback_avalanche.evaluation.after_training_exp import AfterTrainingExpPluginMetric
from piggyback_avalanche.task_aware.models import MultiHeadModel, TaskAwareModel

__all__ = [
    "stored_bytes",
    "strategy_state_bytes",
    "ModelSize",
    "ModelSizePluginMetric",
    "model_size_metrics",
]


def stored_bytes(model: nn.Module) -> int:
    """Bytes of what the model must store to compute every learned task: a
    multi-head model's own answer (packed masks at 1 or 2 bits per weight,
    PackNet's packed ownership, per-task copies, without templates that only
    seed new tasks), else its whole state dict."""
    if isinstance(model, MultiHeadModel):
        return model.stored_bytes()
    return sum(t.nbytes for t in model.state_dict().values())


def _tensors_bytes(obj: Any, seen: dict[Any, Any]) -> int:
    """Bytes of the tensors an object holds (through modules, containers,
    attributes and stored datasets), each tensor counted once.

    ``seen`` maps ids to the objects themselves, which keeps them alive so
    that an id is never reused during the walk.
    """
    if obj is None or isinstance(obj, (str, bytes, int, float, bool)) or id(obj) in seen:
        return 0
    seen[id(obj)] = obj
    if isinstance(obj, Tensor):
        # A stored sample is what it holds, not the dataset tensor it views.
        key = ("tensor", obj.data_ptr(), obj.nbytes)
        if key in seen:
            return 0
        seen[key] = obj
        return obj.nbytes
    if isinstance(obj, nn.Module):
        return sum(_tensors_bytes(t, seen) for t in obj.state_dict().values())
    if isinstance(obj, dict):
        return sum(_tensors_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_tensors_bytes(v, seen) for v in obj)
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and hasattr(obj, "targets"):
        # A stored dataset (e.g. a replay buffer): its samples, with labels
        # counted as int64.
        return sum(_sample_bytes(obj[i], seen) for i in range(len(obj)))
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith(("avalanche", "piggyback")):
        return sum(_tensors_bytes(v, seen) for v in vars(obj).values())
    return 0


def _sample_bytes(sample: Any, seen: dict[Any, Any]) -> int:
    fields = sample if isinstance(sample, (list, tuple)) else [sample]
    return sum(8 if isinstance(f, int) else _tensors_bytes(f, seen) for f in fields)


def strategy_state_bytes(strategy: Any) -> int:
    """Bytes of what a strategy keeps besides the model: its plugins' state
    (replay buffers, EWC's importances and old parameters, LwF's previous
    model, ...) and the exemplars that strategies such as DER keep in their
    own ``storage_policy``. Evaluation, clock and metric plugins are left out."""
    seen: dict[Any, Any] = {id(strategy.model): strategy.model, id(strategy): strategy}
    ignored = (EvaluationPlugin, PeriodicEval, Clock, PluginMetric)
    kept = [plugin for plugin in strategy.plugins if not isinstance(plugin, ignored)]
    return sum(_tensors_bytes(part, seen) for part in [*kept, getattr(strategy, "storage_policy", None)])


class ModelSize(Metric[dict[str, float]]):
    """The standalone model-size metric.

    ``update(strategy)`` measures the strategy's model and state; ``result()``
    returns ``{"bytes": ..., "individual_networks_ratio": ...,
    "bytes_per_task": ..., "bits_per_weight_per_task": ...}``: the stored
    bytes (model and strategy state), their ratio to T separately stored
    networks, for multi-head models the bytes each task adds on average
    (:meth:`~piggyback_avalanche.task_aware.models.MultiHeadModel.bytes_per_task`),
    and for task-aware models the bits of per-task tensors per task-aware
    weight and task.
    """

    def __init__(self) -> None:
        self._result: dict[str, float] = {}

    def update(self, strategy: Any) -> None:
        """Measure ``strategy.model`` and the strategy's plugin state."""
        model = strategy.model
        total = stored_bytes(model) + strategy_state_bytes(strategy)
        tasks = model.tasks if isinstance(model, MultiHeadModel) else []
        self._result = {"bytes": float(total)}
        if tasks:
            individual = sum(model.network_bytes(t) for t in tasks)
            self._result["individual_networks_ratio"] = total / individual
            self._result["bytes_per_task"] = model.bytes_per_task()
        if isinstance(model, TaskAwareModel) and tasks:
            self._result["bits_per_weight_per_task"] = model.task_tensor_bits_per_weight() / len(tasks)

    def result(self) -> dict[str, float]:
        """The last measurement (empty before the first update)."""
        return dict(self._result)

    def reset(self) -> None:
        self._result = {}


class ModelSizePluginMetric(AfterTrainingExpPluginMetric):
    """Emits, after each training experience, ``ModelSize_Bytes``,
    ``ModelSize_IndividualNetworksRatio``, ``ModelSize_BytesPerTask`` and
    ``ModelSize_BitsPerWeightPerTask`` (``/train_phase/train_stream``)."""

    name = "ModelSize"
    _names: ClassVar[dict[str, str]] = {
        "bytes": "ModelSize_Bytes",
        "individual_networks_ratio": "ModelSize_IndividualNetworksRatio",
        "bytes_per_task": "ModelSize_BytesPerTask",
        "bits_per_weight_per_task": "ModelSize_BitsPerWeightPerTask",
    }

    def __init__(self) -> None:
        super().__init__(ModelSize())

    def _values(self, strategy: Any) -> list[MetricValue]:
        return [self._emit(self._names[k], "", v, strategy) for k, v in self._metric.result().items()]


def model_size_metrics() -> list[PluginMetric]:
    """The model-size plugin metrics, for an ``EvaluationPlugin``."""
    return [ModelSizePluginMetric()]
