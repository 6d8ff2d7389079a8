"""The whole model's data-parallel bytes in the report: run ratio, dp_bytes.png, the verdict's table."""

import matplotlib.image
import pandas as pd
import pytest

from tests.report.synthetic_runs import RunShape, make_run, write_run
from verl_commeff.cli import main
from verl_commeff.report.dp_bytes import DP_DENSE, DP_SENT, dp_bytes

DENSE_PER_STEP = 2 * 856_320.0  # two exchanges of the whole model per step


def with_dp(records, warmup_steps, compressed_sent):
    """``records`` plus DP ledger keys: dense for ``warmup_steps`` steps, then ``compressed_sent`` bytes."""
    out = []
    for step, data in records:
        data = dict(data)
        if step > 0:
            data[DP_SENT] = DENSE_PER_STEP if step <= warmup_steps else compressed_sent
            data[DP_DENSE] = DENSE_PER_STEP
        out.append((step, data))
    return out


def test_run_ratio_is_the_sum_of_bytes_over_the_sum_of_dense_not_a_mean_of_ratios():
    records = with_dp(make_run(RunShape(steps=20, val={0: 0.3, 20: 0.6}, cadence_ticks=None)), 2, 20_000.0)
    got = dp_bytes(pd.DataFrame({s: d for s, d in records}).T.sort_index())
    by_hand = (2 * DENSE_PER_STEP + 18 * 20_000.0) / (20 * DENSE_PER_STEP)
    assert got.run_ratio == pytest.approx(by_hand)
    assert got.per_step.loc[1] == 1.0 and got.per_step.loc[20] == pytest.approx(20_000.0 / DENSE_PER_STEP)
    assert dp_bytes(pd.DataFrame({s: d for s, d in make_run(RunShape(steps=3, val={0: 0.3}, cadence_ticks=None))}).T) \
        is None


def test_report_draws_bytes_against_accuracy_and_tables_them(tmp_path):
    shape = dict(steps=20, cadence_ticks=None)
    arms = {
        "dense": make_run(RunShape(val={0: 0.3, 10: 0.5, 20: 0.6}, seed=1, **shape)),
        "dp_r4": with_dp(make_run(RunShape(val={0: 0.3, 10: 0.5, 20: 0.58}, seed=2, **shape)), 2, 100_000.0),
        "dp_r1": with_dp(make_run(RunShape(val={0: 0.3, 10: 0.4, 20: 0.45}, seed=3, **shape)), 2, 20_000.0),
    }
    paths = {arm: write_run(records, tmp_path, arm, "jsonl") for arm, records in arms.items()}
    out = tmp_path / "out"
    assert main(["report", *[f"{a}={p}" for a, p in paths.items()], "--baseline", "dense", "--out", str(out),
                 "--gate-step", "20", "--val-steps", "10,20", "--skip-missing"]) == 0
    image = matplotlib.image.imread(out / "dp_bytes.png")
    assert image.ndim == 3 and image[..., :3].std() > 0.05
    verdict = (out / "verdict.md").read_text()
    section = verdict[verdict.index("## Data-parallel bytes, whole model"):]
    r1 = (2 * DENSE_PER_STEP + 18 * 20_000.0) / (20 * DENSE_PER_STEP)
    assert "| dense | 1 (dense) | 1× | — | 0.6000 |" in section
    assert f"| dp_r1 | {r1:.4f} | {1 / r1:.1f}× |" in section and "| 0.4500 |" in section


def test_no_dp_arm_no_dp_output(tmp_path):
    path = write_run(make_run(RunShape(steps=5, val={0: 0.3, 5: 0.4}, cadence_ticks=None)), tmp_path, "dense", "jsonl")
    out = tmp_path / "out"
    assert main(["report", f"dense={path}", "--baseline", "dense", "--out", str(out), "--skip-missing",
                 "--gate-step", "5", "--val-steps", "5"]) == 0
    assert not (out / "dp_bytes.png").exists()
    assert "Data-parallel bytes" not in (out / "verdict.md").read_text()
