"""``none``: G′ = G always, the no-merger floor arm (SPEC §4).

It still holds M̄ and records the telemetry (sign agreement between G and M̄, cos when
M̄'s magnitudes are held, ages, cold/warm tick counts), so the floor arm is comparable to
the merging arms. Its applied dose is λ_t = 0 and its correction δ_t = 0; ``merged_ticks``
counts the ticks at which an M̄ was held (the identity rule ran).
"""

from __future__ import annotations

from typing import Optional

import torch

from verl_commeff.mergers.base import Merger
from verl_commeff.mergers.dose import STAT_DTYPE
from verl_commeff.mergers.registry import register_merger

__all__ = ["NoMerger"]


@register_merger("none")
class NoMerger(Merger):
    """The identity merger (telemetry only).

    Args:
        cfg: the merger config (only ``checksum_every`` and ``adaptive.mode`` matter).
        process_group: see :class:`~verl_commeff.mergers.base.Merger`.
        checksum_group: see :class:`~verl_commeff.mergers.base.Merger`.
    """

    name = "none"
    merges = False
    signs_suffice = True

    def _delta_sq(self, stats: torch.Tensor) -> torch.Tensor:
        """No correction: ‖δ_t‖² = 0."""
        return torch.zeros((), dtype=STAT_DTYPE, device=stats.device)

    def _dose(self, c_t: torch.Tensor, age: int, valid: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """No dose: λ_t = 0 (the dose ring is left untouched)."""
        return torch.zeros((), dtype=STAT_DTYPE, device=c_t.device), None
