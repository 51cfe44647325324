"""Our strategies in the loops, plugins, models, metrics and loggers that an
Avalanche user already has, next to Avalanche's own baselines on the same
backbone."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import QUICK_RUN, same_state, stacked_inputs, state_copy, synthetic_tasks, tiny_conv_net
from torch import nn

from avalanche.evaluation.metrics import MAC_metrics, accuracy_metrics, forward_transfer_metrics
from avalanche.logging import CSVLogger
from avalanche.models import MTSimpleMLP, SimpleMLP
from avalanche.models.helper_method import as_multitask
from avalanche.training.plugins import (
    EarlyStoppingPlugin,
    EvaluationPlugin,
    EWCPlugin,
    LRSchedulerPlugin,
    MASPlugin,
    SynapticIntelligencePlugin,
)

from piggyback_avalanche import Piggyback, PiggybackModel, make_strategy
from piggyback_avalanche.app.command_line import main
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.task_aware import MASKED_LOGIT
from piggyback_avalanche.training.registry import registered_strategy

OURS = ["piggyback", "piggyback_ternary", "packnet", "individual", "classifier_only"]
BASELINES = ["naive", "lwf", "replay"]
CLASSES = [[0, 1], [0, 1, 2], [4, 5, 6, 7]]


def _stream():
    return tensor_task_stream(synthetic_tasks(CLASSES))


def _fast(name, **config):
    """Learning rates that learn the synthetic tasks in a few epochs, for
    whichever of them the strategy takes."""
    return {**registered_strategy(name).accepted({"lr": 1e-2, "mask_lr": 1e-2}), **config}


def _evaluator(*extra, loggers=()):
    metrics = (accuracy_metrics(experience=True, stream=True), forward_transfer_metrics(experience=True, stream=True))
    return EvaluationPlugin(*metrics, *extra, loggers=list(loggers))


def _first_class_share(experience):
    """Accuracy of a head that gives all of its classes equal logits: it
    predicts the experience's smallest class."""
    labels = torch.as_tensor(list(experience.dataset.targets))
    return (labels == labels.min()).float().mean().item()


@pytest.mark.parametrize("name", OURS + BASELINES)
def test_the_standard_loop_evaluates_the_whole_stream(name):
    """for exp in train_stream: train(exp); eval(test_stream), with forward
    transfer (which Avalanche computes from the evaluation before training)."""
    stream = _stream()
    strategy = make_strategy(
        name, tiny_conv_net(8), **_fast(name, train_epochs=4, train_mb_size=16, eval_every=0, evaluator=_evaluator())
    )
    for i, experience in enumerate(stream.train_stream):
        strategy.train(experience, eval_streams=[stream.test_stream])
        model = strategy.model
        model.eval()
        learned = {t: model(stacked_inputs(stream.test_stream[t]), t) for t in range(i + 1)}
        state, rng = state_copy(model), torch.get_rng_state()
        metrics = strategy.eval(stream.test_stream)
        # Untrained experiences: the model as it stands before learning them,
        # an untrained head over their classes; nothing added, nothing changed.
        for later in range(i + 1, len(CLASSES)):
            accuracy = metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{later:03d}/Exp{later:03d}"]
            assert accuracy == pytest.approx(_first_class_share(stream.test_stream[later]))
        assert model.tasks == list(range(i + 1)) and same_state(model, state)
        model.eval()
        assert all(torch.equal(model(stacked_inputs(stream.test_stream[t]), t), learned[t]) for t in learned)
        del rng  # the data loader draws its worker seed from the global generator, as for any strategy
    if name != "classifier_only":  # the lower bound: heads over a frozen random backbone
        assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Task002/Exp002"] > 0.4  # 4 classes: chance is 0.25
    forward = [k for k in metrics if k.startswith("ExperienceForwardTransfer/")]
    assert len(forward) == 2 and "StreamForwardTransfer/eval_phase/test_stream" in metrics


