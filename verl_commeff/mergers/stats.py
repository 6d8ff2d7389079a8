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

Cost per tick (issues 11, 20): sign(M̄) is put in the form the kernels read once per held
M̄ (:meth:`~verl_commeff.mergers.kernels.MergerKernels.hold_masks`: packed bits for the
Triton kernels, uint8 masks otherwise), and the three sums come from one fused pass over G
and its mask (:mod:`~verl_commeff.mergers.kernels`), so a tick allocates nothing the size
of the gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from verl_commeff.collectives import all_reduce_
from verl_commeff.mergers.dose import STAT_DTYPE
from verl_commeff.mergers.kernels import HeldMasks, MergerKernels
from verl_commeff.mergers.sign_bits import PackedSigns

__all__ = ["G_SQ", "GM_DOT", "MISMATCH_COUNT", "MISMATCH_G_SQ", "M_SQ", "NUMEL", "N_STATS", "global_stats",
           "held_sq_norm"]

G_SQ, MISMATCH_G_SQ, MISMATCH_COUNT, NUMEL, GM_DOT, M_SQ = range(6)
N_STATS = 6

LocalHeld = Union[Sequence[torch.Tensor], PackedSigns]  # local M̄ tensors or their packed signs


def held_sq_norm(dense_held: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖M̄_i‖² of this rank's local M̄ tensors (one foreach norm), a 0-d fp64 tensor.

    It depends on the held M̄ alone: the merger computes it once per hold, like the masks.
    """
    m_norms = torch.stack(torch._foreach_norm(list(dense_held), 2, dtype=torch.float32)).to(STAT_DTYPE)  # (T,)
    return m_norms.square().sum()


def _fp32_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ accumulated in fp32 (no copy when already fp32), as a 0-d fp32 tensor."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def global_stats(
    g_local: Sequence[torch.Tensor],
    masks: HeldMasks,
    dense_held: Optional[Sequence[torch.Tensor]],
    reduce: bool,
    group: Optional[dist.ProcessGroup] = None,
    kernels: Optional[MergerKernels] = None,
    held_sq: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The tick's global statistics (see the module doc), a (N_STATS,) fp64 device tensor.

    Steps:
        1. One pass of the fused kernels over every tensor (:meth:`MergerKernels.stats`):
           Σ‖G_i‖², Σ G_i² over sign-mismatched coordinates and their count.
        2. With dense M̄ also ⟨G_i, M̄_i⟩, and ‖M̄‖² (``held_sq``, or :func:`held_sq_norm`).
        3. Sum across tensors in fp64 into one (N_STATS,) vector; if ``reduce``, all-reduce
           it (SUM) once over ``group``.

    Args:
        g_local: the local gradient tensors, T of them.
        masks: sign(M̄) in the kernels' form (:meth:`MergerKernels.hold_masks`).
        dense_held: the local M̄ tensors when held dense (for ⟨G, M̄⟩ and ‖M̄‖²), None
            for sign bits.
        reduce: whether the tensors are shards whose sums must be all-reduced.
        group: the shard group (None: the default group).
        kernels: the kernels that made ``masks`` (default: eager ones).
        held_sq: :func:`held_sq_norm` of ``dense_held`` when the caller keeps it (None: computed here).
    """
    kernels = MergerKernels("eager") if kernels is None else kernels
    device = g_local[0].device
    # Step 1: the fused per-tensor sums.
    g_sq, mis_sq, mis_count = kernels.stats(g_local, masks).to(STAT_DTYPE).unbind()
    # Step 2: the dense-only sums.
    zero = torch.zeros((), dtype=STAT_DTYPE, device=device)
    gm_dot, m_sq = zero, zero
    if dense_held is not None:
        m_sq = held_sq_norm(dense_held) if held_sq is None else held_sq
        gm_dot = torch.stack([_fp32_dot(g, m) for g, m in zip(g_local, dense_held)]).to(STAT_DTYPE).sum()
    # Step 3: one vector, one all-reduce.
    numel = torch.full((), float(sum(g.numel() for g in g_local)), dtype=STAT_DTYPE, device=device)
    stats = torch.stack([g_sq, mis_sq, mis_count, numel, gm_dot, m_sq])  # (N_STATS,)
    if reduce:
        all_reduce_(stats, group)
    return stats
