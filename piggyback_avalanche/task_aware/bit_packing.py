"""Integer codes of 1 to 8 bits each, packed into bytes: how frozen
per-task tensors (Piggyback's masks, PackNet's weight owners) are stored."""

import torch
from torch import Tensor

__all__ = ["packed_code_bytes", "pack_codes", "unpack_codes"]


def packed_code_bytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes take at ``bits`` bits each."""
    return -(-numel * bits // 8)


def pack_codes(codes: Tensor, *, bits: int) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into a flat ``uint8`` tensor of
    ``ceil(numel * bits / 8)`` bytes, as one little-endian bit stream.

    :param codes: the codes, any shape and integer dtype.
    :param bits: bits per code, 1 to 8.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}.")
    codes = codes.detach().flatten().to(torch.uint8)
    positions = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = ((codes.view(-1, 1) >> positions) & 1).flatten()
    padding = (-stream.numel()) % 8
    if padding:
        stream = torch.cat([stream, stream.new_zeros(padding)])
    byte_positions = torch.arange(8, device=codes.device, dtype=torch.uint8)
    return (stream.view(-1, 8) << byte_positions).sum(dim=1, dtype=torch.uint8)


def unpack_codes(packed: Tensor, *, numel: int, bits: int) -> Tensor:
    """Inverse of :func:`pack_codes`: a flat ``uint8`` tensor of ``numel`` codes.

    :raises ValueError: if ``packed`` has the wrong size or dtype.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}.")
    if packed.dtype != torch.uint8 or packed.numel() != packed_code_bytes(numel, bits):
        raise ValueError(
            f"{numel} packed {bits}-bit codes must be {packed_code_bytes(numel, bits)} "
            f"uint8 bytes; got {packed.numel()} {packed.dtype} elements."
        )
    byte_positions = torch.arange(8, device=packed.device, dtype=torch.uint8)
    stream = ((packed.view(-1, 1) >> byte_positions) & 1).flatten()[: numel * bits]
    positions = torch.arange(bits, device=packed.device, dtype=torch.uint8)
    return (stream.view(numel, bits) << positions).sum(dim=1, dtype=torch.uint8)
