"""PowerSGD across data-parallel replicas on row-sharded gradients (SPEC §5).

torch's ``powerSGD_hook`` compresses a DDP bucket whose every rank holds whole tensors.
Here every rank of an HSDP mesh (replicas × shards) holds, for each parameter, the row
shard FSDP2 gives it (dim 0, ``torch.chunk`` layout) of its replica's already-reduced
gradient. The maths is torch's, the row sharding only changes where the two sums run:

- P = G·Q needs no sum over shards (row block by row block); it is summed over replicas;
- P̂ = orth(P) needs the whole P: the small P blocks are all-gathered inside the replica
  (fast link) and every shard orthonormalises the full P exactly as torch does, keeping
  its own rows;
- Q = Gᵀ·P̂ is a sum over the shards and over the replicas: reduce-scatter inside the
  replica, all-reduce of the 1/shards slice across replicas, all-gather inside.

So across replicas each rank sends its P block and 1/shards of Q: (n + m)·r per matrix
summed over the shards, against n·m dense. Every collective is one flat buffer for all
matrices (torch batches the same way) and its bytes go to the state's ledger.

With one replica the collectives across replicas are skipped (world of one) and the same
maths runs on the already-reduced gradient (simulation; the ledger still counts what would
have been sent).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from verl_commeff.dp_codec.state import DPCodecState

__all__ = ["GradShard", "ReplicaGroups", "orthonormalize", "dp_exchange_"]


@dataclass
class GradShard:
    """One parameter's gradient on this rank.

    Args:
        name: a key identical on every rank (error and Q memories are keyed by it).
        grad: this rank's row shard (rows, ...) of the replica's reduced gradient; the
            exchange overwrites it with the replica mean (dense) or its PowerSGD estimate.
        global_rows: dim 0 of the whole tensor (shards follow ``torch.chunk`` on dim 0).
        compressible: a target matrix (2-D); others always go dense.
    """

    name: str
    grad: torch.Tensor
    global_rows: int
    compressible: bool = True


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


def orthonormalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns of each matrix of ``p`` (batch, n, r), as torch's hook makes them.

    torch's ``_orthogonalize`` takes the Q factor of ``torch.linalg.qr`` for r > 2 and
    Gram-Schmidt for r ≤ 2; Gram-Schmidt is the QR whose R has a non-negative diagonal,
    so for r ≤ 2 the column signs are fixed that way. Half-precision input is factored in
    fp32 (torch's QR has no half kernel) and returned in its own dtype.
    """
    low_precision = p.dtype in (torch.float16, torch.bfloat16)  # no QR kernel: factor in fp32
    q, r = torch.linalg.qr(p.float() if low_precision else p)  # (batch, n, r), (batch, r, r)
    if p.shape[-1] <= 2:
        signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)  # (batch, r)
        q = q * signs.unsqueeze(-2)
    return q.to(p.dtype)


