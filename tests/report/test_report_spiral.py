"""The spiral detector: planted spirals are found at their step, healthy growth is not a spiral."""

import numpy as np
import pandas as pd
import pytest

from tests.report.synthetic_runs import RunShape, make_run, series_of
from verl_commeff.report.spiral import SpiralParams, detect_spiral, window_slopes

LENGTH, SCORE = "response_length/mean", "critic/score/mean"


def detect(records, params=SpiralParams()):
    return detect_spiral(series_of(records, LENGTH), series_of(records, SCORE), params)


def test_window_slopes_of_an_exact_line_on_uneven_steps():
    steps = np.array([1.0, 2.0, 4.0, 7.0, 8.0])
    slopes = window_slopes(steps, 3.0 * steps + 1.0, window=3)
    assert slopes == pytest.approx([3.0, 3.0, 3.0])


def test_window_slopes_hand_computed_noisy_window():
    # x = 0,1,2 ; y = 0,2,1 → slope = Σ(x−1)(y−1)/Σ(x−1)² = ((−1)(−1) + 0 + (1)(0)) / 2 = 0.5
    assert window_slopes(np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 1.0]), window=3) == pytest.approx([0.5])


def test_noise_free_spiral_ignites_at_the_first_elevated_step():
    steps = np.arange(1, 21)
    length = pd.Series(np.where(steps <= 10, 100.0, 100.0 * 1.1 ** (steps - 10)), index=steps)
    score = pd.Series(0.5, index=steps)
    # baseline = 100; the first step above 105 from which the length never falls back is step 11 (110)
    assert detect_spiral(length, score) == 11


@pytest.mark.parametrize("spiral_at, rate, seed", [(30, 0.12, 0), (55, 0.05, 1), (80, 0.08, 2), (91, 0.12, 3)])
def test_planted_spiral_is_reported_at_its_step(spiral_at, rate, seed):
    records = make_run(RunShape(steps=100, spiral_at=spiral_at, spiral_rate=rate, seed=seed))
    ignition = detect(records)
    assert ignition is not None and abs(ignition - spiral_at) <= 2, ignition


@pytest.mark.parametrize("seed", range(8))
def test_flat_run_has_no_spiral(seed):
    assert detect(make_run(RunShape(steps=100, seed=seed))) is None


def test_length_growing_with_the_score_is_not_a_spiral():
    records = make_run(RunShape(steps=100, grow_with_score=(20, 60), seed=4))
    assert detect(records) is None


def test_same_length_growth_with_a_flat_score_is_a_spiral():
    """Control for the test above: only the rising score kept that growth from being flagged."""
    records = make_run(RunShape(steps=100, grow_with_score=(20, 60), seed=4))
    flat_score = pd.Series(0.6, index=series_of(records, SCORE).index)
    ignition = detect_spiral(series_of(records, LENGTH), flat_score)
    assert ignition is not None and 20 <= ignition <= 24


def test_spiral_with_a_falling_score_is_reported():
    records = make_run(RunShape(steps=100, spiral_at=70, seed=5))
    score = series_of(records, SCORE)
    score[score.index >= 70] -= 0.01 * (score.index[score.index >= 70] - 69)
    ignition = detect_spiral(series_of(records, LENGTH), score)
    assert ignition is not None and abs(ignition - 70) <= 2


def test_growth_below_the_threshold_is_not_a_spiral():
    # 1.5 %/step sustained growth with a flat score stays under min_growth = 2 %/step ...
    records = make_run(RunShape(steps=100, spiral_at=40, spiral_rate=0.015, seed=6))
    assert detect(records) is None
    # ... and is found once the threshold is lowered under it
    assert detect(records, SpiralParams(min_growth=0.01)) is not None


def test_too_short_a_run_has_no_spiral():
    steps = np.arange(1, 10)  # 9 rows < window 8 + patience 3 − 1
    assert detect_spiral(pd.Series(100.0 * 1.2**steps, index=steps), pd.Series(0.5, index=steps)) is None


@pytest.mark.parametrize("kwargs", [{"window": 2}, {"patience": 0}])
def test_invalid_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SpiralParams(**kwargs)