def test_evaluating_a_task_not_learned_draws_no_random_numbers_and_changes_nothing():
    stream = _stream()
    strategy = Piggyback(model=PiggybackModel(tiny_conv_net(8)), train_epochs=1, evaluator=None)
    strategy.train(stream.train_stream[0])
    model, state = strategy.model.eval(), state_copy(strategy.model)
    rng = torch.get_rng_state()
    model.adaptation(stream.test_stream[2])
    logits = model(stacked_inputs(stream.test_stream[2]), 2)
    assert torch.equal(torch.get_rng_state(), rng) and same_state(model, state) and model.tasks == [0]
    assert (logits[:, :4] == MASKED_LOGIT).all() and (logits[:, 4:] == 0).all()  # equal logits for classes 4..7


@pytest.mark.parametrize("name", OURS + BASELINES)
@pytest.mark.parametrize("peval_mode", ["epoch", "iteration"])
def test_periodic_evaluation_with_early_stopping(name, peval_mode):
    stream = _stream()
    strategy = make_strategy(
        name,
        tiny_conv_net(8),
        **_fast(
            name,
            train_epochs=3,
            train_mb_size=16,
            eval_every=1,
            peval_mode=peval_mode,
            plugins=[EarlyStoppingPlugin(patience=3, val_stream_name="test_stream", peval_mode=peval_mode)],
            evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
        ),
    )
    learned = {}
    for i, experience in enumerate(stream.train_stream):
        # Validation on the experience's own held-out data, as early stopping needs.
        strategy.train(experience, eval_streams=[stream.test_stream[i : i + 1]])
        learned[i] = strategy.eval(stream.test_stream[i : i + 1])[
            f"Top1_Acc_Exp/eval_phase/test_stream/Task{i:03d}/Exp{i:03d}"
        ]
    metrics = strategy.eval(stream.test_stream)
    assert strategy.model.tasks == [0, 1, 2]
    if name in OURS:  # forgetting stays zero under periodic evaluation and early stopping
        assert all(
            metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] == learned[t] for t in learned
        )


@pytest.mark.parametrize("name", OURS)
def test_plugins_that_cannot_act_are_refused_at_construction(name):
    network = tiny_conv_net()
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1))
    with pytest.raises(ValueError, match=r"LRSchedulerPlugin cannot work with .*fresh optimizer.*lr_decay_epochs"):
        make_strategy(name, network, plugins=[scheduler])
    for plugin in (EWCPlugin(ewc_lambda=1.0), SynapticIntelligencePlugin(si_lambda=1.0), MASPlugin()):
        with pytest.raises(ValueError, match=f"{type(plugin).__name__} cannot work with .*never trains a learned task"):
            make_strategy(name, network, plugins=[plugin])


def test_lr_scheduler_plugin_still_drives_the_baselines():
    network = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
    strategy = make_strategy("naive", network, train_epochs=2, evaluator=None)
    scheduler = torch.optim.lr_scheduler.StepLR(strategy.optimizer, step_size=1, gamma=0.5)
    strategy.plugins.append(LRSchedulerPlugin(scheduler, reset_lr=False, reset_scheduler=False))
    strategy.train(_stream().train_stream[0])
    assert strategy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


@pytest.mark.parametrize("name", OURS)
def test_a_class_incremental_stream_is_refused_before_the_first_experience(name):
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset

    x, y = torch.randn(60, 1, 8, 8), torch.arange(60) % 6
    benchmark = nc_benchmark(dataset(x, y), dataset(x, y), n_experiences=3, task_labels=False, seed=0)
    strategy = make_strategy(name, tiny_conv_net(6), train_epochs=1, evaluator=None)
    with pytest.raises(
        ValueError, match=r"shares task label\(s\) \[0\] with experience\(s\) \[1, 2\].*task_labels=True"
    ):
        strategy.train(benchmark.train_stream[0])
    assert strategy.model.tasks == []


