"""Faults that must not hurt: a failed experience leaves the model as it
was, its retry equals a clean run, a refused operation changes nothing, and
writes that bypass PyTorch's version counters are caught."""

import copy

import pytest
import torch
from conftest import same_state, stacked_inputs, state_copy, tiny_conv_net

from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche import make_strategy
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.methods.packnet import MAX_PACKNET_TASKS, PackNetModel
from piggyback_avalanche.task_aware.strategy import NonFiniteLossError
from piggyback_avalanche.training.checkpoints import load_experience_checkpoint, save_experience_checkpoint

OURS = ["piggyback", "packnet", "individual", "classifier_only"]


class PoisonOnce(SupervisedPlugin):
    """Turns one training batch of one experience into NaN, once."""

    def __init__(self, experience, iteration):
        super().__init__()
        self.experience, self.iteration, self.armed = experience, iteration, True

    def before_forward(self, strategy, **kwargs):
        at = (strategy.experience.current_experience, strategy.clock.train_exp_iterations)
        if self.armed and at == (self.experience, self.iteration):
            self.armed = False
            strategy.mbatch[0] = strategy.mbatch[0] * float("nan")


def _strategy(name, *plugins, evaluator=None):
    torch.manual_seed(0)
    return make_strategy(
        name, tiny_conv_net(8), train_epochs=2, train_mb_size=16, plugins=list(plugins), evaluator=evaluator
    )


def _logits(strategy, stream, tasks):
    model = strategy.model.eval()
    with torch.no_grad():
        return [model(stacked_inputs(stream.test_stream[t]), t) for t in tasks]


@pytest.mark.parametrize("name", OURS)
def test_a_failed_experience_leaves_the_model_as_it_was_and_its_retry_equals_a_clean_run(three_task_stream, name):
    clean = _strategy(name)
    for experience in three_task_stream.train_stream[:2]:
        clean.train(experience)
    expected = _logits(clean, three_task_stream, [0, 1])

    faulty = _strategy(name, PoisonOnce(experience=1, iteration=2))
    faulty.train(three_task_stream.train_stream[0])
    model, before = faulty.model, state_copy(faulty.model)
    with pytest.raises(NonFiniteLossError):
        faulty.train(three_task_stream.train_stream[1])
    assert faulty.model is model and model.tasks == [0] and model.learning_tasks == [] and same_state(model, before)
    faulty.train(three_task_stream.train_stream[1])  # the retry the message suggests
    retried = _logits(faulty, three_task_stream, [0, 1])
    assert all(torch.equal(a, b) for a, b in zip(retried, expected))
    assert not any(torch.isnan(t).any() for t in faulty.model.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("name", ["piggyback", "packnet"])
def test_the_recovery_the_error_message_describes_works_on_the_same_strategy(three_task_stream, tmp_path, name):
    clean = _strategy(name, evaluator=default_evaluator(interactive=False))
    for experience in three_task_stream.train_stream[:2]:
        clean.train(experience)
    expected = _logits(clean, three_task_stream, [0, 1])

    strategy = _strategy(name, PoisonOnce(experience=1, iteration=1), evaluator=default_evaluator(interactive=False))
    strategy.train(three_task_stream.train_stream[0])
    save_experience_checkpoint(strategy, tmp_path / "run.ckpt", next_experience=1)
    with pytest.raises(NonFiniteLossError, match=r"the last checkpoint is intact.*resume from the checkpoint"):
        strategy.train(three_task_stream.train_stream[1])
    assert load_experience_checkpoint(strategy, tmp_path / "run.ckpt") == 1  # on the same strategy
    strategy.train(three_task_stream.train_stream[1])
    assert all(torch.equal(a, b) for a, b in zip(_logits(strategy, three_task_stream, [0, 1]), expected))


def test_packnet_past_its_task_limit_changes_nothing():
    model = PackNetModel(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    for task in range(MAX_PACKNET_TASKS):
        model.add_task(task, classes=[0, 1])
        model.freeze_task(task)
    state = state_copy(model)
    for _ in range(2):
        with pytest.raises(ValueError, match="at most 255 tasks"):
            model.add_task(MAX_PACKNET_TASKS, classes=[0, 1])
    assert model.tasks == list(range(MAX_PACKNET_TASKS)) and model.learning_tasks == [] and same_state(model, state)
    copy.deepcopy(model).load_state_dict(model.state_dict())  # still saves and loads


def test_a_write_through_data_is_refused_at_the_next_evaluation(three_task_stream):
    strategy = _strategy("piggyback", evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    strategy.eval(three_task_stream.test_stream[:1])
    strategy.model.masked_layers["0"].weight.data.add_(1.0)  # bypasses the version counter
    with pytest.raises(
        RuntimeError, match=r"shared weights .* changed after its tasks \[0\] were frozen.*no supported way"
    ):
        strategy.eval(three_task_stream.test_stream[:1])
    with pytest.raises(RuntimeError, match="no supported way"):
        strategy.model.export_task(0)


def test_replacing_a_weights_storage_drops_its_cached_weights(three_task_stream):
    strategy = _strategy("piggyback", evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    model = strategy.model.eval()
    x = stacked_inputs(three_task_stream.test_stream[0])
    with torch.no_grad():
        before = model(x, 0)
        layers = list(model.masked_layers.values())
        vector = torch.nn.utils.parameters_to_vector([layer.weight for layer in layers])
        torch.nn.utils.vector_to_parameters(torch.zeros_like(vector), [layer.weight for layer in layers])
        after = model(x, 0)  # not the stale cached weights
    assert not torch.equal(before, after) and torch.allclose(after, after[:1].expand_as(after))
    with pytest.raises(RuntimeError, match="no supported way"):
        strategy.eval(three_task_stream.test_stream[:1])


def test_loading_a_state_dict_while_a_task_learns_keeps_it_learning(three_task_stream):
    strategy = _strategy("piggyback")
    model = strategy.model
    model.add_task(0, classes=[0, 1])
    model.load_state_dict(copy.deepcopy(model.state_dict()))  # as EarlyStoppingPlugin does mid-experience
    assert model.learning_tasks == [0]
    model.freeze_task(0)
    assert model.frozen_tasks == [0] and "0" not in model.masked_layers["0"].scores
