"""Every bad input of the docs' table (docs/guide/troubleshooting.md)
that is not tested next to its feature: each error names the problem and the
fix, and nothing trained or saved is lost."""

import pytest
import torch
from conftest import stacked_inputs, synthetic_tasks, tiny_conv_net

from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.task_aware.strategy import NonFiniteLossError, TaskOutOfMemoryError
from piggyback_avalanche.training.checkpoints import (
    CheckpointError,
    load_experience_checkpoint,
    save_experience_checkpoint,
)


def _strategy(**kwargs):
    torch.manual_seed(0)
    settings = dict(train_epochs=1, train_mb_size=16, evaluator=default_evaluator(interactive=False))
    return Piggyback(model=PiggybackModel(tiny_conv_net()), **{**settings, **kwargs})


@pytest.mark.parametrize(
    "label, message",
    [
        (torch.tensor(1.5), "A task label must be one integer"),
        ("first", "non-negative int, got 'first'"),
        (torch.tensor([0, 1]), "A task label must be one integer"),
    ],
)
def test_non_integer_task_labels(three_task_stream, label, message):
    strategy = _strategy()
    strategy.train(three_task_stream.train_stream[0])
    x = stacked_inputs(three_task_stream.test_stream[0])[:2]
    with pytest.raises(ValueError, match=message):
        strategy.model.forward_single_task(x, label)


def test_an_empty_experience_is_refused_before_anything_changes(three_task_stream):
    import copy

    # An experience whose data a filter emptied, with the attributes it had.
    experience = copy.copy(three_task_stream.train_stream[1])
    experience._dataset = experience.dataset.subset([])
    strategy = _strategy()
    with pytest.raises(ValueError, match=r"Experience 1 \(task\(s\) \[1\]\) holds no samples.*Drop it"):
        strategy.train(experience)
    assert strategy.model.tasks == []
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)) * 2
    with pytest.raises(ValueError, match="Task 0 has 0 training and 0 test samples"):
        tensor_task_stream([empty])


def test_labels_outside_the_declared_classes_are_refused_before_training():
    benchmark = tensor_task_stream(synthetic_tasks([[0, 1, 2]]))
    experience = benchmark.train_stream[0]
    experience.classes_in_this_experience = [0, 1]  # a stream that under-declares its classes
    strategy = _strategy()
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    with pytest.raises(ValueError, match="task 0 has samples labelled \\[2\\], but its head has classes \\[0, 1\\]"):
        strategy.train(experience)
    # Not a single step, and the failed experience leaves the model as it was: no task added.
    after = strategy.model.state_dict()
    assert strategy.model.tasks == [] and after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_input_on_another_device_names_both_devices(three_task_stream):
    strategy = _strategy()
    strategy.train(three_task_stream.train_stream[0])
    x = torch.zeros(2, 1, 8, 8, device="meta")
    with pytest.raises(ValueError, match=r"input is on meta but the model is on cpu.*x.to\('cpu'\)"):
        strategy.model(x, 0)


def _with_nan_inputs(tasks):
    train_x, train_y, test_x, test_y = tasks[1]
    train_x = train_x.clone()
    train_x[:, 0, 0, 0] = float("nan")  # in every batch
    return [tasks[0], (train_x, train_y, test_x, test_y)]


def test_a_non_finite_loss_stops_with_where_and_keeps_the_checkpoint(tmp_path):
    benchmark = tensor_task_stream(_with_nan_inputs(synthetic_tasks([[0, 1], [0, 1, 2]])))
    strategy = _strategy()
    strategy.train(benchmark.train_stream[0])
    path = tmp_path / "run.ckpt"
    save_experience_checkpoint(strategy, path, next_experience=1)
    saved = path.read_bytes()
    x = stacked_inputs(benchmark.test_stream[0])
    with torch.no_grad():
        before = strategy.model.eval()(x, 0)
    with pytest.raises(
        NonFiniteLossError,
        match=r"The loss is nan at experience 1 \(tasks \[1\]\), epoch 0, "
        r"iteration 0 of the epoch.*last checkpoint is intact",
    ):
        strategy.train(benchmark.train_stream[1])
    assert path.read_bytes() == saved
    with torch.no_grad():
        assert torch.equal(strategy.model.eval()(x, 0), before)


class _AllocateTooMuch(SupervisedPlugin):
    def before_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == 1:
            torch.empty(2**50, dtype=torch.uint8)  # a real allocation failure: 1 PiB


def test_out_of_memory_suggests_a_smaller_batch_and_the_run_resumes(three_task_stream, tmp_path):
    train = three_task_stream.train_stream
    strategy = _strategy(plugins=[_AllocateTooMuch()])
    strategy.train(train[0])
    save_experience_checkpoint(strategy, tmp_path / "run.ckpt", next_experience=1)
    with pytest.raises(
        TaskOutOfMemoryError,
        match=r"experience 1 with train_mb_size=16.*Lower train_mb_size.*accept_changed_settings=\{'train_mb_size'\}",
    ):
        strategy.train(train[1])
    resumed = _strategy(train_mb_size=8)
    with pytest.raises(CheckpointError, match="other strategy settings \\(train_mb_size: checkpoint 16, now 8\\)"):
        load_experience_checkpoint(resumed, tmp_path / "run.ckpt")
    # As the message says: resume with the smaller batch, accepting that change.
    assert load_experience_checkpoint(resumed, tmp_path / "run.ckpt", accept_changed_settings={"train_mb_size"}) == 1
    resumed.train(train[1])
    assert resumed.model.frozen_tasks == [0, 1]


def test_the_same_seed_gives_identical_metrics_and_weights_on_cpu(three_task_stream):
    def run():
        strategy = _strategy()
        for i, experience in enumerate(three_task_stream.train_stream):
            strategy.train(experience)
            metrics = strategy.eval(three_task_stream.test_stream[: i + 1])
        return strategy.model.state_dict(), {
            k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith("Time")
        }

    (state_a, metrics_a), (state_b, metrics_b) = run(), run()
    assert metrics_a == metrics_b and len(metrics_a) > 15
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
