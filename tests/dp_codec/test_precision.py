"""Factor precision, parameter groups, the ledger's whole-model figures and resume (one process).

1. bf16 factors: the bytes across replicas are exactly 2·Σ(n + m)·r plus the dense rest in
   its own dtype; one exchange's Ĝ stays within bf16 rounding of the full-precision Ĝ.
2. Error feedback restores the lost mass: Σ_t Ĝ_t + e_T = Σ_t G_t (the invariant of error
   feedback, rounding included) and, for a fixed gradient, the mean of Ĝ over the ticks
   closes in on G although every single Ĝ is rank r.
3. ``params=all_2d`` compresses every 2-D gradient, the embedding at ``embedding_rank``;
   ``params=targets`` only the marked targets.
4. State saved mid-run resumes bit-exactly (bf16, all_2d, embedding rank); a checkpoint
   from before the new knobs loads; the config refuses inconsistent knobs.
"""

import pytest
import torch

from verl_commeff.config import CommEffConfigError, DPCodecConfig
from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_, exchange_named_grads_

SHAPES = {"w1": (40, 24), "w2": (40, 24), "emb": (64, 8), "bias": (40,)}


def _grads(it, dtype=torch.float32):
    gen = torch.Generator().manual_seed(it)
    out = {}
    for name, shape in SHAPES.items():
        g = torch.randn(*shape, generator=gen, dtype=dtype)
        if len(shape) == 2:  # a dominant low-rank part, as real gradients have
            g = 0.1 * g + torch.randn(shape[0], 2, generator=gen, dtype=dtype) @ torch.randn(2, shape[1], generator=gen,
                                                                                           dtype=dtype)
        out[name] = g
    return out


def _exchange(state, grads, targets=None):
    named = [(n, g.clone(), g.shape[0]) for n, g in grads.items()]
    exchange_named_grads_(state, named, targets=targets, embeddings={"emb"})
    return {n: g for n, g, _ in named}


def test_bf16_factors_halve_the_factor_bytes_and_stay_within_rounding():
    knobs = dict(rank=3, start_iter=0, seed=1, params="all_2d", embedding_rank=2)
    full, low = DPCodecState(**knobs), DPCodecState(**knobs, factor_precision="bf16")
    grads = _grads(0)
    out_full, out_low = _exchange(full, grads), _exchange(low, grads)
    factors = (40 + 24) * 3 * 2 + (64 + 8) * 2  # Σ(n + m)·r: w1, w2 at r = 3, emb at r = 2
    assert full.ledger.factors_sent == 4 * factors and low.ledger.factors_sent == 2 * factors
    for state in (full, low):
        assert state.ledger.sent == state.ledger.factors_sent + 4 * 40  # + the bias, dense fp32
        assert state.ledger.factors_dense_equiv == 4 * (2 * 40 * 24 + 64 * 8)
        assert state.ledger.dense_equiv == 4 * (2 * 40 * 24 + 64 * 8 + 40)
    assert torch.equal(out_low["bias"], grads["bias"])  # one replica: the dense mean is itself
    for name in ("w1", "w2", "emb"):
        scale = out_full[name].norm()
        diff = (out_low[name] - out_full[name]).norm() / scale
        assert 0 < diff < 1e-2, (name, diff)  # bf16 keeps 8 significant bits (2^-8 ≈ 0.004 relative)


@pytest.mark.parametrize("precision", ["full", "bf16"])
def test_error_feedback_restores_the_lost_mass(precision):
    state = DPCodecState(rank=1, start_iter=0, seed=2, params="all_2d", factor_precision=precision)
    fixed = _grads(7)
    total_in = {n: torch.zeros_like(g) for n, g in fixed.items()}
    total_out = {n: torch.zeros_like(g) for n, g in fixed.items()}
    first_err = {}
    ticks = 60
    for t in range(ticks):
        grads = fixed if t >= 2 else _grads(100 + t)  # two other gradients first, then a fixed one
        out = _exchange(state, grads)
        for n in fixed:
            total_in[n] += grads[n]
            total_out[n] += out[n]
        if t == 2:
            first_err = {n: ((out[n] - fixed[n]).norm() / fixed[n].norm()).item() for n in ("w1", "emb")}
    for n in ("w1", "w2", "emb"):  # Σ Ĝ + e = Σ G: nothing is lost, only delayed
        torch.testing.assert_close(total_out[n] + state.error_dict[n], total_in[n], atol=1e-4, rtol=1e-5)
    for n in ("w1", "emb"):
        mean = (total_out[n] - sum(_grads(100 + t)[n] for t in range(2))) / (ticks - 2)
        mean_err = ((mean - fixed[n]).norm() / fixed[n].norm()).item()
        assert first_err[n] > 0.1 and mean_err < first_err[n] / 5, (n, first_err[n], mean_err)


