import io

import pytest
import torch
import torch.nn as nn

from verl_commeff.codec import BoundaryCodec
from verl_commeff.config import CodecConfig

from tests.codec.tiny import HIDDEN, Capture, codec_config, tiny_qwen2, token_batch

INERT_PASSES = [None, "ref", "rollout", "validation", "anchor"]


def _run(model, ids, codec=None, scope=None, backward=False):
    """Logits of one forward (and parameter grads after a backward of a fixed loss)."""
    model.zero_grad(set_to_none=True)
    ctx = codec.pass_scope(scope) if scope is not None else torch.enable_grad()
    with ctx:
        logits = model(input_ids=ids).logits
        if backward:
            logits.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _signed_qr(V):
    """Independent reference of orth(): numpy-free signed QR in float64."""
    Q, R = torch.linalg.qr(V.double())
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def test_full_rank_codec_is_lossless():
    model = tiny_qwen2(num_layers=4)
    ids = token_batch()
    plain, plain_grads = _run(model, ids, backward=True)
    codec = BoundaryCodec(codec_config(rank=HIDDEN, pp_size=4), HIDDEN, 4).install(model)
    for scope in ("train", "old_log_prob"):
        logits, grads = _run(model, ids, codec, scope, backward=scope == "train")
        torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-4)
    metrics = codec.metrics()
    assert metrics["commeff/bytes/codec/sent"] > 0  # the codec was live
    for layer in (0, 1, 2):
        assert metrics[f"commeff/codec/recon_err/layer_{layer}"] < 2e-3


@pytest.mark.parametrize("scope", ["train", "old_log_prob"])
def test_live_pass_output_is_h_q_qt(scope):
    model = tiny_qwen2(num_layers=4)
    ids = token_batch()
    plain, _ = _run(model, ids)
    raw = Capture(model.model.layers[1])  # registered before the codec: sees h
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2), HIDDEN, 4).install(model)
    projected = Capture(model.model.layers[1])  # after: sees ĥ
    logits, _ = _run(model, ids, codec, scope)
    Q = codec.live_basis[0].double()  # (H, r)
    h = raw.outputs[0].detach().double()  # (batch, seq, H)
    torch.testing.assert_close(projected.outputs[0].detach().double(), h @ Q @ Q.T, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, plain, atol=1e-3)


def test_backward_activation_gradient_is_projected_by_q_qt():
    model = tiny_qwen2(num_layers=4)
    raw = Capture(model.model.layers[1], retain_grad=True)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2), HIDDEN, 4).install(model)
    projected = Capture(model.model.layers[1], retain_grad=True)
    _run(model, token_batch(), codec, "train", backward=True)
    grad_out = projected.outputs[0].grad.double()  # dL/dĥ, (batch, seq, H)
    grad_in = raw.outputs[0].grad.double()  # dL/dh
    Q = codec.live_basis[0].double()
    expected = grad_out @ Q @ Q.T
    torch.testing.assert_close(grad_in, expected, atol=1e-8, rtol=1e-5)
    # dL/dĥ itself is not in span(Q): the projection of the backward is real (no straight-through).
    assert (grad_out - expected).norm() > 0.5 * grad_out.norm()


@pytest.mark.parametrize("q_source", ["fast", "anchor"])
def test_inert_outside_train_and_old_log_prob(q_source):
    model = tiny_qwen2(num_layers=4)
    ids = token_batch()
    plain, plain_grads = _run(model, ids, backward=True)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=4, q_source=q_source), HIDDEN, 4).install(model)
    for scope in INERT_PASSES:
        logits, grads = _run(model, ids, codec, scope, backward=True)
        assert torch.equal(logits, plain), scope
        assert grads.keys() == plain_grads.keys()
        assert all(torch.equal(grads[n], plain_grads[n]) for n in grads), scope
    # Only the anchor pass observes, and only with q_source=anchor; nothing was sent.
    observed = codec.take_sketch() if q_source == "anchor" else None
    if q_source == "anchor":
        assert observed.abs().sum() > 0
    else:
        with pytest.raises(RuntimeError, match="no activations observed"):
            codec.take_sketch()
    metrics = codec.metrics()
    assert metrics["commeff/bytes/codec/sent"] == 0 and metrics["commeff/bytes/codec/dense_equiv"] == 0
    assert not any(k.startswith("commeff/codec/recon_err") for k in metrics)
    # Contrast: the same codec on train changes the output.
    logits, _ = _run(model, ids, codec, "train")
    assert not torch.allclose(logits, plain, atol=1e-3)


