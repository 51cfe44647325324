"""WSN: each task selects a subnetwork of one network's weights by learned
scores, trains the selected weights no earlier task uses and reuses the
others frozen, forgetting nothing."""

import math

import pytest
import torch
from conftest import state_copy, synthetic_tasks, tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.methods.wsn import WSN, WSNModel
from piggyback_avalanche.task_aware.frozen_masks import kept_count
from piggyback_avalanche.task_aware.task_state import task_key


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_wsn_trains_weights_and_forgets_nothing(three_task_stream):
    backbone = tiny_conv_net()
    original = state_copy(backbone)
    model = WSNModel(backbone)
    strategy = WSN(model=model, train_mb_size=16, train_epochs=2, evaluator=None)
    used_before = {}
    weights_before = {}

    def after_each(task):
        for name, layer in model.subnetwork_layers.items():
            used = layer.used()
            if name in used_before:
                # Weights an earlier task selected never change again.
                old = used_before[name]
                assert torch.equal(layer.weight[old], weights_before[name][old])
                assert bool((used & old).eq(old).all())
            used_before[name] = used.clone()
            weights_before[name] = layer.weight.detach().clone()

    train_checking_earlier_tasks(strategy, three_task_stream, after_each=after_each)
    assert all(torch.equal(v, original[k]) for k, v in backbone.state_dict().items())  # the user's backbone
    layer = model.subnetwork_layers["0"]
    # The weights trained: every task's new weights moved from the backbone's.
    assert not torch.equal(layer.weight, original["0.weight"])
    for task in model.tasks:
        assert int(layer.mask(task_key(task)).sum()) == kept_count(layer.weight.numel(), 0.5)
    # One bit per weight per task, and one for what all tasks use (a record of the tasks).
    assert layer.task_tensor_bytes() == 3 * math.ceil(layer.weight.numel() / 8)
    assert layer.task_record_keys() == ["packed_used"]
    layers = list(model.subnetwork_layers.values())
    selected = sum(int(layer.used().sum()) for layer in layers)
    assert model.capacity_used() == pytest.approx(selected / sum(layer.weight.numel() for layer in layers))
    assert 0.5 <= model.capacity_used() < 1


def test_a_task_reuses_what_the_last_one_selected():
    stream = tensor_task_stream(synthetic_tasks([[0, 1, 2, 3]] * 2))
    model = WSNModel(_mlp(), density=0.3)
    strategy = WSN(model=model, train_mb_size=16, train_epochs=1, evaluator=None)
    for experience in stream.train_stream:
        strategy.train(experience)
    layer = model.subnetwork_layers["1"]
    first, second = (layer.mask(task_key(t)).bool() for t in (0, 1))
    # The second task's scores start from the first's: twice the overlap of chance (30 %) and more.
    assert (first & second).sum() / second.sum() > 0.6
    assert torch.equal(layer.used(), first | second)


def test_a_checkpointed_model_loads_into_a_fresh_one_and_computes_the_same(three_task_stream):
    strategy = make_strategy("wsn", _mlp(), train_mb_size=16, train_epochs=1, evaluator=None)
    model = strategy.model
    for experience in three_task_stream.train_stream[:2]:
        strategy.train(experience)
    fresh = WSNModel(_mlp())
    fresh.load_state_dict(model.state_dict())
    x = torch.stack([three_task_stream.test_stream[1].dataset[i][0] for i in range(8)])
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, 1), model(x, 1)) and torch.equal(fresh(x, 0), model(x, 0))
    assert torch.equal(fresh.subnetwork_layers["1"].used(), model.subnetwork_layers["1"].used())
    # The third task starts from the second's scores, as it would have.
    assert torch.equal(fresh.subnetwork_layers["1"].score_template, model.subnetwork_layers["1"].score_template)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"density": 0.0}, r"density is the share of weights a mask keeps, in \(0, 1\]; got 0.0"),
        ({"density": True}, r"got True"),
        ({"score_lr": 0}, r"score_lr"),
    ],
)
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        make_strategy("wsn", _mlp(), **settings)
