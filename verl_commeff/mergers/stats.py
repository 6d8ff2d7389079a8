"""The merger's global statistics of one tick: per-rank partial sums, ONE all-reduce.

Everything the dose control and the telemetry need is a sum over coordinates, so each
rank sums its local tensors, the sums are stacked into one small fp64 vector and a single
all-reduce makes them global (and bit-identical on every rank, hence λ_t too):

    index          statistic
    G_SQ           ‖G‖²
    MISMATCH_G_SQ  Σ G² over coordinates where sign(G) ≠ sign(M̄)
    MISMATCH_COUNT number of those coordinates
    NUMEL          number of coordinates
    GM_DOT         ⟨G, M̄⟩          (dense M̄ only; 0 with sign bits)
    M_SQ           ‖M̄‖²            (dense M̄ only; 0 with sign bits)

sign(x) = +1 if x ≥ 0 else −1 for G and M̄ alike (see ``sign_bits``). Per-tensor sums
accumulate in fp32, the cross-tensor and cross-rank sums in fp64.

Cost per tick (issue 11): the masks sign(M̄) = + are made once per held M̄
(:func:`positive_masks`), and each tensor's mismatch mask and masked G are written into
reused scratch buffers (:mod:`~verl_commeff.mergers.scratch`), so a tick allocates nothing
the size of the gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from verl_commeff.collectives import all_reduce_
from verl_commeff.mergers.dose import STAT_DTYPE
from verl_commeff.mergers.scratch import Scratch
from verl_commeff.mergers.sign_bits import PackedSigns, sign_mask

__all__ = ["G_SQ", "GM_DOT", "MISMATCH_COUNT", "MISMATCH_G_SQ", "M_SQ", "NUMEL", "N_STATS", "global_stats",
           "positive_masks", "sign_mismatch_"]

G_SQ, MISMATCH_G_SQ, MISMATCH_COUNT, NUMEL, GM_DOT, M_SQ = range(6)
N_STATS = 6

LocalHeld = Union[Sequence[torch.Tensor], PackedSigns]  # local M̄ tensors or their packed signs


def positive_masks(held: LocalHeld) -> list[torch.Tensor]:
    """One bool tensor per M̄_i, shaped like it: True where sign(M̄_i) = + (M̄_i ≥ 0).

    The merger computes these once per held M̄ (sign bits unpacked once, dense M̄ compared
    once) and reuses them every tick until the next hold: one byte per coordinate.
    """
    if isinstance(held, PackedSigns):
        return [sign_mask(bits, shape) for bits, shape in zip(held.bits, held.shapes)]
    return [m >= 0 for m in held]


def sign_mismatch_(out: torch.Tensor, g: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Write sign(G) ≠ sign(M̄) into the bool tensor ``out`` (shaped like ``g``) and return it.

    Two in-place passes over ``out`` (G ≥ 0, then ≠ the held positive mask); no allocation.
    The ≠ runs on uint8 views of the two bool masks (0/1 bytes, the same answer): torch's
    CPU kernel for uint8 is vectorised, the one for bool is not (measured ~40× faster).
    """
    torch.ge(g, 0, out=out)
    return torch.ne(out.view(torch.uint8), positive.view(torch.uint8), out=out)


def _fp32_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ accumulated in fp32 (no copy when already fp32), as a 0-d fp32 tensor."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def _sum64(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(parts)).to(STAT_DTYPE).sum()


def global_stats(
    g_local: Sequence[torch.Tensor],
    positive: Sequence[torch.Tensor],
    dense_held: Optional[Sequence[torch.Tensor]],
    reduce: bool,
    group: Optional[dist.ProcessGroup] = None,
    scratch: Optional[Scratch] = None,
) -> torch.Tensor:
    """The tick's global statistics (see the module doc), a (N_STATS,) fp64 device tensor.

    Steps:
        1. ‖G_i‖ for all local tensors with one foreach norm (and ‖M̄_i‖ when dense).
        2. Per tensor, in reused scratch buffers (no gradient-sized allocation): the
           sign-mismatch mask, its count, Σ G² over it (⟨m, m⟩ with m = G·1[mismatch]),
           and ⟨G, M̄⟩ when dense.
        3. Stack into one (N_STATS,) fp64 vector; if ``reduce``, all-reduce it (SUM) once
           over ``group``.

    Args:
        g_local: the local gradient tensors, T of them.
        positive: per tensor, the bool mask sign(M̄_i) = + (:func:`positive_masks`).
        dense_held: the local M̄ tensors when held dense (for ⟨G, M̄⟩ and ‖M̄‖²), None
            for sign bits.
        reduce: whether the tensors are shards whose sums must be all-reduced.
        group: the shard group (None: the default group).
        scratch: the work buffers to reuse (default: fresh ones, freed on return).
    """
    scratch = Scratch() if scratch is None else scratch
    dense = dense_held is not None
    device = g_local[0].device
    # Step 1: norms with foreach kernels.
    g_norms = torch.stack(torch._foreach_norm(list(g_local), 2, dtype=torch.float32)).to(STAT_DTYPE)  # (T,)
    g_sq = g_norms.square().sum()
    zero = torch.zeros((), dtype=STAT_DTYPE, device=device)
    m_sq = zero
    if dense:
        m_norms = torch.stack(torch._foreach_norm(list(dense_held), 2, dtype=torch.float32)).to(STAT_DTYPE)  # (T,)
        m_sq = m_norms.square().sum()
    # Step 2: per-tensor masked sums in the scratch buffers.
    mis_sq, mis_count, dots = [], [], []
    for i, g in enumerate(g_local):
        mismatch = sign_mismatch_(scratch.take(g, torch.bool), g, positive[i])  # (shape) bool
        mis_count.append(torch.count_nonzero(mismatch))
        # G·1[mismatch]: G on mismatched coordinates, ±0 elsewhere (squares exactly like where(mismatch, G, 0)
        # for finite G; a non-finite G makes the tick invalid either way). The multiply by the uint8 view is
        # ~1.5× faster than torch.where on a CPU.
        masked = torch.mul(g, mismatch.view(torch.uint8), out=scratch.take(g, g.dtype))  # (shape)
        mis_sq.append(_fp32_dot(masked, masked))
        if dense:
            dots.append(_fp32_dot(g, dense_held[i]))
    # Step 3: one vector, one all-reduce.
    numel = torch.full((), float(sum(g.numel() for g in g_local)), dtype=STAT_DTYPE, device=device)
    stats = torch.stack(
        [g_sq, _sum64(mis_sq), _sum64(mis_count), numel, _sum64(dots) if dense else zero, m_sq]
    )  # (N_STATS,)
    if reduce:
        all_reduce_(stats, group)
    return stats
