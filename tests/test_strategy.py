import copy

import pytest
import torch
import torchvision
from conftest import stacked_inputs as _test_inputs
from conftest import synthetic_tasks, tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import TextLogger
from avalanche.models import SimpleMLP
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin

from piggyback_avalanche import PIGGYBACK_PAPER_SETTINGS, Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.task_aware import TaskNorm


def _strategy(model, **kwargs):
    settings = dict(mask_lr=1e-2, lr=1e-2, train_mb_size=16, train_epochs=2, evaluator=None)
    settings.update(kwargs)
    return Piggyback(model=model, **settings)


def _backbone_tensors(model):
    """The backbone's own weights, biases and normalization layers."""
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if ".packed_masks." not in k and ".tasks." not in k and ".heads." not in k
    }


def test_training_new_tasks_never_changes_earlier_logits(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    recorded = train_checking_earlier_tasks(_strategy(model), three_task_stream)
    assert sorted(recorded) == [0, 1, 2]
    assert model.frozen_tasks == [0, 1, 2] and model.learning_tasks == []


def test_backbone_weights_are_never_written(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    before = _backbone_tensors(model)
    strategy = _strategy(model)
    for experience in three_task_stream.train_stream:
        strategy.train(experience)
    after = _backbone_tensors(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ...while each task's mask, normalization and head did learn.
    masks = [model.masked_layers["0"].mask(str(t)) for t in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_train_backbone_on_first_experience_then_frozen(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    initial = _backbone_tensors(model)
    strategy = _strategy(model, train_backbone_on_first_experience=True)
    stream = three_task_stream.train_stream
    strategy.train(stream[0])
    after_first = _backbone_tensors(model)
    assert not torch.equal(initial["backbone.0.weight"], after_first["backbone.0.weight"])
    # Later tasks start from the first task's batch norm.
    assert torch.equal(model.backbone[1].base.running_mean, model.backbone[1].tasks["0"].running_mean)
    assert model.masked_layers["0"].mask("0").eq(1).all()
    x = _test_inputs(three_task_stream.test_stream[0])
    with torch.no_grad():
        first_logits = model.eval()(x, 0)
    for experience in stream[1:]:
        strategy.train(experience)
    after_all = _backbone_tensors(model)
    assert all(torch.equal(after_first[k], after_all[k]) for k in after_first)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, 0), first_logits)


def test_earlier_tasks_batch_norm_does_not_move(three_task_stream):
    class MixedBatches(SupervisedPlugin):
        """Sends task-0 samples through the model in training mode while
        task 1 trains."""

        def after_training_iteration(self, strategy, **kwargs):
            if strategy.experience.task_label == 1:
                x = torch.randn(8, 1, 8, 8)
                strategy.model(x, torch.tensor([0, 1] * 4)).sum().backward()

    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model, plugins=[MixedBatches()])
    stream = three_task_stream.train_stream
    strategy.train(stream[0])
    norms = [m for m in model.modules() if isinstance(m, TaskNorm)]
    snapshot = [copy.deepcopy(n.tasks["0"].state_dict()) for n in norms]
    assert snapshot[0]["num_batches_tracked"] > 0 and not torch.equal(
        snapshot[0]["running_mean"], norms[0].base.running_mean
    )
    strategy.train(stream[1])
    for norm, state in zip(norms, snapshot):
        for key, value in norm.tasks["0"].state_dict().items():
            assert torch.equal(value, state[key]), key
        # Task 1's own copy did learn.
        assert not torch.equal(norm.tasks["1"].running_mean, state["running_mean"])


def test_fixed_batch_norm_ablation_keeps_backbone_statistics(three_task_stream):
    model = PiggybackModel(tiny_conv_net(), task_batchnorm=False)
    norm = model.backbone[1]
    before = copy.deepcopy(norm.base.state_dict())
    _strategy(model).train(three_task_stream.train_stream[0])
    assert len(norm.tasks) == 0
    assert all(torch.equal(v, before[k]) for k, v in norm.base.state_dict().items())


def test_optimizer_is_fresh_per_experience_and_holds_only_current_task(three_task_stream):
    seen = []

    class OptimizerProbe(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            task = str(strategy.experience.task_label)
            model = strategy.model
            groups = {g["name"]: g for g in strategy.optimizer.param_groups}
            trained = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
            scores = {id(layer.scores[task]) for layer in model.masked_layers.values()}
            head = model.heads.heads[task]
            norm = model.backbone[1].tasks[task]
            seen.append(
                dict(
                    optimizer=strategy.optimizer,
                    groups=set(groups),
                    scores_exact=trained["mask_scores"] == scores,
                    task_parameters_exact=trained["task_parameters"]
                    == {
                        id(p)
                        for p in (
                            *head.parameters(),
                            *model.backbone[1].tasks[task].parameters(),
                            *model.backbone[4].tasks[task].parameters(),
                        )
                    },
                    state_empty=len(strategy.optimizer.state) == 0,
                    norm_trains=norm.weight.requires_grad,
                    fused=strategy.optimizer.defaults["fused"],
                )
            )

        def after_training_exp(self, strategy, **kwargs):
            seen[-1]["lrs"] = {g["name"]: g["lr"] for g in strategy.optimizer.param_groups}

    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model, mask_lr=3e-3, lr=2e-3, train_epochs=3, lr_decay_epochs=[2], plugins=[OptimizerProbe()])
    for experience in three_task_stream.train_stream[:2]:
        strategy.train(experience)
    assert seen[0]["optimizer"] is not seen[1]["optimizer"]
    assert all(record["fused"] for record in seen)  # one kernel per step on CPU and GPU
    for record in seen:
        assert record["groups"] == {"mask_scores", "task_parameters"}
        assert record["scores_exact"] and record["task_parameters_exact"]
        assert record["state_empty"] and record["norm_trains"]
        # 3 epochs with a decay after epoch 2: one decay applied.
        assert record["lrs"]["mask_scores"] == pytest.approx(3e-4)
        assert record["lrs"]["task_parameters"] == pytest.approx(2e-4)
    assert not model.backbone[1].tasks["0"].weight.requires_grad


def test_user_plugins_and_evaluator_run(three_task_stream, tmp_path):
    calls = []

    class Recorder(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            calls.append(("before_training_exp", strategy.experience.current_experience))

        def after_training_exp(self, strategy, **kwargs):
            # Masks are frozen before plugins see the end of the experience.
            calls.append(("after_training_exp", strategy.model.learning_tasks))

    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log_file:
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(epoch=True),
            loggers=[TextLogger(log_file)],
        )
        strategy = _strategy(
            PiggybackModel(tiny_conv_net()), plugins=[Recorder()], evaluator=evaluator, train_epochs=10
        )
        stream = three_task_stream
        for i, experience in enumerate(stream.train_stream[:2]):
            strategy.train(experience)
            metrics = strategy.eval(stream.test_stream[: i + 1])
    assert calls == [
        ("before_training_exp", 0),
        ("after_training_exp", []),
        ("before_training_exp", 1),
        ("after_training_exp", []),
    ]
    assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.9
    assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"] > 0.9
    assert "Top1_Acc_Stream/eval_phase/test_stream" in log_path.read_text()


def test_calling_the_model_on_a_task_it_never_saw_says_what_to_do(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model)
    strategy.train(three_task_stream.train_stream[0])
    x = _test_inputs(three_task_stream.test_stream[0])
    with pytest.raises(ValueError, match=r"\[7\] unknown.*knows tasks \[0\].*test_stream\[: i \+ 1\]"):
        model.eval()(x, 7)


def test_retraining_a_frozen_task_is_refused(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model)
    strategy.train(three_task_stream.train_stream[0])
    masks = model.state_dict()["backbone.0.packed_masks.0"].clone()
    with pytest.raises(ValueError, match="already learned and are frozen"):
        strategy.train(three_task_stream.train_stream[0])
    assert torch.equal(model.state_dict()["backbone.0.packed_masks.0"], masks)


def test_stream_without_task_labels_is_refused_and_task_labels_in_the_data_are_enough():
    from torch.utils.data import TensorDataset

    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute

    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 2
    unlabelled = ClassificationDataset([TensorDataset(x, y)], data_attributes=[DataAttribute(y, "targets")])
    strategy = _strategy(PiggybackModel(tiny_conv_net()))
    with pytest.raises(
        ValueError, match=r"no task labels \(neither the experience nor its data.*task_incremental_benchmark"
    ):
        strategy.train(benchmark_from_datasets(train=[unlabelled]).train_stream[0])
    assert strategy.model.tasks == []
    # The experience has no task labels, its data has: the data's are the task's.
    stream = benchmark_from_datasets(train=[_make_taskaware_tensor_classification_dataset(x, y, task_labels=3)])
    strategy.train(stream.train_stream[0])
    assert strategy.model.frozen_tasks == [3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask_lr=0.0), "mask_lr must be a positive finite number"),
        (dict(lr=float("inf")), "lr must be a positive finite number"),
        (dict(train_epochs=0), "train_epochs must be an int of at least 1"),
        (dict(lr_decay_epochs=[0]), "lr_decay_epochs must be positive"),
    ],
)
def test_invalid_strategy_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _strategy(PiggybackModel(tiny_conv_net()), **kwargs)
    with pytest.raises(TypeError, match="Piggyback trains a PiggybackModel"):
        Piggyback(model=tiny_conv_net())


