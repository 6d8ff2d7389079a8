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
:func:`~verl_commeff.dp_codec.powersgd.dp_exchange_`: the matrices ``commeff.dp_codec.params``
selects as P/Q factors, the rest as one dense all-reduce. After it the gradients are the cross-replica mean (dense) or its
PowerSGD estimate, identical on every replica, as verl's clipping and optimizer expect.

Tests check with a collective counter, not by reading this, that no all-reduce runs in
the backward once the exchange is owned.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from verl_commeff.dp_codec.powersgd import GradShard, ReplicaGroups, dp_exchange_
from verl_commeff.dp_codec.state import DPCodecState

__all__ = ["embedding_names", "exchange_module_grads_", "exchange_named_grads_", "exchange_tensors_", "hsdp_groups",
           "own_replica_exchange"]


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


def embedding_names(module: nn.Module) -> set[str]:
    """Names of the vocabulary-sized matrices of ``module``: every ``nn.Embedding`` weight and the
    output embedding (LM head) of a Hugging Face model; a tied pair is one parameter, one name."""
    heads = set()
    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None and getattr(head, "weight", None) is not None:
        heads.add(id(head.weight))
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            heads.add(id(m.weight))
    return {name for name, p in module.named_parameters() if id(p) in heads}


def exchange_named_grads_(
    state: DPCodecState,
    named_grads: Iterable[tuple[str, torch.Tensor, int]],
    targets: Optional[set[str]] = None,
    embeddings: Iterable[str] = (),
    groups: Optional[ReplicaGroups] = None,
) -> None:
    """Exchange named gradient shards across replicas in place (one tick).

    Args:
        named_grads: (name, this rank's gradient shard, global rows) in the same order on
            every rank.
        targets: with ``state.params == "targets"``, the names exchanged with PowerSGD
            (2-D); ignored with ``all_2d`` (every 2-D gradient is a candidate).
        embeddings: names of the vocabulary-sized matrices (``state.embedding_rank``).
        groups: the replica and shard groups; None = one replica, one shard (simulation).
    """
    every_matrix = state.params == "all_2d"
    embeddings = set(embeddings)
    shards = [GradShard(name, grad, rows, compressible=grad.dim() == 2 and (every_matrix or name in (targets or ())),
                        embedding=name in embeddings)
              for name, grad, rows in named_grads]
    dp_exchange_(state, shards, groups if groups is not None else ReplicaGroups())


def exchange_tensors_(state: DPCodecState, grads: Sequence[torch.Tensor], embeddings: Iterable[int] = ()) -> None:
    """One exchange of whole gradient tensors on this process alone (one replica: the simulation path).

    The entry point for timing the codec with torch alone: the gradients are named by their
    position, every 2-D one is a candidate (as ``params=all_2d``; with ``params=targets``
    none is), and ``embeddings`` lists the positions of the vocabulary-sized matrices.
    """
    embedding_set = {str(i) for i in embeddings}
    exchange_named_grads_(state, [(str(i), g, g.shape[0] if g.dim() else 1) for i, g in enumerate(grads)],
                          embeddings=embedding_set)


def exchange_module_grads_(
    state: DPCodecState,
    named_params: Iterable[tuple[str, nn.Parameter]],
    targets: set[str],
    groups: ReplicaGroups,
    embeddings: Iterable[str] = (),
) -> None:
    """Exchange every gradient of ``named_params`` across replicas in place (one tick).

    Args:
        named_params: (name, parameter) in the same order on every rank; parameters
            without a gradient are skipped (FSDP gives all or none of a module's).
        targets: names of the target matrices (PowerSGD with ``params=targets``).
        embeddings: names of the vocabulary-sized matrices (:func:`embedding_names`).
    """
    named_grads = [(name, _local(p.grad), p.shape[0] if p.dim() else 1)  # local: a view into .grad
                   for name, p in named_params if p.grad is not None]
    exchange_named_grads_(state, named_grads, targets, embeddings, groups)
