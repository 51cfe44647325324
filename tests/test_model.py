import pytest
import torch
from conftest import tiny_conv_net
from torch import nn

from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.methods.piggyback.layers import MaskedConv2d, MaskedLinear
from piggyback_avalanche.task_aware import MASKED_LOGIT, TaskHeads, TaskNorm


def _model_with_tasks(classes_per_task, **kwargs):
    model = PiggybackModel(tiny_conv_net(), **kwargs)
    for task, classes in enumerate(classes_per_task):
        model.add_task(task, classes=classes)
        # Move some scores below the threshold so that masks differ per task.
        for layer in model.masked_layers.values():
            layer.scores[str(task)].data.uniform_(-1e-2, 1e-2)
        for norm in (m for m in model.modules() if isinstance(m, TaskNorm)):
            norm.tasks[str(task)].running_mean.normal_()
        model.freeze_task(task)
    return model.eval()


def test_backbone_layers_are_converted_and_copied():
    backbone = tiny_conv_net()
    model = PiggybackModel(backbone)
    kinds = [type(m) for m in model.backbone]
    assert kinds[0] is MaskedConv2d and kinds[1] is TaskNorm and kinds[8] is MaskedLinear
    assert kinds[10] is TaskHeads
    assert isinstance(backbone[0], nn.Conv2d) and type(backbone[0]) is nn.Conv2d  # untouched
    assert all(not p.requires_grad for p in model.parameters())


def test_classifier_by_name_and_by_module():
    backbone = tiny_conv_net()
    assert isinstance(PiggybackModel(backbone, classifier="10").backbone[10], TaskHeads)
    model = PiggybackModel(backbone, classifier=backbone[8])
    assert isinstance(model.backbone[8], TaskHeads)
    assert isinstance(model.backbone[10], MaskedLinear)
    with pytest.raises(ValueError, match=r"must be an nn.Linear"):
        PiggybackModel(backbone, classifier="0")
    with pytest.raises(ValueError, match="no submodule named 'head'"):
        PiggybackModel(backbone, classifier="head")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=0.0), "threshold must be a positive finite number"),
        (dict(threshold=-1e-3), "threshold must be a positive finite number"),
        (dict(mask_scale=5e-3), r"mask_scale \(0.005\) must exceed threshold.*start at zero"),
        (dict(mask_scale=1e-3, mask_init="uniform"), "no score would start above"),
        (dict(mask_scale=float("nan")), "mask_scale must be a positive finite number"),
        (dict(threshold_fn="sign"), "Unknown threshold_fn 'sign'"),
        (dict(mask_init="zeros"), "Unknown mask_init 'zeros'"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PiggybackModel(tiny_conv_net(), **kwargs)


def test_unsupported_layers_are_named():
    backbone = nn.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU(), nn.Flatten(), nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"1 \(PReLU: weight\).*Supported: Conv1d, Conv2d, Conv3d, Linear"):
        PiggybackModel(backbone)
    with pytest.raises(ValueError, match=r"no nn.Linear"):
        PiggybackModel(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_mixed_task_batch_equals_single_task_batches():
    model = _model_with_tasks([[0, 1], [0, 1, 2], [4, 5, 6, 7]])
    x = torch.randn(9, 1, 8, 8)
    tasks = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    with torch.no_grad():
        mixed = model(x, tasks)
        assert mixed.shape == (9, 8)
        for task, width in ((0, 2), (1, 3), (2, 8)):
            rows = tasks == task
            alone = model(x[rows], task)
            torch.testing.assert_close(mixed[rows, :width], alone, rtol=1e-5, atol=1e-6)
            assert torch.all(mixed[rows, width:] == MASKED_LOGIT)
        # A batch of one task, given per sample, is the int label's logits widened to max_class_label.
        one = model(x, torch.full((9,), 1))
        assert one.shape == (9, 8) and torch.equal(one[:, :3], model(x, 1)) and (one[:, 3:] == MASKED_LOGIT).all()


def test_padding_never_wins_over_negative_logits():
    model = _model_with_tasks([[0, 1], [0, 1, 2, 3, 4, 5]])
    for head in model.heads.heads.values():
        head.weight.data.zero_()
        head.bias.data.fill_(-50.0)
        head.bias.data[0] = -40.0
    x = torch.randn(6, 1, 8, 8)
    tasks = torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        out = model(x, tasks)
    assert out.argmax(1).tolist() == [0] * 6
    loss = nn.functional.cross_entropy(out, torch.tensor([1, 5, 0, 3, 1, 2]))
    assert torch.isfinite(loss)


def test_head_masks_labels_the_task_does_not_have():
    model = _model_with_tasks([[4, 6]])
    with torch.no_grad():
        out = model(torch.randn(3, 1, 8, 8), 0)
    assert out.shape == (3, 7)
    assert (out[:, [0, 1, 2, 3, 5]] == MASKED_LOGIT).all() and (out[:, [4, 6]] > MASKED_LOGIT).all()


def test_unknown_task_label_names_known_tasks():
    model = _model_with_tasks([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"\[3\] unknown.*knows tasks \[0, 1\]"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="non-negative int"):
        model(torch.randn(2, 1, 8, 8), -1)
    with pytest.raises(ValueError, match="already exists"):
        model.add_task(1, classes=[0, 1])


def test_frozen_masks_take_one_bit_per_weight_in_the_state_dict():
    model = _model_with_tasks([[0, 1], [0, 1, 2]])
    state = model.state_dict()
    layers = model.masked_layers
    assert len(layers) == 3
    for name, layer in layers.items():
        for task in ("0", "1"):
            packed = state[f"backbone.{name}.packed_masks.{task}"]
            assert packed.dtype == torch.uint8
            assert packed.numel() == -(-layer.weight.numel() // 8)
    assert not [k for k in state if ".scores." in k]


def test_ternary_masks_take_two_bits():
    model = _model_with_tasks([[0, 1]], threshold_fn="ternarizer")
    layer = model.masked_layers["0"]  # 6 * 9 weights
    assert model.state_dict()["backbone.0.packed_masks.0"].numel() == -(-54 * 2 // 8)
    assert set(layer.mask("0").unique().tolist()) == {-1.0, 0.0, 1.0}


def test_state_dict_round_trip_into_fresh_model_gives_identical_logits():
    model = _model_with_tasks([[0, 1], [0, 1, 2], [4, 5, 6, 7]])
    model.add_task(3, classes=[0, 1])  # a task still being learned
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    fresh = PiggybackModel(tiny_conv_net())  # other random weights
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert fresh.tasks == [0, 1, 2, 3] and fresh.learning_tasks == [3]
    with torch.no_grad():
        for task in range(4):
            assert torch.equal(fresh(x, task), model(x, task))
    assert fresh.max_class_label == 8
