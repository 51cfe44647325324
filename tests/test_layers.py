import pytest
import torch
import torch.nn.functional as F
from torch import nn

from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES
from piggyback_avalanche.methods.piggyback.masks import get_mask_kind
from piggyback_avalanche.task_aware import TaskState

CONV_CASES = [
    nn.Conv1d(4, 6, 3, padding=2, dilation=2),
    nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
    nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
    nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"),
    nn.Conv3d(4, 2, 3, padding=1, padding_mode="replicate"),
    nn.Linear(4, 6),
]


def _input_for(layer):
    if isinstance(layer, nn.Linear):
        return torch.randn(5, 4)
    spatial = {nn.Conv1d: (9,), nn.Conv2d: (9, 9), nn.Conv3d: (5, 5, 5)}[type(layer)]
    return torch.randn(2, 4, *spatial)


def _masked(layer, threshold_fn="binarizer", mask_init="uniform"):
    state = TaskState()
    masked = MASKED_LAYER_TYPES[type(layer)].from_module(
        layer,
        task_state=state,
        mask_kind=get_mask_kind(threshold_fn),
        threshold=5e-3,
        mask_init=mask_init,
        mask_scale=1e-2,
    )
    return masked, state


@pytest.mark.parametrize("layer", CONV_CASES, ids=lambda m: repr(m))
@pytest.mark.parametrize("threshold_fn", ["binarizer", "ternarizer"])
def test_masked_layer_equals_original_layer_with_masked_weight(layer, threshold_fn):
    masked, state = _masked(layer, threshold_fn)
    masked.add_task("0")
    x = _input_for(layer)
    with state.use("0"):
        out = masked(x)
    mask = masked.mask("0")
    assert set(mask.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert 0 < (mask != 0).float().mean() < 1
    reference = torch.func.functional_call(layer, {"weight": layer.weight * mask}, (x,))
    assert torch.equal(out, reference)
    # Same result after freezing, now from the packed mask.
    masked.freeze_task("0")
    with state.use("0"), torch.no_grad():
        assert torch.equal(masked(x), reference)


def test_layer_weight_and_bias_are_frozen_and_shared():
    conv = nn.Conv2d(3, 4, 3)
    masked, _ = _masked(conv)
    assert masked.weight is conv.weight and masked.bias is conv.bias
    assert not masked.weight.requires_grad and not masked.bias.requires_grad


def test_scores_get_the_straight_through_gradient():
    linear = nn.Linear(3, 2)
    masked, state = _masked(linear, mask_init="1s")
    masked.add_task("0")
    x = torch.randn(4, 3)
    with state.use("0"):
        masked(x).sum().backward()
    scores_grad = masked.scores["0"].grad
    # d(sum(x W^T + b))/dW = column sums of x; times W for the scores.
    expected = x.sum(0).expand(2, 3) * linear.weight.detach()
    torch.testing.assert_close(scores_grad, expected)
    assert linear.weight.grad is None


def test_frozen_mask_is_bit_packed_and_scores_dropped():
    conv = nn.Conv2d(3, 5, 3)  # 135 weights
    masked, _ = _masked(conv, mask_init="1s")
    masked.add_task("0")
    masked.freeze_task("0")
    assert "0" not in masked.scores
    packed = masked.packed_masks["0"]
    assert packed.dtype == torch.uint8 and packed.numel() == 17  # ceil(135 / 8)
    state = masked.state_dict()
    assert state["packed_masks.0"].nbytes == 17
    assert not any(k.startswith("scores") for k in state)

    ternary, _ = _masked(nn.Conv2d(3, 5, 3), "ternarizer")
    ternary.add_task("0")
    ternary.freeze_task("0")
    assert ternary.packed_masks["0"].numel() == 34  # ceil(135 * 2 / 8)


def test_cache_matches_uncached_and_is_invalidated():
    conv = nn.Conv2d(2, 3, 3)
    masked, state = _masked(conv)
    for task in ("0", "1"):
        masked.add_task(task)
        masked.freeze_task(task)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        with state.use("0"):
            uncached = F.conv2d(x, conv.weight * masked.mask("0"), conv.bias)
            first = masked(x)
            cached_weight = state.frozen_weights.value("0", masked)
            second = masked(x)
            assert state.frozen_weights.value("0", masked) is cached_weight  # reused, not recomputed
        assert torch.equal(first, uncached) and torch.equal(second, uncached)
        with state.use("1"):  # task switch
            assert torch.equal(masked(x), F.conv2d(x, conv.weight * masked.mask("1"), conv.bias))
        conv.weight.add_(1.0)  # an in-place write to the weight
        with state.use("1"):
            assert torch.equal(masked(x), F.conv2d(x, conv.weight * masked.mask("1"), conv.bias))
        masked.double()  # dtype change
        assert state.frozen_weights.value("1", masked) is None
        with state.use("1"):
            assert masked(x.double()).dtype == torch.float64


def test_layer_without_selected_task_explains_itself():
    masked, _ = _masked(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="No task selected"):
        masked(torch.randn(1, 2))


def test_piggyback_model_is_correct_under_torch_compile():
    """torch.compile (Dynamo tracing and AOT autograd; the aot_eager backend
    needs no C++ compiler) gives the eager logits and score gradients while a
    task learns, and the eager logits of a frozen task from its cache."""
    from conftest import tiny_conv_net

    from piggyback_avalanche import PiggybackModel

    model = PiggybackModel(tiny_conv_net())
    model.add_task(0, classes=[0, 1, 2, 3])
    model.freeze_task(0)
    model.add_task(1, classes=[0, 1, 2, 3])
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(8, 1, 8, 8)
    scores = model.masked_layers["0"].scores["1"]
    compiled_logits = compiled(x, 1)
    compiled_logits.sum().backward()
    compiled_grad, scores.grad = scores.grad.clone(), None
    eager_logits = model(x, 1)
    eager_logits.sum().backward()
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-6)
    assert torch.allclose(compiled_grad, scores.grad, atol=1e-6) and compiled_grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x, 0), model(x, 0), atol=1e-6)
