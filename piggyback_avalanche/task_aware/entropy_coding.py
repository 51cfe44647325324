"""Lossless entropy coding of packed per-task codes (Piggyback's masks,
PackNet's weight owners) for files at rest.

In memory a frozen task's codes stay bit-packed (:mod:`.bit_packing`), the
fastest form to unpack. A file stores them range-coded with
`constriction <https://bamler-lab.github.io/constriction/>`_ under the
smaller of two models, both fitted to the codes themselves:

- one distribution for the whole tensor (codes as i.i.d. draws: the coded
  size is the tensor's empirical entropy, plus a few bytes);
- one distribution per row (a layer's output unit: its filter), which pays
  when rows differ in density, as masks learned per filter do, and costs the
  rows' symbol counts.

A coded tensor is a plain dict of tensors (:class:`CodedCodes`), so that
files read with ``torch.load(weights_only=True)`` hold it; it says what it
holds (its :class:`CodeLayout`) and is checked when decoded: the decoded
codes must have the stored counts and the stored CRC-32, else the file is
corrupt.
"""

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import torch
from torch import Tensor

from piggyback_avalanche.task_aware.bit_packing import pack_codes, packed_code_bytes, unpack_codes

__all__ = [
    "CodeLayout",
    "CodedCodes",
    "CodingError",
    "encode_codes",
    "decode_codes",
    "is_coded",
    "encode_state",
    "decode_state",
    "coded_nbytes",
    "coded_layout",
]

_MARKER = "entropy_coded_codes"
_VERSION = 1
_WHOLE, _PER_ROW = 0, 1

CodedCodes = dict[str, Tensor]
"""A coded tensor of packed codes: ``{"entropy_coded_codes": version,
"layout": [numel, bits, rows], "model": 0 (whole tensor) or 1 (per row),
"counts": symbol counts per context, "stream": the range coder's words,
"crc32": of the packed bytes}``, all tensors."""


class CodingError(ValueError):
    """Coded codes that do not decode to what they say they hold."""


@dataclass(frozen=True)
class CodeLayout:
    """How a tensor of packed codes is laid out: ``numel`` codes of ``bits``
    bits each (:func:`~.bit_packing.pack_codes`), in ``rows`` rows of equal
    length (a layer's output units), the contexts of the per-row model.

    :param numel: the number of codes.
    :param bits: bits per code, 1 to 8.
    :param rows: rows of ``numel // rows`` codes; must divide ``numel``.
    """

    numel: int
    bits: int
    rows: int

    def __post_init__(self) -> None:
        if self.numel < 0 or not 1 <= self.bits <= 8 or self.rows < 1 or self.numel % self.rows:
            raise ValueError(f"Invalid code layout {self}: rows must divide numel, bits be 1 to 8.")

    @property
    def packed_bytes(self) -> int:
        """Bytes of the codes bit-packed (their size in memory)."""
        return packed_code_bytes(self.numel, self.bits)


def _row_counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """How often each symbol occurs in each row of ``symbols`` (rows ×
    columns), counted in one pass."""
    rows = symbols.shape[0]
    offsets = (np.arange(rows, dtype=np.int64) * alphabet)[:, None]
    return np.bincount((symbols + offsets).ravel(), minlength=rows * alphabet).reshape(rows, alphabet)