def test_paper_settings_are_accepted():
    strategy = Piggyback(model=PiggybackModel(tiny_conv_net()), evaluator=None, **PIGGYBACK_PAPER_SETTINGS)
    assert (strategy.mask_lr, strategy.train_epochs, strategy.lr_decay_epochs) == (1e-4, 30, [15])


def test_ternary_piggyback_trains(three_task_stream):
    model = PiggybackModel(tiny_conv_net(), threshold_fn="ternarizer", mask_init="uniform")
    strategy = _strategy(model)
    strategy.train(three_task_stream.train_stream[0])
    assert set(model.masked_layers["0"].mask("0").unique().tolist()) == {-1.0, 0.0, 1.0}


def test_torchvision_resnet18_at_32px_trains_one_experience():
    tasks = synthetic_tasks([[0, 1, 2]], n_train=16, n_test=8, shape=(3, 32, 32))
    stream = tensor_task_stream(tasks)
    model = PiggybackModel(torchvision.models.resnet18(weights=None))
    strategy = _strategy(model, train_mb_size=8, train_epochs=1, eval_mb_size=8)
    before = model.masked_layers["layer1.0.conv1"].weight.clone()
    strategy.train(stream.train_stream[0])
    assert model.frozen_tasks == [0]
    assert len(model.masked_layers) == 20  # 17 3x3/7x7 convs + 3 downsample convs
    assert torch.equal(model.masked_layers["layer1.0.conv1"].weight, before)
    with torch.no_grad():
        assert model.eval()(tasks[0][2], 0).shape == (8, 3)


