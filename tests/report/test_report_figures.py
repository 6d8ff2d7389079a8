"""Label placement of the validation figure: end-of-curve values that would overlap are moved apart."""

import itertools

import pytest

from verl_commeff.report.figures import spread_labels


def test_far_apart_labels_stay_on_their_values():
    assert spread_labels([0.1, 0.5, 0.9], gap=0.03) == pytest.approx([0.1, 0.5, 0.9])


@pytest.mark.parametrize("values", [
    [0.164, 0.156, 0.152, 0.098, 0.641, 0.625, 0.559, 0.504],  # the tiny study's val@30
    [0.5, 0.5, 0.5, 0.5],
    [0.2, 0.21, 0.5, 0.51, 0.52, 0.9],
])
def test_close_labels_are_a_gap_apart_in_the_same_order_centred_on_their_values(values):
    gap = 0.02
    heights = spread_labels(values, gap)
    order = sorted(range(len(values)), key=lambda i: values[i])
    placed = [heights[i] for i in order]
    assert all(b - a >= gap - 1e-12 for a, b in zip(placed, placed[1:]))  # apart, order kept
    # each run of labels that touch is centred on its values (no drift of the whole stack)
    runs, run = [], [order[0]]
    for i, j in itertools.pairwise(order):
        if heights[j] - heights[i] <= gap + 1e-12:
            run.append(j)
        else:
            runs.append(run)
            run = [j]
    runs.append(run)
    for run in runs:
        assert sum(heights[i] for i in run) == pytest.approx(sum(values[i] for i in run))
