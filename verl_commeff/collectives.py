"""Thin cross-rank helpers over ``torch.distributed`` shared by the codec and the mergers.

Every function is a no-op (or the local answer) when ``torch.distributed`` is not
initialised, so the core library runs unchanged in one process. None of them moves a
tensor to the host: results stay on the tensors' device, to be read once per step.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

__all__ = ["all_reduce_", "fingerprint", "gather_rows", "identical_across_ranks", "is_distributed", "tensor_checksum",
           "FP_SUM", "FP_ABS", "FP_SQ", "N_FP"]

FP_SUM, FP_ABS, FP_SQ = range(3)  # indices of a fingerprint
N_FP = 3


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


def fingerprint(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """What a rank holds, in three numbers: (Σx, Σ|x|, Σx²) over ``tensors``, a (3,) fp64 device tensor.

    Integer tensors (packed sign bits) count by value, so a flipped bit changes Σx. Cheap
    (one pass per tensor) and order-insensitive within the list: it is compared against
    the same tensors' fingerprint taken elsewhere (the anchor), not used to detect a swap.
    """
    parts = []
    for t in tensors:
        flat = t.detach().reshape(-1).to(torch.float64)  # (numel,)
        parts.append(torch.stack([flat.sum(), flat.abs().sum(), torch.dot(flat, flat)]))  # (3,)
    if not parts:
        return torch.zeros(N_FP, dtype=torch.float64)
    return torch.stack(parts).sum(0)  # (3,)


def gather_rows(row: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Every rank's ``row`` (a 1-D tensor of the same length everywhere) stacked in rank order: (world, n).

    One all-gather of a small vector; ``row[None]`` in one process.
    """
    if not is_distributed(group):
        return row.reshape(1, -1)
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, row.contiguous(), group=group)
    return torch.stack(rows)  # (world, n)