def test_sketch_and_refresh_match_an_independent_power_step():
    model = tiny_qwen2(num_layers=4)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=3, q_source="fast"), HIDDEN, 4)
    assert codec.layers == [1, 2]  # pp_size=3 on L=4: stages 2, 1, 1
    raws = [Capture(model.model.layers[layer]) for layer in codec.layers]  # before the codec: raw h
    codec.install(model)
    Q0 = codec.live_basis.clone()
    for seed in (1, 2):
        _run(model, token_batch(seed=seed), codec, "train", backward=True)
    with torch.no_grad(), codec.pass_scope("old_log_prob"):  # projected, not observed
        model(input_ids=token_batch(seed=3))
    expected = []
    for b, raw in enumerate(raws):
        A = torch.cat([h.detach().reshape(-1, HIDDEN) for h in raw.outputs[:2]]).double()  # (tokens, H)
        expected.append(A.T @ (A @ Q0[b].double()))  # (H, r)
    expected = torch.stack(expected)  # (B, H, r)
    staged = codec.refresh()
    assert torch.equal(codec.live_basis, Q0)
    torch.testing.assert_close(staged.double(), _signed_qr(expected), atol=1e-5, rtol=1e-4)
    assert codec.metrics()["commeff/codec/activations"] == 2 * 24 * 2  # 2 forwards × 24 tokens × 2 boundaries


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_does_not_double_count(use_reentrant):
    ids = token_batch()
    results = []
    for checkpointing in (False, True):
        model = tiny_qwen2(num_layers=4)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model.train()
        codec = BoundaryCodec(codec_config(rank=8, pp_size=2, q_source="fast"), HIDDEN, 4).install(model)
        logits, grads = _run(model, ids, codec, "train", backward=True)
        results.append((logits, grads, codec.take_sketch(), codec.metrics()))
    (logits0, grads0, V0, m0), (logits1, grads1, V1, m1) = results
    torch.testing.assert_close(V1, V0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits1, logits0, atol=1e-6, rtol=1e-6)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5)
    assert m1 == pytest.approx(m0, rel=1e-5)
    assert m0["commeff/codec/activations"] == 24
    assert m0["commeff/bytes/codec/sent"] == 24 * 8 * 4 * 2  # one forward and one backward crossing


def test_staged_q_is_not_live_until_activate_staged():
    model = tiny_qwen2(num_layers=4)
    ids = token_batch()
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2, q_source="fast"), HIDDEN, 4).install(model)
    before, _ = _run(model, ids, codec, "old_log_prob")
    _run(model, token_batch(seed=7), codec, "train", backward=True)
    live = codec.live_basis.clone()
    staged = codec.refresh()
    assert torch.equal(codec.live_basis, live) and torch.equal(codec.staged_basis, staged)
    still, _ = _run(model, ids, codec, "old_log_prob")
    assert torch.equal(still, before)
    assert codec.metrics()["commeff/codec/q_updates"] == 0

    # While staged, observations are sketched against the staged Q (the newest iterate).
    raw = Capture(model.model.layers[1], first=True)  # runs before the codec's hook: raw h
    _run(model, token_batch(seed=8), codec, "train", backward=True)
    raw.remove()
    A = raw.outputs[0].detach().reshape(-1, HIDDEN).double()  # (tokens, H)
    expected = A.T @ (A @ staged[0].double())  # (H, r)
    torch.testing.assert_close(codec.take_sketch()[0].double(), expected, atol=1e-4, rtol=1e-5)

    assert codec.activate_staged() is True
    assert torch.equal(codec.live_basis, staged) and codec.staged_basis is None
    after, _ = _run(model, ids, codec, "old_log_prob")
    assert not torch.allclose(after, before, atol=1e-4)
    assert codec.activate_staged() is False
    metrics = codec.metrics()
    assert metrics["commeff/codec/q_updates"] == 1
    assert metrics["commeff/codec/q_cond/layer_1"] == pytest.approx(1.0, abs=1e-4)


