"""signed_ema and none in one process: the formula, dose, cold rule, transports, checkpoints."""

import io

import pytest
import torch

from verl_commeff.config import AdaptiveLambdaConfig, MergerConfig
from verl_commeff.mergers import PackedSigns, build_merger, pack_signs
from verl_commeff.mergers.none import NoMerger
from verl_commeff.mergers.signed_ema import SignedEMAMerger

from . import reference as ref

SHAPES = [(6, 4), (5,), (3, 2, 2), (1, 7)]
P = "commeff/merger/"


def _tensors(seed, zeros=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    if zeros:  # exact zeros and -0.0 exercise the 0 → + convention
        ts[0][0, :2] = 0.0
        ts[1][0] = -0.0
    return ts


def _clone(ts):
    return [t.clone() for t in ts]


def _cfg(**kw):
    adaptive = kw.pop("adaptive", {})
    return MergerConfig(adaptive=AdaptiveLambdaConfig(**{"mode": "off", **adaptive}), **kw)  # the seed's dose unless given


def test_build_merger_picks_registered_class():
    assert isinstance(build_merger(_cfg(name="signed_ema")), SignedEMAMerger)
    assert isinstance(build_merger(_cfg(name="none")), NoMerger)


@pytest.mark.parametrize("alpha", [0.25, 0.6, 0.0])
def test_lambda_one_is_the_seed_formula(alpha):
    g, m = _tensors(0, zeros=True), _tensors(1, zeros=True)
    merger = build_merger(_cfg(alpha=alpha))
    merger.hold(m, produced_tick=1, source_tick=1)
    out = _clone(g)
    merger.apply_(out, tick=1)
    for o, e in zip(out, ref.closed_form(g, m, alpha)):
        torch.testing.assert_close(o, e, rtol=1e-6, atol=1e-7)
    changed = sum(int((o != x).sum()) for o, x in zip(out, g))
    assert changed > 10  # the merge really moved coordinates
    met = merger.metrics()
    assert met[P + "lambda"] == 1.0
    assert met[P + "sign_agree"] == pytest.approx(ref.sign_agree(g, m), abs=1e-12)
    assert met[P + "delta_ratio"] == pytest.approx(ref.ratio_c(g, m, alpha), rel=1e-6)
    assert met[P + "cos"] == pytest.approx(ref.cos_c(g, m), rel=1e-6)


def test_bf16_grads():
    g, m = _tensors(0, dtype=torch.bfloat16), _tensors(1)
    merger = build_merger(_cfg(alpha=0.25))
    merger.hold(m, 1, 1)
    out = _clone(g)
    merger.apply_(out, 1)
    for o, e in zip(out, ref.closed_form(g, m, 0.25)):
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o, e.to(torch.bfloat16))  # bf16 tolerances


def test_alpha_one_and_none_are_identity():
    g, m = _tensors(2), _tensors(3)
    for cfg in (_cfg(alpha=1.0), _cfg(name="none", alpha=0.25, adaptive=dict(mode="cos"))):
        merger = build_merger(cfg)
        merger.hold(m, 1, 1)
        out = _clone(g)
        merger.apply_(out, 1)
        assert all(torch.equal(o, x) for o, x in zip(out, g))
    met = merger.metrics()  # none still records telemetry
    assert met[P + "lambda"] == 0.0 and met[P + "merged_ticks"] == 1.0
    assert met[P + "sign_agree"] == pytest.approx(ref.sign_agree(g, m), abs=1e-12)
    assert met[P + "c"] == pytest.approx(ref.cos_c(g, m), rel=1e-6)


def test_cold_ticks_then_merge():
    merger = build_merger(_cfg(alpha=0.25))
    for tick in (1, 2):
        g = _tensors(tick)
        out = _clone(g)
        merger.apply_(out, tick)
        assert all(torch.equal(o, x) for o, x in zip(out, g))
    met = merger.metrics()
    assert met[P + "cold_ticks"] == 2.0 and met[P + "merged_ticks"] == 0.0 and met[P + "tick"] == 2.0
    assert P + "lambda" not in met  # no warm tick in this step
    m = _tensors(10)
    merger.hold(m, produced_tick=3, source_tick=1)
    g = _tensors(3)
    out = _clone(g)
    merger.apply_(out, 3)
    for o, e in zip(out, ref.closed_form(g, m, 0.25)):
        torch.testing.assert_close(o, e, rtol=1e-6, atol=1e-7)
    met = merger.metrics()
    assert met[P + "cold_ticks"] == 2.0 and met[P + "merged_ticks"] == 1.0
    assert met[P + "age"] == 0.0 and met[P + "staleness"] == 2.0 and met[P + "produced_tick"] == 3.0


