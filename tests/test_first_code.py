"""The first code a user writes gets the benchmark's results: task inference
arranges its statistics, the mask learning rate follows the steps an
experience gives, the batch-norm pass reads a bounded sample, the runner
tunes on validation data without reading the test stream, and a
frozen-feature Mahalanobis classifier (FeCAM) is the class-incremental
baseline."""

import json
import math

import pytest
import torch
from conftest import synthetic_tasks, tiny_conv_net
from torch import nn

from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.app import streams
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.app.tuning import tuning_benchmark
from piggyback_avalanche.benchmarks.streams import task_stream, tensor_task_stream
from piggyback_avalanche.methods.piggyback import DEFAULT_MASK_CROSS_WITHIN, mask_learning_rate
from piggyback_avalanche.task_aware.strategy import DEFAULT_NORM_STATISTICS_SAMPLES


class _Rates(SupervisedPlugin):
    """The learning rate of each parameter group, as the optimizer trains."""

    def __init__(self):
        super().__init__()
        self.rates = {}

    def before_training_epoch(self, strategy, **kwargs):
        self.rates.update({group["name"]: group["lr"] for group in strategy.optimizer.param_groups})


def _optimizer_rates(strategy, experience):
    recorder = _Rates()
    strategy.plugins.append(recorder)
    strategy.train(experience)
    return recorder.rates


@pytest.mark.parametrize("samples, epochs, batch", [(48, 2, 16), (240, 3, 32)])
def test_the_default_mask_rate_lets_a_score_cross_the_threshold_within_a_share_of_the_steps(samples, epochs, batch):
    stream = tensor_task_stream(synthetic_tasks([[0, 1]], n_train=samples))
    model = PiggybackModel(tiny_conv_net())
    strategy = Piggyback(model=model, train_epochs=epochs, train_mb_size=batch, evaluator=None)
    steps = math.ceil(samples / batch) * epochs
    expected = (model.mask_scale - model.threshold) / (DEFAULT_MASK_CROSS_WITHIN * steps)
    assert _optimizer_rates(strategy, stream.train_stream[0])["mask_scores"] == pytest.approx(expected)
    assert mask_learning_rate(distance=5e-3, steps=20, cross_within=0.1) == pytest.approx(2.5e-3)
    assert strategy.settings()["learning_rates"]["mask_scores"] == {"cross_within": DEFAULT_MASK_CROSS_WITHIN}
    fixed = Piggyback(model=PiggybackModel(tiny_conv_net()), mask_lr=1e-3, train_epochs=epochs, evaluator=None)
    assert _optimizer_rates(fixed, stream.train_stream[0])["mask_scores"] == 1e-3
    with pytest.raises(ValueError, match="mask_cross_within is a share of an experience's steps, at most 1"):
        Piggyback(model=PiggybackModel(tiny_conv_net()), mask_cross_within=2.0)


def test_the_batch_norm_pass_reads_a_bounded_sample():
    stream = tensor_task_stream(synthetic_tasks([[0, 1]], n_train=96))
    for bound, extra_batches in ((None, 6), (32, 2), (DEFAULT_NORM_STATISTICS_SAMPLES, 6)):
        model = PiggybackModel(tiny_conv_net())
        strategy = Piggyback(
            model=model, train_epochs=1, train_mb_size=16, norm_statistics_samples=bound, evaluator=None
        )
        calls: list = []
        model.register_forward_pre_hook(lambda module, args, calls=calls: calls.append(len(args[0])))
        strategy.train(stream.train_stream[0])
        assert len(calls) == 6 + extra_batches and sum(calls[6:]) == (96 if bound is None else min(bound, 96))
    with pytest.raises(ValueError, match="norm_statistics_samples must be an int of at least 1"):
        Piggyback(model=PiggybackModel(tiny_conv_net()), norm_statistics_samples=0)


class _CountedReads(torch.utils.data.Dataset):
    """A dataset that counts the samples read from it."""

    def __init__(self, x, y):
        self.x, self.y, self.targets, self.reads = x, y, y.tolist(), 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        self.reads += 1
        return self.x[index], int(self.y[index])


