"""``signed_ema``: keep the fast gradient's magnitude, take the anchor's sign (SPEC §4).

    G′ = G + λ_t·δ_t,   δ_t = (1 − α)·(|G| ⊙ sign(M̄) − G)

With λ_t = 1 this is exactly G′ = α·G + (1 − α)·|G| ⊙ sign(M̄) (the seed's merger; α = 0.25).
Only sign(M̄) is used, so it works from packed sign bits (``transport=sign``) as well.

Because |G|·sign(M̄) − G is 0 where sign(G) = sign(M̄) and −2G where they differ
(sign(0) = +, see ``sign_bits``), the correction is applied as

    δ_t = −2(1 − α)·G on sign-mismatched coordinates, 0 elsewhere,

so ‖δ_t‖² = 4(1 − α)²·Σ_{mismatch} G², a statistic the base class already reduces, and
the merge is G ← G·(1 − 2λ_t(1 − α)) on mismatched coordinates (one fused pass, :meth:`~verl_commeff.mergers.kernels.MergerKernels.scale_mismatched_`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from verl_commeff.mergers.base import Merger
from verl_commeff.mergers.kernels import HeldMasks
from verl_commeff.mergers.stats import MISMATCH_G_SQ
from verl_commeff.mergers.registry import register_merger

__all__ = ["SignedEMAMerger"]


@register_merger("signed_ema")
class SignedEMAMerger(Merger):
    """G′ = G + λ_t·(1 − α)·(|G| ⊙ sign(M̄) − G), in place, every warm tick.

    Args:
        cfg: the merger config (``alpha``, ``age_decay``, ``adaptive``, ``checksum_every``).
        process_group: see :class:`~verl_commeff.mergers.base.Merger`.
        checksum_group: see :class:`~verl_commeff.mergers.base.Merger`.
    """

    name = "signed_ema"
    signs_suffice = True  # anchor.transport=auto sends sign bits

    def _delta_sq(self, stats: torch.Tensor) -> torch.Tensor:
        """‖δ_t‖² = 4(1 − α)²·Σ_{mismatch} G²."""
        return (2.0 * (1.0 - self.alpha)) ** 2 * stats[MISMATCH_G_SQ]

    def _merge_(self, g_local: Sequence[torch.Tensor], masks: HeldMasks, lam: torch.Tensor) -> None:
        """G ← G − 2λ_t(1 − α)·G on mismatched coordinates (= G + λ_t·δ_t), one fused pass."""
        coef = (lam * (2.0 * (1.0 - self.alpha))).to(torch.float32)  # 0-d on the gradients' device
        self.kernels.scale_mismatched_(g_local, masks, coef)
