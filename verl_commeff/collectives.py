"""Thin cross-rank helpers over ``torch.distributed`` shared by the codec and the mergers.

Every function is a no-op (or the local answer) when ``torch.distributed`` is not
initialised, so the core library runs unchanged in one process. None of them moves a
tensor to the host: results stay on the tensors' device, to be read once per step.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

__all__ = ["all_reduce_", "is_distributed", "tensor_checksum", "identical_across_ranks"]


def is_distributed(group: Optional[dist.ProcessGroup] = None) -> bool:
    """True when a process group with more than one rank is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce of ``tensor`` over ``group``; the identity in one process."""
    if is_distributed(group):
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def tensor_checksum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A cheap order-sensitive fingerprint of ``tensors``: fp64 scalar on their device.

    Sum of each tensor's elements plus a position-weighted sum, so a swapped pair of
    tensors or a sign flip changes it. Not cryptographic: it detects drift, not attacks.
    """
    total = None
    for i, t in enumerate(tensors):
        flat = t.detach().reshape(-1).to(torch.float64)  # (numel,)
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64) / max(flat.numel(), 1)
        part = flat.sum() + (i + 1) * torch.dot(flat, weights)
        total = part if total is None else total + part
    if total is None:
        return torch.zeros((), dtype=torch.float64)
    return total


def identical_across_ranks(tensors: Iterable[torch.Tensor], group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Bool scalar tensor: the checksum of ``tensors`` is the same on every rank of ``group``.

    One all-reduce of a 2-vector (max and negated min in one MAX reduction).
    """
    c = tensor_checksum(tensors)
    both = torch.stack([c, -c])  # (2,)
    all_reduce_(both, group, op=dist.ReduceOp.MAX)
    return both[0] == -both[1]