def test_two_tasks_cannot_both_train_the_backbone():
    from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset
    from avalanche.benchmarks.utils import concat_datasets

    tasks = synthetic_tasks([[0, 1], [0, 1]])
    both = concat_datasets([dataset(x, y, task_labels=t) for t, (x, y, _, _) in enumerate(tasks)])
    stream = with_classes_timeline(with_task_labels(benchmark_from_datasets(train=[both])))
    strategy = Piggyback(model=PiggybackModel(tiny_conv_net()), train_backbone_on_first_experience=True, evaluator=None)
    with pytest.raises(ValueError, match=r"experience 0 holds tasks \[0, 1\]. Give the first experience a single task"):
        strategy.train(stream.train_stream[0])
    assert strategy.model.tasks == []


@pytest.mark.parametrize(
    "backbone",
    [MTSimpleMLP(input_size=64), as_multitask(SimpleMLP(input_size=64), "classifier")],
    ids=["MTSimpleMLP", "as_multitask"],
)
@pytest.mark.parametrize("name", ["piggyback", "packnet", "naive"])
def test_avalanche_multi_task_models_are_refused_naming_what_to_pass(backbone, name):
    with pytest.raises(ValueError, match=r"multi-task or dynamic modules.*SimpleMLP\(...\) instead of MTSimpleMLP"):
        make_strategy(name, backbone)


