"""Detect a response-length spiral: the length mean runs away while the score does not rise.

The seed's K=20 collapse is a "length ratchet": ``response_length/mean`` grows step after
step along a reward-flat ridge while ``critic/score/mean`` stays flat (or falls, once long
answers start being truncated). A length that grows *with* the score is ordinary GRPO
learning and is not a spiral.

The detector, on the steps where both metrics were logged (``n`` rows, in step order):

1. **Rolling windows.** For every window of ``window`` consecutive rows, fit an ordinary
   least-squares line against the step number to the length and to the score.
2. **Qualifying window.** A window qualifies when
   - the length grows fast: slope / (mean length in the window) ≥ ``min_growth``
     (relative growth per step; 0.02 = 2 % per step), and
   - the score is flat: slope × (step span of the window) ≤ ``score_tolerance`` (the
     score's fitted rise across the window, in score units; a falling score counts as flat).
3. **Sustained.** A spiral is found at the first run of ``patience`` consecutive
   qualifying windows. None found → no spiral.
4. **Ignition step.** The baseline is the median length over the ``window`` rows just
   before the first qualifying window (the first row's length when there are none). The
   ignition step is the earliest step from which the length stays above
   (1 + ``departure``) × baseline through the end of the qualifying run's last window.

Defaults (``SpiralParams()``): window 8 steps, min_growth 0.02 / step, score_tolerance
0.05, patience 3, departure 0.05. The seed's spiral (251 → 683 tokens over steps ~91–100,
about 10 % per step, score flat) is far above these thresholds; ordinary GRPO length drift
(a few tenths of a percent per step) is far below them. A spiral needs at least
``window + patience − 1`` logged steps to be seen, so one that starts in the last
~10 steps of a run is reported only if it is steep enough for windows that are partly
before its onset to qualify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["SpiralParams", "detect_spiral", "window_slopes"]


@dataclass(frozen=True)
class SpiralParams:
    """Parameters of :func:`detect_spiral` (see the module docstring for their meaning)."""

    window: int = 8
    min_growth: float = 0.02
    score_tolerance: float = 0.05
    patience: int = 3
    departure: float = 0.05

    def __post_init__(self):
        if self.window < 3:
            raise ValueError(f"spiral window must be >= 3 steps, got {self.window}")
        if self.patience < 1:
            raise ValueError(f"spiral patience must be >= 1, got {self.patience}")


def window_slopes(steps: np.ndarray, values: np.ndarray, window: int) -> np.ndarray:
    """OLS slope of ``values`` against ``steps`` over every run of ``window`` consecutive rows.

    Args:
        steps: step numbers, ascending.
        values: the series at those steps.
        window: rows per window.

    Returns:
        ``len(steps) - window + 1`` slopes; entry ``i`` fits rows ``i .. i + window - 1``.
    """
    x = pd.Series(steps, dtype=float)
    y = pd.Series(values, dtype=float)
    covariance = x.rolling(window).cov(y)
    variance = x.rolling(window).var()
    return (covariance / variance).to_numpy()[window - 1 :]


def qualifying_windows(steps: np.ndarray, length: np.ndarray, score: np.ndarray, params: SpiralParams) -> np.ndarray:
    """Which windows show fast length growth with a flat score (boolean per window start)."""
    w = params.window
    length_slope = window_slopes(steps, length, w)
    score_slope = window_slopes(steps, score, w)
    mean_length = pd.Series(length, dtype=float).rolling(w).mean().to_numpy()[w - 1 :]
    span = steps[w - 1 :] - steps[: len(steps) - w + 1]
    relative_growth = length_slope / mean_length
    score_rise = score_slope * span
    return (relative_growth >= params.min_growth) & (score_rise <= params.score_tolerance)


def first_sustained_run(flags: np.ndarray, patience: int) -> Optional[tuple[int, int]]:
    """The first run of at least ``patience`` consecutive True flags, as (first, last) index."""
    start = None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = index
        if not flag and start is not None:
            if index - start >= patience:
                return start, index - 1
            start = None
    if start is not None and len(flags) - start >= patience:
        return start, len(flags) - 1
    return None


def ignition_row(length: np.ndarray, first_window: int, last_row: int, params: SpiralParams) -> int:
    """The row from which the length stays above (1 + departure) × the pre-spiral baseline."""
    before = length[max(0, first_window - params.window) : first_window]
    baseline = float(np.median(before)) if len(before) else float(length[first_window])
    above = length[: last_row + 1] > (1.0 + params.departure) * baseline
    row = last_row
    while row - 1 >= first_window and above[row - 1]:
        row -= 1
    return row if above[row] else first_window


def detect_spiral(length: pd.Series, score: pd.Series, params: SpiralParams = SpiralParams()) -> Optional[int]:
    """The ignition step of the first response-length spiral, or ``None``.

    Args:
        length: ``response_length/mean`` indexed by step.
        score: ``critic/score/mean`` indexed by step.
        params: detector parameters.

    Returns:
        The ignition step, or ``None`` when no sustained spiral is found (or there are
        fewer than ``window + patience - 1`` steps with both metrics).
    """
    both = pd.concat({"length": length, "score": score}, axis=1).dropna().sort_index()
    if len(both) < params.window + params.patience - 1:
        return None
    steps = both.index.to_numpy(dtype=float)
    lengths = both["length"].to_numpy(dtype=float)
    flags = qualifying_windows(steps, lengths, both["score"].to_numpy(dtype=float), params)
    run = first_sustained_run(flags, params.patience)
    if run is None:
        return None
    first_window, last_window = run
    last_row = last_window + params.window - 1
    return int(both.index[ignition_row(lengths, first_window, last_row, params)])
