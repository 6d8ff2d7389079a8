"""`verl-commeff study`: per-seed tables, paired deltas and the staleness curve from <arm>_s<seed>.jsonl runs."""

from pathlib import Path

import pytest

from tests.report.synthetic_runs import write_jsonl
from verl_commeff.cli import main
from verl_commeff.report.seeds import load_regime

VAL = "val-core/openai/gsm8k/acc/mean@2"


def _run(directory: Path, name: str, finals: tuple[float, ...], lam=None):
    """A 4-step run validating at 0, 2, 4 (linear to its final value), score 0.2 → 0.4."""
    records = []
    for step in range(0, 5):
        data = {}
        if step % 2 == 0:
            data[VAL] = 0.2 + (finals - 0.2) * step / 4
        if step:
            data["critic/score/mean"] = 0.2 + 0.05 * step
            if lam is not None:
                data["commeff/merger/lambda"] = lam
                data["commeff/dose/lambda_star"] = lam
                data["commeff/dose/cos_codec"] = 0.5
        records.append((step, data))
    write_jsonl(records, directory / f"{name}.jsonl")


@pytest.fixture
def regime(tmp_path):
    d = tmp_path / "lossy"
    for seed, (floor, dense, full, ev) in enumerate([(0.1, 0.5, 0.05, 0.30), (0.2, 0.6, 0.1, 0.42), (0.15, 0.55, 0.0, 0.35)]):
        _run(d, f"floor_s{seed}", floor)
        _run(d, f"dense_s{seed}", dense)
        _run(d, f"k0_c1_s{seed}", full, lam=1.0)
        _run(d, f"ev_k0_c1_s{seed}", ev, lam=0.7)
    _run(d, "k5_c5_s0", 0.12, lam=1.0)
    (d / "notes.jsonl").write_text("")  # not an <arm>_s<seed> run: ignored
    return d


def test_regime_values_and_paired_deltas(regime):
    r = load_regime("lossy", regime, (2, 4))
    assert sorted(r.arms) == ["dense", "ev_k0_c1", "floor", "k0_c1", "k5_c5"]
    ev = r.arms["ev_k0_c1"]
    assert ev.seeds == [0, 1, 2] and ev.final(4) == pytest.approx({0: 0.30, 1: 0.42, 2: 0.35})
    assert ev.val[1][2] == pytest.approx(0.31)
    assert ev.reward_first[0] == pytest.approx(0.30) and ev.reward_last[0] == pytest.approx(0.325)  # last 5 of 4 steps: all
    assert ev.signals[0]["λ*"] == 0.7


def test_study_cli_writes_the_table_and_figures(regime, tmp_path):
    out = tmp_path / "out"
    assert main(["study", f"lossy={regime}", "--out", str(out), "--val-steps", "2,4"]) == 0
    table = (out / "study.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ev_k0_c1 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # mean final 0.357; paired deltas vs floor 0.20, 0.22, 0.20 → mean +0.207, min +0.200; gap (0.357-0.15)/(0.55-0.15)
    assert cells[1] == "0,1,2" and cells[3] == "0.357"
    assert cells[4] == "+0.207 / +0.200" and cells[5] == "+52%"
    assert "`k5_c5`: s0: 0.160 0.120" in table
    for name in ("staleness.png", "dose_signals.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_cli_refuses_an_empty_directory(tmp_path, capsys):
    assert main(["study", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no <arm>_s<seed>.jsonl runs" in capsys.readouterr().err
