"""A mask method the package does not know, defined and registered here as
a method's own folder would define it (its layer, model, strategy and
config, then ``register_method``), with no edit anywhere else: it gets task
files, task stores, experience checkpoints, the mask-sparsity metric, the
runner's grid and the report like the built-in methods."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from conftest import stacked_inputs, synthetic_tasks
from torch import Tensor, nn

from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from piggyback_avalanche import make_strategy
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation.mask_sparsity import MaskSparsityPluginMetric
from piggyback_avalanche.task_aware import TaskAwareModel, TaskAwareStrategy, TaskWeightLayer
from piggyback_avalanche.task_aware.registration import (
    LEARNING_RATE_RANGE,
    REGISTERED_STRATEGIES,
    MethodConfig,
    SearchRange,
    model_setting,
    register_method,
)
from piggyback_avalanche.task_aware.task_files import TaskFileError
from piggyback_avalanche.task_aware.task_layers import task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict, TensorSpec
from piggyback_avalanche.training.checkpoints import load_experience_checkpoint, save_experience_checkpoint


class UnitMaskLayer(TaskWeightLayer):
    """Each task learns a score per output unit and keeps the units whose
    score exceeds ``unit_threshold`` (straight-through gradients); a frozen
    task keeps one byte per unit."""

    setting_names = ("unit_threshold",)

    def _init_task_weights(self, *, unit_threshold: float) -> None:  # type: ignore[override]
        self.unit_threshold = unit_threshold
        units = (self.weight.shape[0],)
        self.unit_scores = TaskTensorDict(trainable=True, holds="learning", shape=units)
        self.unit_masks = TaskTensorDict(trainable=False, holds="frozen", shape=units, dtype=torch.uint8)

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        self.unit_scores.add(task, torch.ones(self.weight.shape[0], dtype=self.weight.dtype))

    def freeze_task(self, task: str) -> None:
        self.unit_masks.add(task, (self.unit_scores.pop(task).detach() > self.unit_threshold).to(torch.uint8))

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"unit_scores": [self.unit_scores[t] for t in self.unit_scores.keys()]}  # type: ignore[misc]

    def task_tensor_bytes(self) -> int:
        return self.unit_masks.nbytes()

    def _unit_mask(self, task: str) -> Tensor:
        if task in self.unit_scores:
            scores = self.unit_scores[task]
            return (scores > self.unit_threshold).to(scores.dtype) + scores - scores.detach()
        return self.unit_masks[task].to(self.weight.dtype)

    def task_weight(self) -> Tensor:
        mask = self._unit_mask(self.task_state.key())
        return self.weight * mask.reshape(-1, *(1,) * (self.weight.dim() - 1))

    def mask_counts(self, task: str) -> dict[str, int]:
        dropped = int((self._unit_mask(task) == 0).sum())
        return {"zeros": dropped * self.weight[0].numel()}


UNIT_MASK_LAYER_TYPES = task_layer_types(UnitMaskLayer, prefix="UnitMasked", doc="with a mask per output unit.")


class UnitMaskModel(TaskAwareModel):
    layer_types = UNIT_MASK_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        feature_statistics: bool = False,
        unit_threshold: float = 0.5,
    ) -> None:
        super().__init__(
            backbone,
            classifier=classifier,
            feature_statistics=feature_statistics,
            layer_settings={"unit_threshold": unit_threshold},
        )

    def task_file_settings(self) -> dict[str, object]:
        return {**super().task_file_settings(), "unit_threshold": self.task_layers_threshold()}

    def task_layers_threshold(self) -> float:
        return next(iter(self.task_layers.values())).unit_threshold  # type: ignore[attr-defined]


class UnitMask(TaskAwareStrategy):
    def __init__(self, *, model: UnitMaskModel, lr: float = 1e-2, unit_lr: float = 0.3, **kwargs) -> None:
        self.lr, self.unit_lr = lr, unit_lr
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {"unit_scores": self.unit_lr, "task_parameters": self.lr, "backbone": self.lr}


@dataclass(frozen=True, kw_only=True)
class UnitMaskConfig(MethodConfig):
    unit_threshold: float = model_setting(0.5)
    unit_lr: float = 0.3

    search_space: ClassVar = {"lr": LEARNING_RATE_RANGE, "unit_lr": SearchRange(0.01, 1.0)}

    def __post_init__(self) -> None:
        if not 0 < self.unit_threshold < 1:
            raise ValueError(f"unit_threshold must be in (0, 1), got {self.unit_threshold}.")


@pytest.fixture
def unit_mask():
    """The method, registered for the test only."""
    register_method("test_unit_mask", config=UnitMaskConfig, model=UnitMaskModel, strategy=UnitMask)
    yield "test_unit_mask"
    del REGISTERED_STRATEGIES["test_unit_mask"]


def _stream():
    return tensor_task_stream(synthetic_tasks([[0, 1], [0, 1, 2]], shape=(4,)))


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _logits(model: nn.Module, stream, task: int) -> Tensor:
    with torch.no_grad():
        return model.eval()(stacked_inputs(stream.test_stream[task]), task)


def _trained(name: str, stream, **config):
    strategy = make_strategy(name, _backbone(), train_epochs=2, evaluator=None, **config)
    for experience in stream.train_stream:
        strategy.train(experience)
    return strategy


def test_its_config_routes_settings_and_refuses_bad_ones_up_front(unit_mask):
    strategy = make_strategy(unit_mask, _backbone(), unit_threshold=0.25, unit_lr=0.1, evaluator=None)
    assert strategy.unit_lr == 0.1 and strategy.model.task_layers_threshold() == 0.25
    with pytest.raises(ValueError, match=r"unit_threshold must be in \(0, 1\), got 2"):
        make_strategy(unit_mask, _backbone(), unit_threshold=2.0)


def test_it_gets_task_files_and_task_stores_with_bit_identical_logits(unit_mask, tmp_path):
    stream = _stream()
    model = _trained(unit_mask, stream).model
    # Training changed the masks: some units are dropped, so the file carries something.
    assert model.mask_sparsity(0)["zeros"]["overall"] > 0 or model.mask_sparsity(1)["zeros"]["overall"] > 0
    model.save_tasks(tmp_path / "unit.tasks")
    fresh = UnitMaskModel(_backbone())
    assert fresh.load_tasks(tmp_path / "unit.tasks") == [0, 1]
    for task in (0, 1):
        assert torch.equal(_logits(fresh, stream, task), _logits(model, stream, task))
    assert fresh.frozen_task_tensor_schema(0)["backbone.0.unit_masks.0"] == TensorSpec(torch.uint8, (8,))
    # Its own setting decides what a mask means: a model with another one refuses the file.
    with pytest.raises(TaskFileError, match=r"other settings \(unit_threshold: file 0.5, model 0.25\)"):
        UnitMaskModel(_backbone(), unit_threshold=0.25).load_tasks(tmp_path / "unit.tasks")
    # A task store: the model's frozen tasks go there, and another model reads them back.
    assert model.attach_task_store(tmp_path / "store") == []
    reopened = UnitMaskModel(_backbone())
    assert reopened.attach_task_store(tmp_path / "store") == [0, 1]
    for task in (0, 1):
        assert torch.equal(_logits(reopened, stream, task), _logits(model, stream, task))


def test_it_gets_experience_checkpoints_and_the_sparsity_metric(unit_mask, tmp_path):
    stream = _stream()

    def evaluator() -> EvaluationPlugin:
        return EvaluationPlugin(accuracy_metrics(experience=True), MaskSparsityPluginMetric(), loggers=[])

    strategy = make_strategy(unit_mask, _backbone(), train_epochs=2, evaluator=evaluator())
    strategy.train(stream.train_stream[0])
    save_experience_checkpoint(strategy, tmp_path / "checkpoint.pt", next_experience=1)
    strategy.train(stream.train_stream[1])
    resumed = make_strategy(unit_mask, _backbone(), train_epochs=2, evaluator=evaluator())
    assert load_experience_checkpoint(resumed, tmp_path / "checkpoint.pt") == 1
    resumed.train(stream.train_stream[1])
    for task in (0, 1):
        assert torch.equal(_logits(resumed.model, stream, task), _logits(strategy.model, stream, task))
    # The metric asks the model, which asks each layer's mask_counts: units dropped times fan-in.
    metrics = strategy.evaluator.get_last_metrics()
    layers = strategy.model.task_layers.values()
    for task in (0, 1):
        dropped = sum(layer.mask_counts(str(task))["zeros"] for layer in layers)
        expected = dropped / sum(layer.weight.numel() for layer in layers)
        assert metrics[f"MaskZeros/train_phase/train_stream/Task{task:03d}/overall"] == expected


def test_it_runs_in_the_runners_grid_and_reaches_the_report(unit_mask, tmp_path):
    results = run_benchmark(
        stream="digits",
        backbone="mlp",
        strategies=[unit_mask, f"{unit_mask}[unit_threshold=0.9]"],
        seeds=[0],
        out_dir=tmp_path,
        config={"train_epochs": 1, "lr": 1e-2, "mask_lr": 1e-3},
        log=lambda line: None,
    )
    plain = results[unit_mask]["runs"][0]
    assert plain["average_forgetting"] == 0.0 and len(plain["accuracy"]) == 5
    # The runner found the sparsity metric by its class, and the method's masks answered it.
    assert len(plain["mask_zeros"]) == 5
    assert all(0 <= shares["overall"] < 1 for shares in plain["mask_zeros"].values())
    strict = results[f"{unit_mask}[unit_threshold=0.9]"]["runs"][0]
    assert strict["mask_zeros"] != plain["mask_zeros"]  # the variant's own setting reached its layers
    table = (tmp_path / "results.md").read_text()
    assert f"| {unit_mask} |" in table and f"| {unit_mask}[unit_threshold=0.9] |" in table
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored[unit_mask]["summary"] == results[unit_mask]["summary"]
