"""val@k by the nearest-step rule, the gate, the floor and validation-key detection, by hand."""

import pandas as pd
import pytest

from verl_commeff.report.errors import ReportError
from verl_commeff.report.verdict import VerdictSettings, build_verdicts, detect_val_metric, render_verdict, val_at

KEY = "val-core/openai/gsm8k/reward/mean@1"


def runs_from(val_by_arm):
    return {arm: pd.DataFrame({KEY: pd.Series(vals, dtype=float)}).rename_axis("step") for arm, vals in val_by_arm.items()}


def verdicts(val_by_arm, **settings):
    runs = runs_from(val_by_arm)
    settings = VerdictSettings(**settings)
    rows = build_verdicts(runs, {arm: KEY for arm in runs}, {}, settings)
    return {row.arm: row for row in rows}, settings


def test_val_at_exact_nearest_tie_and_too_far():
    series = pd.Series({0: 0.1, 24: 0.2, 40: 0.3, 60: 0.4})
    assert val_at(series, 24, 12).step == 24
    assert (val_at(series, 25, 12).step, val_at(series, 25, 12).value) == (24, 0.2)  # 1 step away
    assert val_at(series, 50, 12).step == 40  # 40 and 60 are both 10 away: the earlier one
    assert val_at(series, 75, 12) is None  # nearest is 60, 15 > 12 steps away
    assert val_at(series, 75, 15).step == 60


def test_gate_and_floor_match_the_seed_numbers():
    rows, _ = verdicts(
        {"K5": {0: 0.70, 25: 0.7263, 50: 0.7362}, "K20": {0: 0.70, 25: 0.5921, 50: 0.6482, 75: 0.4898, 100: 0.4435}},
        baseline="K5",
    )
    k20 = rows["K20"]
    assert k20.degradation == pytest.approx(0.7362 - 0.6482)  # 0.0880 > 0.05
    assert k20.passes_gate is False
    assert k20.below_floor is True and k20.terminal.value == 0.4435 and k20.terminal.step == 100
    assert [k20.points[k].value for k in (25, 50, 75, 100)] == [0.5921, 0.6482, 0.4898, 0.4435]
    assert rows["K5"].is_baseline and rows["K5"].degradation == 0.0 and rows["K5"].below_floor is False
    assert rows["K5"].points[75] is None and rows["K5"].points[100] is None  # the run stopped at 50


def test_gate_passes_just_inside_and_fails_just_outside():
    rows, _ = verdicts({"base": {50: 0.80}, "inside": {50: 0.76}, "outside": {50: 0.74}}, baseline="base")
    assert rows["inside"].degradation == pytest.approx(0.04) and rows["inside"].passes_gate is True
    assert rows["outside"].degradation == pytest.approx(0.06) and rows["outside"].passes_gate is False


def test_nearest_step_rule_in_the_gate_and_the_table():
    # validation every 24 steps: val@50 of "late" is read at step 48, val@100 at 96
    rows, settings = verdicts({"base": {0: 0.7, 25: 0.72, 50: 0.75}, "late": {0: 0.7, 24: 0.71, 48: 0.69, 72: 0.66, 96: 0.61}},
                              baseline="base", floor=0.63)
    late = rows["late"]
    assert [late.points[k].step for k in (25, 50, 75, 100)] == [24, 48, 72, 96]
    assert late.degradation == pytest.approx(0.75 - 0.69) and late.passes_gate is False
    assert late.below_floor is True  # terminal 0.61 < 0.63
    table = render_verdict(list(rows.values()), settings, "detector")
    assert "| late | 0.7100 (@24) | 0.6900 (@48) | 0.6600 (@72) | 0.6100 (@96) | 0.6100 (@96) | +0.0600 | FAIL | BELOW |" in table


def test_unknown_baseline_lists_the_arms():
    with pytest.raises(ReportError, match=r"unknown baseline 'K10': the arms are 'K5', 'K20'"):
        verdicts({"K5": {50: 0.7}, "K20": {50: 0.6}}, baseline="K10")


def test_detect_val_metric_prefers_acc_then_largest_n():
    table = pd.DataFrame(columns=[
        "val-core/openai/gsm8k/reward/mean@4", "val-core/openai/gsm8k/acc/mean@2", "val-core/openai/gsm8k/acc/mean@4",
        "val-core/openai/gsm8k/acc/best@4/mean", "val-aux/openai/gsm8k/acc/mean@1", "critic/score/mean"])
    assert detect_val_metric(table, "arm") == "val-core/openai/gsm8k/acc/mean@4"
    assert detect_val_metric(pd.DataFrame(columns=[KEY, "critic/score/mean"]), "arm") == KEY


def test_detect_val_metric_errors():
    with pytest.raises(ReportError, match="run 'arm' has no validation metric"):
        detect_val_metric(pd.DataFrame(columns=["critic/score/mean", "val-aux/openai/gsm8k/reward/mean@1"]), "arm")
    with pytest.raises(ReportError, match=r"several data sources \['lighteval/MATH', 'openai/gsm8k'\]"):
        detect_val_metric(pd.DataFrame(columns=[KEY, "val-core/lighteval/MATH/reward/mean@1"]), "arm")
