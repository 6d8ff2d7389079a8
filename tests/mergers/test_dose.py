"""Dose control: age decay, the adaptive λ clamp and its median window."""

import statistics

import pytest
import torch

from verl_commeff.config import AdaptiveLambdaConfig
from verl_commeff.mergers.dose import DoseControl, age_decay_factor, cos_signal, ratio_signal

from .reference import RefDose


def _c(x):
    return torch.tensor(x, dtype=torch.float64)


def test_age_decay_factor():
    assert age_decay_factor(0.9, 0) == 1.0
    assert age_decay_factor(0.9, 3) == pytest.approx(0.729)
    assert age_decay_factor(1.0, 50) == 1.0
    with pytest.raises(ValueError, match=r"age=-1 is out of range"):
        age_decay_factor(0.9, -1)


def test_adaptive_clamps_to_zero_and_cap_and_closed_form_between():
    cfg = AdaptiveLambdaConfig(mode="ratio", lambda0=0.5, kappa=2.0, cap=0.8, window=4)
    dose, ref = DoseControl(cfg), RefDose(0.5, 2.0, 0.8, 4)
    # c_t rising far above the median → λ0 + κ(c̄ − c) < 0; falling far below → > cap.
    cs = [0.3, 0.3, 0.3, 2.0, 0.0, 0.35, 0.25, 0.3, 0.2, 5.0]
    lams = []
    for c in cs:
        lam, c_bar = dose.dose(_c(c), age=0)
        want = ref(c)
        assert lam.item() == pytest.approx(want, abs=1e-12)
        assert c_bar.item() == statistics.median_low(ref.history[-4:])
        lams.append(lam.item())
    assert lams[0] == 0.5  # first tick: c̄ = c_t → λ0
    assert lams[3] == 0.0 and lams[9] == 0.0  # clamped below
    assert lams[4] == 0.8  # clamped at the cap (unclamped: 0.5 + 2·0.3 = 1.1)
    interior = [x for x in lams if 0.0 < x < 0.8]
    assert len(interior) >= 3  # the closed form is exercised between the clamps


def test_median_window_includes_current_and_is_lower_median():
    cfg = AdaptiveLambdaConfig(mode="cos", lambda0=1.0, kappa=1.0, cap=10.0, window=4)
    dose = DoseControl(cfg)
    # 2 values → lower median of (0.9, 0.1) is 0.1 (mean would be 0.5, upper 0.9).
    _, c_bar = dose.dose(_c(0.9), 0)
    assert c_bar.item() == 0.9  # current value included
    _, c_bar = dose.dose(_c(0.1), 0)
    assert c_bar.item() == 0.1
    for c in (0.5, 0.7, 0.3):  # window 4 → last four: 0.1, 0.5, 0.7, 0.3 → lower median 0.3
        lam, c_bar = dose.dose(_c(c), 0)
    assert c_bar.item() == 0.3 and dose.pushes == 5
    assert lam.item() == pytest.approx(1.0 + (0.3 - 0.3))
    lam, c_bar = dose.dose(_c(0.0), 0)  # last four: 0.5, 0.7, 0.3, 0.0 → 0.3 (0.9 and 0.1 fell out)
    assert c_bar.item() == 0.3 and lam.item() == pytest.approx(1.3)


def test_off_mode_is_lambda0_times_decay_and_age_multiplies_clamped():
    off = DoseControl(AdaptiveLambdaConfig(mode="off", lambda0=0.7, cap=0.1), age_decay=0.5)
    lam, c_bar = off.dose(_c(123.0), age=2)
    assert c_bar is None and lam.item() == pytest.approx(0.7 * 0.25)  # no clamp in mode off
    on = DoseControl(AdaptiveLambdaConfig(mode="ratio", lambda0=0.7, kappa=1.0, cap=0.6, window=8), age_decay=0.5)
    lam, _ = on.dose(_c(0.2), age=1)
    assert lam.item() == pytest.approx(0.6 * 0.5)  # clamp first, then μ^age


def test_state_dict_round_trip_and_window_check():
    cfg = AdaptiveLambdaConfig(mode="ratio", lambda0=0.5, kappa=3.0, cap=1.0, window=3)
    a, b = DoseControl(cfg), DoseControl(cfg)
    for c in (0.1, 0.4, 0.2, 0.3):
        a.dose(_c(c), 0)
    b.load_state_dict(a.state_dict())
    for c in (0.5, 0.05):
        assert torch.equal(a.dose(_c(c), 0)[0], b.dose(_c(c), 0)[0])
    other = DoseControl(AdaptiveLambdaConfig(mode="ratio", window=5))
    with pytest.raises(ValueError, match=r"c_history has shape \(3,\).*window=5"):
        other.load_state_dict(a.state_dict())


def test_signals_zero_safe():
    z = _c(0.0)
    assert ratio_signal(_c(4.0), _c(16.0)).item() == 0.5
    assert ratio_signal(z, z).item() == 0.0
    assert cos_signal(_c(-2.0), _c(4.0), _c(1.0)).item() == -1.0
    assert cos_signal(_c(1.0), _c(4.0), z).item() == 0.0


def test_non_finite_c_is_not_pushed_into_the_window():
    """A NaN/Inf c_t (or an invalid tick) leaves the ring as it was: later λ equals a run without it."""
    cfg = AdaptiveLambdaConfig(mode="ratio", lambda0=0.5, kappa=2.0, cap=1.0, window=3)
    clean, hit = DoseControl(cfg), DoseControl(cfg)
    ref = RefDose(0.5, 2.0, 1.0, 3)
    for c in (0.2, 0.4):
        clean.dose(_c(c), 0), hit.dose(_c(c), 0), ref(c)
    hit.dose(_c(float("nan")), 0)
    hit.dose(_c(float("inf")), 0)
    hit.dose(_c(0.9), 0, valid=torch.tensor(False))  # a finite c_t on a tick with a non-finite G
    assert hit.pushes == 2 and torch.equal(hit.c_history.nan_to_num(-1.0), clean.c_history.nan_to_num(-1.0))
    for c in (0.3, 0.1, 0.6):
        lam, c_bar = hit.dose(_c(c), 0)
        want = ref(c)
        assert torch.isfinite(lam) and lam.item() == pytest.approx(want, rel=1e-12)
        assert torch.equal(lam, clean.dose(_c(c), 0)[0])


def test_first_tick_invalid_then_window_starts_clean():
    dose = DoseControl(AdaptiveLambdaConfig(mode="cos", lambda0=1.0, kappa=1.0, cap=10.0, window=4))
    dose.dose(_c(float("nan")), 0)
    _, c_bar = dose.dose(_c(0.25), 0)
    assert c_bar.item() == 0.25 and dose.pushes == 1


def test_old_checkpoint_with_host_push_count_loads():
    """Checkpoints written before the device-side count (int pushes, zero-filled ring) still resume."""
    cfg = AdaptiveLambdaConfig(mode="ratio", lambda0=0.5, kappa=3.0, cap=1.0, window=4)
    old = {"c_history": torch.tensor([0.1, 0.4, 0.0, 0.0], dtype=torch.float64), "pushes": 2}
    dose, ref = DoseControl(cfg), RefDose(0.5, 3.0, 1.0, 4)
    dose.load_state_dict(old)
    ref(0.1), ref(0.4)
    assert dose.dose(_c(0.3), 0)[0].item() == pytest.approx(ref(0.3), rel=1e-12)
