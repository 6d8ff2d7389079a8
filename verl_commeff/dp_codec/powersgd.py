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

Same-shape matrices are computed together, as torch's ``batch_tensors_with_same_shape``
does: one stacked (B, rows, m) input per shape group, batched matrix products and one
orthonormalisation per group for P and one for the warm-started Q, instead of one per
matrix. The result equals the per-matrix computation within fp32 rounding (a test
compares them); the random Q draws stay per matrix, in torch's order.

A non-finite exchange (a NaN/Inf gradient on any replica makes P, Q or the dense sum
non-finite on every rank alike) leaves the error and Q memories as they were, decided on
the device (no host sync), and is counted; its output gradient is non-finite, so the
optimizer step that follows is skipped by verl's own check.

With one replica the collectives across replicas are skipped (world of one) and the same
maths runs on the already-reduced gradient (simulation; the ledger still counts what would
have been sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from verl_commeff.dp_codec.state import DPCodecState
from verl_commeff.dp_codec.wire import ReplicaGroups, Wire

__all__ = ["GradShard", "ReplicaGroups", "cholesky_qr2", "orthonormalize", "dp_exchange_"]


@dataclass
class GradShard:
    """One parameter's gradient on this rank.

    Args:
        name: a key identical on every rank (error and Q memories are keyed by it).
        grad: this rank's row shard (rows, ...) of the replica's reduced gradient; the
            exchange overwrites it with the replica mean (dense) or its PowerSGD estimate.
        global_rows: dim 0 of the whole tensor (shards follow ``torch.chunk`` on dim 0).
        compressible: a candidate for PowerSGD (2-D); others always go dense.
        embedding: a vocabulary-sized matrix (token embedding, LM head): its rank is the
            state's ``embedding_rank`` when set.
    """

    name: str
    grad: torch.Tensor
    global_rows: int
    compressible: bool = True
    embedding: bool = False


@dataclass
class _ShapeGroup:
    """The compressed matrices of one exchange that share (n, m, r), in exchange order."""

    rows: int  # n, global
    cols: int  # m
    rank: int  # r
    block: int  # rows per torch.chunk block (the P block each shard sends, padded)
    shards: list[GradShard] = field(default_factory=list)
    inputs: Optional[torch.Tensor] = None  # (B, rows here, m): gradient + error
    old_error: Optional[torch.Tensor] = None  # (B, rows here, m)
    q: Optional[torch.Tensor] = None  # (B, m, r): this exchange's orthonormal start
    q_prev: Optional[torch.Tensor] = None  # (B, m, r): what the Q memory held before
    p_hat: Optional[torch.Tensor] = None  # (B, rows here, r)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.shards)

    @property
    def local_rows(self) -> int:
        return self.shards[0].grad.shape[0]


def orthonormalize(p: torch.Tensor, method: str = "qr") -> torch.Tensor:
    """Orthonormal columns of each matrix of ``p`` (batch, n, r), as torch's hook makes them.

    ``qr``: torch's ``_orthogonalize`` takes the Q factor of ``torch.linalg.qr`` for r > 2
    and Gram-Schmidt for r ≤ 2; Gram-Schmidt is the QR whose R has a non-negative
    diagonal, so for r ≤ 2 the column signs are fixed that way. Half-precision input is
    factored in fp32 (torch's QR has no half kernel) and returned in its own dtype.
    ``cholesky_qr2``: :func:`cholesky_qr2` (the same column space).
    """
    if method == "cholesky_qr2":
        return cholesky_qr2(p)
    low_precision = p.dtype in (torch.float16, torch.bfloat16)  # no QR kernel: factor in fp32
    q, r = torch.linalg.qr(p.float() if low_precision else p)  # (batch, n, r), (batch, r, r)
    if p.shape[-1] <= 2:
        signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)  # (batch, r)
        q = q * signs.unsqueeze(-2)
    return q.to(p.dtype)


def cholesky_qr2(p: torch.Tensor, shift: float = 1e-12) -> torch.Tensor:
    """Orthonormal columns of each matrix of ``p`` (batch, n, r) by CholeskyQR, twice, in float64.

    1. G = PᵀP (batch, r, r), shifted by ``shift``·trace(G) (+ the smallest float64) on its
       diagonal so that it is positive definite even for a rank-deficient P;
    2. L = cholesky(G) without an error check (no host sync);
    3. P ← P·L⁻ᵀ (a triangular solve): orthonormal columns up to cond(P)²·ε;
    4. once more from the result, which brings orthogonality to rounding (CholeskyQR2).

    Every step is one batched kernel whatever the batch, where a GPU's batched
    ``torch.linalg.qr`` of tall matrices factors them one at a time. The R of this QR has a
    positive diagonal: the column signs are Gram-Schmidt's. A zero column stays zero (as
    torch's Gram-Schmidt with its epsilon).
    """
    x = p.double()  # (batch, n, r)
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(2):
        gram = x.mT @ x  # (batch, r, r)
        diagonal = gram.diagonal(dim1=-2, dim2=-1)  # (batch, r), a view
        diagonal.add_(diagonal.sum(-1, keepdim=True) * shift + tiny)
        chol, _ = torch.linalg.cholesky_ex(gram)  # (batch, r, r) lower
        x = torch.linalg.solve_triangular(chol.mT, x, upper=True, left=False)  # x·L⁻ᵀ
    return x.to(p.dtype)


