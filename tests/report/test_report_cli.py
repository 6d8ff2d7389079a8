"""End to end: `verl-commeff report` on the seed's three arms, every format, figures and errors."""

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from tests.report.synthetic_runs import VAL_KEY, drop_metric, move_validation, write_run
from verl_commeff.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("val_accuracy.png", "train_reward.png", "collapse_mechanism.png", "q_telemetry.png", "bytes_per_step.png")
ARMS = ("dense", "K5", "K20")


def run_arguments(paths: dict) -> list[str]:
    return [f"{arm}={paths[arm]}" for arm in ARMS]


def report(paths: dict, out: Path, *extra: str) -> int:
    return main(["report", *run_arguments(paths), "--baseline", "K5", "--out", str(out), *extra])


def table_rows(verdict: str) -> dict[str, list[str]]:
    """Arm → cells of the verdict.md table."""
    rows = [line.strip("|").split("|") for line in verdict.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.fixture(scope="module")
def reports(seed_runs, tmp_path_factory) -> dict[str, Path]:
    """format → output directory of a report over the seed's arms in that format."""
    outputs = {}
    for fmt, paths in seed_runs.items():
        outputs[fmt] = tmp_path_factory.mktemp(f"report_{fmt}")
        assert report(paths, outputs[fmt]) == 0
    return outputs


def test_verdict_matches_hand_computation(reports):
    rows = table_rows((reports["jsonl"] / "verdict.md").read_text())
    # val@25 val@50 val@75 val@100 | terminal | Δ val@50 | gate | floor | spiral
    assert rows["K20"] == ["0.5921", "0.6482", "0.4898", "0.4435", "0.4435 (@100)", "+0.0880", "FAIL", "BELOW", rows["K20"][-1]]
    assert rows["K5"] == ["0.7263", "0.7362", "—", "—", "0.7362 (@50)", "0 (baseline)", "baseline", "ok", "none"]
    assert rows["dense"][:8] == ["0.7627", "0.7657", "—", "—", "0.7657 (@50)", "-0.0295", "PASS", "ok"]
    assert rows["dense"][-1] == "none"


def test_planted_spiral_step_in_the_verdict(reports):
    spiral = table_rows((reports["jsonl"] / "verdict.md").read_text())["K20"][-1]
    assert spiral.startswith("step ") and abs(int(spiral.split()[1]) - 91) <= 2


@pytest.mark.parametrize("fmt", ["tensorboard", "csv"])
def test_every_format_gives_the_same_verdict(reports, fmt):
    assert (reports[fmt] / "verdict.md").read_text() == (reports["jsonl"] / "verdict.md").read_text()


@pytest.mark.parametrize("fmt", ["jsonl", "tensorboard", "csv"])
@pytest.mark.parametrize("figure", FIGURES)
def test_figures_are_valid_pngs(reports, fmt, figure):
    path = reports[fmt] / figure
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_nearest_validation_step_in_the_cli(seed_records, tmp_path):
    """Validation one step early (24, 49, 74, 99): every val@k is read at the step before k."""
    paths = {arm: write_run(seed_records[arm], tmp_path, arm, "jsonl") for arm in ("dense", "K5")}
    paths["K20"] = write_run(move_validation(seed_records["K20"], -1), tmp_path, "K20", "jsonl")
    assert report(paths, tmp_path / "out") == 0
    rows = table_rows((tmp_path / "out" / "verdict.md").read_text())
    assert rows["K20"][:7] == ["0.5921 (@24)", "0.6482 (@49)", "0.4898 (@74)", "0.4435 (@99)", "0.4435 (@99)", "+0.0880", "FAIL"]


def test_missing_run_path(seed_runs, tmp_path, capsys):
    paths = dict(seed_runs["jsonl"], K20=tmp_path / "missing.jsonl")
    assert report(paths, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "run path not found" in err and "missing.jsonl" in err
    assert not (tmp_path / "out").exists()


def test_unknown_baseline_lists_the_arms(seed_runs, tmp_path, capsys):
    code = main(["report", *run_arguments(seed_runs["jsonl"]), "--baseline", "K10", "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown baseline 'K10': the arms are 'dense', 'K5', 'K20'" in err and err.count("\n") == 1


@pytest.fixture
def k20_without_entropy(seed_records, seed_runs, tmp_path):
    paths = dict(seed_runs["jsonl"])
    paths["K20"] = write_run(drop_metric(seed_records["K20"], "actor/entropy"), tmp_path, "K20", "jsonl")
    return paths


def test_missing_metric_names_metric_run_and_figure(k20_without_entropy, tmp_path, capsys):
    assert report(k20_without_entropy, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "run 'K20' lacks the metric 'actor/entropy', needed by collapse_mechanism.png" in err
    assert "--skip-missing" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_skip_missing_leaves_the_figure_out_with_a_warning(k20_without_entropy, tmp_path, capsys):
    assert report(k20_without_entropy, tmp_path / "out", "--skip-missing") == 0
    assert "warning: run 'K20' lacks the metric 'actor/entropy'" in capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["bytes_per_step.png", "q_telemetry.png", "train_reward.png", "val_accuracy.png", "verdict.md"]


def test_missing_codec_telemetry_names_the_q_figure(seed_records, seed_runs, tmp_path, capsys):
    records = seed_records["K20"]
    for layer in (3, 7, 11, 15, 18, 21, 24):
        records = drop_metric(records, f"commeff/codec/recon_err/layer_{layer}")
    paths = dict(seed_runs["jsonl"], K20=write_run(records, tmp_path, "K20", "jsonl"))
    assert report(paths, tmp_path / "out") == 1
    assert "run 'K20' lacks the metric 'commeff/codec/recon_err/layer_*', needed by q_telemetry.png" in capsys.readouterr().err


def test_missing_score_names_the_spiral_column(seed_records, seed_runs, tmp_path, capsys):
    paths = dict(seed_runs["jsonl"], K20=write_run(drop_metric(seed_records["K20"], "critic/score/mean"), tmp_path, "K20", "jsonl"))
    assert report(paths, tmp_path / "out") == 1
    assert "run 'K20' lacks the metric 'critic/score/mean', needed by the spiral column of verdict.md" in capsys.readouterr().err
    assert report(paths, tmp_path / "out", "--skip-missing") == 0
    assert table_rows((tmp_path / "out" / "verdict.md").read_text())["K20"][-1] == "n/a (no critic/score/mean)"
    assert not (tmp_path / "out" / "train_reward.png").exists()  # the reward figure needs every arm's score


def test_floor_arm_takes_that_arms_terminal_validation(seed_runs, tmp_path, capsys):
    # K20's terminal val 0.4435 is the floor: K20 itself is not below it, and nobody else is either
    assert report(seed_runs["jsonl"], tmp_path / "out", "--floor-arm", "K20") == 0
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert "no-merger floor: 0.4435" in verdict
    assert [cells[7] for cells in table_rows(verdict).values()] == ["ok", "ok", "ok"]
    assert report(seed_runs["jsonl"], tmp_path / "o2", "--floor-arm", "nope") == 1
    assert "unknown floor arm 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --floor and --floor-arm exclude each other
        report(seed_runs["jsonl"], tmp_path / "o3", "--floor-arm", "K20", "--floor", "0.5")


def test_missing_validation_metric_is_an_error_even_when_skipping(seed_records, seed_runs, tmp_path, capsys):
    paths = dict(seed_runs["jsonl"], K20=write_run(drop_metric(seed_records["K20"], VAL_KEY), tmp_path, "K20", "jsonl"))
    assert report(paths, tmp_path / "out", "--skip-missing") == 1
    assert "run 'K20' has no validation metric" in capsys.readouterr().err


def test_explicit_val_metric_missing_in_a_run(seed_runs, tmp_path, capsys):
    assert report(seed_runs["jsonl"], tmp_path / "out", "--val-metric", "val-core/openai/gsm8k/acc/mean@1") == 1
    assert "run 'dense' lacks the validation metric 'val-core/openai/gsm8k/acc/mean@1'" in capsys.readouterr().err


def test_console_script_entry_point(seed_runs, tmp_path):
    script = shutil.which("verl-commeff") or str(Path(sys.executable).with_name("verl-commeff"))
    ok = subprocess.run([script, "report", *run_arguments(seed_runs["csv"]), "--baseline", "K5", "--out", str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*FIGURES, "verdict.md"])
    bad = subprocess.run([script, "report", str(tmp_path / "nope.csv"), "--baseline", "x", "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("verl-commeff report: error: run path not found")
    assert "Traceback" not in bad.stderr


def test_no_floor_drops_the_floor_column_and_line(seed_runs, tmp_path):
    """--no-floor (a study without a no-merger arm): no floor column, nothing BELOW, no floor in the figure's legend."""
    assert report(seed_runs["jsonl"], tmp_path / "out", "--no-floor") == 0
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    header = next(line for line in verdict.splitlines() if line.startswith("| Arm"))
    assert "floor" not in header and "BELOW" not in verdict and "no no-merger floor" in verdict
    rows = table_rows(verdict)
    assert len(rows["K20"]) == len(header.strip("|").split("|")) - 1  # cells line up with the headers
    with pytest.raises(SystemExit):  # --no-floor excludes --floor
        report(seed_runs["jsonl"], tmp_path / "o2", "--no-floor", "--floor", "0.5")


def test_dose_signals_figure_for_the_arms_that_log_the_anchors_evidence(seed_records, tmp_path):
    """An arm logging commeff/dose/* (anchor.probe on) gets dose_signals.png; a report without one gets none."""
    from tests.report.synthetic_runs import write_run

    def with_dose(records):
        return [(step, {**data, "commeff/dose/cos_codec": 0.3, "commeff/dose/lambda_star": 0.9,
                        "commeff/dose/held_agree": 0.8}) if step else (step, data) for step, data in records]

    paths = {arm: write_run(seed_records[arm], tmp_path / "runs", arm, "jsonl") for arm in ("dense", "K20")}
    paths["K5"] = write_run(with_dose(seed_records["K5"]), tmp_path / "runs", "K5", "jsonl")
    assert report(paths, tmp_path / "out") == 0
    assert (tmp_path / "out" / "dose_signals.png").read_bytes()[:8] == PNG_SIGNATURE
    paths["K5"] = write_run(seed_records["K5"], tmp_path / "plain", "K5", "jsonl")
    assert report(paths, tmp_path / "out2") == 0
    assert not (tmp_path / "out2" / "dose_signals.png").exists()
