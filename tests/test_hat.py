"""HAT: one network every task trains, each task gating its units by an
annealed, all but binary attention, the units earlier tasks attend to
taking no further gradient, and a regulariser that keeps capacity free."""

import math

import pytest
import torch
from conftest import stacked_inputs
from torch import nn

from avalanche.core import SupervisedPlugin

from piggyback_avalanche import make_strategy
from piggyback_avalanche.methods.hat import HAT, HATModel
from piggyback_avalanche.methods.hat.layers import COSH_BOUND, UNIT_EMBEDDING_BOUND


def _mlp(hidden=32):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 8)
    )


class _Scales(SupervisedPlugin):
    """Records the attention scale of every training iteration, after the
    strategy set it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def before_forward(self, strategy, **kwargs):
        self.seen.append(strategy.model.attention_scale.current)


def test_the_scale_anneals_over_every_epoch_and_evaluation_uses_its_maximum(three_task_stream):
    scales = _Scales()
    strategy = make_strategy("hat", _mlp(), train_mb_size=16, train_epochs=2, evaluator=None, plugins=[scales])
    strategy.train(three_task_stream.train_stream[0])  # 48 samples: 3 batches an epoch
    expected = [1 / 400 + (400 - 1 / 400) * i / 2 for i in range(3)]
    assert scales.seen == pytest.approx(expected * 2)
    assert strategy.model.attention_scale.current == 400


def test_units_earlier_tasks_attend_to_take_no_gradient_and_their_tasks_keep_their_predictions(three_task_stream):
    torch.manual_seed(0)
    model = HATModel(_mlp())
    strategy = HAT(model=model, train_mb_size=16, train_epochs=3, evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    layer = model.attention_layers["1"]
    protected = layer.protection() == 1
    free = layer.protection() < 1e-6
    assert protected.any() and free.any()
    before = layer.weight.detach().clone()
    model.eval()
    x = stacked_inputs(three_task_stream.test_stream[0])
    with torch.no_grad():
        logits = model(x, 0)
    for experience in three_task_stream.train_stream[1:]:
        strategy.train(experience)
    assert torch.equal(layer.weight[protected], before[protected])
    assert not torch.equal(layer.weight[free], before[free])
    model.eval()
    with torch.no_grad():
        now = model(x, 0)
    assert torch.allclose(now, logits, atol=1e-4) and torch.equal(now.argmax(1), logits.argmax(1))
    # A frozen task keeps one float per unit: its attention at s_max; the
    # protection is the largest of the tasks'.
    assert layer.task_tensor_bytes() == 3 * layer.weight.shape[0] * 4
    attentions = [layer.attention(str(t)) for t in range(3)]
    assert torch.equal(layer.protection(), torch.stack(attentions).amax(0))
    layers = list(model.attention_layers.values())
    blocked = sum(float(layer.protection().sum()) * layer.weight[0].numel() for layer in layers)
    assert model.capacity_used() == pytest.approx(blocked / sum(layer.weight.numel() for layer in layers))
    assert 0 < model.capacity_used() <= 1


def test_the_capacity_regulariser_is_hats():
    torch.manual_seed(0)
    model = HATModel(_mlp(hidden=4))
    model.add_task(0, classes=[0, 1])
    model.train()
    model.attention_scale.current = 2.0
    layers = list(model.attention_layers.values())
    attentions = [torch.sigmoid(2.0 * layer.embeddings["0"]) for layer in layers]
    # First task: the mean attention over every unit.
    assert model.capacity_regulariser().item() == pytest.approx(torch.cat(attentions).mean().item())
    model.freeze_task(0)
    model.add_task(1, classes=[0, 1])
    new = [torch.sigmoid(2.0 * layer.embeddings["1"]) for layer in layers]
    free = [1 - layer.protection() for layer in layers]
    expected = sum((a * f).sum() for a, f in zip(new, free)) / sum(f.sum() for f in free)
    assert model.capacity_regulariser().item() == pytest.approx(expected.item())


def test_embedding_gradients_are_compensated_and_embeddings_clamped():
    model = HATModel(_mlp(hidden=4))
    model.add_task(0, classes=[0, 1])
    layer = model.attention_layers["1"]
    embedding = layer.embeddings["0"]
    with torch.no_grad():
        embedding.copy_(torch.tensor([-1.0, 0.0, 0.5, 7.0]))
    embedding.grad = torch.ones(4)
    model.attention_scale.current = 10.0
    layer.gate_gradients()
    s = torch.tensor([-10.0, 0.0, 5.0, 70.0]).clamp(-COSH_BOUND, COSH_BOUND)
    expected = 400 / 10 * (torch.cosh(s) + 1) / (torch.cosh(embedding.detach()) + 1)
    assert torch.allclose(embedding.grad, expected)
    layer.clamp_embeddings()
    assert embedding.detach().tolist() == [-1.0, 0.0, 0.5, UNIT_EMBEDDING_BOUND]


def test_hat_trains_with_plain_sgd_unless_told_otherwise(three_task_stream):
    strategy = make_strategy("hat", _mlp(), train_mb_size=16, train_epochs=1, evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    assert type(strategy.optimizer) is torch.optim.SGD and strategy.optimizer.defaults["momentum"] == 0
    assert {group["lr"] for group in strategy.optimizer.param_groups} == {0.05}
    adam = make_strategy("hat", _mlp(), optimizer=torch.optim.Adam, train_epochs=1, evaluator=None)
    adam.train(three_task_stream.train_stream[0])
    assert type(adam.optimizer) is torch.optim.Adam
    assert not strategy.forgets_nothing and make_strategy("wsn", _mlp()).forgets_nothing


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_scale": 0}, r"max_scale"),
        ({"capacity_weight": -1.0}, r"capacity_weight must be at least 0, got -1.0"),
        ({"clip_gradient": 0}, r"clip_gradient"),
    ],
)
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        make_strategy("hat", _mlp(), **settings)


def test_a_checkpointed_hat_model_loads_into_a_fresh_one(three_task_stream):
    strategy = make_strategy("hat", _mlp(), train_mb_size=16, train_epochs=1, evaluator=None)
    for experience in three_task_stream.train_stream[:2]:
        strategy.train(experience)
    model = strategy.model.eval()
    fresh = HATModel(_mlp()).eval()
    fresh.load_state_dict(model.state_dict())
    x = stacked_inputs(three_task_stream.test_stream[1])
    with torch.no_grad():
        assert torch.equal(fresh(x, 1), model(x, 1))
    assert torch.equal(fresh.attention_layers["3"].protection(), model.attention_layers["3"].protection())
    assert not math.isnan(fresh.capacity_used())
