"""The evidence dose (issue 17): λ* in closed form, its behaviour on synthetic anchors, the actor's EMA."""

import math

import pytest
import torch

from verl_commeff.config import AdaptiveLambdaConfig, CommEffConfig, CommEffConfigError, MergerConfig, AnchorConfig
from verl_commeff.mergers import build_merger
from verl_commeff.mergers.dose import DoseControl
from verl_commeff.mergers.evidence_dose import (
    EVIDENCE_SUMS, EvidenceDose, best_dose, evidence_from_sums, merged_cos, signed_ema_sums)

ALPHA = 0.25


def _cos(x, y):
    return float(torch.dot(x, y) / (x.norm() * y.norm()))


def _merge(c, positive, lam):
    """signed_ema by hand: C + λ(1 − α)(|C|·s − C), float64."""
    s = positive.double() * 2 - 1
    return c + lam * (1 - ALPHA) * (c.abs() * s - c)


def _evidence(c, d, positive, cap=1.0):
    sums = signed_ema_sums([c], [d], [positive], ALPHA)
    return evidence_from_sums(sums.tolist(), cap, held=True)


def _problem(seed, n=4000, codec_keep=0.15, sign_noise=0.0):
    """D: a dense gradient; C: a lossy codec's view of it (a random coordinate subspace kept, the rest replaced
    by unrelated noise of D's size); s: sign(D) with a fraction ``sign_noise`` of coordinates flipped at random."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen, dtype=torch.float64)
    keep = torch.rand(n, generator=gen, dtype=torch.float64) < codec_keep
    c = torch.where(keep, d, torch.randn(n, generator=gen, dtype=torch.float64) * d.abs().mean())
    flip = torch.rand(n, generator=gen, dtype=torch.float64) < sign_noise
    positive = (d >= 0) ^ flip
    return c, d, positive


def test_sums_and_merged_cos_match_a_by_hand_merge():
    c, d, positive = _problem(0)
    sums = dict(zip(EVIDENCE_SUMS, signed_ema_sums([c[:1000], c[1000:]], [d[:1000], d[1000:]],
                                                   [positive[:1000], positive[1000:]], ALPHA).tolist()))
    for lam in (0.0, 0.3, 1.0, 1.7):
        assert merged_cos(sums, lam) == pytest.approx(_cos(_merge(c, positive, lam), d), abs=1e-5)
    assert sums["numel"] == 4000
    assert sums["agree_count"] == int(((d >= 0) == positive).sum())


@pytest.mark.parametrize("seed,noise,cap", [(1, 0.0, 1.0), (2, 0.3, 1.0), (3, 0.5, 1.0), (4, 0.7, 1.0), (5, 0.1, 0.4),
                                            (6, 0.2, 1.5)])
def test_best_dose_is_the_argmax_of_a_fine_grid(seed, noise, cap):
    c, d, positive = _problem(seed, sign_noise=noise)
    sums = dict(zip(EVIDENCE_SUMS, signed_ema_sums([c], [d], [positive], ALPHA).tolist()))
    lam = best_dose(sums, cap)
    assert 0.0 <= lam <= cap
    grid = [cap * i / 2000 for i in range(2001)]
    best_grid = max(_cos(_merge(c, positive, x), d) for x in grid)
    assert _cos(_merge(c, positive, lam), d) >= best_grid - 1e-6


def test_dose_is_high_for_an_informative_anchor_and_near_zero_for_an_uninformative_one():
    """The issue's synthetic check: a lossy codec with the dense gradient's signs held → λ* near the cap; the same
    codec with coin-flip signs → λ* ≈ 0; a lossless fast path with informative signs → nothing to correct, λ* = 0."""
    informative = [_evidence(*_problem(s, sign_noise=0.05))["lambda_star"] for s in range(10, 15)]
    uninformative = [_evidence(*_problem(s, sign_noise=0.5))["lambda_star"] for s in range(10, 15)]
    assert min(informative) >= 0.9, informative
    assert max(uninformative) <= 0.1, uninformative
    c, d, positive = _problem(20, codec_keep=1.0, sign_noise=0.0)
    ev = _evidence(c, d, positive)
    assert ev["cos_codec"] == pytest.approx(1.0) and ev["lambda_star"] == 0.0
    # the signals that tell the cases apart
    lossy = _evidence(*_problem(21, sign_noise=0.05))
    coin = _evidence(*_problem(21, sign_noise=0.5))
    assert lossy["cos_codec"] < 0.5 and lossy["held_agree"] > 0.9 and abs(coin["held_agree"] - 0.5) < 0.05
    assert lossy["cos_merged"] > lossy["cos_codec"] and coin["cos_full"] < coin["cos_codec"]


def test_the_actor_dose_is_an_ema_from_the_prior_and_only_fires_with_lambda_star_count():
    dose = EvidenceDose(prior=0.0, momentum=0.5, cap=1.0)
    assert dose.lam == 0.0  # no evidence, no merge
    dose.take({"cos_codec": 0.9})  # a fire without a held M̄ at its replayed tick: metrics only
    assert dose.lam == 0.0 and dose.fires == 0
    for _ in range(6):
        dose.take({"lambda_star": 1.0, "cos_codec": 0.2})
    assert dose.lam == pytest.approx(1 - 0.5 ** 6) and dose.fires == 6
    dose.take({"lambda_star": 7.0})  # clamped to the cap
    assert dose.lam <= 1.0
    metrics = dose.metrics()
    assert metrics["commeff/dose/lambda_ema"] == dose.lam and metrics["commeff/dose/evidence_fires"] == 7.0
    assert metrics["commeff/dose/cos_codec"] == pytest.approx((0.9 + 6 * 0.2) / 7)
    assert "commeff/dose/cos_codec" not in dose.metrics()  # per step
    again = EvidenceDose(prior=0.0, momentum=0.5, cap=1.0)
    again.load_state_dict(dose.state_dict())
    assert (again.lam, again.fires) == (dose.lam, dose.fires)
    with pytest.raises(ValueError, match="momentum"):
        EvidenceDose(prior=0.0, momentum=0.9, cap=1.0).load_state_dict(dose.state_dict())


def test_merger_applies_the_evidence_dose_it_was_handed():
    """hold(evidence=...) moves λ_t; the merged gradient is signed_ema at that λ (by-hand reference)."""
    cfg = MergerConfig(alpha=ALPHA, adaptive=AdaptiveLambdaConfig(mode="evidence", momentum=0.0), kernels="eager")
    merger = build_merger(cfg)
    gen = torch.Generator().manual_seed(0)
    m_bar = [torch.randn(8, 6, generator=gen)]
    g = [torch.randn(8, 6, generator=gen)]
    merger.hold(m_bar, produced_tick=1, source_tick=1)  # no evidence yet: λ = prior = 0
    g1 = [g[0].clone()]
    merger.apply_(g1, tick=1)
    torch.testing.assert_close(g1[0], g[0], atol=0, rtol=0)
    merger.hold(m_bar, produced_tick=2, source_tick=2, evidence={"lambda_star": 0.6, "cos_codec": 0.1})
    g2 = [g[0].clone()]
    merger.apply_(g2, tick=2)
    torch.testing.assert_close(g2[0].double(), _merge(g[0].double().reshape(-1), (m_bar[0] >= 0).reshape(-1),
                                                      0.6).reshape(8, 6), atol=1e-6, rtol=0)
    metrics = merger.metrics()
    assert metrics["commeff/merger/lambda"] == pytest.approx(0.3)  # mean of the step's two ticks: 0 and 0.6
    assert metrics["commeff/dose/lambda_ema"] == pytest.approx(0.6) and metrics["commeff/dose/lambda_star"] == 0.6


def test_the_none_merger_logs_the_evidence_but_never_merges():
    merger = build_merger(MergerConfig(name="none", kernels="eager", adaptive=AdaptiveLambdaConfig(mode="off")))
    merger.hold([torch.ones(4)], produced_tick=1, source_tick=1, evidence={"lambda_star": 1.0, "cos_codec": 0.4})
    g = [torch.randn(4)]
    before = g[0].clone()
    merger.apply_(g, tick=1)
    torch.testing.assert_close(g[0], before, atol=0, rtol=0)
    metrics = merger.metrics()
    assert metrics["commeff/dose/lambda_star"] == 1.0 and "commeff/dose/lambda_ema" not in metrics
    assert "commeff/dose/cos_codec" not in build_merger(
        MergerConfig(name="none", kernels="eager", adaptive=AdaptiveLambdaConfig(mode="off"))).metrics()


def test_evidence_config_is_validated():
    cfg = CommEffConfig(merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="evidence")))
    assert cfg.anchor.probe == "on" and cfg.anchor.transport == "sign"
    assert CommEffConfig(merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off"))).anchor.probe == "off"
    assert CommEffConfig().anchor.probe == "on"  # the default dose is the evidence dose
    with pytest.raises(ValueError, match="cap is unresolved"):
        DoseControl(AdaptiveLambdaConfig(mode="evidence"))
    with pytest.raises(CommEffConfigError, match="needs commeff.anchor.probe=on"):
        CommEffConfig(anchor=AnchorConfig(probe="off"), merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="evidence")))
    off = MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off"))
    with pytest.raises(CommEffConfigError, match="commeff.anchor.probe=on needs commeff.anchor.sync='strict'"):
        CommEffConfig(anchor=AnchorConfig(sync="free", probe="on"), merger=off)
    with pytest.raises(CommEffConfigError, match="commeff.anchor.probe=on needs commeff.codec.q_source='anchor'"):
        CommEffConfig(codec={"q_source": "fast"}, anchor=AnchorConfig(probe="on"), merger=off)
    with pytest.raises(CommEffConfigError, match="commeff.merger.adaptive.momentum=1.0 is out of range"):
        AdaptiveLambdaConfig(momentum=1.0)
    with pytest.raises(CommEffConfigError, match="commeff.merger.adaptive.prior=-0.1 is out of range"):
        AdaptiveLambdaConfig(prior=-0.1)
    with pytest.raises(CommEffConfigError, match="commeff.anchor.probe='yes' is not valid"):
        AnchorConfig(probe="yes")
    assert math.isfinite(DoseControl(AdaptiveLambdaConfig(mode="evidence", cap=1.0)).evidence.lam)


def test_the_dose_at_an_age_interpolates_between_the_measured_ages():
    dose = EvidenceDose(prior=0.0, momentum=0.0, cap=1.0)
    dose.take({"lambda_star": 0.8, "held_age": 0.0})  # no older M̄ scored yet: one λ for every age
    assert [dose.at_age(a) for a in (0, 3, 9)] == [0.8, 0.8, 0.8]
    dose.take({"lambda_star": 1.0, "held_age": 0.0, "lambda_star_older": 0.0, "older_age": 5.0})
    assert [dose.at_age(a) for a in (0, 1, 4, 5, 7)] == pytest.approx([1.0, 0.8, 0.2, 0.0, 0.0])
    again = EvidenceDose(prior=0.0, momentum=0.0, cap=1.0)
    again.load_state_dict(dose.state_dict())
    assert again.at_age(4) == pytest.approx(0.2)
    assert dose.metrics()["commeff/dose/lambda_ema_older"] == 0.0
    control = DoseControl(AdaptiveLambdaConfig(mode="evidence", momentum=0.0, cap=1.0))
    control.take_evidence({"lambda_star": 1.0, "held_age": 0.0, "lambda_star_older": 0.5, "older_age": 2.0})
    lam, _ = control.dose(torch.zeros((), dtype=torch.float64), age=1)
    assert lam.item() == pytest.approx(0.75)
