"""Task inference on class-incremental streams, through Avalanche's loop."""

import math
import re
import warnings

import pytest
import torch
from conftest import resealed, synthetic_tasks, tiny_conv_net
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin

from piggyback_avalanche import PackNet, Piggyback, PiggybackModel
from piggyback_avalanche.app.command_line import main
from piggyback_avalanche.app.report import summarize
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.evaluation.evaluator import default_evaluator
from piggyback_avalanche.evaluation.task_inference_accuracy import (
    TaskInferenceAccuracy,
    task_inference_accuracy_metrics,
)
from piggyback_avalanche.methods.packnet.model import PackNetModel
from piggyback_avalanche.networks.backbones import mlp, small_cnn, small_resnet
from piggyback_avalanche.task_aware import MASKED_LOGIT, MultiHeadModel
from piggyback_avalanche.task_aware.task_files import TaskFileError
from piggyback_avalanche.task_aware.task_inference import TaskInference

CLASSES = [[0, 1], [2, 3], [4, 5]]


def _class_incremental(*, task_labels: bool = False):
    """Three experiences of two classes; each experience's inputs also carry a
    bright band of their own, so that the right task is unmistakable."""
    parts = synthetic_tasks(CLASSES, n_train=60, n_test=30)
    for k, (x_train, _, x_test, _) in enumerate(parts):
        x_train[:, :, 2 * k : 2 * k + 2, :] += 4.0
        x_test[:, :, 2 * k : 2 * k + 2, :] += 4.0
    train = dataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = dataset(torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))
    return nc_benchmark(train, test, n_experiences=3, task_labels=task_labels, fixed_class_order=list(range(6)))


def _evaluator():
    return EvaluationPlugin(accuracy_metrics(experience=True, stream=True), *task_inference_accuracy_metrics())


def _inputs(experience):
    samples = [experience.dataset[i] for i in range(len(experience.dataset))]
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


