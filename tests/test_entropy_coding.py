"""Entropy coding of packed codes: lossless on every kind of mask, within
the entropy bound, and refusing streams that do not decode to what they say."""

import math

import numpy as np
import pytest
import torch
from conftest import packnet_mlp_with_tasks

from piggyback_avalanche.task_aware.bit_packing import pack_codes
from piggyback_avalanche.task_aware.entropy_coding import (
    CodeLayout,
    CodingError,
    coded_nbytes,
    decode_codes,
    decode_state,
    encode_codes,
    encode_state,
)


def _binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _codes(kind: str) -> tuple:
    generator = torch.Generator().manual_seed(0)
    if kind == "ones":
        return torch.ones(64, 27, dtype=torch.uint8), 1
    if kind == "zeros":
        return torch.zeros(64, 27, dtype=torch.uint8), 1
    if kind == "random":
        return (torch.rand(50, 33, generator=generator) < 0.5).to(torch.uint8), 1
    if kind == "structured":  # whole rows off, the rest on; a checkerboard in one row
        codes = torch.ones(32, 40, dtype=torch.uint8)
        codes[::3] = 0
        codes[1, ::2] = 0
        return codes, 1
    if kind == "ternary":
        return torch.randint(0, 3, (16, 25), generator=generator, dtype=torch.uint8), 2
    if kind == "owners":  # PackNet: up to 255 owners in 8 bits
        return torch.randint(0, 256, (8, 64), generator=generator, dtype=torch.uint8), 8
    if kind == "one row":
        return torch.tensor([[1, 0, 1, 1, 1, 0, 1]], dtype=torch.uint8), 1
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["ones", "zeros", "random", "structured", "ternary", "owners", "one row"])
def test_the_round_trip_is_bit_exact_on_masks_of_every_density(kind):
    codes, bits = _codes(kind)
    layout = CodeLayout(numel=codes.numel(), bits=bits, rows=codes.shape[0])
    packed = pack_codes(codes, bits=bits)
    coded = encode_codes(packed, layout)
    decoded = decode_codes(coded)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, packed)
    if kind in ("ones", "zeros"):
        assert coded["stream"].numel() == 0 and coded_nbytes(coded) <= 2  # its count, and no stream


def test_no_codes_round_trip():
    layout = CodeLayout(numel=0, bits=1, rows=1)
    packed = pack_codes(torch.zeros(0, dtype=torch.uint8), bits=1)
    assert torch.equal(decode_codes(encode_codes(packed, layout)), packed)


@pytest.mark.parametrize("density", [0.5, 0.9, 0.99])
def test_an_iid_mask_codes_within_5_percent_of_its_entropy(density):
    generator = torch.Generator().manual_seed(1)
    codes = (torch.rand(256, 800, generator=generator) < density).to(torch.uint8)
    ones = codes.float().mean().item()
    bound = codes.numel() * _binary_entropy(ones) / 8
    coded = encode_codes(pack_codes(codes, bits=1), CodeLayout(numel=codes.numel(), bits=1, rows=256))
    assert bound * 0.999 <= coded_nbytes(coded) <= bound * 1.05
    if density > 0.5:
        assert coded_nbytes(coded) < codes.numel() / 8  # below one bit per weight


def test_rows_of_different_density_code_below_the_layers_entropy():
    generator = torch.Generator().manual_seed(2)
    density = torch.linspace(0.6, 1.0, 128).unsqueeze(1)
    codes = (torch.rand(128, 1000, generator=generator) < density).to(torch.uint8)
    layer_bound = codes.numel() * _binary_entropy(codes.float().mean().item()) / 8
    row_bound = sum(1000 * _binary_entropy(row.float().mean().item()) / 8 for row in codes)
    coded = encode_codes(pack_codes(codes, bits=1), CodeLayout(numel=codes.numel(), bits=1, rows=128))
    assert int(coded["model"]) == 1  # one distribution per row paid for its counts
    assert coded_nbytes(coded) < 0.95 * layer_bound
    assert coded_nbytes(coded) <= 1.05 * row_bound + coded["counts"].nbytes


def _coded():
    codes, _ = _codes("random")
    return encode_codes(pack_codes(codes, bits=1), CodeLayout(numel=codes.numel(), bits=1, rows=codes.shape[0]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: {**c, "stream": c["stream"] ^ (1 << 28)}, "corrupt"),
        (lambda c: {**c, "stream": c["stream"][:-1]}, "corrupt|does not decode"),
        (lambda c: {**c, "counts": c["counts"] + 1}, "do not fit their layout|corrupt"),
        (lambda c: {**c, "counts": c["counts"][:-1]}, "do not fit their layout"),
        (lambda c: {**c, "crc32": c["crc32"] + 1}, "CRC-32 does not match"),
        (lambda c: {**c, "entropy_coded_codes": torch.tensor(2)}, "version 2; this version reads 1"),
        (lambda c: {**c, "layout": torch.tensor([10, 1, 3])}, "without a valid layout"),
        (lambda c: {k: v for k, v in c.items() if k != "crc32"}, "malformed"),
    ],
)
def test_a_damaged_record_is_refused(damage, message):
    with pytest.raises(CodingError, match=message):
        decode_codes(damage(_coded()))


def test_a_state_codes_only_the_keys_it_is_told_and_decodes_back():
    codes, _ = _codes("structured")
    packed = pack_codes(codes, bits=1)
    weight = torch.randn(3, 3)
    coded = encode_state({"mask": packed, "weight": weight}, {"mask": CodeLayout(numel=1280, bits=1, rows=32)})
    assert coded["weight"] is weight and set(coded["mask"]) >= {"stream", "counts", "crc32"}
    decoded = decode_state(coded)
    assert torch.equal(decoded["mask"], packed) and decoded["weight"] is weight
    with pytest.raises(CodingError, match=r"^mask: "):
        decode_state({"mask": {**coded["mask"], "crc32": coded["mask"]["crc32"] + 1}})


def test_a_layout_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="rows must divide numel"):
        CodeLayout(numel=10, bits=1, rows=3)
    with pytest.raises(ValueError, match="bits be 1 to 8"):
        CodeLayout(numel=10, bits=9, rows=1)


def test_counts_are_stored_in_the_smallest_integer_type():
    codes = np.ones((1, 70_000), dtype=np.uint8)
    codes[0, :5] = 0
    packed = pack_codes(torch.from_numpy(codes), bits=1)
    coded = encode_codes(packed, CodeLayout(numel=codes.size, bits=1, rows=1))
    assert coded["counts"].dtype == torch.int32 and coded["counts"].tolist() == [[69_995]]


def test_packnet_owners_are_coded_and_decode_back():
    model = packnet_mlp_with_tasks(3)
    layouts = model.code_layouts()
    assert layouts == {"backbone.0.packed_owners": CodeLayout(numel=48, bits=2, rows=8)}
    state = model.state_dict()
    decoded = decode_state(encode_state(state, layouts))
    assert all(torch.equal(decoded[k], state[k]) for k in state)
