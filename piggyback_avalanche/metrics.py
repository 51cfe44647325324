"""The metrics Piggyback's paper is about, as Avalanche plugin metrics: what
storing everything learned so far costs, and how sparse each task's masks are;
plus the accuracy matrix as an image.

Each comes as a standalone metric, a plugin metric and a ``*_metrics()``
factory, in the style of Avalanche's ``evaluation/metrics/disk_usage.py``.
"""

import math
from typing import Any, Dict, Iterable, List, Optional, Set

from torch import Tensor, nn

from avalanche.evaluation import Metric, PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from piggyback_avalanche.layers import MaskedLayer, TaskNorm, TaskWeightLayer
from piggyback_avalanche.model import MultiHeadModel, PiggybackModel, TaskAwareModel
from piggyback_avalanche.packnet import PackNetLayer
from piggyback_avalanche.reference_models import CopiedLayer

__all__ = [
    "stored_bytes",
    "network_bytes",
    "strategy_state_bytes",
    "ModelSize",
    "ModelSizePluginMetric",
    "model_size_metrics",
    "MaskSparsity",
    "MaskSparsityPluginMetric",
    "mask_sparsity_metrics",
    "AccuracyMatrixPluginMetric",
    "accuracy_matrix_metrics",
    "accuracy_matrix_figure",
]


def _template_keys(model: nn.Module) -> Set[str]:
    """State-dict keys that only seed new tasks and that no learned task
    reads: per-task normalization's base layer, individual networks' backbone."""
    keys = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, TaskNorm) and module.per_task:
            keys |= {prefix + "base." + k for k in module.base.state_dict()}
        if isinstance(module, CopiedLayer):
            keys |= {prefix + "weight", prefix + "bias"}
    return keys


def stored_bytes(model: nn.Module) -> int:
    """Bytes of what the model must store to compute every learned task:
    its state dict at each tensor's own dtype (packed masks at 1 or 2 bits per
    weight, PackNet's packed ownership, per-task copies), without the
    templates that only seed new tasks."""
    skip = _template_keys(model)
    return sum(t.nbytes for k, t in model.state_dict().items() if k not in skip)


def network_bytes(model: MultiHeadModel, task: int) -> int:
    """Bytes of one plain network for ``task``: the backbone's layers and
    normalization once, with that task's head; T individual networks cost the
    sum of this over the tasks."""
    head = model.heads.heads[str(task)]
    if isinstance(model, TaskAwareModel):
        body = 0
        for module in model.backbone.modules():
            if isinstance(module, TaskWeightLayer):
                body += sum(p.nbytes for p in (module.weight, module.bias) if p is not None)
            elif isinstance(module, TaskNorm):
                body += sum(t.nbytes for t in module.base.state_dict().values())
    else:
        heads_prefix = f"backbone.{model._classifier_name}.heads."
        body = sum(
            t.nbytes for k, t in model.state_dict().items() if not k.startswith(heads_prefix)
        )
    return body + head.weight.nbytes + (head.bias.nbytes if head.bias is not None else 0)


def _tensors_bytes(obj: Any, seen: Dict[Any, Any]) -> int:
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


def _sample_bytes(sample: Any, seen: Dict[Any, Any]) -> int:
    fields = sample if isinstance(sample, (list, tuple)) else [sample]
    return sum(8 if isinstance(f, int) else _tensors_bytes(f, seen) for f in fields)


def strategy_state_bytes(strategy: Any) -> int:
    """Bytes of what a strategy's plugins keep besides the model: replay
    buffers, EWC's importances and old parameters, LwF's previous model, ...
    Evaluation, clock and metric plugins are left out."""
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates.base_sgd import PeriodicEval
    from avalanche.training.plugins.clock import Clock

    seen: Dict[Any, Any] = {id(strategy.model): strategy.model, id(strategy): strategy}
    ignored = (EvaluationPlugin, PeriodicEval, Clock, PluginMetric)
    return sum(
        _tensors_bytes(plugin, seen) for plugin in strategy.plugins if not isinstance(plugin, ignored)
    )


class ModelSize(Metric[Dict[str, float]]):
    """The standalone model-size metric.

    ``update(strategy)`` measures the strategy's model and state; ``result()``
    returns ``{"bytes": ..., "individual_networks_ratio": ...,
    "bits_per_weight_per_task": ...}``: the stored bytes (model and strategy
    state), their ratio to T separately stored networks, and for task-aware
    models the bits of per-task state per masked weight and task.
    """

    def __init__(self) -> None:
        self._result: Dict[str, float] = {}

    def update(self, strategy: Any) -> None:
        """Measure ``strategy.model`` and the strategy's plugin state."""
        model = strategy.model
        total = stored_bytes(model) + strategy_state_bytes(strategy)
        tasks = model.tasks if isinstance(model, MultiHeadModel) else []
        self._result = {"bytes": float(total)}
        if tasks:
            individual = sum(network_bytes(model, t) for t in tasks)
            self._result["individual_networks_ratio"] = total / individual
        if isinstance(model, TaskAwareModel) and tasks:
            self._result["bits_per_weight_per_task"] = _per_weight_bits(model) / len(tasks)

    def result(self) -> Dict[str, float]:
        """The last measurement (empty before the first update)."""
        return dict(self._result)

    def reset(self) -> None:
        self._result = {}