def _train(strategy, benchmark, **kwargs):
    results = None
    for experience in benchmark.train_stream:
        strategy.train(experience, **kwargs)
        results = strategy.eval(benchmark.test_stream)
    return results


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_separable_tasks_are_inferred_exactly_through_avalanches_loop(per):
    benchmark = _class_incremental()
    model = PiggybackModel(tiny_conv_net(6), feature_statistics=True)
    strategy = Piggyback(
        model=model, task_inference=per, train_epochs=3, eval_every=1, eval_mb_size=16, evaluator=_evaluator()
    )
    results = _train(strategy, benchmark, eval_streams=[benchmark.test_stream])
    assert model.tasks == [0, 1, 2]
    assert results["TaskInference_Acc_Stream/eval_phase/test_stream"] == 1.0
    for k in range(3):
        assert results[f"TaskInference_Acc_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"] == 1.0
    # With every task right, the answer is the task-aware answer, in the global label space.
    model.eval()
    right = 0
    for k, experience in enumerate(benchmark.test_stream):
        x, y = _inputs(experience)
        inferred = TaskInference(per=per)(model, x, width=6)
        assert inferred.tasks.tolist() == [k] * len(y)
        assert inferred.logits.shape == (len(y), 6)
        task_aware = nn.functional.pad(model(x, k), (0, 4 - 2 * k), value=MASKED_LOGIT)
        assert torch.equal(inferred.logits == MASKED_LOGIT, task_aware == MASKED_LOGIT)
        finite = task_aware != MASKED_LOGIT
        assert torch.allclose(inferred.logits[finite], task_aware[finite], atol=1e-5)
        assert set(inferred.logits.argmax(1).tolist()) <= set(CLASSES[k])
        right += int((inferred.logits.argmax(1) == y).sum())
    assert results["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(right / 90)


class _WrongTaskLabels(SupervisedPlugin):
    """Overwrites every evaluation sample's task label with a wrong one."""

    overwritten = 0

    def before_eval_forward(self, strategy, **kwargs):
        strategy.mbatch[-1] = (strategy.mbatch[-1] + 1) % 3
        self.overwritten += len(strategy.mbatch[-1])


def test_task_labels_are_never_read_at_evaluation():
    benchmark = _class_incremental()
    labelled = _class_incremental(task_labels=True)  # the same data, with task labels 0, 1, 2
    strategy = Piggyback(
        model=PiggybackModel(tiny_conv_net(6), feature_statistics=True),
        task_inference="sample",
        train_epochs=2,
        evaluator=_evaluator(),
    )
    without = _train(strategy, benchmark)
    with_labels = strategy.eval(labelled.test_stream)
    wrong = _WrongTaskLabels()
    strategy.plugins.append(wrong)
    with_wrong_labels = strategy.eval(labelled.test_stream)
    assert wrong.overwritten == 90  # every test sample carried a wrong task label
    assert without["TaskInference_Acc_Stream/eval_phase/test_stream"] == 1.0
    for results in (with_labels, with_wrong_labels):
        assert results["TaskInference_Acc_Stream/eval_phase/test_stream"] == 1.0
        for k in range(3):
            assert (
                results[f"Top1_Acc_Exp/eval_phase/test_stream/Task{k:03d}/Exp{k:03d}"]
                == without[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"]
            )


def test_packnet_infers_tasks_with_the_same_code():
    benchmark = _class_incremental()
    strategy = PackNet(
        model=PackNetModel(tiny_conv_net(6), feature_statistics=True),
        task_inference="batch",
        train_epochs=2,
        evaluator=_evaluator(),
    )
    results = _train(strategy, benchmark)
    assert results["TaskInference_Acc_Stream/eval_phase/test_stream"] == 1.0


def test_a_class_incremental_stream_without_inference_is_still_refused_and_inference_off_infers_nothing():
    benchmark = _class_incremental(task_labels=True)
    strategy = Piggyback(
        model=PiggybackModel(tiny_conv_net(6)), train_epochs=1, evaluator=default_evaluator(interactive=False)
    )
    strategy.train(benchmark.train_stream[0])
    results = strategy.eval(benchmark.test_stream[:1])
    assert strategy.mb_inferred_tasks is None
    assert not [name for name in results if name.startswith("TaskInference")]
    with pytest.raises(ValueError, match="shares task label"):
        Piggyback(model=PiggybackModel(tiny_conv_net(6)), train_epochs=1, evaluator=None).train(
            _class_incremental().train_stream[0]
        )


def _frozen_model(model, tasks=4):
    torch.manual_seed(0)
    for task in range(tasks):
        model.add_task(task, classes=list(range(2 * task, 2 * task + 2)) if task % 2 else list(range(10)))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.1)
        if hasattr(model, "prune"):
            model.prune(0.5)
        if hasattr(model, "freeze_task"):
            model.freeze_task(task)
    return model.eval()


@pytest.mark.parametrize("backbone", [small_cnn, small_resnet, lambda: mlp(input_shape=(1, 16, 16))])
@pytest.mark.parametrize("model_type", [PiggybackModel, PackNetModel, MultiHeadModel])
def test_stacked_tasks_give_the_outputs_of_one_pass_per_task(backbone, model_type):
    model = _frozen_model(model_type(backbone()))
    x = torch.randn(5, 1, 16, 16)
    stacked, stacked_features = model.task_outputs(x, [0, 1, 2, 3])
    single, single_features = model.task_outputs(x, [0, 1, 2, 3], stacked=False)
    assert stacked.shape == (5, 4, 10) and stacked_features.shape == single_features.shape
    assert torch.equal(torch.isinf(stacked), torch.isinf(single))
    finite = torch.isfinite(single)
    assert torch.allclose(stacked[finite], single[finite], rtol=1e-4, atol=1e-4)
    assert torch.allclose(stacked_features, single_features, rtol=1e-4, atol=1e-4)


class _Twice(nn.Module):
    def forward(self, x):
        return torch.cat([x, x], dim=1)


def test_a_network_that_cannot_stack_tasks_falls_back_to_one_pass_per_task_with_a_warning():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), _Twice(), nn.ReLU(), nn.Linear(16, 4))
    model = _frozen_model(PiggybackModel(backbone), tasks=2)
    x = torch.randn(6, 1, 4, 4)
    with pytest.warns(UserWarning, match="one pass per task"):
        inferred = TaskInference(per="sample", score="max_logit")(model, x)
    logits = torch.stack([model(x, 0), nn.functional.pad(model(x, 1), (0, 6))], dim=1)
    assert torch.equal(inferred.tasks, logits.amax(-1).argmax(1))