class _Wire:
    """Issues the codec's collectives and counts the bytes handed to them."""

    def __init__(self, groups: ReplicaGroups, state: DPCodecState):
        self.groups, self.ledger = groups, state.ledger

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def all_reduce_replicas(self, flat: torch.Tensor) -> torch.Tensor:
        self.ledger.sent += self._nbytes(flat)
        self.ledger.cross_calls += 1
        if self.groups.replicas > 1:
            dist.all_reduce(flat, group=self.groups.replica)
        return flat

    def all_gather_shards(self, flat: torch.Tensor) -> torch.Tensor:
        """(L,) → (shards·L,): the blocks of every shard, in shard order."""
        if self.groups.shards == 1:
            return flat
        self.ledger.intra += self._nbytes(flat)
        out = flat.new_empty(self.groups.shards * flat.numel())
        dist.all_gather_into_tensor(out, flat, group=self.groups.shard)
        return out

    def reduce_scatter_shards(self, flat: torch.Tensor) -> torch.Tensor:
        """(shards·L,) → (L,): this shard's slice of the sum over the replica's shards."""
        if self.groups.shards == 1:
            return flat
        self.ledger.intra += self._nbytes(flat)
        out = flat.new_empty(flat.numel() // self.groups.shards)
        dist.reduce_scatter_tensor(out, flat, group=self.groups.shard)
        return out


def _dense_exchange_(wire: _Wire, dense: Sequence[GradShard], replicas: int) -> None:
    """Replica mean of the ``dense`` shards through one flat all-reduce."""
    if not dense:
        return
    flat = torch.cat([s.grad.reshape(-1) for s in dense])  # (Σ numel,)
    wire.all_reduce_replicas(flat).div_(replicas)
    offset = 0
    for s in dense:
        s.grad.copy_(flat[offset : offset + s.grad.numel()].view_as(s.grad))
        offset += s.grad.numel()


def _init_qs_(state: DPCodecState, order: Sequence[GradShard], ranks: dict[str, int]) -> dict[str, torch.Tensor]:
    """Q (m × r) per compressed matrix: warm (re-orthonormalised) or seeded random."""
    if state.warm_start and all(s.name in state.q_memory_dict for s in order):
        return {s.name: orthonormalize(state.q_memory_dict[s.name].unsqueeze(0))[0] for s in order}
    qs = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(state.rng.randint(1_000_000_000))  # one draw per exchange, as torch per bucket
        for s in order:
            q = torch.randn(s.grad.shape[1], ranks[s.name], device="cpu", dtype=s.grad.dtype)  # (m, r)
            qs[s.name] = orthonormalize(q.unsqueeze(0))[0].to(s.grad.device)
    return qs


def dp_exchange_(state: DPCodecState, shards: Sequence[GradShard], groups: ReplicaGroups) -> None:
    """Replace every shard's gradient by the replica mean, compressed where it pays (in place).

    Every rank must call it with the same names, in the same order.

    1. Split the tensors: before ``start_iter`` all go dense; afterwards a compressible 2-D
       tensor whose (global_rows × m) passes the minimum compression rate is compressed.
    2. Dense: one flat all-reduce over the replicas, divided by their number.
    3. Error feedback: add this rank's stored error to its compressed shards; keep a copy.
    4. Order the compressed matrices by shape group (torch's order, which fixes which
       random Q each one gets) and make each Q (m × r): warm start, or seeded random.
    5. P = G·Q on this row shard, padded to the ``torch.chunk`` block size; one flat
       all-reduce of all P's over the replicas.
    6. All-gather the P blocks inside the replica, orthonormalise each full P (n × r) as
       torch does, keep this shard's rows P̂.
    7. Q = Gᵀ·P̂ for this shard; sum over shards and replicas (reduce-scatter inside, one
       all-reduce of the slice across, all-gather inside), divide by the replicas.
    8. Ĝ = P̂·Qᵀ overwrites the shard; the new error is the corrected input minus Ĝ;
       Q is kept for the warm start.
    """
    wire = _Wire(groups, state)
    replicas, shards_n, index = groups.replicas, groups.shards, groups.shard_index
    state.ledger.ticks += 1
    state.ledger.simulated += int(replicas == 1)
    state.ledger.dense_equiv += sum(s.grad.numel() * s.grad.element_size() for s in shards)

    # Step 1: split.
    ranks: dict[str, int] = {}
    compressed, dense = [], []
    for s in shards:
        r = 0
        if state.compressing and s.compressible and s.grad.dim() == 2:
            r = state.matrix_rank(s.global_rows, s.grad.shape[1])
        (compressed if r else dense).append(s)
        if r:
            ranks[s.name] = r
    state.iter += 1

    # Step 2: dense.
    _dense_exchange_(wire, dense, replicas)
    if not compressed:
        return
    state.ledger.compressed += len(compressed)

    # Step 3: error feedback.
    inputs = {}
    for s in compressed:
        if state.use_error_feedback:
            if s.name in state.error_dict:
                s.grad.add_(state.error_dict[s.name])
            inputs[s.name] = s.grad.detach().clone()  # (rows, m)

    # Step 4: torch's order (grouped by whole shape, first appearance first) and Q.
    by_shape: dict[tuple, list[GradShard]] = defaultdict(list)
    for s in compressed:
        by_shape[(s.global_rows, s.grad.shape[1])].append(s)
    order = [s for group in by_shape.values() for s in group]
    qs = _init_qs_(state, order, ranks)

    # Step 5: P blocks (padded to the chunk size) in one flat buffer, summed over replicas.
    blocks = {s.name: -(-s.global_rows // shards_n) for s in order}  # rows per chunk
    p_flat = torch.cat([
        torch.nn.functional.pad(s.grad @ qs[s.name], (0, 0, 0, blocks[s.name] - s.grad.shape[0])).reshape(-1)
        for s in order
    ])  # (Σ block·r,)
    wire.all_reduce_replicas(p_flat)

    # Step 6: whole P per matrix, orthonormalised by shape group; keep this shard's rows.
    gathered = wire.all_gather_shards(p_flat).view(shards_n, -1)  # (shards, Σ block·r)
    p_hat: dict[str, torch.Tensor] = {}
    offset = 0
    full = {}
    for s in order:
        size = blocks[s.name] * ranks[s.name]
        full[s.name] = gathered[:, offset : offset + size].reshape(-1, ranks[s.name])[: s.global_rows]  # (n, r)
        offset += size
    for group in by_shape.values():
        ortho = orthonormalize(torch.stack([full[s.name] for s in group]))  # (batch, n, r)
        for s, p in zip(group, ortho):
            start = index * blocks[s.name]
            p_hat[s.name] = p[start : start + s.grad.shape[0]]  # (rows, r)

    # Step 7: Q = Gᵀ·P̂ summed over shards and replicas, then the replica mean.
    q_flat = torch.cat([(s.grad.T @ p_hat[s.name]).reshape(-1) for s in order])  # (Σ m·r,)
    pad = (-q_flat.numel()) % shards_n
    q_flat = torch.nn.functional.pad(q_flat, (0, pad))
    q_slice = wire.all_reduce_replicas(wire.reduce_scatter_shards(q_flat))
    q_flat = wire.all_gather_shards(q_slice).div_(replicas)

    # Step 8: decompress, error, warm-start memory.
    offset = 0
    for s in order:
        m, r = s.grad.shape[1], ranks[s.name]
        q = q_flat[offset : offset + m * r].view(m, r)
        offset += m * r
        s.grad.copy_(p_hat[s.name] @ q.T)  # (rows, m)
        if state.use_error_feedback:
            state.error_dict[s.name] = inputs[s.name] - s.grad
        if state.warm_start:
            state.q_memory_dict[s.name] = q.clone()
    if not state.warm_start:
        state.q_memory_dict.clear()
