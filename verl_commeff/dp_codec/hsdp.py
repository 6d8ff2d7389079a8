"""The FSDP2 side of the data-parallel codec: the plugin owns the cross-replica exchange.

On an HSDP mesh (replicas × shards) FSDP2 reduce-scatters each gradient inside the
replica and then all-reduces the shard across replicas, in its post-backward hook, for
every micro-batch. torch's public switches do not fit PowerSGD: ``set_requires_all_reduce
(False)`` keeps the reduced gradient in an internal accumulator and never writes
``.grad`` until a later backward all-reduces it, and ``set_all_reduce_hook`` runs after
the native all-reduce. So :func:`own_replica_exchange` turns every FSDP parameter group
of the module into plain FSDP over the shard dimension of the same mesh (its
``mesh_info`` becomes the ``FSDPMeshInfo`` of that dimension): FSDP then reduce-scatters
with the replica-local mean and writes ``.grad`` as before (the DTensor layout on the 2-D
mesh is unchanged), and never talks to the other replicas. Once per optimizer step
:func:`exchange_module_grads_` hands every gradient's row shard to
:func:`~verl_commeff.dp_codec.powersgd.dp_exchange_`: the targets as P/Q factors, the rest
as one dense all-reduce. After it the gradients are the cross-replica mean (dense) or its
PowerSGD estimate, identical on every replica, as verl's clipping and optimizer expect.

Tests check with a collective counter, not by reading this, that no all-reduce runs in
the backward once the exchange is owned.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from verl_commeff.dp_codec.powersgd import GradShard, ReplicaGroups, dp_exchange_
from verl_commeff.dp_codec.state import DPCodecState

__all__ = ["exchange_module_grads_", "hsdp_groups", "own_replica_exchange"]


def hsdp_groups(mesh: Optional[DeviceMesh]) -> ReplicaGroups:
    """The replica and shard groups of verl's FSDP mesh (``("ddp", "fsdp")`` = HSDP).

    A 1-D mesh (plain FSDP: one replica) gives no replica group: simulation mode.
    """
    if mesh is None or mesh.ndim == 1:
        return ReplicaGroups(replica=None, shard=None if mesh is None else mesh.get_group(0))
    if mesh.ndim != 2:
        raise ValueError(f"commeff.dp_codec expects a 1-D FSDP or 2-D HSDP mesh, got {mesh.ndim}-D {mesh}")
    return ReplicaGroups(replica=mesh.get_group(0), shard=mesh.get_group(1))


def own_replica_exchange(module: nn.Module) -> int:
    """Stop FSDP2's cross-replica all-reduce on every FSDP module under ``module``.

    Returns:
        the number of parameter groups switched (0 for a 1-D FSDP mesh: nothing to own).

    Raises:
        TypeError: ``module`` holds no FSDP2 (``fully_shard``) module.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_common import FSDPMeshInfo, HSDPMeshInfo

    fsdp_modules = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not fsdp_modules:
        raise TypeError(f"commeff.dp_codec needs FSDP2 (fully_shard); {type(module).__name__} holds no FSDPModule")
    switched = 0
    for m in fsdp_modules:
        for group in m._get_fsdp_state()._fsdp_param_groups:
            info = group.mesh_info
            if not isinstance(info, HSDPMeshInfo):
                continue
            shard_only = FSDPMeshInfo(info.mesh, shard_mesh_dim=info.shard_mesh_dim)
            if group.post_forward_mesh_info is info:  # reshard_after_forward=True shares the object
                group.post_forward_mesh_info = shard_only
            group.mesh_info = shard_only
            switched += 1
    return switched


def _local(grad: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return grad.to_local() if isinstance(grad, DTensor) else grad


def exchange_module_grads_(
    state: DPCodecState,
    named_params: Iterable[tuple[str, nn.Parameter]],
    targets: set[str],
    groups: ReplicaGroups,
) -> None:
    """Exchange every gradient of ``named_params`` across replicas in place (one tick).

    Args:
        named_params: (name, parameter) in the same order on every rank; parameters
            without a gradient are skipped (FSDP gives all or none of a module's).
        targets: names of the parameters exchanged with PowerSGD (2-D target matrices).
    """
    shards = []
    for name, param in named_params:
        if param.grad is None:
            continue
        local = _local(param.grad)  # (rows of this shard, ...), a view into .grad
        rows = param.shape[0] if param.dim() else 1
        shards.append(GradShard(name, local, rows, compressible=name in targets and param.dim() == 2))
    dp_exchange_(state, shards, groups)
