"""Build the whole report: read the arms, check what each output needs, write figures and verdict.

Missing-metric policy (docs/report.md):

* the validation metric is required by everything: a run without it is an error;
* every other metric is required by the output that uses it — ``train_reward.png`` (the
  training score), ``collapse_mechanism.png``
  (length, entropy, clip fraction), ``q_telemetry.png`` (per-boundary reconstruction error
  for every arm that logs codec telemetry, plus clip fraction and length), and the spiral
  column of ``verdict.md`` (length and score). A missing one is an error naming the
  metric, the run and the output, unless ``skip_missing`` is set: then that figure is not
  written (or that arm's spiral cell reads ``n/a``) and a warning says why.
* optional, never an error: the event counters (``commeff/anchor/fires``,
  ``commeff/codec/q_updates``; a plugin-off control logs none) and codec telemetry for
  arms that do not log any ``commeff/codec/`` metric (they are left out of
  ``q_telemetry.png``); the byte ledger (``commeff/bytes/<path>/sent``): ``bytes_per_step.png``
  shows the arms that log it, an arm without it is left out with a note, and with no arm
  logging bytes the figure is not written (a note, not an error); the whole model's
  data-parallel bytes (``commeff/bytes/dp_codec/{sent,dense_equiv}``): ``dp_bytes.png`` and
  a table in ``verdict.md`` when at least one arm logs them (arms that do not are dense: 1).

All checks run before anything is written, so an error leaves no partial report.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from verl_commeff.report import figures, names
from verl_commeff.report.dp_bytes import dp_bytes, dp_bytes_section, plot_dp_bytes
from verl_commeff.report.errors import ReportError
from verl_commeff.report.ledger import arm_bytes
from verl_commeff.report.readers import load_runs
from verl_commeff.report.spiral import SpiralParams, detect_spiral
from verl_commeff.report.verdict import (
    ArmVerdict,
    VerdictSettings,
    build_verdicts,
    detect_val_metric,
    render_verdict,
    validation_series,
)

__all__ = ["ReportOptions", "ReportResult", "write_report"]

VAL_FIGURE = "val_accuracy.png"
REWARD_FIGURE = "train_reward.png"
COLLAPSE_FIGURE = "collapse_mechanism.png"
Q_FIGURE = "q_telemetry.png"
BYTES_FIGURE = "bytes_per_step.png"
DP_FIGURE = "dp_bytes.png"
DOSE_FIGURE = "dose_signals.png"
VERDICT_FILE = "verdict.md"
SPIRAL_OUTPUT = "the spiral column of verdict.md"
CODEC_PREFIX = "commeff/codec/"
RECON_ERR_PATTERN = names.RECON_ERR_PREFIX + "*"


@dataclass(frozen=True)
class ReportOptions:
    """Everything the report needs besides the runs.

    Args:
        out_dir: directory for the PNGs and verdict.md (created if missing).
        settings: baseline arm, gate, floor, val@k targets.
        floor_arm: take the floor from this arm's terminal validation instead of
            ``settings.floor`` (e.g. the no-merger arm of the same study).
        noise: half-width of the noise band of ``val_accuracy.png``.
        val_metric: the validation key to use for every arm; None = auto-detect per arm.
        skip_missing: skip an output whose metrics a run lacks instead of failing.
        spiral: spiral detector parameters.
    """

    out_dir: Path
    settings: VerdictSettings
    floor_arm: Optional[str] = None
    noise: float = 0.024
    val_metric: Optional[str] = None
    skip_missing: bool = False
    spiral: SpiralParams = SpiralParams()


@dataclass
class ReportResult:
    """What :func:`write_report` produced."""

    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdicts: list[ArmVerdict] = field(default_factory=list)


@dataclass(frozen=True)
class MissingMetric:
    """A metric an output needs that a run does not log."""

    output: str
    arm: Optional[str]
    metric: str

    def describe(self) -> str:
        """One readable line naming metric, run and output."""
        who = f"run {self.arm!r} lacks" if self.arm else "no run logs"
        return f"{who} the metric {self.metric!r}, needed by {self.output}"

    def skipped(self) -> str:
        """The warning printed when ``skip_missing`` leaves the output out."""
        consequence = f"{self.arm!r} reads n/a there" if self.output == SPIRAL_OUTPUT else f"{self.output} not written"
        return f"{self.describe()}: {consequence}"


def has_metric(table: pd.DataFrame, metric: str) -> bool:
    """Whether the run logged at least one value of ``metric``."""
    return metric in table.columns and table[metric].notna().any()


def missing_in(table: pd.DataFrame, arm: str, metrics: tuple[str, ...], output: str) -> list[MissingMetric]:
    """The metrics of ``metrics`` that ``arm`` lacks, as :class:`MissingMetric` entries."""
    return [MissingMetric(output, arm, m) for m in metrics if not has_metric(table, m)]


def codec_arms(runs: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The arms that log codec telemetry (any ``commeff/codec/`` metric)."""
    return {arm: t for arm, t in runs.items() if any(c.startswith(CODEC_PREFIX) for c in t.columns)}