def test_refresh_needs_observations_or_a_sketch():
    model = tiny_qwen2(num_layers=4)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2, q_source="anchor"), HIDDEN, 4).install(model)
    _run(model, token_batch(), codec, "train", backward=True)  # q_source=anchor: train does not observe
    with pytest.raises(RuntimeError, match=r"no activations observed .*layers \[1\].*pass_scope\('anchor'\)"):
        codec.refresh()
    with pytest.raises(ValueError, match=r"refresh sketch has shape \(2, 64, 8\), expected"):
        codec.refresh(torch.ones(2, HIDDEN, 8))
    V = torch.randn(1, HIDDEN, 8)
    staged = codec.refresh(V.clone())
    torch.testing.assert_close(staged.double(), _signed_qr(V), atol=1e-5, rtol=1e-4)
    assert codec.metrics()["commeff/bytes/q_bcast/sent"] == 1 * HIDDEN * 8 * 4


def test_metrics_values_and_per_step_reset():
    model = tiny_qwen2(num_layers=4)
    raw = Capture(model.model.layers[1])
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2, q_source="fast"), HIDDEN, 4).install(model)
    _run(model, token_batch(seed=1), codec, "train", backward=True)  # 24 tokens, fwd + bwd
    with torch.no_grad(), codec.pass_scope("old_log_prob"):  # 24 tokens, fwd only
        model(input_ids=token_batch(seed=2))
    Q = codec.live_basis[0].double()
    errs = []
    for h in raw.outputs:
        h = h.detach().reshape(-1, HIDDEN).double()
        errs.append(((h - h @ Q @ Q.T).norm() / h.norm()).item())
    codec.refresh()
    metrics = codec.metrics()
    assert set(metrics) == {
        "commeff/codec/recon_err/layer_1", "commeff/codec/q_cond/layer_1", "commeff/codec/q_updates",
        "commeff/codec/activations", "commeff/codec/skipped_observations", "commeff/codec/skipped_refreshes",
        "commeff/bytes/codec/sent", "commeff/bytes/codec/dense_equiv",
        "commeff/bytes/codec/ratio", "commeff/bytes/q_bcast/sent", "commeff/bytes/q_bcast/dense_equiv",
    }
    assert metrics["commeff/codec/recon_err/layer_1"] == pytest.approx(sum(errs) / 2, rel=1e-4)
    assert 0.05 < metrics["commeff/codec/recon_err/layer_1"] < 1.0
    assert metrics["commeff/codec/q_cond/layer_1"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["commeff/bytes/codec/sent"] == 3 * 24 * 8 * 4
    assert metrics["commeff/bytes/codec/dense_equiv"] == 3 * 24 * HIDDEN * 4
    assert metrics["commeff/bytes/q_bcast/sent"] == HIDDEN * 8 * 4
    assert metrics["commeff/bytes/codec/ratio"] == pytest.approx(8 / HIDDEN)
    assert metrics["commeff/bytes/q_bcast/dense_equiv"] == 0  # dense training broadcasts no basis
    assert metrics["commeff/codec/activations"] == 24
    again = codec.metrics()
    assert "commeff/codec/recon_err/layer_1" not in again
    assert again["commeff/bytes/codec/sent"] == again["commeff/bytes/codec/dense_equiv"] == 0
    assert again["commeff/bytes/q_bcast/sent"] == 0 and again["commeff/codec/activations"] == 24


class _PoisonOnce:
    """A forward hook on a layer that replaces its output with ``value`` on its ``at``-th call (1-based)."""

    def __init__(self, layer: nn.Module, value: float, at: int):
        self.calls, self.value, self.at = 0, value, at
        self.handle = layer.register_forward_hook(self._hook, prepend=True)

    def _hook(self, module, args, output):
        self.calls += 1
        if self.calls != self.at:
            return None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        bad = torch.full_like(hidden, self.value)
        return bad if isinstance(output, torch.Tensor) else (bad, *output[1:])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_train_forward_is_left_out_of_the_sketch(value):
    """q_source=fast, a refresh every other tick over 6 ticks: at tick 3 the first decoder layer's output
    is non-finite (so is every boundary's). That forward's contributions are skipped and counted, and
    from then on the codec is bit for bit the codec of a run that never ran tick 3's forward: same Q
    after every refresh, same projected outputs, all finite. (Before: orth(NaN) made Q NaN for good.)"""
    cfg = codec_config(rank=8, pp_size=3, q_source="fast")
    runs = {}
    for name in ("poisoned", "clean"):
        model = tiny_qwen2(num_layers=4)
        codec = BoundaryCodec(cfg, HIDDEN, 4).install(model)
        if name == "poisoned":
            _PoisonOnce(model.model.layers[0], value, at=3)
        bases, logits = [], []
        for tick in range(1, 7):
            if name == "poisoned" or tick != 3:  # the clean run never saw tick 3
                _run(model, token_batch(seed=tick), codec, "train", backward=True)
            if tick % 2 == 0:
                codec.refresh()
                codec.activate_staged()
                bases.append(codec.live_basis.clone())
            if tick >= 4:  # the ticks after the bad one: the projection the actor trains through
                logits.append(_run(model, token_batch(seed=10 + tick), codec, "old_log_prob")[0])
        runs[name] = bases, logits, codec.metrics()
    (bases, logits, metrics), (clean_bases, clean_logits, clean_metrics) = runs["poisoned"], runs["clean"]
    assert all(torch.isfinite(q).all() for q in bases) and all(torch.isfinite(x).all() for x in logits)
    assert all(torch.equal(a, b) for a, b in zip(bases, clean_bases))
    assert all(torch.equal(a, b) for a, b in zip(logits, clean_logits))
    assert metrics["commeff/codec/skipped_observations"] == 2  # one forward at both boundaries
    assert clean_metrics["commeff/codec/skipped_observations"] == 0
    assert metrics["commeff/codec/skipped_refreshes"] == clean_metrics["commeff/codec/skipped_refreshes"] == 0


def test_a_refresh_from_a_non_finite_sketch_keeps_the_newest_q():
    """A sketch from elsewhere (the anchor's, q_source=anchor) with an Inf at boundary 1: that boundary keeps
    its newest Q (the staged one when one waits), the other is refreshed; counted per boundary."""
    codec = BoundaryCodec(codec_config(rank=8, pp_size=3, q_source="anchor"), HIDDEN, 4)
    live = codec.live_basis.clone()
    gen = torch.Generator().manual_seed(0)
    good = torch.randn(2, HIDDEN, 8, generator=gen)
    first = codec.refresh(good, reduce=False).clone()  # staged, not live
    bad = torch.randn(2, HIDDEN, 8, generator=gen)
    bad[1, 3, 2] = float("inf")
    second = codec.refresh(bad, reduce=False)
    assert torch.isfinite(second).all()
    assert torch.equal(second[1], first[1])  # the newest Q of boundary 1: the staged one
    assert not torch.equal(second[0], first[0])  # boundary 0 was refreshed
    codec.activate_staged()
    nan = torch.full((2, HIDDEN, 8), float("nan"))
    third = codec.refresh(nan, reduce=False)
    assert torch.equal(third, codec.live_basis) and not torch.equal(third, live)  # nothing staged: the live Q
    assert codec.metrics()["commeff/codec/skipped_refreshes"] == 3


def test_state_dict_round_trip_gives_identical_subsequent_behaviour():
    cfg = codec_config(rank=8, pp_size=4, q_source="fast")
    model_a, model_b = tiny_qwen2(num_layers=4), tiny_qwen2(num_layers=4)
    codec_a = BoundaryCodec(cfg, HIDDEN, 4).install(model_a)
    codec_b = BoundaryCodec(codec_config(rank=8, pp_size=4, q_source="fast", seed=5), HIDDEN, 4).install(model_b)
    _run(model_a, token_batch(seed=1), codec_a, "train", backward=True)
    codec_a.refresh()  # staged and pending
    _run(model_a, token_batch(seed=2), codec_a, "train", backward=True)  # a partial sketch
    buffer = io.BytesIO()
    torch.save(codec_a.state_dict(), buffer)
    buffer.seek(0)
    codec_b.load_state_dict(torch.load(buffer))

    def continue_run(model, codec):
        out = [_run(model, token_batch(seed=3), codec, "old_log_prob")[0]]
        out.append(codec.activate_staged())
        out.append(_run(model, token_batch(seed=4), codec, "train", backward=True)[0])
        codec.refresh()
        codec.activate_staged()
        out.append(codec.live_basis.clone())
        out.append(codec.metrics())
        return out

    result_a, result_b = continue_run(model_a, codec_a), continue_run(model_b, codec_b)
    assert torch.equal(result_a[0], result_b[0]) and result_a[1] is result_b[1] is True
    assert torch.equal(result_a[2], result_b[2]) and torch.equal(result_a[3], result_b[3])
    assert result_a[4] == result_b[4]
    with pytest.raises(ValueError, match="rank=8 does not match this codec's rank=4"):
        BoundaryCodec(codec_config(rank=4, pp_size=4), HIDDEN, 4).load_state_dict(codec_a.state_dict())


class _TupleLayer(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.linear = nn.Linear(HIDDEN, HIDDEN, dtype=dtype)

    def forward(self, x):
        return self.linear(x), "extra"


class _TupleModel(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([_TupleLayer(dtype) for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


@pytest.mark.parametrize("dtype, autocast", [(torch.float32, True), (torch.bfloat16, False)])
def test_tuple_outputs_dtype_and_autocast(dtype, autocast):
    model = _TupleModel(dtype)
    raw = Capture(model.layers[0])
    codec = BoundaryCodec(codec_config(rank=8, pp_size=3), HIDDEN, 3).install(model)
    seen = []
    model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out))
    x = torch.randn(5, HIDDEN, dtype=dtype)
    with codec.pass_scope("train"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(x)
    h, out = raw.outputs[0], seen[0]
    assert isinstance(out, tuple) and out[1] == "extra"
    assert out[0].dtype == h.dtype
    Q = codec.live_basis[0].to(h.dtype)  # computed in h's dtype, not autocast's
    assert torch.equal(out[0], (h @ Q) @ Q.T)


def test_pass_scope_validation_nesting_and_remove():
    model = tiny_qwen2(num_layers=4)
    ids = token_batch()
    plain, _ = _run(model, ids)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2), HIDDEN, 4)
    with pytest.raises(ValueError, match=r"name='actor' is not valid: must be one of \['train'"):
        with codec.pass_scope("actor"):
            pass
    with codec.pass_scope("train"):
        with codec.pass_scope("ref"):
            assert codec.current_pass == "ref"
        assert codec.current_pass == "train"
    assert codec.current_pass is None
    codec.install(model)
    with pytest.raises(RuntimeError, match="already installed"):
        codec.install(model)
    codec.remove()
    assert torch.equal(_run(model, ids, codec, "train")[0], plain)


def test_codec_config_rejects_unknown_q_source():
    with pytest.raises(ValueError, match="q_source"):
        CodecConfig(q_source="both")


_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def test_no_host_reads_from_codec_code_outside_metrics(monkeypatch):
    """Every device→host read issued from verl_commeff/codec frames fails, except in metrics()."""
    import inspect

    offenders = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            frames = inspect.stack(context=0)
            if any("verl_commeff/codec/" in f.filename and f.function != "metrics" for f in frames[1:]):
                offenders.append((_name, [f"{f.filename}:{f.lineno}" for f in frames[1:4]]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)

    model = tiny_qwen2(num_layers=4)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    codec = BoundaryCodec(codec_config(rank=8, pp_size=4, q_source="fast"), HIDDEN, 4).install(model)
    _run(model, token_batch(seed=1), codec, "train", backward=True)
    with torch.no_grad(), codec.pass_scope("old_log_prob"):
        model(input_ids=token_batch(seed=2))
    codec.refresh()
    codec.activate_staged()
    _run(model, token_batch(seed=3), codec, "train", backward=True)
    codec.basis_checksum()
    assert offenders == []
    metrics = codec.metrics()  # the one allowed read
    assert metrics["commeff/codec/q_updates"] == 1


def test_bootstrap_pass_is_inert_and_sets_the_principal_subspace_of_what_it_saw():
    """init=activations: the bootstrap pass changes no output; finish_bootstrap makes Q the top-r eigenvectors
    of Σ hᵀh over the boundary outputs it saw (reference: float64 eigh of the captured h), live at once."""
    model = tiny_qwen2(num_layers=4)
    ids = token_batch(seed=4)
    plain, _ = _run(model, ids)
    raw = Capture(model.model.layers[1])
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2, init="activations"), HIDDEN, 4).install(model)
    random_q = codec.live_basis.clone()
    assert codec.needs_bootstrap
    logits, _ = _run(model, ids, codec, "bootstrap")
    torch.testing.assert_close(logits, plain, atol=0, rtol=0)  # inert
    torch.testing.assert_close(codec.live_basis, random_q, atol=0, rtol=0)  # nothing moves before finish
    bases = codec.finish_bootstrap()
    assert not codec.needs_bootstrap and codec.staged_basis is None
    torch.testing.assert_close(codec.live_basis, bases, atol=0, rtol=0)
    h = raw.outputs[0].detach().double().reshape(-1, HIDDEN)  # (tokens, H)
    _, vectors = torch.linalg.eigh(h.T @ h)
    top = vectors[:, -8:]  # (H, r)
    Q = codec.live_basis[0].double()
    torch.testing.assert_close(Q @ Q.T, top @ top.T, atol=1e-4, rtol=0)
    # the next projected pass loses less of h than the random first basis would have
    err = lambda basis: (h - h @ basis @ basis.T).norm() / h.norm()
    assert err(Q) < err(random_q[0].double())
    assert codec.metrics()["commeff/codec/q_updates"] == 1
    with pytest.raises(RuntimeError, match="already set"):
        codec.finish_bootstrap()


def test_bootstrap_state_round_trip_and_clear_errors():
    model = tiny_qwen2(num_layers=4)
    codec = BoundaryCodec(codec_config(rank=8, pp_size=2, init="activations"), HIDDEN, 4).install(model)
    with pytest.raises(RuntimeError, match="observed no activations"):
        codec.finish_bootstrap()
    fresh = BoundaryCodec(codec_config(rank=8, pp_size=2, init="activations"), HIDDEN, 4)
    fresh.load_state_dict(codec.state_dict())
    assert fresh.needs_bootstrap  # a checkpoint taken before the first batch still bootstraps
    _run(model, token_batch(seed=5), codec, "bootstrap")
    codec.finish_bootstrap()
    fresh.load_state_dict(codec.state_dict())
    assert not fresh.needs_bootstrap
    torch.testing.assert_close(fresh.live_basis, codec.live_basis, atol=0, rtol=0)
    old = codec.state_dict()
    del old["bootstrapped"]  # a checkpoint from before the knob: past its first basis
    fresh = BoundaryCodec(codec_config(rank=8, pp_size=2, init="activations"), HIDDEN, 4)
    fresh.load_state_dict(old)
    assert not fresh.needs_bootstrap
    assert not BoundaryCodec(codec_config(rank=8, pp_size=2, init="random"), HIDDEN, 4).needs_bootstrap
    with pytest.raises(ValueError, match="commeff.codec.init='pca'"):
        CodecConfig(init="pca")
