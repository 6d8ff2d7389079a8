"""The three metric formats read into the same per-step table."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.report.synthetic_runs import VAL_KEY, write_jsonl, write_tensorboard, write_wandb_csv
from verl_commeff.report.errors import ReportError
from verl_commeff.report.readers import load_runs, parse_run_argument, read_metrics

RECORDS = [
    (0, {VAL_KEY: 0.5}),
    (1, {"response_length/mean": 250.0, "critic/score/mean": 0.25}),
    (2, {"response_length/mean": 260.0, "critic/score/mean": 0.5, VAL_KEY: 0.625}),
    (3, {"response_length/mean": 270.0}),
]


@pytest.fixture(params=["jsonl", "tensorboard", "csv"])
def written(request, tmp_path):
    writers = {"jsonl": (write_jsonl, "run.jsonl"), "tensorboard": (write_tensorboard, "run"), "csv": (write_wandb_csv, "run.csv")}
    writer, name = writers[request.param]
    return writer(RECORDS, tmp_path / name)


def test_every_format_gives_the_same_table(written):
    table = read_metrics(written)
    assert table.index.name == "step"
    assert list(table.index) == [0, 1, 2, 3]
    assert sorted(table.columns) == sorted(["critic/score/mean", "response_length/mean", VAL_KEY])
    assert table[VAL_KEY].tolist()[0] == 0.5 and table[VAL_KEY].tolist()[2] == 0.625
    assert np.isnan(table.loc[1, VAL_KEY]) and np.isnan(table.loc[3, "critic/score/mean"])
    assert table["response_length/mean"].dropna().tolist() == [250.0, 260.0, 270.0]


def test_wandb_internal_columns_are_dropped(tmp_path):
    table = read_metrics(write_wandb_csv(RECORDS, tmp_path / "run.csv"))
    assert not [c for c in table.columns if c.startswith("_")]


def test_repeated_steps_merge_with_the_latest_value_winning(tmp_path):
    path = tmp_path / "resumed.jsonl"
    lines = [{"step": 5, "data": {"a": 1.0, "b": 2.0}}, {"step": 5, "data": {"a": 3.0}}, {"step": 4, "data": {"a": 0.0, "s": "text"}}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    table = read_metrics(path)
    assert list(table.index) == [4, 5]
    assert table.loc[5, "a"] == 3.0 and table.loc[5, "b"] == 2.0
    assert "s" not in table.columns  # non-numeric values are not metrics


def test_tensorboard_event_file_and_parent_directory(tmp_path):
    directory = write_tensorboard(RECORDS, tmp_path / "tb" / "exp")
    event_file = next(directory.iterdir())
    assert read_metrics(event_file).equals(read_metrics(directory))
    assert read_metrics(tmp_path / "tb").equals(read_metrics(directory))  # the only directory holding events


@pytest.mark.parametrize(
    "argument, name, path",
    [("K20=runs/k20.jsonl", "K20", "runs/k20.jsonl"), ("runs/k20.jsonl", "k20", "runs/k20.jsonl"),
     ("runs/a=b.csv", "a=b", "runs/a=b.csv"), ("dense=x=y.csv", "dense", "x=y.csv")],
)
def test_run_argument_naming(argument, name, path):
    source = parse_run_argument(argument)
    assert (source.name, str(source.path)) == (name, path)


def test_directory_run_is_named_after_the_directory(tmp_path):
    directory = write_tensorboard(RECORDS, tmp_path / "exp37")
    assert list(load_runs([str(directory)])) == ["exp37"]


def test_missing_path_is_a_report_error(tmp_path):
    with pytest.raises(ReportError, match="run path not found: .*nope.jsonl"):
        read_metrics(tmp_path / "nope.jsonl")


def test_unreadable_path_is_a_report_error(tmp_path, monkeypatch):
    # chmod 0 does not stop root (CI runs as root): make the OS refuse instead.
    path = write_jsonl(RECORDS, tmp_path / "run.jsonl")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(ReportError, match="permission denied"):
        read_metrics(path)


def test_read_failure_is_a_report_error(tmp_path, monkeypatch):
    path = write_jsonl(RECORDS, tmp_path / "run.jsonl")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(ReportError, match=r"cannot read run .*run.jsonl as .*Permission denied"):
        read_metrics(path)


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1, "data": {"a": 1}}\nnot json\n')
    with pytest.raises(ReportError, match="line 2 is not a verl file-logger record"):
        read_metrics(path)


def test_csv_without_step_column(tmp_path):
    path = tmp_path / "export.csv"
    pd.DataFrame({"step": [1], "a": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ReportError, match="no '_step' column"):
        read_metrics(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "metrics.txt"
    path.write_text("hello")
    with pytest.raises(ReportError, match="cannot tell the format"):
        read_metrics(path)


def test_duplicate_arm_names_are_refused(tmp_path):
    a = write_jsonl(RECORDS, tmp_path / "a" / "run.jsonl")
    b = write_jsonl(RECORDS, tmp_path / "b" / "run.jsonl")
    with pytest.raises(ReportError, match="both named 'run'"):
        load_runs([str(a), str(b)])
    assert list(load_runs([f"x={a}", f"y={b}"])) == ["x", "y"]
