import functools
import math

import pytest
import torch
from conftest import stacked_inputs as _test_inputs
from conftest import tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche import PackNet, PackNetModel
from piggyback_avalanche.methods.packnet import MAX_PACKNET_TASKS
from piggyback_avalanche.task_aware import MASKED_LOGIT

OPTIMIZERS = {
    "sgd_momentum_weight_decay": functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=5e-2),
    "adam": torch.optim.Adam,
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_packnet_never_changes_earlier_tasks(three_task_stream, optimizer):
    calls = []

    class Recorder(SupervisedPlugin):
        def after_training_exp(self, strategy, **kwargs):
            calls.append(strategy.experience.current_experience)

    model = PackNetModel(tiny_conv_net())
    strategy = PackNet(
        model=model,
        lr=1e-2,
        prune_ratio=0.5,
        post_prune_epochs=2,
        train_epochs=2,
        train_mb_size=16,
        optimizer_factory=OPTIMIZERS[optimizer],
        plugins=[Recorder()],
        evaluator=None,
    )
    owned_weights = {}

    def frozen_weights_unchanged(task):
        for name, layer in model.task_layers.items():
            owned = layer.owner_codes() > 0
            if name in owned_weights:
                before_mask, before = owned_weights[name]
                # Weights frozen earlier are bit-identical.
                assert torch.equal(layer.weight[before_mask], before)
            owned_weights[name] = (owned, layer.weight[owned].clone())

    train_checking_earlier_tasks(strategy, three_task_stream, after_each=frozen_weights_unchanged)
    assert calls == [0, 1, 2]
    assert model.frozen_tasks == [0, 1, 2]


def test_prune_ratios_per_task_and_owner_storage(three_task_stream):
    model = PackNetModel(tiny_conv_net())
    strategy = PackNet(
        model=model,
        prune_ratio=[0.5, 0.75, 0.0],
        post_prune_epochs=1,
        train_epochs=1,
        train_mb_size=16,
        evaluator=None,
    )
    initial_bias = model.task_layers["0"].bias.clone()
    strategy.train(three_task_stream.train_stream[0])
    first_bias = model.task_layers["0"].bias.clone()
    # The capacity the first task took: the half of each layer it kept.
    sizes = [layer.weight.numel() for layer in model.task_layers.values()]
    assert model.capacity_used() == pytest.approx(sum(n - round(0.5 * n) for n in sizes) / sum(sizes))
    for experience in three_task_stream.train_stream[1:]:
        strategy.train(experience)
    # Biases train on the first task, then stay frozen.
    assert not torch.equal(first_bias, initial_bias)
    assert torch.equal(model.task_layers["0"].bias, first_bias)
    for name, layer in model.task_layers.items():
        codes = layer.owner_codes()
        n = codes.numel()
        shares = [int((codes == c).sum()) for c in range(4)]
        # task 0 keeps half of everything; task 1 a quarter of the other
        # half; task 2 prunes nothing and takes all that is left.
        assert shares[1] == n - round(0.5 * n), name
        rest = n - shares[1]
        assert shares[2] == rest - round(0.75 * rest), name
        assert shares[3] == rest - shares[2] and shares[0] == 0, name
        # 3 tasks + "free" need 2 bits per weight.
        assert layer.packed_owners.numel() == math.ceil(n * 2 / 8)
        assert layer.packed_owners.dtype == torch.uint8
    # The biases trained on the first task only; bias=False layers work.
    assert model.task_layers["3"].bias is None
    assert model.capacity_used() == 1.0  # the last task took every free weight


def test_state_dict_round_trip_and_mixed_batches(three_task_stream):
    model = PackNetModel(tiny_conv_net())
    strategy = PackNet(model=model, train_epochs=1, post_prune_epochs=1, train_mb_size=16, evaluator=None)
    for experience in three_task_stream.train_stream:
        strategy.train(experience)
    x = torch.randn(6, 1, 8, 8)
    tasks = torch.tensor([0, 1, 2, 2, 1, 0])
    fresh = PackNetModel(tiny_conv_net())
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        for task in range(3):
            assert torch.equal(fresh(x, task), model(x, task))
        mixed = model(x, tasks)
        torch.testing.assert_close(mixed[tasks == 1, :3], model(x[tasks == 1], 1))
        assert (mixed[tasks == 0, 2:] == MASKED_LOGIT).all()
    with pytest.raises(ValueError, match=r"\[7\] unknown.*knows tasks \[0, 1, 2\]"):
        model(x, 7)


def test_too_many_tasks_and_bad_settings_raise():
    model = PackNetModel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    for task in range(MAX_PACKNET_TASKS):
        model.add_task(task, classes=[0, 1])
        model.freeze_task(task)
    assert model.task_layers["0"].packed_owners.numel() == 16  # 16 weights at 8 bits
    with pytest.raises(ValueError, match="at most 255 tasks"):
        model.add_task(MAX_PACKNET_TASKS, classes=[0, 1])
    with pytest.raises(ValueError, match=r"prune_ratio must be in \[0, 1\)"):
        PackNet(model=PackNetModel(tiny_conv_net()), prune_ratio=1.0)
    with pytest.raises(ValueError, match="post_prune_epochs must be an int of at least 0"):
        PackNet(model=PackNetModel(tiny_conv_net()), post_prune_epochs=-1)
    learning = PackNetModel(tiny_conv_net())
    learning.add_task(0, classes=[0, 1])
    with pytest.raises(ValueError, match="one task at a time"):
        learning.add_task(1, classes=[0, 1])
    with pytest.raises(TypeError, match="PackNet trains a PackNetModel"):
        PackNet(model=tiny_conv_net())


