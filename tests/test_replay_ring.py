"""The replay ring against an independent simulation of the run (SPEC §3)."""

import copy

import pytest

from verl_commeff.replay_ring import ReplayRing
from verl_commeff.schedule import FireSchedule

TICKS_PER_STEP = 2


def _run(ring, steps, first_step=1, on_fire=None):
    """Drive ``ring`` like the trainer does; returns per-fire records and the peak sizes."""
    s, records, peak_batches, peak_snaps = ring.schedule, [], 0, 0
    for step in range(first_step, first_step + steps):
        ticks = range((step - 1) * TICKS_PER_STEP + 1, step * TICKS_PER_STEP + 1)
        taken = []
        jobs = ring.add_step(step, [("minibatch", t) for t in ticks], lambda: taken.append(step) or ("weights", step))
        assert len(taken) <= 1  # one snapshot per step at most
        peak_batches, peak_snaps = max(peak_batches, len(ring)), max(peak_snaps, ring.num_snapshots)
        for job in jobs:
            assert job.fire_tick >= ticks[0]  # submitted no later than the step it is needed in
        for t in ticks:
            if s.fires_at(t):
                job = ring.job(t)
                records.append((t, job.batch, job.snapshot, job.warmup))
                if on_fire:
                    on_fire(job)
                ring.release(t)
    return records, peak_batches, peak_snaps


@pytest.mark.parametrize("k", [5, 20])
@pytest.mark.parametrize("cadence", [5, 20])
def test_every_fire_gets_tick_t_minus_k_with_its_generator_weights(k, cadence):
    ring = ReplayRing(FireSchedule(k, cadence, TICKS_PER_STEP))
    records, peak_batches, peak_snaps = _run(ring, steps=100)
    assert [r[0] for r in records] == list(range(cadence, 201, cadence))  # 200 ticks / cadence fires
    for fire, batch, weights, warmup in records:
        source = fire - k if fire - k >= 1 else 1  # warm-up replays the oldest mini-batch
        generator_step = (source - 1) // TICKS_PER_STEP + 1  # weights at the start of that batch's step
        assert batch == ("minibatch", source)
        assert weights == ("weights", generator_step)
        assert warmup == (fire - k < 1)
    # bounded: SPEC §3's ⌊K/cadence⌋+2 snapshots, and the schedule's own bounds
    assert peak_snaps <= k // cadence + 2
    assert peak_batches <= ring.schedule.ring_batch_bound()
    assert peak_snaps <= ring.schedule.ring_snapshot_bound()


@pytest.mark.parametrize("k, cadence, expected_peak", [(5, 5, 2), (20, 5, 5), (5, 20, 1), (20, 20, 2)])
def test_peak_batches_match_hand_count(k, cadence, expected_peak):
    # e.g. K=20, cadence 5: right after step 10 (ticks 19, 20) the ring holds ticks 1 (warm-up fire 20), 5, 10, 15, 20.
    _, peak, _ = _run(ReplayRing(FireSchedule(k, cadence, TICKS_PER_STEP)), steps=60)
    assert peak == expected_peak


def test_only_fire_paired_batches_are_kept():
    ring = ReplayRing(FireSchedule(5, 5, TICKS_PER_STEP))
    ring.add_step(1, ["mb1", "mb2"], lambda: "w1")
    ring.add_step(2, ["mb3", "mb4"], lambda: "w2")
    assert len(ring) == 1 and ring.num_snapshots == 1  # tick 1 only (warm-up); step 2 snapshot never taken
    ring.add_step(3, ["mb5", "mb6"], lambda: "w3")
    assert ring.job(5).batch == "mb1" and ring.job(10).batch == "mb5"
    ring.release(5)
    assert len(ring) == 1 and ring.job(10).snapshot == "w3"


def test_warmup_with_k_zero_is_never_needed():
    ring = ReplayRing(FireSchedule(0, 3, TICKS_PER_STEP))
    records, _, _ = _run(ring, steps=6)
    assert all(batch == ("minibatch", fire) for fire, batch, _, _ in records)


def test_state_dict_resume_resubmits_the_same_jobs():
    sched = FireSchedule(20, 5, TICKS_PER_STEP)
    a = ReplayRing(sched)
    _run(a, steps=13)
    b = ReplayRing(sched)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert [(j.fire_tick, j.batch, j.snapshot) for j in b.pending_jobs()] == [
        (j.fire_tick, j.batch, j.snapshot) for j in a.pending_jobs()
    ]
    ra, *_ = _run(a, steps=10, first_step=14)
    rb, *_ = _run(b, steps=10, first_step=14)
    assert ra == rb
    with pytest.raises(ValueError, match="delay_k, cadence"):
        ReplayRing(FireSchedule(5, 5, TICKS_PER_STEP)).load_state_dict(a.state_dict())


def test_ring_refuses_misuse():
    ring = ReplayRing(FireSchedule(5, 5, TICKS_PER_STEP))
    with pytest.raises(ValueError, match="out of order"):
        ring.add_step(2, ["a", "b"], lambda: "w")
    with pytest.raises(ValueError, match="expected ticks_per_step=2"):
        ring.add_step(1, ["a"], lambda: "w")
    ring.add_step(1, ["a", "b"], lambda: "w")
    with pytest.raises(KeyError, match="not pending"):
        ring.release(7)


def test_ring_raises_when_fires_are_never_released():
    ring = ReplayRing(FireSchedule(5, 5, TICKS_PER_STEP))
    with pytest.raises(RuntimeError, match="never released"):
        for step in range(1, 50):
            ring.add_step(step, ["a", "b"], lambda: "w")


def test_a_late_fire_stays_pending_outside_the_bound_until_released():
    """sync=free: fire 10 (K=5, cadence 5) is past its tick and unconsumed for 6 more steps. Marked late, it
    keeps its mini-batch and snapshot and does not count against the bound; released, they go. A fire
    past its tick that is neither released nor marked late still trips the bound (a driver that forgets)."""
    sched = FireSchedule(5, 5, TICKS_PER_STEP)
    ring = ReplayRing(sched)
    for step in range(1, 12):
        ticks = range((step - 1) * TICKS_PER_STEP + 1, step * TICKS_PER_STEP + 1)
        ring.add_step(step, [("minibatch", t) for t in ticks], lambda: ("weights", step))
        for t in ticks:
            if sched.fires_at(t):
                ring.mark_late(t) if t == 10 else ring.release(t)
    assert ring.late_fires == 1 and ring.job(10).batch == ("minibatch", 5) and ring.job(10).snapshot == ("weights", 3)
    assert ReplayRing(sched).load_state_dict(copy.deepcopy(ring.state_dict())) is None
    ring.release(10)
    assert ring.late_fires == 0 and 5 not in {j.source_tick for j in ring.pending_jobs()}

    forgetful = ReplayRing(sched)
    with pytest.raises(RuntimeError, match="were never released"):
        for step in range(1, 12):
            ticks = range((step - 1) * TICKS_PER_STEP + 1, step * TICKS_PER_STEP + 1)
            forgetful.add_step(step, [("minibatch", t) for t in ticks], lambda: ("weights", step))
