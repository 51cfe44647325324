import pytest
import torch
from conftest import synthetic_tasks, tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate

from piggyback_avalanche import available_strategies, make_strategy, register_strategy
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.training.registry import registered_strategy

CLASS_INCREMENTAL_ONLY = [name for name in available_strategies() if not registered_strategy(name).task_incremental]
TRANSFORMERS_ONLY = ["prompt"]  # tested on vision transformers in test_parameter_efficient
ALL = [name for name in available_strategies() if name not in CLASS_INCREMENTAL_ONLY + TRANSFORMERS_ONLY]
"""Every registered strategy that learns task-incrementally on any backbone."""
TASK_AWARE = [name for name in ALL if registered_strategy(name).config is not None]
"""The registered task-aware methods: none of them ever changes a frozen task."""


def _mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


def test_the_built_in_strategies_are_registered():
    # The registry is the list every other test here draws from; this says what it must hold at least.
    assert set(TASK_AWARE) >= {"piggyback", "piggyback_ternary", "packnet", "individual", "classifier_only", "lora"}
    assert set(ALL) - set(TASK_AWARE) >= {"naive", "ewc", "lwf", "replay", "joint", "packnet_avalanche"}


@pytest.mark.parametrize("name", [n for n in ALL + CLASS_INCREMENTAL_ONLY if n != "packnet_avalanche"])
def test_every_strategy_with_class_incremental_settings_learns_without_task_labels(name):
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset

    parts = synthetic_tasks([[0, 1], [2, 3]], shape=(16,), n_train=96, seed=2)
    train = dataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = dataset(torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))
    stream = nc_benchmark(train, test, n_experiences=2, task_labels=False, fixed_class_order=[0, 1, 2, 3])
    registered = registered_strategy(name)
    backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    strategy = make_strategy(
        name,
        backbone,
        train_epochs=5,
        train_mb_size=16,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True)),
        **registered.class_incremental_settings,
    )
    if registered.trains_on_whole_stream:
        strategy.train(stream.train_stream)
    else:
        for experience in stream.train_stream:
            strategy.train(experience)
    metrics = strategy.eval(stream.test_stream)
    last = metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001"]
    # Four classes over the stream, no task label at test time: chance is 1/4.
    assert last > 0.4, last


def test_packnet_avalanche_cannot_run_without_task_labels_and_der_only_can():
    assert registered_strategy("packnet_avalanche").class_incremental_settings is None
    assert CLASS_INCREMENTAL_ONLY == ["der", "fecam"]  # what the registry says of them, not a list kept here
    with pytest.raises(ValueError, match=r"der calls the model without task labels.*single_head=True"):
        make_strategy("der", _mlp())


@pytest.mark.parametrize("name", ALL)
def test_every_strategy_trains_two_experiences_and_evaluates(name):
    stream = tensor_task_stream(synthetic_tasks([[0, 1, 2], [0, 1, 2]], shape=(16,), seed=2))
    ended = []

    class Recorder(SupervisedPlugin):
        def after_training_exp(self, strategy, **kwargs):
            ended.append(strategy.experience.current_experience)

    backbone = _mlp()
    before = [p.clone() for p in backbone.parameters()]
    strategy = make_strategy(
        name,
        backbone,
        train_epochs=5,
        train_mb_size=16,
        plugins=[Recorder()],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True)),
    )
    assert isinstance(strategy, SupervisedTemplate)
    if name == "joint":  # joint training sees the whole stream at once
        strategy.train(stream.train_stream[:2])
        assert len(ended) == 1
    else:
        for experience in stream.train_stream[:2]:
            strategy.train(experience)
        assert ended == [0, 1]
    metrics = strategy.eval(stream.test_stream[:2])
    first = metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"]
    second = metrics["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"]
    # 3 classes: chance is 1/3 (8 of 24 test samples); every strategy learns both tasks above it.
    assert first > 0.5 and second > 0.4, (first, second)
    # The caller's backbone is copied, never trained.
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))


@pytest.mark.parametrize("name", TASK_AWARE)
def test_parameter_isolation_strategies_forget_nothing(three_task_stream, name):
    strategy = make_strategy(name, tiny_conv_net(), train_epochs=2, train_mb_size=16, evaluator=None)
    assert len(train_checking_earlier_tasks(strategy, three_task_stream)) == 3


def test_classifier_only_trains_heads_only(three_task_stream):
    strategy = make_strategy("classifier_only", tiny_conv_net(), train_epochs=2, evaluator=None)
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    strategy.train(three_task_stream.train_stream[0])
    after = strategy.model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    assert changed and all(".heads.0." in k for k in changed), changed


def test_individual_networks_store_one_network_per_task(three_task_stream):
    strategy = make_strategy("individual", tiny_conv_net(), train_epochs=1, evaluator=None)
    for experience in three_task_stream.train_stream:
        strategy.train(experience)
    layer = strategy.model.task_layers["0"]
    assert sorted(layer.frozen_weights.keys()) == ["0", "1", "2"]
    assert not torch.equal(layer.frozen_weights["0"], layer.frozen_weights["1"])