def test_age_decay_lambda_and_gradient():
    mu = 0.8
    merger = build_merger(_cfg(alpha=0.25, age_decay=mu))
    m = _tensors(20)
    merger.hold(m, produced_tick=3, source_tick=2)
    for tick in (3, 4, 5, 7):
        g = _tensors(100 + tick)
        out = _clone(g)
        merger.apply_(out, tick)
        lam = mu ** (tick - 3)
        for o, e in zip(out, ref.merged(g, m, 0.25, lam)):
            torch.testing.assert_close(o, e, rtol=1e-6, atol=1e-7)
        met = merger.metrics()
        assert met[P + "lambda"] == pytest.approx(lam, rel=1e-12)
        assert met[P + "age"] == tick - 3 and met[P + "staleness"] == tick - 2


@pytest.mark.parametrize("mode", ["ratio", "cos"])
def test_adaptive_end_to_end_matches_reference(mode):
    knobs = dict(mode=mode, lambda0=0.5, kappa=3.0, cap=0.9, window=3)
    merger = build_merger(_cfg(alpha=0.25, adaptive=knobs, age_decay=0.9))
    dose = ref.RefDose(0.5, 3.0, 0.9, 3, mu=0.9)
    m = _tensors(30)
    merger.hold(m, 1, 1)
    lams = []
    for tick in range(1, 8):
        g = _tensors(200 + tick)
        if tick % 3 == 0:  # vary how stale M̄ looks so c_t moves around
            g = [x + 1.5 * y for x, y in zip(g, m)]
        c = ref.ratio_c(g, m, 0.25) if mode == "ratio" else ref.cos_c(g, m)
        lam = dose(c, age=tick - 1)
        out = _clone(g)
        merger.apply_(out, tick)
        for o, e in zip(out, ref.merged(g, m, 0.25, lam)):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-6)
        met = merger.metrics()
        assert met[P + "c"] == pytest.approx(c, rel=1e-6)
        assert met[P + "lambda"] == pytest.approx(lam, rel=1e-5, abs=1e-9)
        lams.append(lam)
    assert len(set(round(x, 6) for x in lams)) >= 4  # λ really varied


def test_sign_transport_equals_dense():
    knobs = dict(mode="ratio", lambda0=0.6, kappa=2.0, cap=1.0, window=4)
    dense, signs = build_merger(_cfg(alpha=0.3, adaptive=knobs)), build_merger(_cfg(alpha=0.3, adaptive=knobs))
    m = _tensors(40, zeros=True)
    dense.hold(m, 1, 1)
    signs.hold(pack_signs(m), 1, 1)
    for tick in range(1, 5):
        g = _tensors(300 + tick, zeros=True)
        a, b = _clone(g), _clone(g)
        dense.apply_(a, tick)
        signs.apply_(b, tick)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    ma, mb = dense.metrics(), signs.metrics()
    for key in ("lambda", "c", "sign_agree", "delta_ratio"):
        assert ma[P + key] == mb[P + key]
    assert P + "cos" in ma and P + "cos" not in mb  # no magnitudes in sign bits


def _run(merger, ticks, m_seed):
    outs = []
    for tick in ticks:
        if tick == 4:
            merger.hold(_tensors(m_seed + 1), produced_tick=4, source_tick=2)
        g = _tensors(500 + tick)
        merger.apply_(g, tick)
        outs.append(g)
    return outs


@pytest.mark.parametrize("sign_transport", [False, True])
def test_state_dict_round_trip(sign_transport):
    knobs = dict(mode="ratio", lambda0=0.5, kappa=4.0, cap=0.8, window=5)
    a = build_merger(_cfg(alpha=0.25, age_decay=0.95, adaptive=knobs))
    m = _tensors(60)
    a.hold(pack_signs(m) if sign_transport else m, 1, 1)
    _run(a, range(1, 4), 60)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_merger(_cfg(alpha=0.25, age_decay=0.95, adaptive=knobs))
    b.load_state_dict(torch.load(buf))
    assert b.is_cold is False and b.held_signs_only is sign_transport
    outs_a, outs_b = _run(a, range(4, 9), 60), _run(b, range(4, 9), 60)
    for xa, xb in zip(outs_a, outs_b):
        assert all(torch.equal(x, y) for x, y in zip(xa, xb))
    assert a.metrics() == b.metrics()
    fresh = build_merger(_cfg(alpha=0.25, age_decay=0.95, adaptive=knobs))  # without the ring: λ differs
    outs_c = _run(fresh, range(4, 9), 60)
    assert any(not torch.equal(x, y) for xa, xc in zip(outs_a, outs_c) for x, y in zip(xa, xc))
    with pytest.raises(ValueError, match=r"checkpoint alpha=0.25 differs from this merger's alpha=0.5"):
        build_merger(_cfg(alpha=0.5, adaptive=knobs)).load_state_dict(a.state_dict())


