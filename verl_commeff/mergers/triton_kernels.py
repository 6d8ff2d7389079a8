"""The merger's two passes as multi-tensor Triton kernels reading packed sign bits (CUDA).

On a GPU the merger's work per tick is pure memory traffic: one read of every target
gradient G for the statistics, one read-modify-write for the merge, and the held sign(M̄)
(issue 20: ≈ 16 GB per tick at Qwen2.5-1.5B's 1.31 B target coordinates, ≈ 4 ms at an
H200's bandwidth). Two things keep it there:

- **one launch per pass for all targets** (a multi-tensor kernel, like torch's ``_foreach``
  ops): the ~200 gradients are described by a device table of base pointers and sizes, and
  each program handles one fixed-size chunk of one tensor. Per-tensor launches (two per
  target per tick) cost more host time than the GPU needs for the whole merge;
- **sign bits read packed**: 1 bit per coordinate (the ``transport=sign`` wire format,
  :mod:`~verl_commeff.mergers.sign_bits`), so the held M̄ costs n/8 bytes per tensor instead
  of an unpacked byte mask (1.31 GB per rank at 1.5B).

Kernels, with d = 1[G ≥ 0] − p ∈ {−1, 0, 1} and p the held bit (1 = sign(M̄) is +), so that
d² = 1[sign(G) ≠ sign(M̄)] (the formulas of :mod:`~verl_commeff.mergers.kernels`):

1. :func:`_stats_kernel`: per chunk, [Σ G², Σ G²·d², Σ d²] in fp32 into its row of a
   (chunks, 3) buffer; the caller sums the rows in fp64 (a fixed order: the same bits on
   every run, no atomics).
2. :func:`_scale_kernel`: G ← G·(1 − coef·d²), stored only where d² = 1; a program whose
   ``coef`` is 0 (the merger's λ_t = 0 on an invalid or undosed tick) returns before
   touching G, so G stays bit-identical, Inf and NaN included. ``coef`` is read on the
   device: no host sync.

The tables: the chunk layout (tensor index and start of every chunk) depends only on the
sizes, and the pointer table only on where the gradients and bits live; both are built on
the host, copied once through pinned memory (non-blocking) and cached until the sizes or
addresses change (the caching allocator gives a step's gradients the same addresses tick
after tick).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

__all__ = ["BLOCK", "CHUNK", "MultiTensorMerge", "NUM_WARPS", "triton_dtype"]

# Launch shape, chosen on an H200 at the 1.5B shape (benchmarks/bench_gpu_tick.py --tune-kernels,
# docs/benchmarks.md): 16384 coordinates per program (64 KiB of fp32 G, 2 KiB of bits), 2048 per
# inner iteration, 8 warps.
CHUNK = 16384
BLOCK = 2048
NUM_WARPS = 8
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def triton_dtype(dtype: torch.dtype):
    """The Triton element type of a gradient dtype (fp32, bf16, fp16).

    Raises:
        TypeError: another dtype.
    """
    try:
        return _TL_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"the merger's Triton kernels take fp32, bf16 or fp16 gradients, not {dtype}") from None


@triton.jit
def _chunk_refs(pid, chunk_tensor, chunk_start, ptrs, numels, num_tensors,
                G_DTYPE: tl.constexpr, CHUNK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """(G pointer, bits pointer, first coordinate, end coordinate) of program ``pid``'s chunk.

    ``ALIGNED``: every base pointer is a multiple of 16 bytes (checked on the host), which lets
    the compiler issue 16-byte loads and stores.
    """
    t = tl.load(chunk_tensor + pid)
    start = tl.load(chunk_start + pid)
    n = tl.load(numels + t)
    g_ptr = tl.load(ptrs + t).to(tl.pointer_type(G_DTYPE))
    b_ptr = tl.load(ptrs + num_tensors + t).to(tl.pointer_type(tl.uint8))
    if ALIGNED:
        g_ptr = tl.multiple_of(g_ptr, 16)
        b_ptr = tl.multiple_of(b_ptr, 16)
    return g_ptr, b_ptr, start, tl.minimum(start + CHUNK_C, n)


@triton.jit
def _block_index(start, off, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """Coordinates ``start + off + [0, BLOCK)``; chunk starts are multiples of the block."""
    idx = start + off + tl.arange(0, BLOCK_C)
    if ALIGNED:
        idx = tl.max_contiguous(tl.multiple_of(idx, BLOCK_C), BLOCK_C)
    return idx


@triton.jit
def _mismatch(g_ptr, b_ptr, idx, in_range):
    """(G as fp32, d² = 1[sign(G) ≠ sign(M̄)] as fp32, 0 outside the range) at coordinates ``idx``."""
    g = tl.load(g_ptr + idx, mask=in_range, other=0.0).to(tl.float32)
    byte = tl.load(b_ptr + (idx >> 3), mask=in_range, other=0)
    p = ((byte >> (idx & 7).to(tl.uint8)) & 1).to(tl.float32)
    d = (g >= 0).to(tl.float32) - p
    return g, tl.where(in_range, d * d, 0.0)


@triton.jit
def _stats_kernel(chunk_tensor, chunk_start, ptrs, numels, num_tensors, partials,
                  G_DTYPE: tl.constexpr, CHUNK_C: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """Row ``pid`` of ``partials`` = [Σ G², Σ G²·d², Σ d²] over this program's chunk (fp32)."""
    pid = tl.program_id(0)
    g_ptr, b_ptr, start, end = _chunk_refs(pid, chunk_tensor, chunk_start, ptrs, numels, num_tensors, G_DTYPE, CHUNK_C, ALIGNED)
    sq = tl.zeros([BLOCK_C], dtype=tl.float32)
    mis_sq = tl.zeros([BLOCK_C], dtype=tl.float32)
    mis = tl.zeros([BLOCK_C], dtype=tl.float32)
    for off in range(0, CHUNK_C, BLOCK_C):
        idx = _block_index(start, off, BLOCK_C, ALIGNED)
        g, d2 = _mismatch(g_ptr, b_ptr, idx, idx < end)
        g2 = g * g
        sq += g2
        mis_sq += g2 * d2
        mis += d2
    tl.store(partials + pid * 3, tl.sum(sq, axis=0))
    tl.store(partials + pid * 3 + 1, tl.sum(mis_sq, axis=0))
    tl.store(partials + pid * 3 + 2, tl.sum(mis, axis=0))