def test_task_inference_accuracy_on_a_hand_made_case():
    metric = TaskInferenceAccuracy()
    assert metric.result() is None
    metric.update(torch.tensor([1, 1, 0, 2]), 1)
    assert metric.result() == 0.5
    metric.update(torch.tensor([3]), 3)
    assert metric.result() == pytest.approx(3 / 5)
    metric.reset()
    assert metric.result() is None


def _backbone_head_input(backbone, x):
    """What the backbone's own classifier reads."""
    captured = []
    hook = backbone[-1].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        backbone.eval()(x)
    hook.remove()
    return captured[0]


def test_feature_statistics_are_the_class_means_and_count_in_the_stored_bytes():
    torch.manual_seed(0)
    backbone = tiny_conv_net(6)
    plain, with_statistics = PiggybackModel(backbone), PiggybackModel(backbone, feature_statistics=True)
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 2
    for model in (plain, with_statistics):
        model.add_task(0, classes=[0, 1])
        with torch.no_grad():  # the task's own features differ from the backbone's
            for name, parameter in model.named_parameters():
                if parameter.requires_grad and "scores" in name:
                    parameter.copy_(torch.randn_like(parameter).sign() * 0.01)
        model.freeze_task(0)
    with_statistics.fit_feature_statistics(0, [(x[:25], y[:25]), (x[25:], y[25:])])
    features = with_statistics.eval().task_outputs(x, [0])[1][:, 0]
    shared = _backbone_head_input(backbone, x)
    assert torch.equal(with_statistics.backbone_features(x), shared)  # the backbone alone, unmasked
    assert not torch.allclose(features, shared, atol=1e-3)
    for statistics, seen in (
        (with_statistics.feature_statistics, features),
        (with_statistics.backbone_feature_statistics, shared),
    ):
        means = statistics.class_means["0"]
        assert torch.allclose(means, torch.stack([seen[y == c].mean(0) for c in (0, 1)]), atol=1e-5)
    f = 16  # the heads' input
    # The task's features: class means, overall mean, two precisions, four calibrations; the
    # backbone's: class means, one precision, two calibrations.
    own, backbone = 4 * (2 * f + f + 2 * f * f + 4), 4 * (2 * f + f * f + 2)
    assert with_statistics.stored_bytes() - plain.stored_bytes() == own + backbone
    with pytest.raises(ValueError, match="relative=True"):
        with_statistics.backbone_feature_statistics.relative_squared_distances(shared[:, None], ["0"])
    # Scores are standardised by the task's own training data: mean 0, spread 1 there.
    scores = {
        name: with_statistics.task_scores()[name].from_task_outputs(None, features[:, None], with_statistics, [0])
        for name in ("mahalanobis", "relative_mahalanobis")
    }
    scores["backbone_mahalanobis"] = with_statistics.task_scores()["backbone_mahalanobis"].from_backbone_features(
        shared, with_statistics, [0]
    )
    for found in scores.values():
        assert found.shape == (40, 1)
        assert abs(found.mean().item()) < 1e-4 and found.std().item() == pytest.approx(1.0, abs=1e-4)


SCORES_SUMMED = ("backbone_mahalanobis", "relative_mahalanobis")


