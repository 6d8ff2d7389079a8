"""Generator-weight snapshots as this rank's local parameter shards.

An anchor worker group of the actor's world size holds exactly the shards actor rank r
holds (a smaller one reshards them, :mod:`verl_commeff.anchor.reshard`): a snapshot is the list of each
parameter's local shard (FSDP2: the DTensor's local tensor; FSDP1 with
``use_orig_params``: the flat-parameter view), copied in module order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from verl_commeff.mergers.grad_layout import local_view

__all__ = ["export_local_shards", "load_local_shards", "publish", "resolve"]


def export_local_shards(module: nn.Module, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Copies of this rank's parameter shards, in ``module.parameters()`` order."""
    with torch.no_grad():
        return [local_view(p).detach().to(device, copy=True) for p in module.parameters()]


def load_local_shards(module: nn.Module, shards: list[torch.Tensor]) -> None:
    """Copy ``shards`` (from :func:`export_local_shards` on the same layout) into ``module``.

    Raises:
        ValueError: the snapshot was taken on another layout (count or shard shape differs).
    """
    params = list(module.parameters())
    if len(params) != len(shards):
        raise ValueError(f"weight snapshot has {len(shards)} shards, this model has {len(params)} parameters: "
                         "the anchor must use the actor's strategy, FSDP layout and world size")
    with torch.no_grad():
        for i, (p, s) in enumerate(zip(params, shards)):
            local = local_view(p)
            if local.shape != s.shape:
                raise ValueError(f"weight snapshot shard {i} has shape {tuple(s.shape)}, this rank's parameter "
                                 f"shard has {tuple(local.shape)}: the anchor must mirror the actor's layout")
            local.copy_(s)


def resolve(value: Any) -> Any:
    """``ray.get`` a Ray ObjectRef; any other value is returned as it is."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a verl dependency
        return value
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def publish(value: Any) -> Any:
    """``ray.put(value)`` when Ray is running (the caller returns the small ref), else ``value``."""
    import ray

    return ray.put(value) if ray.is_initialized() else value
