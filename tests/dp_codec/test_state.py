"""One process (simulation: one replica): closed-form maths, knobs, and exact resume."""

import numpy as np
import pytest
import torch

from verl_commeff.config import CommEffConfigError, DPCodecConfig
from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_


def _grads(it):
    g = torch.Generator().manual_seed(it)
    return {"w": torch.randn(30, 20, generator=g, dtype=torch.float64),
            "b": torch.randn(30, generator=g, dtype=torch.float64)}


def test_simulation_is_the_projection_onto_the_orthonormalised_power_step():
    """One replica: Ĝ = P̂·P̂ᵀ·(G + e) with P̂ = orth((G + e)·Q), e the previous error."""
    state = DPCodecState(rank=3, start_iter=1, seed=5)
    error = torch.zeros(30, 20, dtype=torch.float64)
    q_prev = None
    for it in range(4):
        grads = _grads(it)
        shards = [GradShard("w", grads["w"].clone(), 30), GradShard("b", grads["b"].clone(), 30)]
        dp_exchange_(state, shards, ReplicaGroups())
        torch.testing.assert_close(shards[1].grad, grads["b"])  # dense, one replica: unchanged
        if it == 0:  # dense warm-up
            torch.testing.assert_close(shards[0].grad, grads["w"])
            assert state.ledger.compressed == 0
            continue
        corrected = grads["w"] + error
        if q_prev is None:  # torch's recipe: one seed per exchange from numpy's RandomState(seed)
            torch.manual_seed(int(np.random.RandomState(5).randint(1_000_000_000)))
            q_prev = torch.randn(20, 3, dtype=torch.float64)
        p = corrected @ torch.linalg.qr(q_prev).Q
        p_hat = torch.linalg.qr(p).Q  # (30, 3)
        expected = p_hat @ (p_hat.T @ corrected)
        torch.testing.assert_close(shards[0].grad, expected, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(state.error_dict["w"], corrected - expected, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(state.q_memory_dict["w"], corrected.T @ p_hat, atol=1e-10, rtol=1e-9)
        error, q_prev = corrected - expected, state.q_memory_dict["w"].clone()
    # the ledger counts what one replica would have sent (float64): tick 0 dense W and bias,
    # ticks 1-3 P (30×3) + Q (20×3) + the bias
    assert state.ledger.ticks == 4 and state.ledger.simulated == 4
    assert state.ledger.sent == 8 * ((30 * 20 + 30) + 3 * ((30 + 20) * 3 + 30))
    assert state.ledger.dense_equiv == 8 * 4 * (30 * 20 + 30)


def test_first_compressed_q_spans_the_seeded_random_start():
    """The first compressed exchange: P̂ = orth(G·orth(randn)) with torch's seed recipe."""
    state = DPCodecState(rank=3, start_iter=0, seed=7)
    g = _grads(0)["w"]
    shard = GradShard("w", g.clone(), 30)
    dp_exchange_(state, [shard], ReplicaGroups())
    torch.manual_seed(int(np.random.RandomState(7).randint(1_000_000_000)))
    q0 = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64)).Q
    p_hat = torch.linalg.qr(g @ q0).Q
    torch.testing.assert_close(shard.grad, p_hat @ (p_hat.T @ g), atol=1e-10, rtol=1e-9)


def test_min_compression_rate_and_non_compressible_go_dense():
    state = DPCodecState(rank=8, start_iter=0, min_compression_rate=2.0)
    assert state.matrix_rank(30, 20) == 0  # (30+20)·8·2 = 800 > 600
    assert DPCodecState(rank=5, start_iter=0).matrix_rank(30, 20) == 5  # 500 < 600
    g = _grads(1)["w"]
    shards = [GradShard("w", g.clone(), 30), GradShard("x", g.clone(), 30, compressible=False)]
    dp_exchange_(state, shards, ReplicaGroups())
    assert torch.equal(shards[0].grad, g) and torch.equal(shards[1].grad, g)
    assert state.ledger.sent == state.ledger.dense_equiv == 2 * 8 * 600 and not state.error_dict


def test_state_dict_resumes_exactly():
    a = DPCodecState(rank=2, start_iter=1, warm_start=False, seed=1)
    b = DPCodecState(rank=2, start_iter=1, warm_start=False, seed=1)
    outs = {}
    for it in range(5):
        if it == 3:
            b.load_state_dict(a.state_dict())
        for name, state in (("a", a), ("b", b)):
            shard = GradShard("w", _grads(it)["w"], 30)
            dp_exchange_(state, [shard], ReplicaGroups())
            outs[name] = shard.grad
        if it >= 3:
            assert torch.equal(outs["a"], outs["b"])  # same random Q draw and error memory
    with pytest.raises(ValueError, match="checkpoint has knobs"):
        DPCodecState(rank=3).load_state_dict(a.state_dict())


def test_state_validates_like_the_config():
    with pytest.raises(CommEffConfigError, match="commeff.dp_codec.rank=0"):
        DPCodecState(rank=0)
    s = DPCodecState.from_config(DPCodecConfig(rank=4, start_iter=3, warm_start=False))
    assert (s.rank, s.start_iter, s.warm_start, s.use_error_feedback) == (4, 3, False, True)


def test_orthonormalize_matches_torch_and_handles_bf16():
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize

    from verl_commeff.dp_codec import orthonormalize

    for r in (1, 2, 5):
        p = torch.randn(3, 40, r, generator=torch.Generator().manual_seed(r))
        reference = p.clone()
        _orthogonalize(reference)  # torch's own: Gram-Schmidt for r <= 2, QR above
        torch.testing.assert_close(orthonormalize(p), reference, atol=1e-5, rtol=1e-4)
    low = orthonormalize(torch.randn(1, 40, 4).bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close((low[0].float().T @ low[0].float()), torch.eye(4), atol=2e-2, rtol=0)
