"""The shape-batched exchange against the per-matrix one it replaced (one process, CPU).

Batching same-shape matrices (stacked inputs, batched products, one orthonormalisation per
(n, m, r) group) must not change the maths: on the CPU the gradients, the error memory and
the Q memory come out bit-identical to the per-matrix reference over warm-started and
random-Q exchanges, in float32 and float64, with matrices of several shapes, one capped
rank, an embedding rank and a matrix that goes dense.

``orthogonalization=cholesky_qr2`` (batched Gram / Cholesky / triangular solve in float64)
gives orthonormal columns spanning the same space as QR, also for an ill-conditioned or a
zero P, and the exchange's Ĝ and error memory within fp32 rounding of the QR path.
"""

import pytest
import torch

from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_
from verl_commeff.dp_codec.powersgd import cholesky_qr2, orthonormalize

from tests.dp_codec.per_matrix_reference import PerMatrixMemory, per_matrix_exchange_

SHAPES = {"a": (48, 32), "b": (48, 32), "c": (32, 48), "d": (20, 20), "e": (48, 32), "small": (3, 48),
          "emb": (100, 16), "bias": (48,)}


def _shards(it, dtype):
    gen = torch.Generator().manual_seed(it)
    return [GradShard(n, torch.randn(*s, generator=gen, dtype=dtype), s[0], compressible=len(s) == 2,
                      embedding=n == "emb") for n, s in SHAPES.items()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("warm_start", [True, False])
def test_batched_exchange_is_bit_identical_to_the_per_matrix_one_on_cpu(dtype, warm_start):
    knobs = dict(rank=4, start_iter=1, seed=3, warm_start=warm_start, params="all_2d", embedding_rank=2)
    batched, reference, memory = DPCodecState(**knobs), DPCodecState(**knobs), PerMatrixMemory()
    for it in range(6):
        ours, theirs = _shards(it, dtype), _shards(it, dtype)
        dp_exchange_(batched, ours, ReplicaGroups())
        per_matrix_exchange_(reference, memory, theirs, ReplicaGroups())
        for a, b in zip(ours, theirs):
            assert torch.equal(a.grad, b.grad), (it, a.name)
        assert batched.error_dict.keys() == memory.error_dict.keys()
        for name, err in batched.error_dict.items():
            assert torch.equal(err, memory.error_dict[name]), (it, name)
        assert batched.q_memory_dict.keys() == memory.q_memory_dict.keys()
        for name, q in batched.q_memory_dict.items():
            assert torch.equal(q, memory.q_memory_dict[name]), (it, name)
        assert batched.ledger.sent == reference.ledger.sent
    # "small" (3 × 48) fails the compression-rate test; the embedding runs at its own rank
    assert set(batched.error_dict) == {"a", "b", "c", "d", "e", "emb"}
    if warm_start:
        assert batched.q_memory_dict["emb"].shape == (16, 2) and batched.q_memory_dict["a"].shape == (32, 4)


def _projector(q):
    return q @ q.mT


@pytest.mark.parametrize("r", [1, 2, 5])
def test_cholesky_qr2_spans_the_qr_space_with_orthonormal_columns(r):
    gen = torch.Generator().manual_seed(r)
    p = torch.randn(3, 200, r, generator=gen)
    p[1] = p[1] @ torch.diag(torch.logspace(0, -5, r))  # condition number 1e5
    q = cholesky_qr2(p)
    eye = torch.eye(r).expand(3, r, r)
    torch.testing.assert_close(q.mT @ q, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(_projector(q), _projector(orthonormalize(p)), atol=2e-5, rtol=0)
    if r <= 2:  # positive-diagonal R: the same signs as torch's Gram-Schmidt
        torch.testing.assert_close(q, orthonormalize(p), atol=2e-5, rtol=0)
    zero = cholesky_qr2(torch.zeros(2, 50, r))
    assert torch.equal(zero, torch.zeros_like(zero))


def test_cholesky_qr2_exchange_equals_the_qr_exchange_within_fp32_rounding():
    knobs = dict(rank=4, start_iter=1, seed=3, params="all_2d", embedding_rank=2)
    qr, chol = DPCodecState(**knobs), DPCodecState(**knobs, orthogonalization="cholesky_qr2")
    for it in range(6):
        ours, theirs = _shards(it, torch.float32), _shards(it, torch.float32)
        dp_exchange_(chol, ours, ReplicaGroups())
        dp_exchange_(qr, theirs, ReplicaGroups())
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.grad, b.grad, atol=2e-5, rtol=1e-4, msg=f"{it} {a.name}")
        for name, err in chol.error_dict.items():
            torch.testing.assert_close(err, qr.error_dict[name], atol=2e-5, rtol=1e-4, msg=f"{it} {name}")
