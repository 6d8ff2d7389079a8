"""Read the metrics a verl run wrote, whatever the tracking backend, into one per-step table.

Three formats are supported, all behind :func:`read_metrics`:

* verl's ``file`` logger (``verl/utils/tracking.py`` ``FileLogger``): a JSONL file, one
  ``{"step": int, "data": {metric: value}}`` record per ``Tracking.log`` call, written to
  ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``;
* TensorBoard event files (verl's ``tensorboard`` logger writes them to
  ``$TENSORBOARD_DIR`` or ``tensorboard_log/<project>/<experiment>``): a directory holding
  ``events.out.tfevents.*`` files, or one such file;
* a wandb run-history CSV export: a ``_step`` column plus one column per metric, empty
  cells where a metric was not logged at that step.

Every reader returns the same table: a :class:`pandas.DataFrame` indexed by the integer
global step (index name ``step``, ascending, unique), one float column per metric and NaN
where a metric was not logged at a step. When a step is logged more than once (verl logs
the pre-training validation and a resumed run may repeat steps) the latest non-missing
value of each metric wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from verl_commeff.report.errors import ReportError

__all__ = ["MetricsReader", "RunSource", "load_runs", "parse_run_argument", "read_metrics"]

TFEVENTS_MARKER = "tfevents"


@dataclass(frozen=True)
class RunSource:
    """One arm of the report: its display name and where its metrics are."""

    name: str
    path: Path


def parse_run_argument(text: str) -> RunSource:
    """Parse a ``RUN`` command-line argument, ``[NAME=]PATH``.

    The text before the first ``=`` is taken as the arm name when it is non-empty and holds
    no path separator (so ``runs/a=b.jsonl`` is a path, ``K20=runs/a.jsonl`` is named).
    Without a name the arm is named after the experiment: the file stem, the directory
    name, or for a single TensorBoard event file the name of its directory.

    Args:
        text: the argument as typed.

    Returns:
        The arm's name and path.
    """
    name, sep, rest = text.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        path = Path(rest)
    else:
        name, path = "", Path(text)
    return RunSource(name=name or default_arm_name(path), path=path)


def default_arm_name(path: Path) -> str:
    """The experiment name a run path implies (file stem, directory name)."""
    if path.is_dir():
        return path.resolve().name
    if TFEVENTS_MARKER in path.name:
        return path.resolve().parent.name
    return path.stem


class MetricsReader(Protocol):
    """A metrics format: recognises its paths and reads them into the per-step table."""

    format_name: str

    def can_read(self, path: Path) -> bool:
        """Whether ``path`` looks like this format."""

    def read(self, path: Path) -> pd.DataFrame:
        """Read ``path`` into the per-step table (see the module docstring)."""


def per_step_table(records: pd.DataFrame, step_column: str) -> pd.DataFrame:
    """Normalise raw rows into the shared table: numeric, indexed by unique ascending step.

    Args:
        records: one row per logged record, with a step column and metric columns.
        step_column: the name of the step column in ``records``.

    Returns:
        The per-step table; non-numeric cells become NaN and all-NaN columns are dropped.
    """
    steps = pd.to_numeric(records[step_column], errors="coerce")
    metrics = records.drop(columns=[step_column]).apply(pd.to_numeric, errors="coerce")
    metrics = metrics[steps.notna()].astype(float)
    metrics.index = steps[steps.notna()].astype(int).rename("step")
    table = metrics.groupby(level="step", sort=True).last()  # last non-NaN per column
    return table.dropna(axis="columns", how="all")


class JsonlReader:
    """verl's ``FileLogger`` output: ``{"step": int, "data": {...}}`` per line."""

    format_name = "verl file-logger JSONL"

    def can_read(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".jsonl"

    def read(self, path: Path) -> pd.DataFrame:
        rows = []
        with path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                rows.append(self._parse_record(line, number, path))
        if not rows:
            return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
        return per_step_table(pd.DataFrame.from_records(rows), "step")

    @staticmethod
    def _parse_record(line: str, number: int, path: Path) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
            raise ReportError(
                f"{path}: line {number} is not a verl file-logger record "
                '({"step": <int>, "data": {<metric>: <value>}})'
            )
        return {**record["data"], "step": record["step"]}


class WandbCsvReader:
    """A wandb run-history CSV export: ``_step`` plus metric columns, empty cells allowed."""

    format_name = "wandb history CSV"
    step_column = "_step"

    def can_read(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".csv"

    def read(self, path: Path) -> pd.DataFrame:
        try:
            records = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise ReportError(f"{path}: the CSV file is empty") from None
        except pd.errors.ParserError as error:
            raise ReportError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
        if self.step_column not in records.columns:
            raise ReportError(f"{path}: no '{self.step_column}' column; is this a wandb run-history export?")
        wandb_internal = [c for c in records.columns if c.startswith("_") and c != self.step_column]
        return per_step_table(records.drop(columns=wandb_internal), self.step_column)


class TensorBoardReader:
    """TensorBoard event files: a directory of ``events.out.tfevents.*`` or one such file.

    A directory whose event files all sit in one subdirectory is accepted too; event files
    spread over several subdirectories are ambiguous and rejected (name the one you mean).
    """

    format_name = "TensorBoard events"

    def can_read(self, path: Path) -> bool:
        if path.is_file():
            return TFEVENTS_MARKER in path.name
        return path.is_dir() and any(TFEVENTS_MARKER in p.name for p in path.rglob("*") if p.is_file())

    def read(self, path: Path) -> pd.DataFrame:
        from tensorboard.backend.event_processing import event_accumulator

        source = self._event_source(path)
        accumulator = event_accumulator.EventAccumulator(
            str(source), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
        )
        try:
            accumulator.Reload()
        except Exception as error:  # tensorboard raises several types for corrupt files
            raise ReportError(f"{path}: cannot read TensorBoard events ({type(error).__name__}: {error})") from None
        rows = self._scalar_rows(accumulator) + self._tensor_rows(accumulator)
        if not rows:
            return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
        long = pd.DataFrame(rows, columns=["step", "wall_time", "tag", "value"])
        wide = long.sort_values("wall_time", kind="stable").pivot_table(
            index="step", columns="tag", values="value", aggfunc="last"
        )
        wide.columns.name = None
        return per_step_table(wide.reset_index(), "step")

    @staticmethod
    def _event_source(path: Path) -> Path:
        if path.is_file():
            return path
        directories = sorted({p.parent for p in path.rglob("*") if p.is_file() and TFEVENTS_MARKER in p.name})
        if len(directories) > 1:
            listed = ", ".join(str(d) for d in directories)
            raise ReportError(f"{path}: TensorBoard event files in several directories ({listed}); pass one of them")
        return directories[0]

    @staticmethod
    def _scalar_rows(accumulator) -> list[tuple]:
        return [
            (event.step, event.wall_time, tag, event.value)
            for tag in accumulator.Tags().get("scalars", [])
            for event in accumulator.Scalars(tag)
        ]

    @staticmethod
    def _tensor_rows(accumulator) -> list[tuple]:
        """Scalars written as 0-d tensors (``tf.summary.scalar`` in TF2)."""
        from tensorboard.util import tensor_util

        rows = []
        for tag in accumulator.Tags().get("tensors", []):
            for event in accumulator.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                if value.ndim == 0 and value.dtype.kind in "biuf":
                    rows.append((event.step, event.wall_time, tag, float(value)))
        return rows


READERS: tuple[MetricsReader, ...] = (JsonlReader(), WandbCsvReader(), TensorBoardReader())


def read_metrics(path: Path) -> pd.DataFrame:
    """Read one run's metrics, picking the reader from the path.

    Args:
        path: a ``.jsonl`` file, a ``.csv`` file, or a TensorBoard directory / event file.

    Returns:
        The per-step table (see the module docstring).

    Raises:
        ReportError: the path is missing, unreadable, of unknown format, malformed or empty.
    """
    if not path.exists():
        raise ReportError(f"run path not found: {path}")
    if not os.access(path, os.R_OK):
        raise ReportError(f"cannot read run path {path}: permission denied")
    reader = next((r for r in READERS if r.can_read(path)), None)
    if reader is None:
        raise ReportError(
            f"cannot tell the format of run {path}: expected a verl file-logger .jsonl, "
            "a wandb history .csv, or a TensorBoard directory / events.out.tfevents.* file"
        )
    try:
        table = reader.read(path)
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read run {path} as {reader.format_name}: {error}") from None
    if table.empty:
        raise ReportError(f"run {path} ({reader.format_name}) holds no numeric metrics")
    return table


def load_runs(arguments: list[str]) -> dict[str, pd.DataFrame]:
    """Read every ``[NAME=]PATH`` argument into ``{arm name: per-step table}``, in order.

    Raises:
        ReportError: a run cannot be read, or two arms share a name.
    """
    runs: dict[str, pd.DataFrame] = {}
    for argument in arguments:
        source = parse_run_argument(argument)
        if source.name in runs:
            raise ReportError(f"two runs are both named {source.name!r}; name them with NAME=PATH")
        runs[source.name] = read_metrics(source.path)
    return runs
