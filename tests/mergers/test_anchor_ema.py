"""AnchorEMA: M̄ ← β·M̄ + (1 − β)·M, the first fire sets M̄ = M."""

import io

import pytest
import torch

from verl_commeff.mergers import AnchorEMA


def _fires(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)] for _ in range(n)]


def test_first_update_sets_then_closed_form():
    beta = 0.5
    fires = _fires(4)
    ema = AnchorEMA(beta)
    assert ema.m_bar is None
    ema.update_(fires[0])
    assert all(torch.equal(a, b) for a, b in zip(ema.m_bar, fires[0]))
    fires[0][0].add_(100.0)  # M̄ is a copy, not an alias of the first M
    assert not torch.equal(ema.m_bar[0], fires[0][0])
    fires[0][0].sub_(100.0)
    for m in fires[1:]:
        ema.update_(m)
    # closed form: M̄_4 = β³M1 + β²(1−β)M2 + β(1−β)M3 + (1−β)M4
    for i in range(2):
        f = [x[i].double() for x in fires]
        expect = beta**3 * f[0] + beta**2 * (1 - beta) * f[1] + beta * (1 - beta) * f[2] + (1 - beta) * f[3]
        torch.testing.assert_close(ema.m_bar[i].double(), expect, rtol=1e-6, atol=1e-6)
    assert ema.updates == 4


def test_beta_zero_is_latest():
    fires = _fires(3, seed=2)
    ema = AnchorEMA(0.0)
    for m in fires:
        ema.update_(m)
    assert all(torch.equal(a, b) for a, b in zip(ema.m_bar, fires[-1]))


def test_state_dict_round_trip():
    fires = _fires(5, seed=3)
    a = AnchorEMA(0.7)
    for m in fires[:3]:
        a.update_(m)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = AnchorEMA(0.7)
    b.load_state_dict(torch.load(buf))
    for m in fires[3:]:
        a.update_(m)
        b.update_(m)
    assert a.updates == b.updates == 5
    assert all(torch.equal(x, y) for x, y in zip(a.m_bar, b.m_bar))
    with pytest.raises(ValueError, match=r"checkpoint beta=0.7 differs .* beta=0.5"):
        AnchorEMA(0.5).load_state_dict(a.state_dict())


def test_errors():
    with pytest.raises(ValueError, match=r"beta=1.0 is out of range"):
        AnchorEMA(1.0)
    ema = AnchorEMA(0.5)
    ema.update_([torch.zeros(2, 3)])
    with pytest.raises(ValueError, match=r"m\[0\] has shape \(3, 2\), M̄\[0\] has \(2, 3\)"):
        ema.update_([torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="got 2 tensors"):
        ema.update_([torch.zeros(2, 3), torch.zeros(1)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_fire_is_rejected_and_m_bar_keeps_its_last_finite_state(bad, caplog):
    fires = _fires(4, seed=9)
    ema, ref = AnchorEMA(0.5), AnchorEMA(0.5)
    assert ema.try_update_(fires[0]) and ref.try_update_(fires[0])
    poisoned = [t.clone() for t in fires[1]]
    poisoned[1][3] = bad
    with caplog.at_level("DEBUG", logger="verl_commeff.mergers.anchor_ema"):
        assert not ema.try_update_(poisoned)
        assert not ema.try_update_(poisoned)
        assert not ema.try_update_(fires[1], finite=False)  # the caller's verdict (e.g. a NaN sketch)
    assert ema.rejected == 3 and ema.updates == 1
    assert [r.levelname for r in caplog.records].count("WARNING") == 1  # warned once, then debug
    assert "rejected_fires" in caplog.records[0].getMessage()
    for m in fires[2:]:
        assert ema.try_update_(m) and ref.try_update_(m)
    for a, b in zip(ema.m_bar, ref.m_bar):  # as if the bad fires never happened
        assert torch.equal(a, b) and torch.isfinite(a).all()
    fresh = AnchorEMA(0.5)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.rejected == 3 and fresh.updates == 3


def test_first_fire_non_finite_leaves_m_bar_unset():
    ema = AnchorEMA(0.0)
    m = _fires(1)[0]
    m[0][0, 0] = float("nan")
    assert not ema.try_update_(m) and ema.m_bar is None and ema.rejected == 1
