"""SupSup: a random network that never trains, one top-k supermask per
task, and task inference from the superposition of every task's mask."""

import math

import pytest
import torch
from conftest import state_copy, synthetic_tasks, tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from avalanche.training.plugins import EvaluationPlugin

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.offline import permuted_mnist_stream
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.methods.supsup import SupSup, SupSupModel
from piggyback_avalanche.task_aware.frozen_masks import kept_count, top_k_mask, unpack_mask
from piggyback_avalanche.task_aware.task_files import TaskFileError
from piggyback_avalanche.task_aware.task_scores import one_shot_score
from piggyback_avalanche.task_aware.task_state import task_key


def _mlp(hidden=12, inputs=64, classes=4):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def _trained(backbone, stream, **settings):
    model = SupSupModel(backbone, weight_seed=3, **settings.pop("model", {}))
    strategy = SupSup(model=model, train_mb_size=16, train_epochs=2, evaluator=None, **settings)
    recorded = train_checking_earlier_tasks(strategy, stream)
    return strategy, model.eval(), recorded


def test_top_k_keeps_the_share_it_is_given_and_passes_the_gradient_straight_through():
    scores = torch.tensor([0.3, -2.0, 0.1, 0.9, 0.5], requires_grad=True)
    mask = top_k_mask(scores, 0.4)
    assert mask.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # the two largest: kept_count(5, 0.4) == 5 - int(0.6 * 5)
    (mask * torch.arange(5.0)).sum().backward()
    assert scores.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert kept_count(10, 0.5) == 5 and kept_count(7, 1.0) == 7


def test_the_network_is_random_signed_constants_that_never_train_and_no_task_changes_another(three_task_stream):
    backbone = tiny_conv_net()
    original = state_copy(backbone)
    _, model, _ = _trained(backbone, three_task_stream)
    assert all(torch.equal(v, original[k]) for k, v in backbone.state_dict().items())  # the user's backbone
    fresh = SupSupModel(tiny_conv_net(), weight_seed=3)
    for name, layer in model.supermask_layers.items():
        fan_in = layer.weight[0].numel()
        assert torch.equal(layer.weight.abs(), torch.full_like(layer.weight, math.sqrt(2 / fan_in)))
        assert torch.equal(layer.weight, fresh.supermask_layers[name].weight)  # the seed makes the network
        assert layer.bias is None or not bool(layer.bias.any())
        assert not layer.weight.requires_grad
        for task in model.tasks:
            kept = int(layer.mask(task_key(task)).sum())
            assert kept == kept_count(layer.weight.numel(), 0.5)
        # One bit per weight per task, nothing else stored by the layer.
        assert layer.task_tensor_bytes() == 3 * math.ceil(layer.weight.numel() / 8)
    assert not torch.equal(
        fresh.supermask_layers["0"].weight, SupSupModel(tiny_conv_net(), weight_seed=4).supermask_layers["0"].weight
    )
    assert model.capacity_used() == 0.0  # no task trains the network: every one finds all of it


def test_each_task_selects_its_own_mask_and_learns(three_task_stream):
    _, model, _ = _trained(_mlp(inputs=64), three_task_stream, score_lr=5e-2, lr=5e-2)
    layer = model.supermask_layers["1"]
    masks = [layer.mask(task_key(t)) for t in model.tasks]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for task, experience in enumerate(three_task_stream.test_stream):
        x = torch.stack([experience.dataset[i][0] for i in range(len(experience.dataset))])
        y = torch.tensor([experience.dataset[i][1] for i in range(len(experience.dataset))])
        with torch.no_grad():
            accuracy = (model(x, task).argmax(1) == y).float().mean().item()
        assert accuracy >= 0.9, (task, accuracy)


def test_supsup_through_avalanches_loop_with_periodic_evaluation_and_accuracy():
    from avalanche.evaluation.metrics import accuracy_metrics

    stream = tensor_task_stream(synthetic_tasks([[0, 1], [2, 3]]))
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = make_strategy("supsup", _mlp(), train_mb_size=16, train_epochs=2, eval_every=1, evaluator=evaluator)
    for experience in stream.train_stream:
        strategy.train(experience, eval_streams=[stream.test_stream])
        results = strategy.eval(stream.test_stream)
    assert results["Top1_Acc_Stream/eval_phase/test_stream/Task001"] > 0.5


