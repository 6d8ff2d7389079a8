import pytest

from verl_commeff.schedule import FireSchedule


def test_fire_predicate_and_counts():
    s = FireSchedule(delay_k=5, cadence=5, ticks_per_step=2)
    assert [t for t in range(1, 31) if s.fires_at(t)] == [5, 10, 15, 20, 25, 30]
    assert s.fires_through(100) == 20
    assert s.q_cadence == 5  # coupled by default


def test_q_cadence_decoupled():
    s = FireSchedule(delay_k=20, cadence=5, ticks_per_step=2, q_cadence=10)
    assert [t for t in range(1, 41) if s.q_refresh_at(t)] == [10, 20, 30, 40]
    assert s.q_refreshes_through(45) == 4


@pytest.mark.parametrize("k, cadence", [(5, 5), (5, 20), (20, 5), (20, 20)])
def test_source_tick_is_t_minus_k_with_warmup_on_tick_one(k, cadence):
    s = FireSchedule(delay_k=k, cadence=cadence, ticks_per_step=2)
    for t in range(cadence, 400, cadence):
        expected = t - k if t - k >= 1 else 1
        assert s.source_tick(t) == expected
        assert s.is_warmup(t) == (t - k < 1)
        assert s.retains(expected)
        assert t in s.fires_replaying(expected)


@pytest.mark.parametrize("k, cadence", [(5, 5), (5, 20), (20, 5), (20, 20)])
def test_retention_is_exactly_the_replayed_ticks(k, cadence):
    s = FireSchedule(delay_k=k, cadence=cadence, ticks_per_step=2)
    replayed = {s.source_tick(t) for t in range(cadence, 1000, cadence)}
    assert {tau for tau in range(1, 1000 - k) if s.retains(tau)} == replayed


def test_fires_sourced_in_step_cover_every_fire_once():
    s = FireSchedule(delay_k=20, cadence=5, ticks_per_step=2)
    submitted = [t for step in range(1, 101) for t in s.fires_sourced_in_step(step)]
    assert sorted(submitted) == list(range(5, 221, 5))  # fires up to tick 200 + K sourced by step 100
    assert len(submitted) == len(set(submitted))


def test_source_tick_rejects_non_fire_ticks():
    with pytest.raises(ValueError, match="not a fire tick"):
        FireSchedule(5, 5, 2).source_tick(7)


@pytest.mark.parametrize("field, kwargs", [
    ("delay_k", dict(delay_k=-1, cadence=5, ticks_per_step=2)),
    ("cadence", dict(delay_k=5, cadence=0, ticks_per_step=2)),
    ("ticks_per_step", dict(delay_k=5, cadence=5, ticks_per_step=0)),
    ("q_cadence", dict(delay_k=5, cadence=5, ticks_per_step=2, q_cadence=0)),
])
def test_invalid_schedule(field, kwargs):
    with pytest.raises(ValueError, match=field):
        FireSchedule(**kwargs)