def test_avalanche_simple_mlp_trains_one_experience():
    tasks = synthetic_tasks([[0, 1, 2, 3]], n_train=64, n_test=32, shape=(20,))
    stream = tensor_task_stream(tasks)
    model = PiggybackModel(SimpleMLP(num_classes=10, input_size=20, hidden_size=32))
    strategy = _strategy(model, train_epochs=5)
    strategy.train(stream.train_stream[0])
    with torch.no_grad():
        predictions = model.eval()(tasks[0][2], 0).argmax(1)
    assert (predictions == tasks[0][3]).float().mean() > 0.5


def test_every_avalanche_logger_receives_the_metrics(three_task_stream, tmp_path, capsys):
    # WandBLogger is left out: Avalanche 0.6 calls wandb.util.generate_id,
    # which wandb removed (docs/guide/known_limits.md).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger

    text_path = tmp_path / "text.log"
    with open(text_path, "w") as text_file:
        loggers = [
            InteractiveLogger(),
            TextLogger(text_file),
            CSVLogger(str(tmp_path / "csv")),
            TensorboardLogger(tmp_path / "tb"),
        ]
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=loggers)
        strategy = _strategy(PiggybackModel(tiny_conv_net()), evaluator=evaluator, train_epochs=3)
        strategy.train(three_task_stream.train_stream[0])
        metrics = strategy.eval(three_task_stream.test_stream[:1])
        loggers[3].writer.flush()
    accuracy = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert "Top1_Acc_Stream/eval_phase/test_stream" in capsys.readouterr().out
    assert f"{accuracy:.4f}" in text_path.read_text()
    csv_rows = (tmp_path / "csv" / "eval_results.csv").read_text().splitlines()
    assert len(csv_rows) == 2 and f"{accuracy:.4f}" in csv_rows[1]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("Top1_Acc_Stream/eval_phase/test_stream/Task000")
    assert scalars[-1].value == pytest.approx(accuracy)