def q_figure_gaps(runs: dict[str, pd.DataFrame]) -> list[MissingMetric]:
    """What ``q_telemetry.png`` lacks: codec arms, their recon error, clip fraction, length."""
    arms = codec_arms(runs)
    if not arms:
        return [MissingMetric(Q_FIGURE, None, RECON_ERR_PATTERN)]
    gaps = []
    for arm, table in arms.items():
        if not figures.recon_err_columns(table):
            gaps.append(MissingMetric(Q_FIGURE, arm, RECON_ERR_PATTERN))
        gaps += missing_in(table, arm, (names.CLIPFRAC, names.RESPONSE_LENGTH), Q_FIGURE)
    return gaps


def collect_gaps(runs: dict[str, pd.DataFrame]) -> list[MissingMetric]:
    """Every missing metric of every output except the (always required) validation metric."""
    gaps = []
    for arm, table in runs.items():
        gaps += missing_in(table, arm, (names.RESPONSE_LENGTH, names.ENTROPY, names.CLIPFRAC), COLLAPSE_FIGURE)
    gaps += q_figure_gaps(runs)
    for arm, table in runs.items():
        gaps += missing_in(table, arm, (names.RESPONSE_LENGTH, names.SCORE), SPIRAL_OUTPUT)
    for arm, table in runs.items():
        gaps += missing_in(table, arm, (names.SCORE,), REWARD_FIGURE)
    return gaps


def refuse_gaps(gaps: list[MissingMetric]) -> None:
    """Raise for the first gap, saying how many more there are and how to skip them."""
    if gaps:
        more = f" (and {len(gaps) - 1} more missing)" if len(gaps) > 1 else ""
        raise ReportError(f"{gaps[0].describe()}{more}; pass --skip-missing to leave such outputs out")


def spiral_cells(
    runs: dict[str, pd.DataFrame], gaps: list[MissingMetric], params: SpiralParams
) -> dict[str, tuple[Optional[int], str]]:
    """Arm → (ignition step or None, note); arms lacking the detector's metrics get ``n/a``."""
    cells = {}
    for arm, table in runs.items():
        lacking = [g.metric for g in gaps if g.output == SPIRAL_OUTPUT and g.arm == arm]
        if lacking:
            cells[arm] = (None, f"n/a (no {', '.join(lacking)})")
        else:
            cells[arm] = (detect_spiral(table[names.RESPONSE_LENGTH], table[names.SCORE], params), "")
    return cells


def describe_spiral_params(params: SpiralParams) -> str:
    """The detector's definition with its parameters, for verdict.md."""
    return (
        f"first step from which `{names.RESPONSE_LENGTH}` stays >{params.departure:.0%} above its pre-spiral level, "
        f"found where ≥{params.patience} consecutive {params.window}-step windows show length growth "
        f"≥{params.min_growth:.1%}/step (OLS slope / window mean) while `{names.SCORE}` rises by "
        f"≤{params.score_tolerance:g} across the window; `none` = no such run"
    )


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output directory, failing readably if it cannot be one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"cannot create --out {out_dir}: {error.strerror}") from None