class _CountPasses:
    """Counts passes through a model's backbone, and how many samples each saw."""

    def __init__(self, model):
        self.samples = []
        model.backbone.register_forward_pre_hook(lambda module, args: self.samples.append(len(args[0])))


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_the_backbone_score_costs_one_pass_for_every_task_and_answers_with_the_chosen_tasks_logits(per):
    model = PiggybackModel(tiny_conv_net(6), feature_statistics=True)
    strategy = Piggyback(model=model, task_inference=per, train_epochs=2, evaluator=None)
    benchmark = _class_incremental()
    _train(strategy, benchmark)
    model.eval()
    passes = _CountPasses(model)
    x = torch.cat([_inputs(experience)[0] for experience in benchmark.test_stream])[::7]
    inferred = TaskInference(per=per, score="backbone_mahalanobis")(model, x, width=8)
    chosen = sorted(set(inferred.tasks.tolist()))
    # One pass of every sample through the backbone alone, then each chosen task on its own samples.
    assert passes.samples == [len(x)] + [int((inferred.tasks == t).sum()) for t in chosen]
    if per == "sample":
        assert chosen == [0, 1, 2]
    task_aware = nn.functional.pad(model(x, inferred.tasks), (0, 2), value=MASKED_LOGIT)
    assert torch.equal(inferred.logits, task_aware)  # the same pass: bit for bit
    # Both statistics: the sum of the two standardised scores, from both kinds of pass.
    tasks = model.tasks
    parts = [TaskInference(per=per, score=name).task_scores(model, x, tasks) for name in SCORES_SUMMED]
    both, logits = TaskInference(per=per, score="backbone_and_relative_mahalanobis").task_scores(model, x, tasks)
    assert parts[0][1] is None and parts[1][1] is not None and torch.equal(logits, parts[1][1])
    assert torch.allclose(both, parts[0][0] + parts[1][0])


def test_packnet_keeps_no_backbone_statistics_and_infers_with_its_tasks_features():
    model = PackNetModel(tiny_conv_net(6), feature_statistics=True)
    assert not model.backbone_stays_fixed() and model.backbone_feature_statistics is None
    assert TaskInference(per="sample").score_name(model) == "relative_mahalanobis"
    assert TaskInference(per="sample").score_name(PiggybackModel(tiny_conv_net(6))) == "entropy"
    with pytest.raises(ValueError, match="backbone_mahalanobis also needs a backbone that no task changes"):
        PackNet(model=model, task_inference="sample", task_score="backbone_mahalanobis")


def test_backbone_statistics_are_estimated_once_the_task_that_trains_the_backbone_is_frozen():
    benchmark = _class_incremental()
    model = PiggybackModel(tiny_conv_net(6), feature_statistics=True)
    strategy = Piggyback(
        model=model, task_inference="sample", train_backbone_on_first_experience=True, train_epochs=2, evaluator=None
    )
    x, y = _inputs(benchmark.train_stream[0])
    before = model.eval().backbone_features(x)
    strategy.train(benchmark.train_stream[0])
    after = model.eval().backbone_features(x)
    assert not torch.allclose(before, after, atol=1e-3)  # the first task trained the backbone and its norms
    means = torch.stack([after[y == c].mean(0) for c in (0, 1)])
    assert torch.allclose(model.backbone_feature_statistics.class_means["0"], means, atol=1e-5)
    strategy.train(benchmark.train_stream[1])
    assert torch.equal(model.eval().backbone_features(x), after)  # later tasks leave it as it is


