"""The parameter-efficient baselines next to Piggyback: LoRA, BitFit and
prompt tuning per task, through Avalanche's loop and the model-size metric."""

import math

import pytest
import torch
from conftest import stacked_inputs, synthetic_tasks, tiny_conv_net, train_checking_earlier_tasks
from torch import nn

from piggyback_avalanche import make_strategy
from piggyback_avalanche.app.runner import parse_strategy, strategy_settings
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation.evaluator import default_evaluator
from piggyback_avalanche.evaluation.model_size import ModelSize
from piggyback_avalanche.methods.bitfit import BitFitModel
from piggyback_avalanche.methods.lora import LoRAModel
from piggyback_avalanche.methods.prompt import PromptTuningModel, TaskPrompts
from piggyback_avalanche.networks.backbones import small_vit
from piggyback_avalanche.task_aware import TaskNorm
from piggyback_avalanche.training.checkpoints import load_experience_checkpoint, save_experience_checkpoint


def _vit() -> nn.Module:
    return small_vit(in_channels=1, image_size=8, patch_size=4, width=16, depth=1, heads=2, num_classes=4)


def _stream():
    return tensor_task_stream(synthetic_tasks([[0, 1], [0, 1, 2], [4, 5, 6, 7]], n_train=32, n_test=16))


def _strategy(name, backbone, **settings):
    return make_strategy(name, backbone, train_epochs=2, train_mb_size=8, evaluator=default_evaluator(), **settings)


def _own_norm_and_head_bytes(model, task):
    """Bytes of ``task``'s own normalization copies and head, counted from the modules."""
    head = model.heads.head(str(task))
    norms = [m.tasks[str(task)] for m in model.modules() if isinstance(m, TaskNorm) and str(task) in m.tasks]
    return sum(t.nbytes for module in [head, *norms] for t in module.state_dict().values())


CASES = {
    "lora_cnn": ("lora", tiny_conv_net, {"rank": 2}),
    "lora_vit": ("lora", _vit, {"rank": 3}),
    "bitfit_cnn": ("bitfit", tiny_conv_net, {}),
    "bitfit_vit": ("bitfit", _vit, {}),
    "prompt_vit": ("prompt", _vit, {"prompt_length": 3}),
}


@pytest.mark.parametrize("case", CASES)
def test_forgets_nothing_through_avalanches_loop_and_counts_its_bytes_by_hand(case):
    name, build, settings = CASES[case]
    benchmark = _stream()
    learner = _strategy(name, build(), **settings)
    shared_before = {k: t.clone() for k, t in learner.model.shared_state().items()}
    recorded = train_checking_earlier_tasks(learner, benchmark)
    learner.eval(benchmark.test_stream)
    model = learner.model
    assert len(recorded) == 3
    # The backbone never trained.
    assert all(torch.equal(model.shared_state()[k], t) for k, t in shared_before.items())
    # What each task holds, counted from the layers themselves.
    layers = list(model.task_layers.values())
    if name == "lora":
        rank = settings["rank"]
        per_layer = [rank * (layer.weight.shape[0] + layer.weight[0].numel()) * 4 for layer in layers]
    elif name == "bitfit":
        per_layer = [layer.bias.nbytes if layer.bias is not None else 0 for layer in layers]
    else:
        per_layer = [settings["prompt_length"] * 16 * 4]
    by_hand = [sum(per_layer) + _own_norm_and_head_bytes(model, task) for task in range(3)]
    assert model.bytes_per_task() == pytest.approx(sum(by_hand) / 3, abs=1e-9)
    size = ModelSize()
    size.update(learner)
    assert size.result()["bytes_per_task"] == model.bytes_per_task()
    shared = sum(t.nbytes for k, t in model.shared_state().items() if k not in model.template_state_keys())
    assert size.result()["bytes"] == shared + sum(by_hand)


def _head_inputs(model, x, task):
    captured = []
    hook = model.heads.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        model(x, task)
    hook.remove()
    return captured[0]