def test_tuning_never_reads_the_test_stream_and_records_what_it_chose(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    tasks = synthetic_tasks([[0, 1], [2, 3]], n_train=40, n_test=20)
    tests = [_CountedReads(test_x, test_y) for _, _, test_x, test_y in tasks]
    train = [
        _make_taskaware_classification_dataset(_CountedReads(x, y), task_labels=t)
        for t, (x, y, _, _) in enumerate(tasks)
    ]
    test = [_make_taskaware_classification_dataset(d, task_labels=t) for t, d in enumerate(tests)]
    monkeypatch.setitem(
        streams.STREAMS, "counted", lambda *, seed, data_root, crop_size: (None, task_stream(train, test))
    )
    reads_when_training = []

    def log(line):
        if line.endswith(": training") and not reads_when_training:
            reads_when_training.append(sum(d.reads for d in tests))

    results = run_benchmark(
        stream="counted",
        backbone="mlp",
        strategies=["piggyback", "classifier_only[lr=0.01]"],
        seeds=[0],
        out_dir=tmp_path,
        config={"train_epochs": 1, "train_mb_size": 16},
        tune_trials=2,
        log=log,
    )
    assert reads_when_training == [0]  # every trial ran before the first test sample was read
    assert sum(d.reads for d in tests) > 0  # and the final runs evaluate on the test stream
    tuned = results["piggyback"]["tuning"]
    assert (
        tuned["protocol"] == "validation"
        and tuned["trials"] == 2
        and sorted(tuned["chosen"]) == ["lr", "mask_cross_within"]
    )
    assert 0 <= tuned["validation_accuracy"] <= 1
    assert "tuning" not in results["classifier_only[lr=0.01]"]  # its one setting is fixed by its spec
    saved = json.loads((tmp_path / "runs" / "piggyback" / "seed0.json").read_text())
    assert saved["settings"]["lr"] == tuned["chosen"]["lr"]  # the run used what tuning chose
    report = (tmp_path / "results.md").read_text()
    assert "## Tuned settings" in report and "the test stream never read" in report
    trials = [json.loads(line) for line in (tmp_path / "tuning" / "trials.journal").read_text().splitlines()]
    assert trials  # kept, so an interrupted tuning goes on where it stopped


def test_the_first_tasks_protocol_tunes_on_the_first_experiences_only():
    stream = tensor_task_stream(synthetic_tasks([[0, 1], [2, 3], [4, 5]]))
    validation = streams.validation_benchmark(stream, seed=0)
    first = tuning_benchmark(validation, protocol="first_tasks", first_tasks=2)
    assert len(first.train_stream) == len(first.test_stream) == 2
    assert tuning_benchmark(validation, protocol="validation", first_tasks=2) is validation
    with pytest.raises(ValueError, match="tunes on the first 4 experiences, but the stream has 3"):
        tuning_benchmark(validation, protocol="first_tasks", first_tasks=4)
    with pytest.raises(ValueError, match="Drop one of the two"):
        run_benchmark(
            stream="digits", backbone="mlp", strategies=["naive"], seeds=[0], out_dir=None, config={},
            tune_trials=1, evaluate_on="validation",
        )  # fmt: skip


def test_validation_holds_out_a_fifth_of_each_training_experience_and_keeps_task_labels():
    stream = tensor_task_stream(synthetic_tasks([[0, 1], [2, 3]], n_train=50))
    validation = streams.validation_benchmark(stream, seed=0)
    assert [len(e.dataset) for e in validation.train_stream] == [40, 40]
    assert [len(e.dataset) for e in validation.test_stream] == [10, 10]
    assert [e.task_labels for e in validation.test_stream] == [[0], [1]]
    assert validation.test_stream.name == "valid"


def test_fecam_is_the_frozen_feature_mahalanobis_baseline(tmp_path):
    from piggyback_avalanche import make_strategy

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"fecam classifies among every class seen.*single_head=True"):
        make_strategy("fecam", backbone)
    results = run_benchmark(
        stream="class_incremental_digits",
        backbone="mlp",
        strategies=["fecam"],
        seeds=[0],
        out_dir=tmp_path,
        config={"train_epochs": 1},
        pretrain_epochs=1,
        scenario="class_incremental",
    )
    run = results["fecam"]["runs"][0]
    assert run["epochs"] == 0  # nothing trains: it reads the frozen features' class statistics
    assert run["average_accuracy"] > 0.5  # ten classes: chance is 0.1
