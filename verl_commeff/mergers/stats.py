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
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from verl_commeff.collectives import all_reduce_
from verl_commeff.mergers.dose import STAT_DTYPE
from verl_commeff.mergers.sign_bits import PackedSigns, SignMasks, sign_mask

__all__ = ["G_SQ", "GM_DOT", "MISMATCH_COUNT", "MISMATCH_G_SQ", "M_SQ", "NUMEL", "N_STATS", "global_stats",
           "is_dense", "positive_mask", "sign_mismatch"]

G_SQ, MISMATCH_G_SQ, MISMATCH_COUNT, NUMEL, GM_DOT, M_SQ = range(6)
N_STATS = 6

LocalHeld = Union[Sequence[torch.Tensor], PackedSigns, SignMasks]  # local M̄ tensors or their signs


def is_dense(held: LocalHeld) -> bool:
    """True when ``held`` is M̄ itself (magnitudes too), not only its signs."""
    return not isinstance(held, (PackedSigns, SignMasks))


def positive_mask(held: LocalHeld, i: int) -> torch.Tensor:
    """Bool tensor shaped like M̄_i: True where sign(M̄_i) = + (M̄_i ≥ 0)."""
    if isinstance(held, SignMasks):
        return held.masks[i]  # unpacked once per hold
    if isinstance(held, PackedSigns):
        return sign_mask(held.bits[i], held.shapes[i])
    return held[i] >= 0


def sign_mismatch(g: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Bool tensor like ``g``: True where sign(G) ≠ sign(M̄)."""
    return (g >= 0) != positive


def _fp32_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ accumulated in fp32 (no copy when already fp32), as a 0-d fp32 tensor."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def _sum64(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(parts)).to(STAT_DTYPE).sum()


def global_stats(
    g_local: Sequence[torch.Tensor],
    held: LocalHeld,
    reduce: bool,
    group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """The tick's global statistics (see the module doc), a (N_STATS,) fp64 device tensor.

    Steps:
        1. ‖G_i‖ for all local tensors with one foreach norm (and ‖M̄_i‖ when dense).
        2. Per tensor: the sign-mismatch mask, Σ G² and count over it, and ⟨G, M̄⟩ when dense.
        3. Stack into one (N_STATS,) fp64 vector; if ``reduce``, all-reduce it (SUM) once
           over ``group``.

    Args:
        g_local: the local gradient tensors, T of them.
        held: the local M̄ tensors (same shapes), their :class:`SignMasks` or :class:`PackedSigns`.
        reduce: whether the tensors are shards whose sums must be all-reduced.
        group: the shard group (None: the default group).
    """
    dense = is_dense(held)
    device = g_local[0].device
    # Step 1: norms with foreach kernels.
    g_norms = torch.stack(torch._foreach_norm(list(g_local), 2, dtype=torch.float32)).to(STAT_DTYPE)  # (T,)
    g_sq = g_norms.square().sum()
    zero = torch.zeros((), dtype=STAT_DTYPE, device=device)
    m_sq = zero
    if dense:
        m_norms = torch.stack(torch._foreach_norm(list(held), 2, dtype=torch.float32)).to(STAT_DTYPE)  # (T,)
        m_sq = m_norms.square().sum()
    # Step 2: per-tensor masked sums.
    mis_sq, mis_count, dots = [], [], []
    for i, g in enumerate(g_local):
        mismatch = sign_mismatch(g, positive_mask(held, i))  # (shape) bool
        masked = torch.where(mismatch, g, 0)  # (shape) G on mismatched coordinates, 0 elsewhere
        mis_sq.append(_fp32_dot(masked, masked))
        mis_count.append(mismatch.sum())
        if dense:
            dots.append(_fp32_dot(g, held[i]))
    # Step 3: one vector, one all-reduce.
    numel = torch.full((), float(sum(g.numel() for g in g_local)), dtype=STAT_DTYPE, device=device)
    stats = torch.stack(
        [g_sq, _sum64(mis_sq), _sum64(mis_count), numel, _sum64(dots) if dense else zero, m_sq]
    )  # (N_STATS,)
    if reduce:
        all_reduce_(stats, group)
    return stats
