import pytest

from verl_commeff.clock import TickClock, ticks_per_step


def test_ticks_per_step_seed_surface():
    assert ticks_per_step(128, 64, 1) == 2
    assert ticks_per_step(128, 32, 2) == 8


@pytest.mark.parametrize(
    "args, match",
    [((128, 48, 1), "not a multiple"), ((0, 64, 1), "train_batch_size=0"), ((128, 64, 0), "ppo_epochs=0")],
)
def test_ticks_per_step_rejects_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        ticks_per_step(*args)


def test_clock_ticks_are_one_based_and_monotonic_across_steps():
    clock = TickClock(3)
    seen = []
    for step in range(1, 5):
        ticks = clock.begin_step()
        assert list(ticks) == [3 * (step - 1) + i for i in (1, 2, 3)]
        for _ in ticks:
            t = clock.advance()
            seen.append(t)
            assert clock.step_of_tick(t) == step
    assert seen == list(range(1, 13))


def test_clock_refuses_to_drift():
    clock = TickClock(2)
    with pytest.raises(RuntimeError, match="before begin_step"):
        clock.advance()
    clock.begin_step()
    clock.advance()
    with pytest.raises(RuntimeError, match="took 1 ticks, expected 2"):
        clock.begin_step()
    clock.advance()
    with pytest.raises(RuntimeError, match="exceed"):
        clock.advance()


def test_clock_state_round_trip():
    a = TickClock(2)
    a.begin_step(), a.advance(), a.advance(), a.begin_step(), a.advance()
    b = TickClock(2)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.tick) == (2, 3)
    assert b.advance() == a.advance() == 4
    with pytest.raises(ValueError, match="ticks_per_step=2"):
        TickClock(4).load_state_dict(a.state_dict())