def test_asking_for_task_inference_is_enough_for_the_best_score():
    """The model has learned nothing when the strategy is built, so the
    strategy makes it keep the statistics the best scores read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="No loggers specified")  # Avalanche's own
        strategy = Piggyback(model=PiggybackModel(tiny_conv_net(6)), task_inference="sample", evaluator=None)
    model = strategy.model
    assert model.feature_statistics is not None and model.backbone_feature_statistics is not None
    assert strategy.task_inference.score_name(model) == "backbone_and_relative_mahalanobis"
    assert model.settings()["feature_statistics"] is True  # checkpoints record it
    benchmark = _class_incremental()
    _train(strategy, benchmark)
    assert model.backbone_feature_statistics.tasks() == ["0", "1", "2"] and model.tasks == [0, 1, 2]
    assert not Piggyback(model=PiggybackModel(tiny_conv_net(6)), evaluator=None).model.feature_statistics  # only then
    asked = Piggyback(
        model=PiggybackModel(tiny_conv_net(6)),
        task_inference="sample",
        task_score="backbone_mahalanobis",
        evaluator=None,
    )
    assert asked.model.backbone_feature_statistics is not None  # a statistics score asked by name: the same
    logit = Piggyback(
        model=PiggybackModel(tiny_conv_net(6)), task_inference="sample", task_score="energy", evaluator=None
    )
    assert logit.model.feature_statistics is None  # a logit score reads no statistics


def test_a_model_that_learned_tasks_without_statistics_warns_at_the_users_line():
    model = PiggybackModel(tiny_conv_net(6))
    model.add_task(0, classes=[0, 1])
    model.freeze_task(0)
    with pytest.warns(
        UserWarning, match="learned tasks \\[0\\] without feature statistics.*feature_statistics=True"
    ) as caught:
        Piggyback(model=model, task_inference="sample")
    assert caught[0].filename == __file__  # the user's line, not the library's or Avalanche's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chosen on purpose: no warning
        warnings.filterwarnings("ignore", message="No loggers specified")  # Avalanche's own
        Piggyback(model=model, task_inference="sample", task_score="entropy")


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="per must be one of"):
        TaskInference(per="pixel")
    with pytest.raises(ValueError, match="learned no task yet"):
        TaskInference(per="sample")(PiggybackModel(tiny_conv_net(6)).eval(), torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="task_score='energy' needs task_inference='sample' or 'batch'"):
        Piggyback(model=PiggybackModel(tiny_conv_net(6)), task_score="energy")
    learned = PiggybackModel(tiny_conv_net(6))
    learned.add_task(0, classes=[0, 1])
    learned.freeze_task(0)  # learned without statistics: too late to keep them
    with pytest.raises(ValueError, match=r"feature_statistics=True"):
        Piggyback(model=learned, task_inference=TaskInference(per="sample", score="mahalanobis"))
    benchmark = _class_incremental()
    strategy = Piggyback(
        model=PiggybackModel(tiny_conv_net(6)), task_inference="sample", train_epochs=1, evaluator=None
    )
    strategy.train(benchmark.train_stream[0])
    state = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    with pytest.raises(ValueError, match="Experience 0 was learned already"):
        strategy.train(benchmark.train_stream[0])
    after = strategy.model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def _learned_with_statistics(backbone, benchmark):
    """A Piggyback model with feature statistics that has learned the stream without task labels."""
    strategy = Piggyback(
        model=PiggybackModel(backbone, feature_statistics=True), task_inference="sample", train_epochs=1, evaluator=None
    )
    _train(strategy, benchmark)
    return strategy.model


def test_task_files_carry_the_feature_statistics(tmp_path):
    benchmark = _class_incremental()
    backbone = tiny_conv_net(6)
    model = _learned_with_statistics(backbone, benchmark)
    model.save_tasks(tmp_path / "tasks.pt")
    loaded = PiggybackModel(backbone, feature_statistics=True)
    assert loaded.load_tasks(tmp_path / "tasks.pt") == [0, 1, 2]
    x = torch.cat([_inputs(experience)[0] for experience in benchmark.test_stream])
    expected = TaskInference(per="sample")(model.eval(), x)
    found = TaskInference(per="sample")(loaded.eval(), x)
    assert torch.equal(found.tasks, expected.tasks) and torch.equal(found.logits, expected.logits)
    assert found.tasks.tolist() == [0] * 30 + [1] * 30 + [2] * 30


def test_tasks_saved_without_the_backbones_statistics_load_and_infer_with_their_own(tmp_path):
    benchmark = _class_incremental()
    backbone = tiny_conv_net(6)
    model = _learned_with_statistics(backbone, benchmark).eval()
    x = torch.cat([_inputs(experience)[0] for experience in benchmark.test_stream])
    expected = TaskInference(per="sample", score="relative_mahalanobis")(model, x)
    # What a model of the previous version wrote: no statistics of the backbone's features.
    model.backbone_feature_statistics = None
    model.save_tasks(tmp_path / "earlier.pt")
    loaded = PiggybackModel(backbone, feature_statistics=True)
    assert loaded.load_tasks(tmp_path / "earlier.pt") == [0, 1, 2]
    assert loaded.backbone_feature_statistics.tasks() == []
    inference = TaskInference(per="sample")
    assert inference.score_name(loaded.eval()) == "relative_mahalanobis"  # the backbone's score is not offered
    found = inference(loaded, x)
    assert torch.equal(found.tasks, expected.tasks) and torch.equal(found.logits, expected.logits)


def test_a_task_file_with_part_of_the_backbones_statistics_is_refused_by_name(tmp_path):
    backbone = tiny_conv_net(6)
    _learned_with_statistics(backbone, _class_incremental()).save_task(tmp_path / "one.pt", 1)
    payload = torch.load(tmp_path / "one.pt", weights_only=True)
    payload["tasks"][1].pop("backbone_feature_statistics.precisions.1")
    torch.save(resealed(payload), tmp_path / "damaged.pt")
    fresh = PiggybackModel(backbone, feature_statistics=True)
    with pytest.raises(
        TaskFileError, match=r"missing: \['backbone_feature_statistics.precisions.1'\]; unexpected: \[\]"
    ):
        fresh.load_tasks(tmp_path / "damaged.pt")
    assert fresh.tasks == []


def test_the_runner_runs_a_class_incremental_stream_with_exemplars_counted(tmp_path):
    config = {"train_epochs": 1, "train_mb_size": 64, "pretrain_epochs": 1}
    results = run_benchmark(
        stream="class_incremental_digits",
        backbone="mlp",
        strategies=["piggyback[task_inference=batch]", "naive", "replay"],
        seeds=[0],
        out_dir=tmp_path,
        config={k: v for k, v in config.items() if k != "pretrain_epochs"},
        pretrain_epochs=1,
        scenario="class_incremental",
        log=lambda line: None,
    )
    batch, naive, replay = (results[s]["runs"][0] for s in results)
    assert naive["average_task_inference"] is None and naive["task_inference_accuracy"] is None
    assert naive["networks"] is None  # one head over every class: no network per task to compare with
    # Over seeds, a figure a strategy lacks stays missing (NaN: results saved by earlier versions).
    assert summarize([naive, {**naive, "networks": math.nan}])["networks"] is None
    # Fine-tuning one head forgets; with every batch's task inferred right, nothing is forgotten.
    assert batch["task_inference_accuracy"] == [1.0] * 5
    assert batch["average_forgetting"] == 0.0 < naive["average_forgetting"]
    # The replay buffer's 200 images (1 x 16 x 16 float32), class and task labels (int64), and
    # the float32 sampling weight Avalanche's reservoir keeps per exemplar count in the stored size.
    assert replay["model_bytes"] - naive["model_bytes"] == 200 * (16 * 16 * 4 + 8 + 8 + 4)
    table = (tmp_path / "results.md").read_text().splitlines()
    assert "task inference (%)" in table[0] and "| 100.0 |" in table[2]
    # TensorBoard holds the task-inference accuracy of every evaluation, against experiences trained too.
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("piggyback*/seed0")))).Reload()
    stream = [e.value for e in events.Scalars("TaskInference_Acc_Stream/eval_phase/test_stream")]
    assert stream == pytest.approx([1.0] * 5)
    assert len(events.Scalars("ExperiencesTrained/TaskInference_Acc_Stream/eval_phase/test_stream")) == 5
    assert table[3].startswith("| naive |") and "| – |" in table[3]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stream", "class_incremental_digits"], "has no task labels: run it with --scenario class_incremental"),
        (
            [
                "--stream",
                "class_incremental_digits",
                "--scenario",
                "class_incremental",
                "--strategies",
                "packnet_avalanche",
            ],
            r"\['packnet_avalanche'\] cannot learn without task labels",
        ),
        (
            ["--strategies", "piggyback", "der", "fecam"],
            r"\['der', 'fecam'\] classify only among every class seen, without task labels; run them with "
            "--scenario class_incremental",
        ),
    ],
)
def test_the_runner_refuses_a_scenario_a_stream_or_strategy_cannot_run(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
