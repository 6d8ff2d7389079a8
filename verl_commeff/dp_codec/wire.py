"""The data-parallel codec's collectives: the replica and shard groups, and byte counting.

:class:`Wire` issues every collective of one exchange and hands the number of bytes of
each input tensor to the state's :class:`~verl_commeff.dp_codec.state.ByteLedger`. Factors
(P and Q) cross replicas in ``factor_dtype`` when one is set: rounded before the sum,
summed in that dtype, and written back into the full-precision buffer, so every replica
sees the same rounded values. With one replica (simulation) the collective is skipped but
the rounding and the counting still happen: the simulation computes what the real
exchange would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from verl_commeff.dp_codec.state import ByteLedger

__all__ = ["ReplicaGroups", "Wire"]


@dataclass
class ReplicaGroups:
    """The two groups of an HSDP mesh seen from one rank.

    Args:
        replica: ranks holding the same shard in every replica (the slow link); None = no
            other replica (simulation).
        shard: ranks of this replica (FSDP's shard group); None = one shard per replica.
    """

    replica: Optional[dist.ProcessGroup] = None
    shard: Optional[dist.ProcessGroup] = None

    @staticmethod
    def _size(group) -> int:
        return 1 if group is None or not dist.is_initialized() else dist.get_world_size(group)

    @property
    def replicas(self) -> int:
        return self._size(self.replica)

    @property
    def shards(self) -> int:
        return self._size(self.shard)

    @property
    def shard_index(self) -> int:
        return 0 if self.shards == 1 else dist.get_rank(self.shard)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Wire:
    """Issues one exchange's collectives and counts the bytes handed to them."""

    def __init__(self, groups: ReplicaGroups, ledger: ByteLedger, factor_dtype: Optional[torch.dtype] = None):
        self.groups, self.ledger, self.factor_dtype = groups, ledger, factor_dtype

    def all_reduce_replicas(self, flat: torch.Tensor, factors: bool = False) -> torch.Tensor:
        """Sum ``flat`` over the replicas in place (factors in ``factor_dtype`` when set)."""
        low = self.factor_dtype if factors and self.factor_dtype not in (None, flat.dtype) else None
        wire = flat.to(low) if low is not None else flat  # (L,) what crosses the slow link
        self.ledger.add_sent(_nbytes(wire), factors)
        if self.groups.replicas > 1:
            dist.all_reduce(wire, group=self.groups.replica)
        if low is not None:
            flat.copy_(wire)
        return flat

    def all_gather_shards(self, flat: torch.Tensor) -> torch.Tensor:
        """(L,) → (shards·L,): the blocks of every shard, in shard order."""
        if self.groups.shards == 1:
            return flat
        self.ledger.intra += _nbytes(flat)
        out = flat.new_empty(self.groups.shards * flat.numel())
        dist.all_gather_into_tensor(out, flat, group=self.groups.shard)
        return out

    def reduce_scatter_shards(self, flat: torch.Tensor) -> torch.Tensor:
        """(shards·L,) → (L,): this shard's slice of the sum over the replica's shards."""
        if self.groups.shards == 1:
            return flat
        self.ledger.intra += _nbytes(flat)
        out = flat.new_empty(flat.numel() // self.groups.shards)
        dist.reduce_scatter_tensor(out, flat, group=self.groups.shard)
        return out