def _dense_exchange_(wire: Wire, dense: Sequence[GradShard], replicas: int) -> Optional[torch.Tensor]:
    """Replica mean of the ``dense`` shards through one flat all-reduce; 0-d bool: all finite."""
    if not dense:
        return None
    flat = torch.cat([s.grad.reshape(-1) for s in dense])  # (Σ numel,)
    wire.all_reduce_replicas(flat).div_(replicas)
    pieces = flat.split([s.grad.numel() for s in dense])
    torch._foreach_copy_([s.grad for s in dense], [p.view_as(s.grad) for p, s in zip(pieces, dense)])
    return torch.isfinite(flat).all()


def _init_qs_(state: DPCodecState, groups: Sequence[_ShapeGroup]) -> None:
    """Each group's Q (B, m, r): the warm-start memory re-orthonormalised, or seeded random.

    Warm start needs a memory for every compressed matrix (as torch: all or none); the
    random draws are one seed per exchange and one ``randn`` per matrix, in torch's order.
    """
    warm = state.warm_start and all(state.qs.get(g.names) is not None for g in groups)
    if warm:
        for g in groups:
            g.q_prev = state.qs.get(g.names)  # (B, m, r)
            g.q = orthonormalize(g.q_prev, state.orthogonalization)
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(state.rng.randint(1_000_000_000))  # one draw per exchange, as torch per bucket
        draws = [torch.stack([torch.randn(g.cols, g.rank, device="cpu", dtype=s.grad.dtype) for s in g.shards])
                 for g in groups]  # (B, m, r) each, drawn matrix by matrix
    for g, draw in zip(groups, draws):
        g.q = orthonormalize(draw.to(g.shards[0].grad.device), state.orthogonalization)
        g.q_prev = g.q  # a skipped first exchange leaves this start as the memory