def _per_weight_bits(model: TaskAwareModel) -> float:
    """Bits of per-task state stored per weight of the task-aware layers."""
    weights, stored = 0, 0
    for layer in model.task_layers.values():
        weights += layer.weight.numel()
        if isinstance(layer, MaskedLayer):
            stored += sum(layer.packed_masks[t].nbytes for t in layer.packed_masks.keys())
        elif isinstance(layer, PackNetLayer):
            stored += layer.packed_owners.nbytes
        elif isinstance(layer, CopiedLayer):
            stored += sum(layer.frozen_weights[t].nbytes for t in layer.frozen_weights.keys())
    return 8.0 * stored / weights


class _AfterTrainingExp(PluginMetric[Any]):
    """A plugin metric measured and emitted after each training experience."""

    name: str

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self._metric = metric

    def reset(self) -> None:
        self._metric.reset()

    def result(self) -> Any:
        return self._metric.result()

    def _values(self, strategy: Any) -> List[MetricValue]:
        raise NotImplementedError

    def after_training_exp(self, strategy: Any) -> List[MetricValue]:
        self._metric.update(strategy)
        return self._values(strategy)

    def _emit(self, label: str, suffix: str, value: Any, strategy: Any) -> MetricValue:
        return MetricValue(
            self, f"{label}/train_phase/train_stream{suffix}", value, strategy.clock.train_iterations
        )

    def __str__(self) -> str:
        return self.name


class ModelSizePluginMetric(_AfterTrainingExp):
    """Emits, after each training experience, ``ModelSize_Bytes``,
    ``ModelSize_IndividualNetworksRatio`` and
    ``ModelSize_BitsPerWeightPerTask`` (``/train_phase/train_stream``)."""

    name = "ModelSize"
    _names = {
        "bytes": "ModelSize_Bytes",
        "individual_networks_ratio": "ModelSize_IndividualNetworksRatio",
        "bits_per_weight_per_task": "ModelSize_BitsPerWeightPerTask",
    }

    def __init__(self) -> None:
        super().__init__(ModelSize())

    def _values(self, strategy: Any) -> List[MetricValue]:
        return [self._emit(self._names[k], "", v, strategy) for k, v in self._metric.result().items()]


def model_size_metrics() -> List[PluginMetric]:
    """The model-size plugin metrics, for an ``EvaluationPlugin``."""
    return [ModelSizePluginMetric()]


class MaskSparsity(Metric[Dict[int, Dict[str, Dict[str, float]]]]):
    """The standalone mask-sparsity metric of a :class:`PiggybackModel`.

    ``result()`` maps each frozen task to ``{"zeros": {layer: fraction, ...,
    "overall": fraction}, "negatives": {...}}`` (negatives for the ternary
    masks only): the share of each layer's weights that the task's mask drops
    (or flips).
    """

    def __init__(self) -> None:
        self._result: Dict[int, Dict[str, Dict[str, float]]] = {}

    def update(self, model: nn.Module, tasks: Optional[Iterable[int]] = None) -> None:
        """Measure ``tasks`` (default: every frozen task) of ``model``."""
        if not isinstance(model, PiggybackModel):
            return
        ternary = model.mask_kind.bits == 2
        for task in model.frozen_tasks if tasks is None else tasks:
            counts = {"zeros": {}, "negatives": {}} if ternary else {"zeros": {}}
            totals = {kind: 0 for kind in counts}
            weights = 0
            for name, layer in model.masked_layers.items():
                mask = layer.mask(str(task))
                found = {"zeros": int((mask == 0).sum()), "negatives": int((mask < 0).sum())}
                for kind in counts:
                    counts[kind][name] = found[kind] / mask.numel()
                    totals[kind] += found[kind]
                weights += mask.numel()
            for kind in counts:
                counts[kind]["overall"] = totals[kind] / weights
            self._result[int(task)] = counts

    def result(self) -> Dict[int, Dict[str, Dict[str, float]]]:
        return {t: {k: dict(v) for k, v in c.items()} for t, c in self._result.items()}

    def reset(self) -> None:
        self._result = {}