def test_checksum_single_process():
    merger = build_merger(_cfg(checksum_every=2))
    merger.apply_(_tensors(1), 1)
    merger.apply_(_tensors(2), 2)  # a cold check
    merger.hold(_tensors(3), 3, 3)
    merger.apply_(_tensors(4), 3)
    merger.apply_(_tensors(5), 4)  # a warm check
    assert merger.metrics()[P + "inputs_identical"] == 1.0
    assert P + "inputs_identical" not in merger.metrics()  # no check in an empty step


def test_errors_name_argument_and_values():
    merger = build_merger(_cfg())
    m = _tensors(1)
    m[2] = torch.zeros(2, 3)
    merger.hold(m, 2, 1)
    with pytest.raises(ValueError, match=r"M̄\[2\] has local shape \(2, 3\) but grads\[2\] has \(3, 2, 2\)"):
        merger.apply_(_tensors(2), 2)
    merger.hold(_tensors(1)[:3], 2, 1)
    with pytest.raises(ValueError, match="M̄ holds 3 tensors but 4 gradients"):
        merger.apply_(_tensors(2), 3)
    merger.hold(_tensors(1), 9, 1)
    with pytest.raises(ValueError, match="produced for tick 9, after tick=4"):
        merger.apply_(_tensors(2), 4)
    merger.hold(_tensors(1), 4, 1)
    merger.apply_(_tensors(2), 4)  # failed calls left no trace: tick 4 is still new
    with pytest.raises(ValueError, match=r"tick=4 is out of range: must be >= 1 and > the last tick 4"):
        merger.apply_(_tensors(2), 4)
    with pytest.raises(ValueError, match=r"source_tick=5 is out of range: must be in \[1, produced_tick=4\]"):
        merger.hold(_tensors(1), 4, 5)
    grads = _tensors(2)
    grads[1] = None
    merger.hold(_tensors(1), 5, 1)
    with pytest.raises(ValueError, match=r"grads\[1\] is None"):
        merger.apply_(grads, 5)
    cos = build_merger(_cfg(adaptive=dict(mode="cos")))
    with pytest.raises(ValueError, match="mode='cos' needs M̄'s magnitudes"):
        cos.hold(pack_signs(_tensors(1)), 1, 1)
    assert isinstance(pack_signs(_tensors(1)), PackedSigns)