def _split(state: DPCodecState, shards: Sequence[GradShard], shards_n: int) -> tuple[list[GradShard], list[_ShapeGroup]]:
    """Step 1: the dense shards and the shape groups (first appearance first: torch's order)."""
    dense: list[GradShard] = []
    groups: dict[tuple[int, int, int], _ShapeGroup] = {}
    for s in shards:
        r = 0
        if state.compressing and s.compressible and s.grad.dim() == 2:
            r = state.matrix_rank(s.global_rows, s.grad.shape[1], s.embedding)
        if not r:
            dense.append(s)
            continue
        key = (s.global_rows, s.grad.shape[1], r)
        if key not in groups:
            groups[key] = _ShapeGroup(*key, block=-(-s.global_rows // shards_n))
        groups[key].shards.append(s)
    return dense, list(groups.values())


def dp_exchange_(state: DPCodecState, shards: Sequence[GradShard], groups: ReplicaGroups) -> None:
    """Replace every shard's gradient by the replica mean, compressed where it pays (in place).

    Every rank must call it with the same names, in the same order.

    1. Split the tensors: before ``start_iter`` all go dense; afterwards a compressible 2-D
       tensor whose (global_rows × m) passes the minimum compression rate at its rank is
       compressed; the compressed ones are grouped by (n, m, r).
    2. Dense: one flat all-reduce over the replicas, divided by their number.
    3. Error feedback: stack each group's shards (B, rows, m) and add this rank's stored
       error; the stack is kept as the input.
    4. Make each group's Q (B, m, r): warm start (one orthonormalisation per group), or
       seeded random.
    5. P = G·Q per group (one batched product) on this row shard, padded to the
       ``torch.chunk`` block size; one flat all-reduce of all P's over the replicas.
    6. All-gather the P blocks inside the replica, orthonormalise each group's full P
       (B, n, r) in one call as torch does, keep this shard's rows P̂.
    7. Q = Gᵀ·P̂ per group; sum over shards and replicas (reduce-scatter inside, one
       all-reduce of the slice across, all-gather inside), divide by the replicas.
    8. Ĝ = P̂·Qᵀ overwrites the shard; the new error is the input minus Ĝ; Q is kept for
       the warm start. If anything the replicas summed is non-finite, both memories keep
       their previous contents and the exchange is counted as skipped.
    """
    wire = Wire(groups, state.ledger, state.factor_dtype)
    replicas, shards_n, index = groups.replicas, groups.shards, groups.shard_index
    state.ledger.ticks += 1
    state.ledger.simulated += int(replicas == 1)
    state.ledger.add_dense_equiv(sum(s.grad.numel() * s.grad.element_size() for s in shards))

    # Step 1: split.
    dense, shape_groups = _split(state, shards, shards_n)
    state.iter += 1

    # Step 2: dense.
    finite = _dense_exchange_(wire, dense, replicas)
    if not shape_groups:
        if finite is not None:
            state.count_skipped(~finite)
        return
    compressed = [s for g in shape_groups for s in g.shards]
    state.ledger.compressed += len(compressed)
    state.ledger.factors_dense_equiv += sum(s.grad.numel() * s.grad.element_size() for s in compressed)

    # Step 3: error feedback, on the stacked inputs.
    for g in shape_groups:
        g.inputs = torch.stack([s.grad for s in g.shards])  # (B, rows, m)
        if state.use_error_feedback:
            g.old_error = state.errors.get(g.names, fill_zeros_like=g.inputs)
            if g.old_error is not None:
                g.inputs.add_(g.old_error)

    # Step 4: Q.
    _init_qs_(state, shape_groups)

    # Step 5: P blocks (padded to the chunk size) in one flat buffer, summed over replicas.
    sizes = [len(g.shards) * g.block * g.rank for g in shape_groups]
    p_flat = shape_groups[0].inputs.new_empty(sum(sizes))  # (Σ B·block·r,)
    for g, p in zip(shape_groups, p_flat.split(sizes)):
        p = p.view(len(g.shards), g.block, g.rank)  # (B, block, r)
        if g.local_rows < g.block:
            p[:, g.local_rows :].zero_()
            p[:, : g.local_rows] = torch.bmm(g.inputs, g.q)
        else:
            torch.bmm(g.inputs, g.q, out=p)
    wire.all_reduce_replicas(p_flat, factors=True)

    # Step 6: whole P per group, orthonormalised in one call; keep this shard's rows.
    gathered = wire.all_gather_shards(p_flat).view(shards_n, -1)  # (shards, Σ B·block·r)
    finite = torch.isfinite(gathered).all() if finite is None else finite & torch.isfinite(gathered).all()
    for g, p in zip(shape_groups, gathered.split(sizes, dim=1)):
        batch = len(g.shards)
        full = p.reshape(shards_n, batch, g.block, g.rank).transpose(0, 1).reshape(batch, -1, g.rank)[:, : g.rows]
        start = index * g.block
        g.p_hat = orthonormalize(full, state.orthogonalization)[:, start : start + g.local_rows]  # (B, rows, r)

    # Step 7: Q = Gᵀ·P̂ summed over shards and replicas, then the replica mean.
    q_sizes = [len(g.shards) * g.cols * g.rank for g in shape_groups]
    pad = (-sum(q_sizes)) % shards_n
    q_flat = p_flat.new_zeros(sum(q_sizes) + pad)  # (Σ B·m·r + pad,)
    for g, q in zip(shape_groups, q_flat.split(q_sizes)):
        torch.bmm(g.inputs.transpose(1, 2), g.p_hat, out=q.view(len(g.shards), g.cols, g.rank))
    q_slice = wire.all_reduce_replicas(wire.reduce_scatter_shards(q_flat), factors=True)
    q_flat = wire.all_gather_shards(q_slice).div_(replicas)
    ok = finite & torch.isfinite(q_flat).all()  # 0-d bool, identical on every rank
    state.count_skipped(~ok)

    # Step 8: decompress; error and warm-start memories (kept as they were when not ok).
    for g, q in zip(shape_groups, q_flat[: sum(q_sizes)].split(q_sizes)):
        q = q.view(len(g.shards), g.cols, g.rank)  # (B, m, r)
        grads = [s.grad for s in g.shards]
        for p_hat, q_one, grad in zip(g.p_hat, q, grads):
            torch.mm(p_hat, q_one.T, out=grad)  # (rows, m)
        if state.use_error_feedback:
            torch._foreach_sub_(list(g.inputs.unbind(0)), grads)  # inputs − Ĝ, in place
            keep = g.old_error if g.old_error is not None else g.inputs.new_zeros(())
            state.errors.put(g.names, torch.where(ok, g.inputs, keep, out=g.inputs))
        if state.warm_start:
            state.qs.put(g.names, torch.where(ok, q, g.q_prev))
    if not state.warm_start:
        state.qs.clear()
