"""The byte ledger in the report: mean bytes per step by path, legacy keys, bytes_per_step.png."""

import math

import matplotlib.image
import pandas as pd
import pytest

from tests.report.synthetic_runs import RunShape, make_run, seed_arms, write_run
from verl_commeff.cli import main
from verl_commeff.report.ledger import arm_bytes


def table(records):
    return pd.DataFrame({step: data for step, data in records}).T.sort_index()


def test_arm_bytes_are_the_mean_per_step_of_each_path():
    records = make_run(RunShape(steps=20, val={0: 0.5, 20: 0.6}, cadence_ticks=5))
    got = arm_bytes(table(records))
    # independent: average each key over the training steps by hand
    train = [data for step, data in records if step > 0]
    for path in ("codec", "q_bcast", "anchor_snapshot", "anchor_minibatch", "anchor_m_bar"):
        want = sum(d[f"commeff/bytes/{path}/sent"] for d in train) / len(train)
        assert got.sent[path] == pytest.approx(want)
    assert list(got.sent) == ["codec", "q_bcast", "anchor_snapshot", "anchor_minibatch", "anchor_m_bar"]  # ledger order
    fire_steps = sum(1 for d in train if d["commeff/bytes/anchor_snapshot/sent"] > 0)
    assert fire_steps == 8  # 2 ticks per step, a fire every 5 ticks: 40 ticks -> 8 fires
    total = 1000 + fire_steps / 20 * (256 + 8000 + 3000 + 400)
    assert got.total_sent == pytest.approx(total)
    assert got.total_dense == pytest.approx(16000) and got.ratio == pytest.approx(total / 16000)


def test_plugin_off_runs_log_no_bytes_and_legacy_keys_are_read():
    assert arm_bytes(table(make_run(RunShape(steps=5, val={0: 0.5}, cadence_ticks=None)))) is None
    legacy = pd.DataFrame({"commeff/bytes/codec_sent": [10.0, 30.0], "commeff/bytes/codec_dense": [100.0, 100.0],
                           "commeff/bytes/q_bcast_sent": [0.0, 8.0], "commeff/bytes/anchor_sent": [4.0, 0.0]},
                          index=[1, 2])
    got = arm_bytes(legacy)
    assert got.sent == {"codec": 20.0, "q_bcast": 4.0, "anchor_m_bar": 2.0}
    assert got.dense_equiv == {"codec": 100.0, "q_bcast": 0.0, "anchor_m_bar": 0.0}
    assert got.ratio == pytest.approx(26 / 100)
    nothing_dense = pd.DataFrame({"commeff/bytes/anchor_snapshot/sent": [5.0]}, index=[1])
    assert math.isnan(arm_bytes(nothing_dense).ratio)


def test_bytes_figure_leaves_out_arms_without_bytes_with_a_note(tmp_path, capsys):
    arms = seed_arms()
    paths = {arm: write_run(records, tmp_path, arm, "jsonl") for arm, records in arms.items()}
    out = tmp_path / "out"
    assert main(["report", *[f"{a}={p}" for a, p in paths.items()], "--baseline", "K5", "--out", str(out)]) == 0
    assert "warning: no bytes logged by 'dense': left out of bytes_per_step.png" in capsys.readouterr().err
    image = matplotlib.image.imread(out / "bytes_per_step.png")
    assert image.ndim == 3 and image[..., :3].std() > 0.05


def test_no_arm_with_bytes_skips_the_figure_with_a_note_not_an_error(tmp_path, capsys):
    path = write_run(seed_arms()["dense"], tmp_path, "dense", "jsonl")
    out = tmp_path / "out"
    assert main(["report", f"dense={path}", "--baseline", "dense", "--out", str(out), "--skip-missing"]) == 0
    assert "no run logs the byte ledger" in capsys.readouterr().err
    assert not (out / "bytes_per_step.png").exists() and (out / "verdict.md").exists()
