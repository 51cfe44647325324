import pytest
import torch

from piggyback_avalanche.methods.piggyback.masks import binarize, get_mask_kind, pack_mask, ternarize, unpack_mask
from piggyback_avalanche.task_aware.bit_packing import pack_codes, packed_code_bytes, unpack_codes

TAU = 5e-3


def test_binarizer_values_at_and_around_threshold():
    scores = torch.tensor([-1.0, 0.0, TAU, TAU + 1e-6, 1e-2])
    assert binarize(scores, TAU).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_ternarizer_values_at_zero_and_threshold():
    scores = torch.tensor([-1.0, -1e-9, 0.0, 1e-3, TAU, TAU + 1e-6, 1.0])
    assert ternarize(scores, TAU).tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("threshold_fn", [binarize, ternarize])
def test_straight_through_gradient_is_weight_times_masked_weight_gradient(threshold_fn):
    torch.manual_seed(0)
    weight = torch.randn(5, 4, dtype=torch.float64)
    scores = (torch.randn(5, 4, dtype=torch.float64) * 1e-2).requires_grad_()
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.randn(3, 5, dtype=torch.float64)

    def loss_of(masked_weight):
        return ((x @ masked_weight.T - target) ** 2).sum()

    loss_of(weight * threshold_fn(scores, TAU)).backward()

    # The gradient w.r.t. the masked weight, by central finite differences.
    masked = (weight * threshold_fn(scores, TAU)).detach()
    numeric = torch.zeros_like(masked)
    eps = 1e-6
    for index in range(masked.numel()):
        delta = torch.zeros(masked.numel(), dtype=torch.float64)
        delta[index] = eps
        delta = delta.view_as(masked)
        numeric.view(-1)[index] = (loss_of(masked + delta) - loss_of(masked - delta)) / (2 * eps)
    torch.testing.assert_close(scores.grad, numeric * weight, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1001])
def test_binary_pack_round_trip_and_size(numel):
    mask = (torch.rand(numel) > 0.5).float().view(-1)
    packed = pack_mask(mask, bits=1)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-numel // 8) == packed_code_bytes(numel, 1)
    assert torch.equal(unpack_mask(packed, shape=mask.shape, bits=1), mask)


@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 3, 3), (2,)])
def test_ternary_pack_round_trip_and_size(shape):
    mask = torch.randint(-1, 2, shape).float()
    packed = pack_mask(mask, bits=2)
    assert packed.numel() == -(-mask.numel() // 4)
    assert torch.equal(unpack_mask(packed, shape=torch.Size(shape), bits=2), mask)


def test_known_bit_layout():
    # Little-endian within a byte: element i is bit i.
    mask = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert pack_mask(mask, bits=1).tolist() == [0b10000001, 0b00000001]
    assert pack_mask(torch.tensor([-1.0, 1.0, 0.0, -1.0]), bits=2).tolist() == [2 | (1 << 2) | (0 << 4) | (2 << 6)]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="only hold 0 and 1"):
        pack_mask(torch.tensor([-1.0, 1.0]), bits=1)
    with pytest.raises(ValueError, match="must be 3 uint8 bytes"):
        unpack_mask(torch.zeros(2, dtype=torch.uint8), shape=(20,), bits=1)
    with pytest.raises(ValueError, match="choose one of"):
        get_mask_kind("sigmoid")


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_codes_of_any_width_round_trip_in_the_fewest_bytes(bits):
    codes = torch.randint(0, 2**bits, (77,), dtype=torch.uint8)
    packed = pack_codes(codes, bits=bits)
    assert packed.numel() == -(-77 * bits // 8)
    assert torch.equal(unpack_codes(packed, numel=77, bits=bits), codes)


def test_binary_masked_weight_equals_weight_times_binarize_in_values_and_gradients():
    from piggyback_avalanche.methods.piggyback.masks import binarize, binary_masked_weight

    torch.manual_seed(0)
    weight = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    scores = (torch.rand(5, 7, dtype=torch.float64) * 1e-2).requires_grad_()
    grad = torch.randn(5, 7, dtype=torch.float64)
    fused = binary_masked_weight(weight, scores, 5e-3)
    fused.backward(grad)
    fused_grads = weight.grad.clone(), scores.grad.clone()
    weight.grad = scores.grad = None
    reference = weight * binarize(scores, 5e-3)
    reference.backward(grad)
    assert torch.equal(fused, reference)
    assert torch.equal(fused_grads[0], weight.grad) and torch.equal(fused_grads[1], scores.grad)
    assert torch.equal(fused_grads[1], grad * weight.detach())  # straight through
    assert 0 < int((scores > 5e-3).sum()) < 35  # both branches taken
