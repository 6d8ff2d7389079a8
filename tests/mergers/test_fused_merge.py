"""The merge, fused (``kernels=compiled``) or eager, is bit-identical to the plain formula.

The reference here is the per-tensor computation written out in plain torch with a boolean
mask: mismatch = (G ≥ 0) ≠ (M̄ ≥ 0), G ← G·m in fp32, stored in G's dtype, with the
multiplier m = 1 − c on mismatched coordinates and exactly 1 elsewhere, c = λ·2(1 − α)
rounded once to fp32. ``torch.equal`` is exact except for the sign of zero (−0.0 == 0.0).
"""

import pytest
import torch

from verl_commeff.config import AdaptiveLambdaConfig, MergerConfig
from verl_commeff.mergers import build_merger, pack_signs

from . import reference as ref

# Large then small then large again: the scratch views of one buffer are reused across sizes.
SHAPES = [(64, 48), (7,), (48, 64), (3, 5, 2), (100,)]
P = "commeff/merger/"


def _tensors(seed, dtype=torch.float32, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    if zeros:
        ts[0][0, :3] = 0.0
        ts[1][2] = -0.0
    return ts


def _plain_merge(gs, ms, alpha, lam):
    out = []
    for g, m in zip(gs, ms):
        mismatch = (g >= 0) != (m >= 0)
        coef = (torch.tensor(lam, dtype=torch.float64) * (2.0 * (1.0 - alpha))).to(torch.float32)
        multiplier = torch.where(mismatch, 1.0 - coef, torch.ones((), dtype=torch.float32))
        out.append((g.float() * multiplier).to(g.dtype))
    return out


@pytest.mark.parametrize("kernels", ["compiled", "eager"])
@pytest.mark.parametrize("transport", ["sign", "shards"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_is_bit_identical_to_the_plain_formula_across_holds(transport, dtype, kernels):
    merger = build_merger(MergerConfig(alpha=0.25, age_decay=0.8, kernels=kernels, adaptive=AdaptiveLambdaConfig(mode="off")))
    tick = 0
    for hold in range(3):  # a new M̄ with other signs each time: the cached masks must follow
        m_bar = _tensors(100 + hold)
        merger.hold(pack_signs(m_bar) if transport == "sign" else m_bar, produced_tick=tick + 1, source_tick=tick + 1)
        for _ in range(2):
            tick += 1
            g = _tensors(tick, dtype)
            out = [t.clone() for t in g]
            merger.apply_(out, tick)
            lam = 0.8 ** (tick - merger.produced_tick)
            for o, e in zip(out, _plain_merge(g, m_bar, 0.25, lam)):
                assert o.dtype == dtype and torch.equal(o, e)
            met = merger.metrics()
            assert met[P + "sign_agree"] == ref.sign_agree(g, m_bar)  # exact count, zeros included
            want = ref.ratio_c(g, m_bar, 0.25)
            assert met[P + "delta_ratio"] == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-2)
            if transport == "shards":  # ‖M̄‖² is kept per hold: each new M̄ must replace it
                assert met[P + "cos"] == pytest.approx(ref.cos_c(g, m_bar), rel=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("kernels", ["compiled", "eager"])
def test_sign_and_dense_transport_merge_identically_with_adaptive_dose(kernels):
    outs = {}
    for transport in ("sign", "shards"):
        merger = build_merger(MergerConfig(alpha=0.25, kernels=kernels, adaptive=AdaptiveLambdaConfig(
            mode="ratio", lambda0=0.7, kappa=2.0, cap=1.2, window=3)))
        m_bar = _tensors(7)
        merger.hold(pack_signs(m_bar) if transport == "sign" else m_bar, 1, 1)
        results = []
        for tick in range(1, 5):
            g = _tensors(20 + tick)
            merger.apply_(g, tick)
            results.append(g)
        outs[transport] = results
    for a, b in zip(outs["sign"], outs["shards"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kernels", ["compiled", "eager"])
def test_invalid_tick_leaves_infinite_grads_exactly(kernels):
    merger = build_merger(MergerConfig(alpha=0.25, kernels=kernels, adaptive=AdaptiveLambdaConfig(mode="off")))
    merger.hold(pack_signs(_tensors(3)), 1, 1)
    g = _tensors(4, zeros=False)
    g[0][1, 1] = float("inf")
    g[2][0, 0] = float("-inf")
    g[4][5] = float("nan")
    out = [t.clone() for t in g]
    merger.apply_(out, 1)
    for o, x in zip(out, g):
        assert torch.equal(o.nan_to_num(nan=7.0), x.nan_to_num(nan=7.0))
        assert torch.equal(o.isnan(), x.isnan())
    assert merger.metrics()[P + "skipped_ticks"] == 1.0
