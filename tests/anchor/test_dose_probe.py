"""The dose probe's bookkeeping: which M̄ the actor held and which Q was live at a replayed tick."""

import torch

from verl_commeff.anchor.dose_probe import DoseProbe
from verl_commeff.mergers.sign_bits import unpack_signs
from verl_commeff.schedule import FireSchedule


def _m(seed):
    return [torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))]


def test_held_m_bar_is_the_newest_accepted_fire_at_or_before_the_tick_and_old_ones_are_pruned():
    probe = DoseProbe(FireSchedule(delay_k=5, cadence=5, ticks_per_step=2), alpha=0.25, cap=1.0)
    assert probe.held_at(5) is None  # cold
    for fire in (5, 10, 20):  # fire 15 was rejected: the actor kept fire 10's M̄
        probe.record_held(fire, _m(fire))
    fire, signs = probe.held_at(19)
    assert fire == 10 and torch.equal(unpack_signs(signs)[0], torch.where(_m(10)[0] >= 0, 1.0, -1.0))
    assert probe.held_at(20)[0] == 20 and probe.held_at(9)[0] == 5
    for fire in (25, 30):
        probe.record_held(fire, _m(fire))
    assert sorted(probe._signs) == [10, 20, 25, 30]  # ⌈K/cadence⌉ + 3 kept (the held one, the one before, a spare)
    assert probe.held_at(9) is None  # pruned: no evidence rather than a wrong one


def test_q_live_on_the_actor_from_the_step_after_its_refresh():
    probe = DoseProbe(FireSchedule(delay_k=2, cadence=2, ticks_per_step=2), alpha=0.25, cap=1.0)
    q0, q2, q4 = (torch.full((1, 4, 2), float(i)) for i in (0, 2, 4))
    probe.reset_basis(q0)
    probe.record_basis(2, q2)  # staged at tick 2 (end of step 1): live from tick 3
    probe.record_basis(3, q4)  # staged at tick 3 (step 2): live from tick 5
    assert [float(probe.basis_at(t)[0, 0, 0]) for t in range(1, 7)] == [0, 0, 2, 2, 4, 4]
    again = DoseProbe(FireSchedule(delay_k=2, cadence=2, ticks_per_step=2), alpha=0.25, cap=1.0)
    probe.record_held(2, _m(2))
    again.load_state_dict(probe.state_dict())
    assert again.held_at(3)[0] == 2 and float(again.basis_at(4)[0, 0, 0]) == 2


def test_evaluate_without_a_held_m_bar_reports_only_the_codec_loss():
    probe = DoseProbe(FireSchedule(delay_k=0, cadence=1, ticks_per_step=1), alpha=0.25, cap=1.0)
    d = _m(1)
    evidence = probe.evaluate(1, d, lambda q: [t * 0.5 for t in d])  # C ∥ D
    assert evidence == {"cos_codec": evidence["cos_codec"]} and abs(evidence["cos_codec"] - 1.0) < 1e-6
    probe.record_held(1, d)
    evidence = probe.evaluate(1, d, lambda q: [-t for t in d])  # C = −D: the signs of M̄ fix every coordinate
    assert evidence["held_agree"] == 1.0 and evidence["lambda_star"] == 1.0 and evidence["held_age"] == 0.0


def test_the_m_bar_held_before_is_scored_at_its_older_age():
    """K=2, cadence 2: fire 6 replays tick 4, where fire 4's M̄ was held (age 0); fire 2's M̄ (age 2) is scored too.
    Fire 2's M̄ has D's signs (it fixes C = −D everywhere: λ* = cap), fire 4's has the opposite (λ* = 0)."""
    probe = DoseProbe(FireSchedule(delay_k=2, cadence=2, ticks_per_step=2), alpha=0.25, cap=1.0)
    d = _m(7)
    probe.record_held(2, d)
    probe.record_held(4, [-t for t in d])
    probe.record_held(6, d)  # after the replayed tick: not the held one
    evidence = probe.evaluate(4, d, lambda q: [-t for t in d])
    assert (evidence["held_age"], evidence["older_age"]) == (0.0, 2.0)
    assert evidence["lambda_star"] == 0.0 and evidence["held_agree"] == 0.0
    assert evidence["lambda_star_older"] == 1.0 and evidence["held_agree_older"] == 1.0