def test_a_saved_task_loads_only_into_the_same_random_network(three_task_stream, tmp_path):
    _, model, recorded = _trained(_mlp(), three_task_stream)
    model.save_task(tmp_path / "task1.pt", 1)
    same = SupSupModel(_mlp(), weight_seed=3).eval()
    same.load_task(tmp_path / "task1.pt", 1)
    x = torch.stack([three_task_stream.test_stream[1].dataset[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(same(x, 1), recorded[1][:8])
    with pytest.raises(TaskFileError):
        SupSupModel(_mlp(), weight_seed=4).load_task(tmp_path / "task1.pt", 1)


def _superposed_by_hand(model, x, tasks, weights):
    """SupSup's superposition written out for an MLP without norms or bias:
    every layer computes with ``sum_t weights[t] * weight * mask_t``, and
    the heads' logits are weighed the same way."""
    h = x.flatten(1)
    layers = list(model.supermask_layers.values())
    for layer in layers:
        mixed = sum(w * layer.weight * layer.mask(task_key(t)) for w, t in zip(weights, tasks))
        h = torch.relu(h @ mixed.T)
    heads = [model.heads.head(task_key(t)) for t in tasks]
    return sum(w * head(h) for w, head in zip(weights, heads))


def test_the_superposed_network_and_its_one_shot_gradient_are_supsups():
    stream = tensor_task_stream(synthetic_tasks([[0, 1, 2, 3]] * 3))
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 12, bias=False), nn.ReLU(), nn.Linear(12, 4))
    _, model, _ = _trained(backbone, stream)
    x = torch.stack([stream.test_stream[2].dataset[i][0] for i in range(5)])
    tasks = model.tasks
    assert "one_shot" in model.task_scores()
    # One task's weight alone: that task's logits.
    one_hot = torch.zeros(5, 3)
    one_hot[:, 1] = 1
    with torch.no_grad():
        assert torch.allclose(model.superposed_logits(x, tasks, one_hot), model(x, 1), atol=1e-6)
    # Per-sample weights give each sample the superposition SupSup computes.
    weights = torch.rand(5, 3)
    with torch.no_grad():
        superposed = model.superposed_logits(x, tasks, weights)
    for n in range(5):
        assert torch.allclose(superposed[n], _superposed_by_hand(model, x[n : n + 1], tasks, weights[n])[0], atol=1e-5)
    # The one-shot score: minus the gradient of each sample's entropy at weights 1/T.
    alphas = torch.full((3,), 1 / 3, requires_grad=True)
    for n in range(2):
        p = torch.softmax(_superposed_by_hand(model, x[n : n + 1], tasks, alphas), -1)
        (gradient,) = torch.autograd.grad(-(p * p.log()).sum(), alphas)
        assert torch.allclose(one_shot_score(model, x[n : n + 1], tasks)[0], -gradient, atol=1e-5)


def test_one_shot_inference_finds_each_permuted_mnist_task_per_batch():
    _, benchmark = permuted_mnist_stream(3)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 10))
    strategy = make_strategy(
        "supsup",
        backbone,
        task_inference="batch",
        task_score="one_shot",
        train_epochs=2,
        evaluator=None,
        eval_mb_size=64,
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
    model = strategy.model.eval()
    for task, experience in enumerate(benchmark.test_stream):
        x = torch.stack([experience.dataset[i][0] for i in range(64)])
        assert strategy.task_inference(model, x).tasks.tolist() == [task] * 64


def test_a_model_whose_attention_reads_one_task_per_pass_does_not_offer_one_shot():
    from piggyback_avalanche import PiggybackModel

    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = PiggybackModel(nn.Sequential(layer, nn.Flatten(), nn.Linear(24, 3)))
    assert not model.superposes() and "one_shot" not in model.task_scores()
    assert PiggybackModel(tiny_conv_net()).superposes()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"density": 0}, r"density is the share of weights a mask keeps, in \(0, 1\]; got 0"),
        ({"density": 1.5}, r"in \(0, 1\]; got 1.5"),
        ({"weight_init": "zeros"}, r"Unknown weight_init 'zeros'; choose one of \['signed_constant', 'backbone'\]"),
        ({"score_lr": -1.0}, r"score_lr"),
    ],
)
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        make_strategy("supsup", _mlp(), **settings)


def test_the_backbone_setting_keeps_a_pretrained_network_and_the_masks_select_from_it():
    backbone = _mlp()
    model = SupSupModel(backbone, weight_init="backbone", density=0.25)
    model.add_task(0, classes=[0, 1])
    layer = model.supermask_layers["1"]
    assert torch.equal(layer.weight, backbone[1].weight)
    assert int(layer.mask("0").sum()) == kept_count(layer.weight.numel(), 0.25)
    packed = layer.packed_masks
    model.freeze_task(0)
    assert torch.equal(unpack_mask(packed["0"], shape=layer.weight.shape, bits=1), layer.mask("0"))


def test_the_masking_methods_reestimate_batch_norm_statistics_unless_told_not_to():
    for name in ("piggyback", "supsup", "wsn", "hat"):
        assert make_strategy(name, _mlp()).recalibrate_norm_statistics is True, name
        assert make_strategy(name, _mlp(), recalibrate_norm_statistics=False).recalibrate_norm_statistics is False
    assert make_strategy("packnet", _mlp()).recalibrate_norm_statistics is False
