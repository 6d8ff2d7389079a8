"""How the merger sees the gradients: local views, the reduction group, M̄'s layout check.

Three layouts are supported, all merged elementwise on the local tensors:

- whole tensors (one process, or replicated on every rank): local sums are global, no
  reduction;
- plain local shards (FSDP1 flat-param shards, hand-made row shards): the caller passes
  the shard ``process_group`` and the per-rank partial sums are all-reduced over it;
- DTensors (FSDP2): ``to_local()`` (an alias, so in-place ops write through) and the
  group of the mesh dimension the tensors are sharded over (Replicate dims, e.g. HSDP's
  replica dim, hold copies and are not reduced).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()  # type: ignore[assignment,misc]

__all__ = ["check_held_layout", "local_view", "reduce_group"]


def local_view(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (an alias: in-place ops write through), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def reduce_group(
    grads: Sequence[torch.Tensor], process_group: Optional[dist.ProcessGroup]
) -> tuple[bool, Optional[dist.ProcessGroup]]:
    """Whether the merger's partial sums need an all-reduce, and over which group.

    Args:
        grads: the gradients as given (tensors or DTensors).
        process_group: an explicit shard group; it wins over a DTensor mesh.

    Returns:
        (reduce, group): ``(True, process_group)`` when one is given; for DTensors
        ``(True, mesh group of the sharded dim)`` or ``(False, None)`` when replicated;
        ``(False, None)`` for plain whole tensors.

    Raises:
        TypeError: DTensors mixed with plain tensors.
        ValueError: different meshes or shard dims, a Partial placement, or sharding over
            several mesh dims (pass the flattened group as ``process_group`` then).
    """
    if process_group is not None:
        return True, process_group
    is_dt = [isinstance(g, DTensor) for g in grads]
    if not any(is_dt):
        return False, None
    if not all(is_dt):
        raise TypeError(f"Merger.apply_: grads mix DTensors and plain tensors (grads[{is_dt.index(False)}] is plain)")
    mesh, placements = grads[0].device_mesh, grads[0].placements
    shard_dims: tuple[int, ...] = ()
    for i, g in enumerate(grads):
        if g.device_mesh != mesh:
            raise ValueError(f"Merger.apply_: grads[{i}] lives on another device mesh than grads[0]")
        if any(p.is_partial() for p in g.placements):
            raise ValueError(f"Merger.apply_: grads[{i}] has a Partial placement {g.placements}: reduce it first")
        dims = tuple(d for d, p in enumerate(g.placements) if p.is_shard())
        if i == 0:
            shard_dims = dims
        elif dims != shard_dims:
            raise ValueError(
                f"Merger.apply_: grads[{i}] is sharded over mesh dims {dims}, grads[0] over {shard_dims} "
                f"(placements {g.placements} vs {placements})"
            )
    if not shard_dims:
        return False, None
    if len(shard_dims) > 1:
        raise ValueError(
            f"Merger.apply_: grads are sharded over mesh dims {shard_dims} ({placements}); pass the flattened "
            "shard group as process_group"
        )
    return True, mesh.get_group(shard_dims[0])


def check_held_layout(
    shapes: Sequence[torch.Size], devices: Sequence[torch.device], g_local: Sequence[torch.Tensor]
) -> None:
    """Check that the held M̄ (local shapes and devices) matches the local gradients.

    Raises:
        ValueError: naming the first mismatching index and both shapes (or devices).
    """
    if len(shapes) != len(g_local):
        raise ValueError(f"Merger.apply_: M̄ holds {len(shapes)} tensors but {len(g_local)} gradients were given")
    for i, (shape, device, g) in enumerate(zip(shapes, devices, g_local)):
        if shape != g.shape:
            raise ValueError(
                f"Merger.apply_: M̄[{i}] has local shape {tuple(shape)} but grads[{i}] has {tuple(g.shape)} "
                "(M̄ must be laid out like the gradients on this rank)"
            )
        if device != g.device:
            raise ValueError(f"Merger.apply_: M̄[{i}] is on {device} but grads[{i}] is on {g.device}")
