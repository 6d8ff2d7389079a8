"""Mergers: fold the anchor's held signal M̄ into the fast gradient G every tick (SPEC §4).

Built-ins: ``signed_ema`` (:mod:`.signed_ema`) and ``none`` (:mod:`.none`). The anchor side
keeps M̄ with :class:`AnchorEMA` and may ship it as :class:`PackedSigns`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from verl_commeff.mergers.anchor_ema import AnchorEMA
from verl_commeff.mergers.base import Merger
from verl_commeff.mergers.dose import DoseControl
from verl_commeff.mergers.registry import MERGER_REGISTRY, get_merger_cls, merger_names, register_merger
from verl_commeff.mergers.sign_bits import PackedSigns, pack_signs, unpack_signs

# Built-in mergers: importing registers them.
from verl_commeff.mergers import none as _none  # noqa: E402,F401
from verl_commeff.mergers import signed_ema as _signed_ema  # noqa: E402,F401

if TYPE_CHECKING:
    import torch.distributed as dist

    from verl_commeff.config import MergerConfig

__all__ = [
    "AnchorEMA",
    "DoseControl",
    "MERGER_REGISTRY",
    "Merger",
    "PackedSigns",
    "build_merger",
    "get_merger_cls",
    "merger_names",
    "pack_signs",
    "register_merger",
    "unpack_signs",
]


def build_merger(
    cfg: "MergerConfig",
    process_group: Optional["dist.ProcessGroup"] = None,
    checksum_group: Optional["dist.ProcessGroup"] = None,
    replicated=None,
) -> Merger:
    """The merger selected by ``cfg.name``.

    Args:
        cfg: the merger config.
        process_group: shard group for plain local-shard gradients (FSDP1); None for
            DTensors (their mesh gives it) or whole tensors.
        checksum_group: group of the cross-rank check (None = default group).
        replicated: callable giving the tensors every rank must hold identically (the live Q).
    """
    return get_merger_cls(cfg.name)(cfg, process_group=process_group, checksum_group=checksum_group,
                                    replicated=replicated)
