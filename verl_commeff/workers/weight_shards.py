"""Generator-weight snapshots as this rank's local parameter shards.

An anchor worker group of the actor's world size holds exactly the shards actor rank r
holds (a smaller one reshards them, :mod:`verl_commeff.anchor.reshard`): a snapshot is the list of each
parameter's local shard (FSDP2: the DTensor's local tensor; FSDP1 with
``use_orig_params``: the flat-parameter view), copied in module order.

A snapshot is taken off the actor's critical path as far as the device allows
(:func:`export_local_shards`): from an accelerator, every shard is copied asynchronously
into pinned host memory on a side stream and one event is waited for at the end (one host
synchronisation per snapshot, none per shard); on the CPU the copy is a plain clone.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from verl_commeff.mergers.grad_layout import local_view

__all__ = ["export_local_shards", "host_copies", "live_shards", "load_local_shards", "publish", "resolve"]


def live_shards(module: nn.Module) -> list[torch.Tensor]:
    """This rank's parameter shards themselves (no copy), in ``module.parameters()`` order."""
    return [local_view(p).detach() for p in module.parameters()]


def host_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` on the host: CUDA ones through :func:`_pinned_host_copy` (one synchronisation
    for the whole list), host ones as they are (no copy)."""
    if tensors and all(t.is_cuda for t in tensors):
        return _pinned_host_copy(tensors, None)
    return [t.cpu() for t in tensors]


def export_local_shards(
    module: nn.Module, device: str | torch.device = "cpu", out: Optional[list[torch.Tensor]] = None
) -> list[torch.Tensor]:
    """Copies of this rank's parameter shards, in ``module.parameters()`` order.

    CUDA shards copied to the host go through :func:`_pinned_host_copy` (asynchronous copies
    into pinned memory, one synchronisation); anything else is a plain copy.

    Args:
        module: the (FSDP-wrapped) model.
        device: where the copies go.
        out: pinned host buffers of a previous snapshot of the same layout, reused (the
            caller must be done with them: e.g. ``ray.put`` has copied them); ignored on
            the plain path or when a shape or dtype differs.
    """
    with torch.no_grad():
        shards = live_shards(module)
        if torch.device(device).type == "cpu" and shards and all(s.is_cuda for s in shards):
            return _pinned_host_copy(shards, out)
        return [s.to(device, copy=True) for s in shards]


def _pinned_host_copy(shards: list[torch.Tensor], out: Optional[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Host copies of CUDA ``shards`` without a synchronous copy per shard.

    1. Pinned host buffers: ``out`` when it matches the shards' shapes and dtypes, else new ones.
    2. Every copy queued on a side stream, ordered after the work already queued on the
       compute stream (the optimizer step that last wrote the weights), ``non_blocking``.
    3. One event recorded after the last copy and waited for: the only host synchronisation.
    """
    # Step 1: pinned buffers (reused across snapshots of the same layout).
    if out is None or len(out) != len(shards) or any(
            o.shape != s.shape or o.dtype != s.dtype or not o.is_pinned() for o, s in zip(out, shards)):
        out = [torch.empty(s.shape, dtype=s.dtype, device="cpu", pin_memory=True) for s in shards]
    # Step 2: asynchronous copies on a side stream that waits for the compute stream.
    device = shards[0].device
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for o, s in zip(out, shards):
            o.copy_(s, non_blocking=True)
        done = stream.record_event()
    # Step 3: one synchronisation for the whole snapshot.
    done.synchronize()
    return out


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
    """``ray.get`` a Ray ObjectRef, again while the value is one (a non-blocking call's ref to a
    ref its method ``ray.put``); any other value is returned as it is."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a verl dependency
        return value
    while isinstance(value, ray.ObjectRef):
        value = ray.get(value)
    return value


def publish(value: Any) -> Any:
    """``ray.put(value)`` when Ray is running (the caller returns the small ref), else ``value``."""
    import ray

    return ray.put(value) if ray.is_initialized() else value