def _encode(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Range-code ``symbols`` (rows × columns) with one categorical
    distribution per row of ``counts``."""
    encoder = constriction.stream.queue.RangeEncoder()
    for row, row_counts in zip(symbols, counts):
        if np.count_nonzero(row_counts) > 1:  # a row of one symbol costs nothing beyond its counts
            encoder.encode(row, constriction.stream.model.Categorical(row_counts.astype(np.float64), perfect=False))
    return encoder.get_compressed()


def _decode(stream: np.ndarray, counts: np.ndarray, columns: int) -> np.ndarray:
    decoder = constriction.stream.queue.RangeDecoder(stream)
    rows: list[np.ndarray] = []
    for row_counts in counts:
        present = np.flatnonzero(row_counts)
        if len(present) == 1:
            rows.append(np.full(columns, present[0], dtype=np.int32))
        else:
            model = constriction.stream.model.Categorical(row_counts.astype(np.float64), perfect=False)
            rows.append(decoder.decode(model, columns))
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)


def _count_dtype(largest: int) -> torch.dtype:
    return next(d for d in (torch.uint8, torch.int16, torch.int32, torch.int64) if largest <= torch.iinfo(d).max)


def encode_codes(packed: Tensor, layout: CodeLayout) -> CodedCodes:
    """Entropy-code bit-packed codes losslessly, under whichever model (one
    distribution for the tensor, or one per row) gives fewer bytes.

    :param packed: the ``uint8`` bytes from :func:`~.bit_packing.pack_codes`.
    :param layout: what they hold.
    :raises ValueError: if ``packed`` does not fit ``layout``.
    """
    packed = packed.detach().cpu().contiguous()
    codes = unpack_codes(packed, numel=layout.numel, bits=layout.bits).numpy().astype(np.int32)
    alphabet = int(codes.max()) + 1 if codes.size else 1
    symbols = codes.reshape(layout.rows, -1)
    row_counts = _row_counts(symbols, alphabet) if symbols.size else None
    candidates = []
    for model in (_WHOLE, _PER_ROW):
        if row_counts is None or (model == _PER_ROW and layout.rows == 1):
            continue
        counts = row_counts.sum(axis=0, keepdims=True) if model == _WHOLE else row_counts
        stream = _encode(codes.reshape(1, -1) if model == _WHOLE else symbols, counts)
        stored = counts[:, 1:]  # the first symbol's count follows from the row length
        dtype = _count_dtype(int(stored.max(initial=0)))
        candidates.append((stream.nbytes + stored.size * dtype.itemsize, model, stored, dtype, stream))
    if candidates:
        _, model, stored, dtype, stream = min(candidates, key=lambda c: c[0])
    else:  # no codes at all
        model, stored, dtype, stream = _WHOLE, np.zeros((1, 0), np.int64), torch.uint8, np.zeros(0, np.uint32)
    return {
        _MARKER: torch.tensor(_VERSION),
        "layout": torch.tensor([layout.numel, layout.bits, layout.rows]),
        "model": torch.tensor(model),
        "counts": torch.from_numpy(np.ascontiguousarray(stored)).to(dtype),
        "stream": torch.from_numpy(stream.view(np.int32).copy()),
        "crc32": torch.tensor(zlib.crc32(packed.numpy().tobytes())),
    }


def is_coded(value: Any) -> bool:
    """Whether ``value`` is a coded tensor from :func:`encode_codes`."""
    return isinstance(value, Mapping) and _MARKER in value


def coded_layout(coded: CodedCodes) -> CodeLayout:
    """The layout a coded tensor says it holds.

    :raises CodingError: if it says nothing sensible.
    """
    try:
        numel, bits, rows = (int(v) for v in coded["layout"].tolist())
        return CodeLayout(numel=numel, bits=bits, rows=rows)
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        raise CodingError(f"a coded tensor without a valid layout ({error})") from None


def decode_codes(coded: CodedCodes) -> Tensor:
    """Inverse of :func:`encode_codes`: the bit-packed ``uint8`` codes.

    :raises CodingError: if the record is malformed, of another version, or
        decodes to codes whose counts or CRC-32 differ from the stored ones.
    """
    layout = coded_layout(coded)
    try:
        if int(coded[_MARKER]) != _VERSION:
            raise CodingError(f"coded codes of version {int(coded[_MARKER])}; this version reads {_VERSION}")
        model = int(coded["model"])
        stored = coded["counts"].numpy().astype(np.int64)
        stream = coded["stream"].numpy().view(np.uint32)
        crc = int(coded["crc32"])
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        raise CodingError(f"a malformed coded tensor ({error!r})") from None
    contexts = 1 if model == _WHOLE else layout.rows
    columns = layout.numel // contexts
    if model not in (_WHOLE, _PER_ROW) or stored.ndim != 2 or stored.shape[0] != contexts or (stored < 0).any():
        raise CodingError("coded codes whose counts do not fit their layout")
    first = columns - stored.sum(axis=1, keepdims=True)
    if (first < 0).any() or stored.shape[1] >= 2**layout.bits:
        raise CodingError("coded codes whose counts do not fit their layout")
    counts = np.concatenate([first, stored], axis=1)
    try:
        codes = _decode(stream, counts, columns) if layout.numel else np.zeros(0, dtype=np.int32)
    except Exception as error:  # garbage mostly decodes silently (caught below), else the coder's own errors
        raise CodingError(f"a coded stream that does not decode ({error})") from None
    if codes.size != layout.numel or (codes >= counts.shape[1]).any():
        raise CodingError("coded codes that decode to other symbols than they store: the stream is corrupt")
    decoded = _row_counts(codes.reshape(contexts, -1), counts.shape[1])
    if decoded.shape != counts.shape or (decoded != counts).any():
        raise CodingError("coded codes that decode to other counts than they store: the stream is corrupt")
    packed = pack_codes(torch.from_numpy(codes.astype(np.uint8)), bits=layout.bits)
    if zlib.crc32(packed.numpy().tobytes()) != crc:
        raise CodingError("coded codes whose CRC-32 does not match: the stream is corrupt")
    return packed


def coded_nbytes(coded: CodedCodes) -> int:
    """Bytes of a coded tensor's stream and counts (its size at rest, less a
    few bytes of header)."""
    return int(coded["stream"].nbytes + coded["counts"].nbytes)


def encode_state(state: Mapping[str, Any], layouts: Mapping[str, CodeLayout]) -> dict[str, Any]:
    """``state`` with the tensors named in ``layouts`` entropy-coded."""
    return {key: encode_codes(value, layouts[key]) if key in layouts else value for key, value in state.items()}


def decode_state(state: Mapping[str, Any], *, largest: CodeLayout | None = None) -> dict[str, Any]:
    """``state`` with every coded tensor decoded to its packed codes.

    :param largest: the most codes and rows a coded tensor may declare
        (what the largest layer of the model that reads them has), checked
        for every tensor before any is decoded, so that a small file cannot
        make decoding allocate or loop beyond what the model needs.
    :raises CodingError: naming the first key that does not decode or
        declares more than ``largest``.
    """
    if largest is not None:
        for key, value in state.items():
            if is_coded(value):
                layout = coded_layout(value)
                if layout.numel > largest.numel or layout.rows > largest.rows:
                    raise CodingError(
                        f"{key}: declares {layout.numel} codes in {layout.rows} rows, more than the model's largest "
                        f"layer holds ({largest.numel} in {largest.rows})"
                    )
    decoded = {}
    for key, value in state.items():
        if is_coded(value):
            try:
                value = decode_codes(value)
            except CodingError as error:
                raise CodingError(f"{key}: {error}") from None
        decoded[key] = value
    return decoded