def test_params_choose_the_compressed_matrices_and_the_embedding_rank():
    grads = _grads(3)
    every = DPCodecState(rank=3, start_iter=0, params="all_2d", embedding_rank=1)
    _exchange(every, grads)
    assert {n: q.shape[1] for n, q in every.q_memory_dict.items()} == {"w1": 3, "w2": 3, "emb": 1}
    targets_only = DPCodecState(rank=3, start_iter=0)
    out = _exchange(targets_only, grads, targets={"w1"})
    assert set(targets_only.q_memory_dict) == {"w1"}
    assert torch.equal(out["w2"], grads["w2"]) and torch.equal(out["emb"], grads["emb"])  # dense, one replica


def test_ledger_run_totals_survive_the_step_reset_and_resume():
    state = DPCodecState(rank=2, start_iter=1, params="all_2d")
    for it in range(3):
        _exchange(state, _grads(it))
    metrics = state.metrics()
    dense = 4 * sum(torch.Size(s).numel() for s in SHAPES.values())
    assert metrics["commeff/bytes/dp_codec/dense_equiv"] == 3 * dense
    assert metrics["commeff/bytes/dp_codec/per_tick_dense_equiv"] == dense
    assert metrics["commeff/bytes/dp_codec/sent"] == (metrics["commeff/bytes/dp_codec/factors_sent"]
                                                      + metrics["commeff/bytes/dp_codec/dense_rest_sent"])
    assert metrics["commeff/bytes/dp_codec/run_ratio"] == metrics["commeff/bytes/dp_codec/ratio"] < 1
    assert metrics["commeff/dp_codec/skipped_ticks"] == 0
    _exchange(state, _grads(3))
    resumed = DPCodecState(rank=2, start_iter=1, params="all_2d")
    resumed.load_state_dict(state.state_dict())
    step = state.metrics()
    assert step["commeff/bytes/dp_codec/dense_equiv"] == dense  # the step reset
    assert step["commeff/bytes/dp_codec/run_dense_equiv"] == 4 * dense
    _exchange(resumed, _grads(3))
    assert resumed.metrics()["commeff/bytes/dp_codec/run_sent"] == step["commeff/bytes/dp_codec/run_sent"] + \
        step["commeff/bytes/dp_codec/sent"]


def test_state_resumes_bit_exactly_with_the_new_knobs():
    knobs = dict(rank=3, start_iter=1, seed=5, params="all_2d", embedding_rank=2, factor_precision="bf16")
    straight, first = DPCodecState(**knobs), DPCodecState(**knobs)
    for it in range(3):
        _exchange(straight, _grads(it))
        _exchange(first, _grads(it))
    second = DPCodecState(**knobs)
    second.load_state_dict(first.state_dict())
    for it in range(3, 6):
        a, b = _exchange(straight, _grads(it)), _exchange(second, _grads(it))
        assert all(torch.equal(a[n], b[n]) for n in a), it
    with pytest.raises(ValueError, match="checkpoint has knobs"):
        DPCodecState(**{**knobs, "factor_precision": "full"}).load_state_dict(first.state_dict())


def test_a_checkpoint_from_before_the_new_knobs_loads():
    old = DPCodecState(rank=2, start_iter=1)
    for it in range(3):
        _exchange(old, _grads(it), targets={"w1", "w2"})
    saved = old.state_dict()
    saved["knobs"] = saved["knobs"][:6]
    del saved["skipped"], saved["run_bytes"]
    fresh = DPCodecState(rank=2, start_iter=1)
    fresh.load_state_dict(saved)
    assert fresh.iter == 3 and set(fresh.error_dict) == {"w1", "w2"}
    with pytest.raises(ValueError, match="checkpoint has knobs"):
        DPCodecState(rank=2, start_iter=1, params="all_2d").load_state_dict(saved)


def test_config_refuses_inconsistent_knobs():
    with pytest.raises(CommEffConfigError, match="embedding_rank=8 needs commeff.dp_codec.params=all_2d"):
        DPCodecConfig(params="targets", embedding_rank=8)
    with pytest.raises(CommEffConfigError, match="commeff.dp_codec.factor_precision='fp8' is not valid"):
        DPCodecConfig(factor_precision="fp8")
    with pytest.raises(CommEffConfigError, match="commeff.dp_codec.params='embeddings' is not valid"):
        DPCodecState(params="embeddings")
    with pytest.raises(CommEffConfigError, match="commeff.dp_codec.embedding_rank=0"):
        DPCodecConfig(params="all_2d", embedding_rank=0)


def test_grad_shards_of_any_dtype_keep_their_dtype():
    state = DPCodecState(rank=2, start_iter=0, params="all_2d", factor_precision="bf16")
    shards = [GradShard("w", _grads(0, torch.float64)["w1"], 40)]
    dp_exchange_(state, shards, ReplicaGroups())
    assert shards[0].grad.dtype == torch.float64 and state.error_dict["w"].dtype == torch.float64