def test_prune_ratio_list_too_short_says_so(three_task_stream):
    strategy = PackNet(
        model=PackNetModel(tiny_conv_net()),
        prune_ratio=[0.5],
        train_epochs=1,
        post_prune_epochs=0,
        evaluator=None,
    )
    strategy.train(three_task_stream.train_stream[0])
    with pytest.raises(ValueError, match="lists 1 ratios but this is task number 2"):
        strategy.train(three_task_stream.train_stream[1])


def test_what_a_task_learns_is_what_it_keeps():
    torch.manual_seed(0)
    model = PackNetModel(tiny_conv_net()).eval()
    x = torch.randn(4, 1, 8, 8)
    for task in range(2):
        model.add_task(task, classes=[0, 1, 2])
        with torch.no_grad():
            for layer in model.task_layers.values():
                # Training moves every entry of the free-weight copy, also the
                # ones that earlier tasks own, which must not count.
                layer.free_weights[str(task)].add_(torch.randn_like(layer.weight))
        model.prune(0.5)
        with torch.no_grad():
            learned = model(x, task)
        model.freeze_task(task)
        with torch.no_grad():
            assert torch.equal(model(x, task), learned)


def test_nobn_setting_trains_batch_norm_on_the_first_task_only(three_task_stream):
    model = PackNetModel(tiny_conv_net(), task_batchnorm=False)
    norm = model.backbone[1]
    initial = {k: v.clone() for k, v in norm.base.state_dict().items()}
    strategy = PackNet(model=model, train_epochs=2, post_prune_epochs=1, train_mb_size=16, evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    after_first = {k: v.clone() for k, v in norm.base.state_dict().items()}
    assert not torch.equal(after_first["running_mean"], initial["running_mean"])
    assert not torch.equal(after_first["weight"], initial["weight"])
    assert len(norm.tasks) == 0
    x = _test_inputs(three_task_stream.test_stream[0])
    with torch.no_grad():
        logits = model.eval()(x, 0)
    for experience in three_task_stream.train_stream[1:]:
        strategy.train(experience)
    assert all(torch.equal(v, after_first[k]) for k, v in norm.base.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.eval()(x, 0), logits)


def test_paper_settings_and_a_ratio_function_are_accepted(three_task_stream):
    from piggyback_avalanche import PACKNET_PAPER_SETTINGS

    settings = {**PACKNET_PAPER_SETTINGS, "prune_ratio": lambda position: 0.5 if position == 0 else 0.75}
    model = PackNetModel(tiny_conv_net())
    strategy = PackNet(model=model, train_epochs=1, train_mb_size=16, evaluator=None, **settings)
    assert (strategy.post_prune_epochs, strategy.post_prune_lr) == (10, 1e-4)
    strategy.train(three_task_stream.train_stream[0])
    codes = model.task_layers["0"].owner_codes()
    assert int((codes == 1).sum()) == codes.numel() - round(0.5 * codes.numel())


def test_a_prune_schedule_is_recorded_by_its_values_and_checked_before_training(three_task_stream, tmp_path):
    from piggyback_avalanche.training.checkpoints import (
        CheckpointError,
        load_experience_checkpoint,
        save_experience_checkpoint,
    )

    def strategy(schedule):
        torch.manual_seed(0)
        return PackNet(model=PackNetModel(tiny_conv_net()), prune_ratio=schedule, train_epochs=1, evaluator=None)

    first = strategy(lambda position: 0.5 if position == 0 else 0.75)
    first.train(three_task_stream.train_stream[0])
    save_experience_checkpoint(first, tmp_path / "run.ckpt", next_experience=1)
    # Another lambda with another schedule: the checkpoint names the difference.
    with pytest.raises(CheckpointError, match=r"prune_ratio: checkpoint \[0.5, 0.75"):
        load_experience_checkpoint(strategy(lambda position: 0.5), tmp_path / "run.ckpt")
    assert load_experience_checkpoint(strategy(lambda p: 0.5 if p == 0 else 0.75), tmp_path / "run.ckpt") == 1
    bad = strategy(lambda position: 1.5)
    with pytest.raises(ValueError, match=r"prune_ratio\(0\) gave 1.5"):
        bad.train(three_task_stream.train_stream[0])
    assert bad.clock.train_exp_iterations == 0  # refused before any step
    with pytest.raises(CheckpointError, match=r"every TaskAwareStrategy: .*LoRA.*PackNet.*Piggyback"):
        from piggyback_avalanche import make_strategy

        save_experience_checkpoint(make_strategy("naive", tiny_conv_net()), tmp_path / "x.ckpt", next_experience=0)