class MaskSparsityPluginMetric(_AfterTrainingExp):
    """After each training experience, for each task it trained:
    ``MaskZeros/train_phase/train_stream/TaskTTT/<layer>`` (and
    ``.../overall``), ``MaskNegatives/...`` for ternary masks, and a per-layer
    bar chart ``MaskSparsityChart/train_phase/train_stream/TaskTTT``.

    While a task trains it also emits a histogram of each layer's mask scores
    after every epoch, ``MaskScores/train_phase/train_stream/TaskTTT/<layer>``
    (at most ``histogram_samples`` scores per layer, sampled evenly).
    """

    name = "MaskSparsity"

    def __init__(self, *, histogram_samples: int = 10_000) -> None:
        super().__init__(MaskSparsity())
        self.histogram_samples = histogram_samples

    def _values(self, strategy: Any) -> List[MetricValue]:
        model = strategy.model
        if not isinstance(model, PiggybackModel):
            return []
        trained = [int(t) for t in strategy.experience.task_labels]
        self._metric.update(model, trained)
        result = self._metric.result()
        values = []
        for task in trained:
            for kind, fractions in result[task].items():
                label = "MaskZeros" if kind == "zeros" else "MaskNegatives"
                for layer, fraction in fractions.items():
                    values.append(self._emit(label, f"/Task{task:03d}/{layer}", fraction, strategy))
        latest = trained[-1]
        values.append(self._emit("MaskSparsityChart", f"/Task{latest:03d}", _rendered(_bar_chart(result[latest])), strategy))
        return values

    def after_training_epoch(self, strategy: Any) -> List[MetricValue]:
        model = strategy.model
        if not isinstance(model, PiggybackModel):
            return []
        values = []
        for task in model.learning_tasks:
            for name, layer in model.masked_layers.items():
                if str(task) in layer.scores:
                    scores = layer.scores[str(task)].detach().flatten()
                    step = max(1, math.ceil(scores.numel() / self.histogram_samples))
                    values.append(
                        self._emit("MaskScores", f"/Task{task:03d}/{name}", scores[::step].cpu(), strategy)
                    )
        return values


def _rendered(figure):
    """The figure as a PIL image, and the figure closed: loggers that never
    draw it (all but TensorBoard) would otherwise keep it open forever."""
    from matplotlib import pyplot as plt
    from PIL import Image

    figure.canvas.draw()
    image = Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")
    plt.close(figure)
    return image


def _bar_chart(fractions: Dict[str, Dict[str, float]]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    layers = [name for name in fractions["zeros"] if name != "overall"]
    figure, axes = plt.subplots(figsize=(max(4, 0.35 * len(layers) + 2), 3))
    for offset, (kind, values) in enumerate(fractions.items()):
        positions = [i + 0.4 * offset for i in range(len(layers))]
        axes.bar(positions, [values[n] for n in layers], width=0.4, label=kind)
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    axes.set_ylabel("fraction of weights")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    return figure


def mask_sparsity_metrics(*, histogram_samples: int = 10_000) -> List[PluginMetric]:
    """The mask-sparsity plugin metrics, for an ``EvaluationPlugin``."""
    return [MaskSparsityPluginMetric(histogram_samples=histogram_samples)]


class AccuracyMatrixPluginMetric(PluginMetric[List[List[float]]]):
    """After each evaluation, the accuracy matrix as an image,
    ``AccuracyMatrix/eval_phase/test_stream``: row i holds the accuracy on
    each evaluated experience after training experience i. It reads the
    per-experience accuracies of ``accuracy_metrics(experience=True)``, which
    must be in the same evaluator."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: Dict[int, Dict[int, float]] = {}

    def reset(self) -> None:
        self.rows = {}

    def result(self) -> List[List[float]]:
        """The matrix, NaN where an experience was not evaluated."""
        columns = 1 + max((c for row in self.rows.values() for c in row), default=-1)
        return [
            [self.rows[r].get(c, math.nan) for c in range(columns)] for r in sorted(self.rows)
        ]

    def after_eval(self, strategy: Any) -> List[MetricValue]:
        trained = strategy.clock.train_exp_counter - 1
        if trained < 0:
            return []
        prefix = "Top1_Acc_Exp/eval_phase/test_stream/"
        row = {
            int(name.rsplit("/Exp", 1)[1]): value
            for name, value in strategy.evaluator.get_last_metrics().items()
            if name.startswith(prefix)
        }
        if not row:
            return []
        self.rows[trained] = row
        return [
            MetricValue(
                self, "AccuracyMatrix/eval_phase/test_stream", _rendered(accuracy_matrix_figure(self.result())),
                strategy.clock.train_iterations,
            )
        ]

    def __str__(self) -> str:
        return "AccuracyMatrix"


def accuracy_matrix_figure(matrix: List[List[float]]):
    """A heatmap of an accuracy matrix (rows: trained up to experience;
    columns: evaluated experience; NaN cells left blank), as a matplotlib
    figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    size = len(matrix[0])
    figure, axes = plt.subplots(figsize=(1 + 0.6 * size, 1 + 0.6 * len(matrix)))
    image = axes.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            if not math.isnan(value):
                color = "black" if value > 0.6 else "white"  # readable on viridis
                axes.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xlabel("evaluated experience")
    axes.set_ylabel("trained up to experience")
    axes.set_xticks(range(size))
    axes.set_yticks(range(len(matrix)))
    figure.colorbar(image)
    figure.tight_layout()
    return figure


def accuracy_matrix_metrics() -> List[PluginMetric]:
    """The accuracy-matrix image metric, for an ``EvaluationPlugin``."""
    return [AccuracyMatrixPluginMetric()]