def test_apply_reads_nothing_on_the_host(monkeypatch):
    """apply_ must not read device values (λ_t, c_t, stats) on the host: no per-tick sync."""
    knobs = dict(mode="ratio", lambda0=0.5, kappa=2.0, cap=1.0, window=4)
    merger = build_merger(_cfg(alpha=0.25, age_decay=0.9, adaptive=knobs, checksum_every=2))
    merger.hold(pack_signs(_tensors(1)), 1, 1)
    grads = [_tensors(2 + k) for k in range(4)]

    def forbidden(self, *a, **k):
        raise AssertionError("host read of a tensor inside apply_")

    with monkeypatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
            mp.setattr(torch.Tensor, name, forbidden)
        for tick, g in enumerate(grads, start=1):
            merger.apply_(g, tick)
    met = merger.metrics()  # the one read, after the ticks
    assert met[P + "merged_ticks"] == 4.0 and met[P + "inputs_identical"] == 1.0


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
@pytest.mark.parametrize("sign_transport", [False, True])
def test_non_finite_grad_tick_is_skipped_counted_and_leaves_no_trace(bad_value, sign_transport):
    """One non-finite G (verl then skips the step): G untouched, nothing reaches the window or telemetry."""
    knobs = dict(mode="ratio", lambda0=0.5, kappa=3.0, cap=0.9, window=4)
    hit, clean = build_merger(_cfg(alpha=0.25, adaptive=knobs)), build_merger(_cfg(alpha=0.25, adaptive=knobs))
    dose = ref.RefDose(0.5, 3.0, 0.9, 4)
    m = _tensors(30)
    for merger in (hit, clean):
        merger.hold(pack_signs(m) if sign_transport else m, 1, 1)
    for tick in range(1, 8):
        g = _tensors(300 + tick)
        if tick % 2 == 0:
            g = [x + 1.5 * y for x, y in zip(g, m)]
        if tick == 3:
            bad = _clone(g)
            bad[1][2] = bad_value
            out = _clone(bad)
            hit.apply_(out, tick)
            assert all(torch.equal(o.nan_to_num(7.0), b.nan_to_num(7.0)) for o, b in zip(out, bad))  # untouched
            met = hit.metrics()
            assert met[P + "skipped_ticks"] == 1.0 and P + "lambda" not in met and P + "c_median" not in met
            assert all(v == v for v in met.values())  # no NaN in any metric
            continue
        lam = dose(ref.ratio_c(g, m, 0.25))
        out_hit, out_clean = _clone(g), _clone(g)
        hit.apply_(out_hit, tick)
        clean.apply_(out_clean, tick)
        for o, c, e in zip(out_hit, out_clean, ref.merged(g, m, 0.25, lam)):
            assert torch.equal(o, c)
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-6)
        met, met_clean = hit.metrics(), clean.metrics()
        assert met[P + "lambda"] == pytest.approx(lam, rel=1e-6) == met_clean[P + "lambda"]
        assert met[P + "c_median"] == met_clean[P + "c_median"]
        assert met[P + "skipped_ticks"] == (1.0 if tick > 3 else 0.0) and met_clean[P + "skipped_ticks"] == 0.0


def test_non_finite_dense_m_bar_is_never_merged():
    """A dense M̄ holding a NaN (NaN would read as a '−' sign): every tick is skipped and counted."""
    merger = build_merger(_cfg(alpha=0.25, adaptive=dict(mode="off", lambda0=1.0)))
    m = _tensors(3)
    m[0][1, 1] = float("nan")
    merger.hold(m, 1, 1)
    for tick in (1, 2):
        g = _tensors(10 + tick)
        out = _clone(g)
        merger.apply_(out, tick)
        assert all(torch.equal(o, x) for o, x in zip(out, g))
    met = merger.metrics()
    assert met[P + "skipped_ticks"] == 2.0 and met[P + "merged_ticks"] == 2.0 and P + "cos" not in met


def test_packed_signs_are_unpacked_once_per_hold_and_no_tensor_is_built_per_tick(monkeypatch):
    """transport=sign: the held bits are unpacked at the first tick after a hold, then reused;
    no tick builds a tensor from host values (torch.tensor: a host→device copy on a GPU)."""
    import verl_commeff.mergers.kernels as kernels
    import verl_commeff.mergers.sign_bits as sign_bits

    calls = {"unpack": 0, "tensor": 0}
    real_mask, real_tensor = sign_bits.sign_mask, torch.tensor

    def counted_mask(*a, **k):
        calls["unpack"] += 1
        return real_mask(*a, **k)

    def counted_tensor(*a, **k):
        calls["tensor"] += 1
        return real_tensor(*a, **k)

    monkeypatch.setattr(sign_bits, "sign_mask", counted_mask)
    monkeypatch.setattr(kernels, "sign_mask", counted_mask)
    merger = build_merger(_cfg(alpha=0.25, checksum_every=0))
    reference = build_merger(_cfg(alpha=0.25, checksum_every=0))
    tick = 0
    for hold_seed in (10, 11):
        m = _tensors(hold_seed, zeros=True)
        merger.hold(pack_signs(m), tick + 1, tick + 1)
        reference.hold(m, tick + 1, tick + 1)
        calls["unpack"] = 0
        for _ in range(5):
            tick += 1
            g = _tensors(700 + tick, zeros=True)
            want = _clone(g)
            monkeypatch.setattr(torch, "tensor", counted_tensor)
            merger.apply_(g, tick)
            monkeypatch.setattr(torch, "tensor", real_tensor)
            reference.apply_(want, tick)
            assert all(torch.equal(x, y) for x, y in zip(g, want))  # the cached masks are this hold's signs
        assert calls["unpack"] == len(SHAPES)  # once per held tensor over 5 ticks, not 5× (nor 10×: stats + merge)
    assert calls["tensor"] == 0
