"""The data-parallel exchange one matrix at a time: the codec before shape batching (commit 2db43e2).

The tests compare the batched :func:`~verl_commeff.dp_codec.powersgd.dp_exchange_` with it
(the same maths, per matrix: one product, one pad and one orthonormalisation of each warm
Q per matrix), and ``benchmarks/bench_dp_codec.py`` times it as the old path. It keeps its
memories in plain per-name dicts (:class:`PerMatrixMemory`) and knows the ``full``
factor precision only; the knobs, generator, counter and ledger are the state's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from verl_commeff.dp_codec.powersgd import GradShard, orthonormalize
from verl_commeff.dp_codec.state import DPCodecState
from verl_commeff.dp_codec.wire import ReplicaGroups, Wire


@dataclass
class PerMatrixMemory:
    error_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    q_memory_dict: dict[str, torch.Tensor] = field(default_factory=dict)


def _init_qs(state, memory, order, ranks):
    if state.warm_start and all(s.name in memory.q_memory_dict for s in order):
        return {s.name: orthonormalize(memory.q_memory_dict[s.name].unsqueeze(0))[0] for s in order}
    qs = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(state.rng.randint(1_000_000_000))
        for s in order:
            q = torch.randn(s.grad.shape[1], ranks[s.name], device="cpu", dtype=s.grad.dtype)  # (m, r)
            qs[s.name] = orthonormalize(q.unsqueeze(0))[0].to(s.grad.device)
    return qs


def per_matrix_exchange_(state: DPCodecState, memory: PerMatrixMemory, shards: Sequence[GradShard],
                         groups: ReplicaGroups) -> None:
    """The pre-batching ``dp_exchange_`` (steps as in its docstring), memories in ``memory``."""
    assert (state.factor_precision, state.orthogonalization) == ("full", "qr"), "the reference knows torch's maths only"
    wire = Wire(groups, state.ledger)
    replicas, shards_n, index = groups.replicas, groups.shards, groups.shard_index
    state.ledger.ticks += 1
    state.ledger.add_dense_equiv(sum(s.grad.numel() * s.grad.element_size() for s in shards))
    ranks, compressed, dense = {}, [], []
    for s in shards:
        r = 0
        if state.compressing and s.compressible and s.grad.dim() == 2:
            r = state.matrix_rank(s.global_rows, s.grad.shape[1], s.embedding)
        (compressed if r else dense).append(s)
        if r:
            ranks[s.name] = r
    state.iter += 1
    if dense:
        flat = torch.cat([s.grad.reshape(-1) for s in dense])
        wire.all_reduce_replicas(flat).div_(replicas)
        offset = 0
        for s in dense:
            s.grad.copy_(flat[offset : offset + s.grad.numel()].view_as(s.grad))
            offset += s.grad.numel()
    if not compressed:
        return
    inputs = {}
    for s in compressed:
        if state.use_error_feedback:
            if s.name in memory.error_dict:
                s.grad.add_(memory.error_dict[s.name])
            inputs[s.name] = s.grad.detach().clone()
    by_shape: dict[tuple, list[GradShard]] = defaultdict(list)
    for s in compressed:
        by_shape[(s.global_rows, s.grad.shape[1], ranks[s.name])].append(s)
    order = [s for group in by_shape.values() for s in group]
    qs = _init_qs(state, memory, order, ranks)
    blocks = {s.name: -(-s.global_rows // shards_n) for s in order}
    p_flat = torch.cat([
        torch.nn.functional.pad(s.grad @ qs[s.name], (0, 0, 0, blocks[s.name] - s.grad.shape[0])).reshape(-1)
        for s in order
    ])
    wire.all_reduce_replicas(p_flat, factors=True)
    gathered = wire.all_gather_shards(p_flat).view(shards_n, -1)
    full, offset = {}, 0
    for s in order:
        size = blocks[s.name] * ranks[s.name]
        full[s.name] = gathered[:, offset : offset + size].reshape(-1, ranks[s.name])[: s.global_rows]
        offset += size
    p_hat = {}
    for group in by_shape.values():
        ortho = orthonormalize(torch.stack([full[s.name] for s in group]))
        for s, p in zip(group, ortho):
            start = index * blocks[s.name]
            p_hat[s.name] = p[start : start + s.grad.shape[0]]
    q_flat = torch.cat([(s.grad.T @ p_hat[s.name]).reshape(-1) for s in order])
    q_flat = torch.nn.functional.pad(q_flat, (0, (-q_flat.numel()) % shards_n))
    q_slice = wire.all_reduce_replicas(wire.reduce_scatter_shards(q_flat), factors=True)
    q_flat = wire.all_gather_shards(q_slice).div_(replicas)
    offset = 0
    for s in order:
        m, r = s.grad.shape[1], ranks[s.name]
        q = q_flat[offset : offset + m * r].view(m, r)
        offset += m * r
        s.grad.copy_(p_hat[s.name] @ q.T)
        if state.use_error_feedback:
            memory.error_dict[s.name] = inputs[s.name] - s.grad
        if state.warm_start:
            memory.q_memory_dict[s.name] = q.clone()
    if not state.warm_start:
        memory.q_memory_dict.clear()