def test_lora_computes_the_backbone_plus_the_scaled_low_rank_update():
    model = LoRAModel(tiny_conv_net(), rank=2, alpha=3.0).eval()
    model.add_task(0, classes=[0, 1])
    layer = next(iter(model.task_layers.values()))
    x = torch.randn(2, 1, 8, 8)
    before = _head_inputs(model, x, 0)
    with torch.no_grad():
        layer.learning_up["0"].normal_()
    model.freeze_task(0)
    with model.task_state.use("0"), torch.no_grad():
        weight = layer.current_weight_and_bias()[0]
    down, up = layer.frozen_down["0"], layer.frozen_up["0"]
    assert torch.equal(weight, layer.weight + 1.5 * (up @ down).view_as(layer.weight))
    assert not torch.equal(_head_inputs(model, x, 0), before)
    # A new task's update starts at zero: the task starts as the backbone.
    model.add_task(1, classes=[0, 1])
    assert torch.equal(_head_inputs(model, x, 1), before)


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="rank must be an int of at least 1, got 0"):
        LoRAModel(tiny_conv_net(), rank=0)
    with pytest.raises(ValueError, match=r"alpha must be a positive finite number, got -1.0"):
        LoRAModel(tiny_conv_net(), alpha=-1.0)
    with pytest.raises(ValueError, match="lora_lr must be a positive finite number, got 0"):
        make_strategy("lora", tiny_conv_net(), lora_lr=0)
    with pytest.raises(ValueError, match="prompt_length must be an int of at least 1"):
        PromptTuningModel(_vit(), prompt_length=0)
    with pytest.raises(ValueError, match=r"no positional embedding.*Pass prompt_after=.*or use a vision transformer"):
        PromptTuningModel(tiny_conv_net())
    with pytest.raises(ValueError, match=r"no module 'encoder\.missing'"):
        PromptTuningModel(_vit(), prompt_after="encoder.missing")


def test_prompts_join_the_sequence_and_leave_the_backbone_frozen():
    model = PromptTuningModel(_vit(), prompt_length=3)
    prompts = model.backbone.get_submodule("encoder.dropout")
    assert isinstance(prompts, TaskPrompts)
    model.add_task(0, classes=[0, 1])
    lengths = []
    hook = model.backbone.encoder.layers.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    model(torch.randn(2, 1, 8, 8), 0)
    hook.remove()
    assert lengths == [4 + 1 + 3]  # 4 patches, the class token, 3 prompts
    assert {n for n, ps in model.trainable_parameters().items() if ps} == {"prompts", "task_parameters"}
    # VPT keeps the layer norms frozen and shared.
    assert not any(m.per_task for m in model.modules() if isinstance(m, TaskNorm))


def test_bitfit_learns_only_biases_norms_and_heads():
    model = BitFitModel(_vit())
    model.add_task(0, classes=[0, 1])
    groups = {n: len(ps) for n, ps in model.trainable_parameters().items() if ps}
    biased = [layer for layer in model.task_layers.values() if layer.bias is not None]
    assert groups["biases"] == len(biased) > 0
    trained = {id(p) for ps in model.trainable_parameters().values() for p in ps}
    assert not any(id(layer.weight) in trained for layer in model.task_layers.values())


def test_the_runner_passes_a_rank_per_point_and_a_lora_checkpoint_resumes_bit_for_bit(tmp_path):
    name, variant = parse_strategy("lora[rank=8]")
    settings = {**strategy_settings(name, {"lr": 1e-3, "mask_lr": 1e-4}, untrained_backbone=True), **variant}
    assert settings == {"lr": 1e-3, "rank": 8}  # lora_lr keeps its default
    benchmark = _stream()
    learner = _strategy("lora", tiny_conv_net(), rank=2)
    learner.train(benchmark.train_stream[0])
    save_experience_checkpoint(learner, tmp_path / "lora.ckpt", next_experience=1)
    resumed = _strategy("lora", tiny_conv_net(), rank=2)
    assert load_experience_checkpoint(resumed, tmp_path / "lora.ckpt", stream_length=3) == 1
    x = stacked_inputs(benchmark.test_stream[0])
    learner.model.eval(), resumed.model.eval()
    assert torch.equal(learner.model(x, 0), resumed.model(x, 0))
    other_rank = _strategy("lora", tiny_conv_net(), rank=4)
    with pytest.raises(Exception, match="rank"):
        load_experience_checkpoint(other_rank, tmp_path / "lora.ckpt", stream_length=3)