class _NormZoo(nn.Module):
    """Every supported normalization layer, on 1-D, 2-D and 3-D inputs."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(1, 4, 3, padding=1)
        self.group_norm = nn.GroupNorm(2, 4)
        self.batch_norm1d = nn.BatchNorm1d(4)
        self.conv3d = nn.Conv3d(1, 2, 3, padding=1)
        self.batch_norm3d = nn.BatchNorm3d(2)
        self.linear = nn.Linear(4 * 8 + 2 * 8, 12)
        self.layer_norm = nn.LayerNorm(12)
        self.classifier = nn.Linear(12, 3)

    def forward(self, x):
        sequence = self.batch_norm1d(self.group_norm(self.conv1d(x.view(-1, 1, 8))))
        volume = self.batch_norm3d(self.conv3d(x.view(-1, 1, 2, 2, 2))).flatten(1)
        features = torch.cat([sequence.flatten(1), volume], dim=1)
        return self.classifier(torch.relu(self.layer_norm(self.linear(features))))


def test_every_normalization_layer_gets_per_task_parameters():
    stream = tensor_task_stream(synthetic_tasks([[0, 1, 2], [0, 1]], shape=(8,), seed=5))
    model = PiggybackModel(_NormZoo())
    strategy = _strategy(model, train_epochs=3)
    strategy.train(stream.train_stream[0])
    norms = {name: m for name, m in model.backbone.named_children() if isinstance(m, TaskNorm)}
    assert set(norms) == {"group_norm", "batch_norm1d", "batch_norm3d", "layer_norm"}
    first = {name: copy.deepcopy(n.tasks["0"].state_dict()) for name, n in norms.items()}
    for name, norm in norms.items():
        # Task 0 learned its own affine parameters, starting from the backbone's.
        assert not torch.equal(norm.tasks["0"].weight, norm.base.weight), name
    x = _test_inputs(stream.test_stream[0])
    with torch.no_grad():
        logits = model.eval()(x, 0)
    strategy.train(stream.train_stream[1])
    for name, norm in norms.items():
        assert all(torch.equal(v, first[name][k]) for k, v in norm.tasks["0"].state_dict().items())
        assert not torch.equal(norm.tasks["1"].weight, norm.tasks["0"].weight), name
    with torch.no_grad():
        assert torch.equal(model.eval()(x, 0), logits)


def test_new_task_normalization_starts_from_the_backbone():
    backbone = tiny_conv_net()
    backbone[1].running_mean.normal_()
    backbone[1].weight.data.uniform_(0.5, 1.5)
    model = PiggybackModel(backbone)
    model.add_task(0, classes=[0, 1])
    copy_0 = model.backbone[1].tasks["0"]
    assert torch.equal(copy_0.running_mean, backbone[1].running_mean)
    assert torch.equal(copy_0.weight, backbone[1].weight) and copy_0.weight.requires_grad


def test_an_experience_with_two_tasks_trains_both_in_mixed_batches():
    from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    (x0, y0, tx0, ty0), (x1, y1, tx1, ty1) = synthetic_tasks([[0, 1], [0, 1, 2]], seed=7)
    labels = [0] * len(y0) + [1] * len(y1)
    dataset = _make_taskaware_tensor_classification_dataset(
        torch.cat([x0, x1]), torch.cat([y0, y1]), task_labels=labels
    )
    stream = with_classes_timeline(with_task_labels(benchmark_from_datasets(train=[dataset])))
    model = PiggybackModel(tiny_conv_net())
    _strategy(model, train_epochs=10).train(stream.train_stream[0])
    assert model.frozen_tasks == [0, 1]
    assert [model.heads.heads[t].out_features for t in ("0", "1")] == [2, 3]
    with torch.no_grad():
        model.eval()
        for x, y, task in ((tx0, ty0, 0), (tx1, ty1, 1)):
            assert (model(x, task).argmax(1) == y).float().mean() > 0.8


def _first_layer_output_mean(model, experience, task):
    layer = model.masked_layers["0"]
    x = _test_inputs(experience)
    out = nn.functional.conv2d(x, layer.weight * layer.mask(str(task)), layer.bias, padding=1)
    return out.mean(dim=(0, 2, 3))


@pytest.mark.parametrize("recalibrate", [True, False])
def test_batch_norm_statistics_are_recalibrated_with_the_final_mask(three_task_stream, recalibrate):
    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model, recalibrate_norm_statistics=recalibrate)
    experience = three_task_stream.train_stream[0]
    strategy.train(experience)
    norm = model.backbone[1].tasks["0"]
    expected = _first_layer_output_mean(model, experience, 0)
    # 48 samples in batches of 16: the average of the batch means is the mean.
    matches = torch.allclose(norm.running_mean, expected, atol=1e-5)
    assert matches == recalibrate
    assert norm.momentum == 0.1
    assert int(norm.num_batches_tracked) == (3 if recalibrate else 2 * 3)


def test_recalibration_touches_only_learning_tasks_and_keeps_statistics_on_error(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    strategy = _strategy(model)
    strategy.train(three_task_stream.train_stream[0])
    model.add_task(1, classes=[0, 1, 2])
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, TaskNorm)]
    before = [copy.deepcopy(n.state_dict()) for n in norms]
    with pytest.raises(ValueError, match="No batches"):
        model.recalibrate_norm_statistics([])
    after_error = [n.state_dict() for n in norms]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, after_error) for k in a)
    x = _test_inputs(three_task_stream.test_stream[1])
    assert model.recalibrate_norm_statistics([(x[:12], torch.ones(12, dtype=torch.long))]) == 12
    for norm, state in zip(norms, before):
        assert all(torch.equal(v, state[k]) for k, v in norm.state_dict().items() if k.startswith("tasks.0."))
        assert int(norm.tasks["1"].num_batches_tracked) == 1
        assert norm.tasks["1"].momentum == 0.1
    assert not model.training