class WithAux(nn.Module):
    """A classifier ``fc`` and an ``aux`` Linear registered after it that
    ``forward`` never calls."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.fc = nn.Linear(16, 4)
        self.aux = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.features(x))


class Untraceable(WithAux):
    def forward(self, x):
        features = self.features(x)
        if features.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(features)
        return self.fc(-features)


def test_the_classifier_is_the_layer_whose_output_is_the_models():
    model = PiggybackModel(WithAux())
    assert model._classifier_name == "fc" and model.heads is model.backbone.fc
    stream = _stream()
    strategy = Piggyback(
        model=model,
        mask_lr=1e-2,
        lr=1e-2,
        train_epochs=5,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True)),
    )
    strategy.train(stream.train_stream[0])
    assert strategy.eval(stream.test_stream[:1])["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.9
    with pytest.raises(ValueError, match=r"cannot be traced with torch.fx.*3 nn.Linear.*Pass classifier="):
        PiggybackModel(Untraceable())
    assert PiggybackModel(Untraceable(), classifier="fc").heads is not None


@pytest.mark.parametrize("name", [*OURS, "naive"])
def test_a_deployed_task_is_a_plain_module_with_the_models_logits(name):
    stream = _stream()
    strategy = make_strategy(name, tiny_conv_net(8), train_epochs=1, evaluator=None)
    for experience in stream.train_stream[:2]:
        strategy.train(experience)
    model = strategy.model.eval()
    x = stacked_inputs(stream.test_stream[1])
    with torch.no_grad():
        expected = model(x, 1)
        deployed = model.export_task(1)
        assert not any(type(m).__module__.startswith("piggyback_avalanche.methods") for m in deployed.modules())
        assert torch.equal(deployed(x), expected)
        assert torch.allclose(torch.jit.trace(deployed, x)(x), expected)
        assert torch.allclose(torch.jit.script(deployed)(x), expected)
        assert torch.allclose(torch.export.export(deployed, (x,)).module()(x), expected)
        with pytest.raises(RuntimeError, match=r"Tracing a .* would bake the traced task.*export_task"):
            torch.jit.trace(lambda inputs: model(inputs, 1), (x,))


def test_a_deployed_task_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    stream = _stream()
    strategy = make_strategy("piggyback", tiny_conv_net(8), train_epochs=1, evaluator=None)
    strategy.train(stream.train_stream[0])
    torch.onnx.export(
        strategy.model.export_task(0).eval(), (stacked_inputs(stream.test_stream[0]),), tmp_path / "t.onnx"
    )
    assert (tmp_path / "t.onnx").stat().st_size > 0


def test_evaluation_keeps_the_cached_weights_when_the_model_stays_where_it_is():
    stream = _stream()
    strategy = Piggyback(model=PiggybackModel(tiny_conv_net(8)), train_epochs=1, evaluator=None)
    strategy.train(stream.train_stream[0])
    strategy.eval(stream.test_stream[:1])
    layer = strategy.model.masked_layers["0"]
    cache = strategy.model.task_state.frozen_weights
    cached = cache.value("0", layer)
    assert cached is not None
    strategy.eval(stream.test_stream[:1])  # moves the model to its device again
    assert cache.value("0", layer) is cached
    strategy.model.double()
    assert cache.value("0", layer) is None


def test_loggers_and_mac_take_the_whole_stream(tmp_path):
    """The loggers themselves are tested in test_strategy.py; here, what the
    whole-stream loop adds: rows for experiences not learned yet, and MAC."""
    stream = _stream()
    evaluator = _evaluator(MAC_metrics(epoch=True), loggers=[CSVLogger(str(tmp_path / "csv"))])
    strategy = Piggyback(model=PiggybackModel(tiny_conv_net(8)), train_epochs=1, eval_every=0, evaluator=evaluator)
    for experience in stream.train_stream:
        strategy.train(experience, eval_streams=[stream.test_stream])
        strategy.eval(stream.test_stream)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "eval_results.csv")))
    assert {row["eval_exp"] for row in rows} == {"0", "1", "2"} and len(rows) >= 9  # every experience, every time


def test_tensorboard_lines_runs_up_by_experiences_trained(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stream = _stream()
    for name in ("piggyback", "packnet"):
        strategy = make_strategy(
            name,
            tiny_conv_net(8),
            train_epochs=1,
            evaluator=default_evaluator(tb_dir=tmp_path / name, interactive=False),
        )
        for experience in stream.train_stream:
            strategy.train(experience)
            strategy.eval(stream.test_stream)
        strategy.evaluator.loggers[0].writer.flush()
        events = EventAccumulator(str(tmp_path / name)).Reload()
        plain = "StreamForgetting/eval_phase/test_stream"
        by_experience = events.Scalars(f"ExperiencesTrained/{plain}")
        assert [e.step for e in by_experience] == [1, 2, 3], name
        assert [e.value for e in by_experience] == [e.value for e in events.Scalars(plain)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mask-lr", "-1"], "--mask-lr must be a positive finite number, got -1.0"),
        (["--prune-ratio", "1.5"], "--prune-ratio: prune_ratio must be in \\[0, 1\\), got 1.5"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--seeds", "0", "0"], "--seeds \\[0, 0\\] repeats a seed"),
        (["--post-prune-epochs", "-1"], "--post-prune-epochs: post_prune_epochs must be an int of at least 0, got -1"),
    ],
)
def test_the_runner_checks_every_value_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "preset, message",
    [
        ({"seeds": 0}, "'seeds' must be a non-empty list of int values, got 0"),
        ({"strategies": "classifier_only"}, "'strategies' must be a non-empty list of str values"),
        ({"pretrained": "no"}, "'pretrained' must be true or false, got \"no\""),
        ({"epochs": [1]}, "'epochs' must be one int value, got \\[1\\]"),
        ({"lr": True}, "'lr' must be one float value, got true"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(preset, message, tmp_path, capsys):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--out", str(tmp_path / "out")])
    assert __import__("re").search(message, capsys.readouterr().err)


def test_every_flag_has_help_and_one_seed_shows_no_spread(tmp_path, capsys):
    from piggyback_avalanche.app.command_line import _parser

    assert all(action.help for action in _parser()._actions)
    main([*QUICK_RUN, "--out", str(tmp_path)])
    table = (tmp_path / "results.md").read_text()
    assert "±" not in table and "| classifier_only |" in table
    row = next(csv.DictReader(open(tmp_path / "results.csv")))
    assert float(row["avg accuracy (%)"]) > 20 and float(row["avg accuracy (%) std"]) == 0.0 and row["seeds"] == "1"


def test_the_entry_points_show_no_third_party_noise():
    # --help of piggyback-bench loads no library (test_runner holds that); listing the strategies does.
    for module, flag in [
        ("piggyback_avalanche.app.command_line", "--list-strategies"),
        ("piggyback_avalanche.app.demo", "--help"),
    ]:
        completed = subprocess.run(
            [sys.executable, "-W", "default", "-m", module, flag], capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0 and "QP solver" not in completed.stderr, completed.stderr