@triton.jit
def _scale_kernel(chunk_tensor, chunk_start, ptrs, numels, num_tensors, coef_ptr,
                  G_DTYPE: tl.constexpr, CHUNK_C: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """G ← G·(1 − coef·d²) over this program's chunk, stored where d² = 1; nothing when coef = 0."""
    coef = tl.load(coef_ptr)
    if coef != 0.0:
        pid = tl.program_id(0)
        g_ptr, b_ptr, start, end = _chunk_refs(pid, chunk_tensor, chunk_start, ptrs, numels, num_tensors, G_DTYPE, CHUNK_C, ALIGNED)
        for off in range(0, CHUNK_C, BLOCK_C):
            idx = _block_index(start, off, BLOCK_C, ALIGNED)
            in_range = idx < end
            g, d2 = _mismatch(g_ptr, b_ptr, idx, in_range)
            out = g * (1.0 - coef * d2)
            tl.store(g_ptr + idx, out.to(G_DTYPE), mask=in_range & (d2 != 0.0))


def _to_device_async(values: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a device tensor through pinned memory (non-blocking: no host sync)."""
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")  # (len,)
    return host.to(device, non_blocking=True)


class MultiTensorMerge:
    """Launches the two kernels over a list of contiguous same-dtype CUDA tensors and their bits.

    Caches the chunk table (by sizes) and the pointer table (by addresses); see the module doc.

    Args:
        chunk: coordinates per program, a multiple of ``block`` (default :data:`CHUNK`).
        block: coordinates per inner iteration, a power of 2 (default :data:`BLOCK`).
        num_warps: warps per program (default :data:`NUM_WARPS`; None: Triton's default).
        align_hints: tell the compiler that the base pointers are 16-byte aligned when they
            all are (checked on the host per pointer table): 16-byte loads and stores.
    """

    def __init__(self, chunk: int = CHUNK, block: int = BLOCK, num_warps: Optional[int] = NUM_WARPS,
                 align_hints: bool = True):
        if block < 1 or block & (block - 1) or chunk < block or chunk % block:
            raise ValueError(f"MultiTensorMerge: chunk={chunk} must be a multiple of block={block}, "
                             "a power of 2")
        self.chunk, self.block = chunk, block
        self.align_hints = align_hints
        self._aligned = False
        self._launch = {} if num_warps is None else {"num_warps": num_warps}
        self._layout_key: Optional[tuple] = None
        self._chunk_tensor: Optional[torch.Tensor] = None  # (C,) int32: tensor index of each chunk
        self._chunk_start: Optional[torch.Tensor] = None  # (C,) int64: first coordinate of each chunk
        self._numels: Optional[torch.Tensor] = None  # (T,) int64
        self._ptr_key: Optional[tuple] = None
        self._ptrs: Optional[torch.Tensor] = None  # (2T,) int64: G pointers, then bits pointers

    def _tables(self, gs: Sequence[torch.Tensor], bits: Sequence[torch.Tensor]) -> int:
        """Make the chunk and pointer tables current for ``gs``/``bits``; returns the number of chunks."""
        device = gs[0].device
        numels = tuple(g.numel() for g in gs)
        layout_key = (numels, device)
        if layout_key != self._layout_key:
            chunk_tensor, chunk_start = [], []
            for t, n in enumerate(numels):
                starts = range(0, n, self.chunk)
                chunk_tensor.extend([t] * len(starts))
                chunk_start.extend(starts)
            self._chunk_tensor = _to_device_async(chunk_tensor, device, torch.int32)
            self._chunk_start = _to_device_async(chunk_start, device, torch.int64)
            self._numels = _to_device_async(list(numels), device, torch.int64)
            self._layout_key = layout_key
        ptr_key = tuple(g.data_ptr() for g in gs) + tuple(b.data_ptr() for b in bits)
        if ptr_key != self._ptr_key:
            self._ptrs = _to_device_async(list(ptr_key), device, torch.int64)
            self._ptr_key = ptr_key
            self._aligned = self.align_hints and all(p % 16 == 0 for p in ptr_key)
        return self._chunk_tensor.numel()

    def stats(self, gs: Sequence[torch.Tensor], bits: Sequence[torch.Tensor]) -> torch.Tensor:
        """[Σ G², Σ_{mismatch} G², #mismatch] over all of ``gs``: a (3,) fp64 device tensor.

        Args:
            gs: T contiguous CUDA tensors of one dtype (fp32, bf16 or fp16), none empty.
            bits: per tensor, its (ceil(numel / 8),) uint8 packed sign(M̄) bits on the same device.
        """
        chunks = self._tables(gs, bits)
        partials = torch.empty(chunks, 3, dtype=torch.float32, device=gs[0].device)  # (C, 3)
        _stats_kernel[(chunks,)](self._chunk_tensor, self._chunk_start, self._ptrs, self._numels, len(gs), partials,
                                 G_DTYPE=triton_dtype(gs[0].dtype), CHUNK_C=self.chunk, BLOCK_C=self.block,
                                 ALIGNED=self._aligned, **self._launch)
        return partials.sum(dim=0, dtype=torch.float64)  # (3,)

    def scale_mismatched_(self, gs: Sequence[torch.Tensor], bits: Sequence[torch.Tensor], coef: torch.Tensor) -> None:
        """G ← G·(1 − coef·1[mismatch]) in place on every tensor; ``coef``: 0-d fp32 on their device."""
        chunks = self._tables(gs, bits)
        _scale_kernel[(chunks,)](self._chunk_tensor, self._chunk_start, self._ptrs, self._numels, len(gs), coef,
                                 G_DTYPE=triton_dtype(gs[0].dtype), CHUNK_C=self.chunk, BLOCK_C=self.block,
                                 ALIGNED=self._aligned, **self._launch)
