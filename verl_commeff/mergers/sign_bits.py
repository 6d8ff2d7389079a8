"""The ``transport=sign`` wire format: the signs of M̄ packed to 1 bit per coordinate.

``signed_ema`` needs only sign(M̄) (SPEC §3, §4), so the anchor can return M̄ as packed
bits: 32× fewer bytes than fp32 shards.

Sign convention (used everywhere in the mergers, for dense M̄ too, so both transports
merge identically):

    sign(x) = +1 if x >= 0 else -1

i.e. **0 (and -0.0) maps to +**; NaN maps to − (``NaN >= 0`` is false).

Bit layout: a tensor is flattened in row-major order; coordinate ``i`` is bit ``i % 8``
(least significant bit first) of byte ``i // 8``; bit 1 means +. The last byte is padded
with 0 bits. A tensor of ``n`` coordinates packs to ``ceil(n / 8)`` uint8 bytes. The same
bit packing of any bool mask (:func:`pack_bool` / :func:`unpack_bool`) also carries the
changed-element masks of delta-encoded weight snapshots (:mod:`verl_commeff.anchor.snapshot_delta`).

The merger unpacks a held :class:`PackedSigns` once per hold
(:meth:`verl_commeff.mergers.kernels.MergerKernels.hold_masks`; the Triton kernels read
the bits as they are), not on every tick.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from verl_commeff.mergers.grad_layout import local_view

__all__ = ["PackedSigns", "pack_bool", "pack_signs", "sign_mask", "unpack_bool", "unpack_signs"]

_BITS_PER_BYTE = 8


@functools.lru_cache(maxsize=None)
def _bit_weights(device: torch.device) -> torch.Tensor:
    """(8,) uint8: the value of bit j, 1 << j; made once per device (a host→device copy otherwise
    ran for every matrix on every tick: issue 11)."""
    return torch.tensor([1 << j for j in range(_BITS_PER_BYTE)], dtype=torch.uint8, device=device)


@dataclass
class PackedSigns:
    """Signs of a list of tensors, 1 bit per coordinate.

    Args:
        bits: one (ceil(numel_i / 8),) uint8 tensor per packed tensor.
        shapes: the shape of each packed tensor (to unpack and to check against the grads).
    """

    bits: list[torch.Tensor]
    shapes: list[torch.Size]

    def __post_init__(self):
        if len(self.bits) != len(self.shapes):
            raise ValueError(f"PackedSigns: len(bits)={len(self.bits)} != len(shapes)={len(self.shapes)}")
        self.shapes = [torch.Size(s) for s in self.shapes]
        for i, (b, shape) in enumerate(zip(self.bits, self.shapes)):
            want = (shape.numel() + _BITS_PER_BYTE - 1) // _BITS_PER_BYTE
            if b.dtype != torch.uint8 or b.dim() != 1 or b.numel() != want:
                raise ValueError(
                    f"PackedSigns: bits[{i}] must be a 1-D uint8 tensor of {want} bytes for shape {tuple(shape)}, "
                    f"got dtype={b.dtype} shape={tuple(b.shape)}"
                )

    def __len__(self) -> int:
        return len(self.bits)

    def nbytes(self) -> int:
        """Bytes on the wire (the packed bits only)."""
        return sum(b.numel() for b in self.bits)


# Byte j of a little-endian int64 word, 0 or 1, times this constant lands on bit 56 + j (bit j of
# the top byte); every other partial product lands below bit 56 or above bit 63 (dropped: the
# product wraps modulo 2^64, as torch's integer multiply does on every backend), and none carries
# into the top byte. So (word * _GATHER_LSBS) >> 56 is the 8 bytes' flags as one byte, bit j = byte j
# (the shift is arithmetic: with bit 7 set the result is negative, and its cast to uint8 keeps the
# low 8 bits, the byte). Little-endian hosts and devices only (x86, ARM, CUDA): byte j of the word is flag j.
_GATHER_LSBS = 0x0102040810204080  # sum over j of 2^(56 - 7j)


def pack_bool(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor, flattened row-major, into (ceil(numel / 8),) uint8 (bit i%8 of byte i//8).

    Steps:
        1. The first ``8·floor(n/8)`` flags viewed as int64 words, one word per output byte.
        2. Each word's 8 flags gathered into its top byte by one multiply and a shift
           (three passes over n/8 words, vectorised; a (n/8, 8) multiply-and-sum was ~10× slower).
        3. The last ``n % 8`` flags (if any) packed by their bit weights and appended.
    """
    flat = mask.reshape(-1)  # (n,) bool
    n_full = flat.numel() - flat.numel() % _BITS_PER_BYTE
    head = flat[:n_full]
    if head.storage_offset() % _BITS_PER_BYTE:
        head = head.clone()  # an int64 view needs an 8-aligned start
    # Step 1: one int64 word per 8 flags (bool is one byte, 0 or 1).
    words = head.view(torch.uint8).view(torch.int64)  # (n // 8,)
    # Step 2: the flags of a word into its top byte.
    packed = (words * _GATHER_LSBS).bitwise_right_shift_(56).to(torch.uint8)  # (n // 8,)
    if n_full == flat.numel():
        return packed
    # Step 3: the tail byte.
    tail = flat[n_full:].to(torch.uint8) * _bit_weights(mask.device)[: flat.numel() - n_full]  # (n % 8,)
    return torch.cat([packed, tail.sum(dtype=torch.uint8).reshape(1)])  # (ceil(n / 8),); bits are disjoint


def unpack_bool(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bool`: (numel,) bool from (ceil(numel / 8),) uint8 (on ``bits``' device)."""
    expanded = (bits.unsqueeze(1) & _bit_weights(bits.device)) != 0  # (nbytes, 8) bool
    return expanded.reshape(-1)[:numel]


def _pack_one(t: torch.Tensor) -> torch.Tensor:
    """Pack sign(t) (0 → +) into (ceil(numel / 8),) uint8."""
    return pack_bool(t.detach() >= 0)


def pack_signs(tensors: Sequence[torch.Tensor]) -> PackedSigns:
    """Pack the signs of ``tensors`` to 1 bit per coordinate (0 → +; see the module doc).

    DTensors are packed from their local shard (``to_local()``): the anchor packs the
    shard each rank will merge against.

    Args:
        tensors: the tensors whose signs to pack (any float dtype, any shape).

    Returns:
        The :class:`PackedSigns`, bits on the tensors' devices.
    """
    local = [local_view(t) for t in tensors]
    return PackedSigns(bits=[_pack_one(t) for t in local], shapes=[t.shape for t in local])


def sign_mask(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Unpack one tensor's bits to a bool mask of ``shape``: True where sign is +.

    Args:
        bits: (ceil(numel / 8),) uint8, as made by :func:`pack_signs`.
        shape: the shape of the packed tensor.
    """
    return unpack_bool(bits, torch.Size(shape).numel()).view(shape)


def unpack_signs(packed: PackedSigns, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Unpack to ±1 tensors of the packed shapes.

    Args:
        packed: the packed signs.
        dtype: dtype of the returned ±1 tensors.

    Returns:
        One tensor per packed tensor, +1 where the source was ≥ 0, −1 elsewhere.
    """
    out = []
    for bits, shape in zip(packed.bits, packed.shapes):
        positive = sign_mask(bits, shape)
        out.append(torch.where(positive, 1, -1).to(dtype))
    return out