def write_report(run_arguments: list[str], options: ReportOptions, log: Callable[[str], None] = lambda _: None) -> ReportResult:
    """Read the runs and write the three figures and verdict.md to ``options.out_dir``.

    Args:
        run_arguments: ``[NAME=]PATH`` per arm, in display order.
        options: see :class:`ReportOptions`.
        log: receives one line per written file.

    Returns:
        The written paths, the warnings (outputs skipped under ``skip_missing``) and the rows.

    Raises:
        ReportError: unreadable run, unknown baseline, missing validation metric, or (without
            ``skip_missing``) a metric an output needs.
    """
    runs = load_runs(run_arguments)
    if options.settings.baseline not in runs:
        raise ReportError(f"unknown baseline {options.settings.baseline!r}: the arms are {', '.join(map(repr, runs))}")
    val_keys = {arm: options.val_metric or detect_val_metric(table, arm) for arm, table in runs.items()}
    validation = {arm: validation_series(table, val_keys[arm], arm) for arm, table in runs.items()}
    settings = options.settings
    if options.floor_arm is not None:
        if options.floor_arm not in validation:
            raise ReportError(f"unknown floor arm {options.floor_arm!r}: the arms are {', '.join(map(repr, runs))}")
        settings = replace(settings, floor=float(validation[options.floor_arm].iloc[-1]))
    gaps = collect_gaps(runs)
    if not options.skip_missing:
        refuse_gaps(gaps)
    result = ReportResult(warnings=[gap.skipped() for gap in gaps])
    prepare_out_dir(options.out_dir)

    colors = figures.arm_colors(list(runs))
    spirals = spiral_cells(runs, gaps, options.spiral)
    skipped = {gap.output for gap in gaps}
    out = options.out_dir
    result.written.append(figures.plot_val_accuracy(validation, colors, settings.floor, options.noise, out / VAL_FIGURE))
    if REWARD_FIGURE not in skipped:
        result.written.append(figures.plot_train_reward(runs, colors, out / REWARD_FIGURE))
    if COLLAPSE_FIGURE not in skipped:
        ignition = {arm: step for arm, (step, _) in spirals.items()}
        result.written.append(figures.plot_collapse_mechanism(runs, colors, ignition, out / COLLAPSE_FIGURE))
    if Q_FIGURE not in skipped:
        result.written.append(figures.plot_q_telemetry(codec_arms(runs), colors, out / Q_FIGURE))
    ledgers = {arm: arm_bytes(table) for arm, table in runs.items()}
    no_bytes = [arm for arm, ledger in ledgers.items() if ledger is None]
    if len(no_bytes) == len(runs):
        result.warnings.append(f"no run logs the byte ledger (commeff/bytes/<path>/sent): {BYTES_FIGURE} not written")
    else:
        if no_bytes:
            result.warnings.append(f"no bytes logged by {', '.join(map(repr, no_bytes))}: left out of {BYTES_FIGURE}")
        logged = {arm: ledger for arm, ledger in ledgers.items() if ledger is not None}
        result.written.append(figures.plot_bytes_per_step(logged, colors, out / BYTES_FIGURE))

    dosed = figures.dose_arms(runs)
    if dosed:  # the evidence dose / anchor.probe=on
        result.written.append(figures.plot_dose_signals([("", dosed)], colors, out / DOSE_FIGURE))

    result.verdicts = build_verdicts(runs, val_keys, spirals, settings)
    verdict_text = render_verdict(result.verdicts, settings, describe_spiral_params(options.spiral))
    dp = {arm: dp_bytes(table) for arm, table in runs.items()}
    if any(entry is not None for entry in dp.values()):  # some arm runs the DP codec: its bytes next to accuracy
        gate_values = {row.arm: None if row.gate_point is None else row.gate_point.value for row in result.verdicts}
        result.written.append(plot_dp_bytes(dp, gate_values, settings.gate_step, colors, out / DP_FIGURE))
        verdict_text += "\n" + dp_bytes_section(dp, gate_values, settings.gate_step)
    verdict_path = out / VERDICT_FILE
    verdict_path.write_text(verdict_text, encoding="utf-8")
    result.written.append(verdict_path)
    for path in result.written:
        log(f"wrote {path}")
    return result