def test_every_baseline_is_registered_with_its_metadata():
    from piggyback_avalanche.training.registry import registered_strategy

    for name in ("lora", "bitfit", "prompt"):
        registered = registered_strategy(name)
        assert registered.class_incremental_settings == {"task_inference": "sample"}
        assert "lr" in registered.setting_names
    assert {"rank", "alpha"} <= registered_strategy("lora").setting_names
    assert "prompt_length" in registered_strategy("prompt").setting_names
    assert math.isclose(LoRAModel(tiny_conv_net(), rank=4).task_layers["0"].scale, 2.0)


@pytest.mark.parametrize("name", ["prompt", "lora", "bitfit"])
def test_learns_a_class_incremental_stream_on_a_vit_by_inferring_tasks(name):
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as dataset

    from piggyback_avalanche.training.registry import registered_strategy

    parts = synthetic_tasks([[0, 1], [2, 3]], n_train=96, seed=2)
    train = dataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = dataset(torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))
    stream = nc_benchmark(train, test, n_experiences=2, task_labels=False, fixed_class_order=[0, 1, 2, 3])
    learner = make_strategy(
        name,
        _vit(),
        train_epochs=5,
        train_mb_size=16,
        evaluator=default_evaluator(),
        **registered_strategy(name).class_incremental_settings,
    )
    for experience in stream.train_stream:
        learner.train(experience)
    # A ViT cannot stack tasks: the default score (backbone and task statistics) says what it costs and the cheaper one.
    with pytest.warns(UserWarning, match="in its own pass.*task_score='backbone_mahalanobis' scores every task in one"):
        metrics = learner.eval(stream.test_stream)
    # Four classes over the stream, no task label at test time: chance is 1/4.
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.4
    assert metrics["TaskInference_Acc_Stream/eval_phase/test_stream"] > 0.6


def test_packnet_counts_its_weight_owners_as_the_tasks_bytes(three_task_stream):
    learner = _strategy("packnet", tiny_conv_net(), post_prune_epochs=1)
    train_checking_earlier_tasks(learner, three_task_stream)
    model = learner.model
    owners = sum(layer.packed_owners.nbytes + layer.task_order.nbytes for layer in model.task_layers.values())
    # Three tasks and "free": 2 bits per weight, shared by the tasks.
    weights = sum(layer.weight.numel() for layer in model.task_layers.values())
    assert (
        sum(layer.packed_owners.nbytes for layer in model.task_layers.values())
        == sum(math.ceil(layer.weight.numel() * 2 / 8) for layer in model.task_layers.values())
        and weights > 0
    )
    by_hand = owners + sum(_own_norm_and_head_bytes(model, task) for task in range(3))
    assert model.bytes_per_task() == pytest.approx(by_hand / 3)


@pytest.mark.parametrize("name, build", [("lora", tiny_conv_net), ("bitfit", tiny_conv_net), ("prompt", _vit)])
def test_periodic_evaluation_during_training_changes_nothing_learned(name, build):
    benchmark = _stream()
    learner = make_strategy(name, build(), train_epochs=2, train_mb_size=8, eval_every=1, evaluator=default_evaluator())
    recorded = {}
    for task, experience in enumerate(benchmark.train_stream):
        learner.train(experience, eval_streams=[benchmark.test_stream[: task + 1]])
        learner.model.eval()
        with torch.no_grad():
            for seen in range(task + 1):
                logits = learner.model(stacked_inputs(benchmark.test_stream[seen]), seen)
                assert torch.equal(logits, recorded.setdefault(seen, logits)), (name, seen)
    # Periodic evaluation ran during training, on every task seen so far, and scored them.
    periodic = learner.evaluator.get_all_metrics()["Top1_Acc_Exp/eval_phase/test_stream/Task002/Exp002"]
    assert len(periodic[1]) >= 3 and all(0.0 <= v <= 1.0 for v in periodic[1])