def test_model_and_strategy_settings_are_routed():
    strategy = make_strategy("piggyback_ternary", _mlp(), mask_lr=2e-3, threshold=1e-3)
    assert strategy.model.threshold_fn == "ternarizer" and strategy.model.threshold == 1e-3
    assert strategy.mask_lr == 2e-3 and strategy.train_epochs == 5
    from avalanche.training.plugins import EWCPlugin

    ewc = make_strategy("ewc", _mlp(), ewc_lambda=3.0)
    assert [p.ewc_lambda for p in ewc.plugins if isinstance(p, EWCPlugin)] == [3.0]


def test_unknown_names_and_duplicates_are_refused():
    with pytest.raises(ValueError, match=r"Unknown strategy 'pigyback'. Available: agem, .*piggyback"):
        make_strategy("pigyback", _mlp())
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("naive")(lambda backbone, **config: None)
    with pytest.raises(ValueError, match=r"packnet_avalanche cannot take.*BatchNorm2d.*Use 'packnet'"):
        make_strategy("packnet_avalanche", tiny_conv_net())


def test_users_can_register_their_own():
    @register_strategy("test_naive_sgd")
    def build(backbone, **config):
        return make_strategy("naive", backbone, optimizer_factory=torch.optim.SGD, **config)

    try:
        assert "test_naive_sgd" in available_strategies()
        strategy = make_strategy("test_naive_sgd", _mlp(), evaluator=None)
        assert isinstance(strategy.optimizer, torch.optim.SGD)
    finally:
        from piggyback_avalanche.training import registry

        del registry.REGISTERED_STRATEGIES["test_naive_sgd"]


def _stream(api):
    """Two tasks from one set of tensors, built with each Avalanche API."""
    from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
    from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark
    from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark, with_task_labels
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset

    tasks = synthetic_tasks([[0, 1, 2], [0, 1, 2]], shape=(16,), seed=4)
    if api == "legacy":  # classes_in_this_experience is a list
        return tensors_benchmark(
            train_tensors=[t[:2] for t in tasks], test_tensors=[t[2:] for t in tasks], task_labels=[0, 1]
        )
    if api == "new, classes as a set":
        train = [dataset(x, y, task_labels=i) for i, (x, y, _, _) in enumerate(tasks)]
        test = [dataset(x, y, task_labels=i) for i, (_, _, x, y) in enumerate(tasks)]
        return with_classes_timeline(with_task_labels(benchmark_from_datasets(train=train, test=test)))
    # task_incremental_benchmark drops classes_in_this_experience
    train = [dataset(x, y) for x, y, _, _ in tasks]
    test = [dataset(x, y) for _, _, x, y in tasks]
    plain = benchmark_from_datasets(train=train, test=test)
    return task_incremental_benchmark(plain, reset_task_labels=True)


@pytest.mark.parametrize("api", ["legacy", "new, classes as a set", "task_incremental_benchmark"])
@pytest.mark.parametrize("name", ["naive", "lwf", "piggyback", "packnet"])
def test_streams_from_every_benchmark_api(api, name):
    stream = _stream(api)
    experience = stream.train_stream[1]
    assert experience.task_labels == [1]
    if api == "new, classes as a set":
        assert isinstance(experience.classes_in_this_experience, set)
    if api == "task_incremental_benchmark":
        assert not hasattr(experience, "classes_in_this_experience")
    strategy = make_strategy(name, _mlp(), train_epochs=3, train_mb_size=16, evaluator=None)
    for experience in stream.train_stream:
        strategy.train(experience)
    strategy.eval(stream.test_stream)
    assert strategy.model.tasks == [0, 1]
    assert [strategy.model.heads.heads[t].classes for t in ("0", "1")] == [[0, 1, 2], [0, 1, 2]]


def test_baselines_may_revisit_a_task_but_not_grow_its_head():
    from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset

    tasks = synthetic_tasks([[0, 1], [0, 1, 2], [0, 1], [0, 5]], shape=(16,), seed=6)
    labels = [0, 1, 0, 0]  # task 0 comes back, the last time with a new class
    train = [dataset(x, y, task_labels=t) for (x, y, _, _), t in zip(tasks, labels)]
    stream = with_classes_timeline(with_task_labels(benchmark_from_datasets(train=train)))
    strategy = make_strategy("naive", _mlp(), train_epochs=1, evaluator=None)
    for experience in stream.train_stream[:3]:
        strategy.train(experience)
    assert strategy.model.tasks == [0, 1]
    with pytest.raises(ValueError, match=r"Task 0 comes back with classes \[5\].*it has \[0, 1\]"):
        strategy.train(stream.train_stream[3])


def test_the_declared_strategy_settings_are_what_the_constructors_take():
    from piggyback_avalanche.task_aware.strategy import TASK_AWARE_STRATEGY_SETTINGS, TaskAwareStrategy
    from piggyback_avalanche.training import registry

    # Declared once (what a registered method passes through); the constructors must agree.
    assert registry._constructor_settings(TaskAwareStrategy) == TASK_AWARE_STRATEGY_SETTINGS


def test_the_api_page_lists_every_registered_strategy():
    import ast
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "api.md").read_text()
    comment = re.search(r"available_strategies\(\)\n((?:# .*\n)+)", readme).group(1)
    listed = ast.literal_eval("".join(line[2:] for line in comment.splitlines()))
    assert listed == available_strategies()
