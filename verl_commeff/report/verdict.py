"""The verdict table: val@k per arm, the val@50 gate against a baseline arm, the floor, spirals.

Rules (all documented in docs/report.md):

* **Validation metric.** verl logs validation as
  ``val-core/<data_source>/<var>/mean@<n>`` (``process_validation_metrics`` +
  ``_val_metrics_update``); ``<var>`` is ``acc`` when the reward function returns one, else
  ``reward``, and ``<n>`` is ``actor_rollout_ref.rollout.val_kwargs.n``. verl's GSM8K
  scorer returns a float, so a GSM8K run logs ``val-core/openai/gsm8k/reward/mean@1``.
  Auto-detection takes the run's ``val-core/*/*/mean@<n>`` keys, prefers ``acc`` over
  ``reward`` and the largest ``n``, and fails if several data sources remain
  (pass ``--val-metric``).
* **Nearest-step rule.** val@k is the value at the validation step nearest to k (the
  earlier one on a tie), provided it is at most ``tolerance`` steps away; otherwise the
  cell is empty (the run did not validate near k).
* **Gate.** degradation = baseline val@gate_step − arm val@gate_step; the arm passes when
  degradation ≤ gate.
* **Floor.** terminal val (the last validation of the run) < floor → below floor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd

from verl_commeff.report.errors import ReportError

__all__ = ["ArmVerdict", "ValPoint", "VerdictSettings", "build_verdicts", "detect_val_metric", "render_verdict", "val_at"]

VAL_CORE_MEAN = re.compile(r"^val-core/(?P<source>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
VAR_PREFERENCE = ("acc", "reward")


@dataclass(frozen=True)
class VerdictSettings:
    """What the verdict measures against.

    Args:
        baseline: the arm whose val@gate_step is the reference.
        val_steps: the k of the val@k columns.
        gate_step: the k of the gated val@k (the seed: 50).
        gate: the allowed degradation of val@gate_step (the seed: 0.05).
        floor: the no-merger floor for the terminal validation value (the seed: 0.63); None: no
            floor (no floor column, nothing flagged below it).
        tolerance: the farthest a validation step may be from k and still stand for val@k.
    """

    baseline: str
    val_steps: tuple[int, ...] = (25, 50, 75, 100)
    gate_step: int = 50
    gate: float = 0.05
    floor: Optional[float] = 0.63
    tolerance: int = 12


@dataclass(frozen=True)
class ValPoint:
    """One val@k cell: the value and the validation step it was read at."""

    target: int
    step: int
    value: float


@dataclass
class ArmVerdict:
    """One row of the verdict table."""

    arm: str
    val_metric: str
    points: dict[int, Optional[ValPoint]]
    gate_point: Optional[ValPoint]
    terminal: ValPoint
    degradation: Optional[float] = None
    passes_gate: Optional[bool] = None
    below_floor: bool = False
    spiral_step: Optional[int] = None
    spiral_note: str = ""
    is_baseline: bool = False


def detect_val_metric(table: pd.DataFrame, arm: str) -> str:
    """Pick the validation accuracy key a run logged.

    Raises:
        ReportError: no ``val-core/.../mean@n`` key, or several data sources.
    """
    matches = [m for m in map(VAL_CORE_MEAN.match, table.columns) if m]
    if not matches:
        raise ReportError(
            f"run {arm!r} has no validation metric (no val-core/<data_source>/<var>/mean@<n> key; "
            "did it run with trainer.test_freq > 0?); pass --val-metric KEY if it is logged under another name"
        )
    sources = sorted({m["source"] for m in matches})
    if len(sources) > 1:
        raise ReportError(f"run {arm!r} validates on several data sources {sources}; choose one with --val-metric KEY")

    def preference(match: re.Match) -> tuple[int, int]:
        rank = VAR_PREFERENCE.index(match["var"]) if match["var"] in VAR_PREFERENCE else len(VAR_PREFERENCE)
        return rank, -int(match["n"])

    return min(matches, key=preference).group(0)


def validation_series(table: pd.DataFrame, key: str, arm: str) -> pd.Series:
    """The logged validation values of one arm (NaN steps dropped).

    Raises:
        ReportError: the key is absent or never logged.
    """
    if key not in table.columns or table[key].dropna().empty:
        raise ReportError(f"run {arm!r} lacks the validation metric {key!r} (needed by every figure and verdict.md)")
    return table[key].dropna()


def val_at(series: pd.Series, target: int, tolerance: int) -> Optional[ValPoint]:
    """val@target by the nearest-step rule (ties → the earlier step), or None if too far."""
    distance = (series.index.to_series() - target).abs()
    nearest = int(distance.sort_index().idxmin())  # idxmin returns the first (earliest) minimum
    if abs(nearest - target) > tolerance:
        return None
    return ValPoint(target=target, step=nearest, value=float(series.loc[nearest]))


def arm_verdict(arm: str, key: str, series: pd.Series, settings: VerdictSettings) -> ArmVerdict:
    """The baseline-independent part of one row."""
    last_step = int(series.index.max())
    terminal = ValPoint(target=last_step, step=last_step, value=float(series.loc[last_step]))
    return ArmVerdict(
        arm=arm,
        val_metric=key,
        points={k: val_at(series, k, settings.tolerance) for k in settings.val_steps},
        gate_point=val_at(series, settings.gate_step, settings.tolerance),
        terminal=terminal,
        below_floor=settings.floor is not None and terminal.value < settings.floor,
    )


def apply_gate(row: ArmVerdict, baseline: ArmVerdict, gate: float) -> None:
    """Fill degradation and pass/fail against the baseline's gated value."""
    row.is_baseline = row.arm == baseline.arm
    if row.gate_point is None or baseline.gate_point is None:
        return
    row.degradation = baseline.gate_point.value - row.gate_point.value
    row.passes_gate = row.degradation <= gate


def build_verdicts(
    runs: dict[str, pd.DataFrame],
    val_keys: dict[str, str],
    spirals: dict[str, tuple[Optional[int], str]],
    settings: VerdictSettings,
) -> list[ArmVerdict]:
    """Compute every row of the verdict table.

    Args:
        runs: arm name → per-step table.
        val_keys: arm name → its validation metric key.
        spirals: arm name → (ignition step or None, note such as "n/a: missing ...").
        settings: baseline, gate, floor, val@k targets.

    Raises:
        ReportError: the baseline arm is unknown.
    """
    if settings.baseline not in runs:
        raise ReportError(f"unknown baseline {settings.baseline!r}: the arms are {', '.join(map(repr, runs))}")
    rows = {arm: arm_verdict(arm, val_keys[arm], validation_series(t, val_keys[arm], arm), settings) for arm, t in runs.items()}
    for row in rows.values():
        apply_gate(row, rows[settings.baseline], settings.gate)
        row.spiral_step, row.spiral_note = spirals.get(row.arm, (None, ""))
    return list(rows.values())


def format_point(point: Optional[ValPoint]) -> str:
    """A val@k cell: ``0.7362``, ``0.7362 (@48)`` when read at another step, ``—`` if none."""
    if point is None:
        return "—"
    return f"{point.value:.4f}" if point.step == point.target else f"{point.value:.4f} (@{point.step})"


def gate_cell(row: ArmVerdict, gate: float) -> tuple[str, str]:
    """The degradation and gate cells of a row."""
    if row.is_baseline:
        return "0 (baseline)", "baseline"
    if row.degradation is None:
        return "n/a", "n/a"
    return f"{row.degradation:+.4f}", ("PASS" if row.passes_gate else "FAIL")


def spiral_cell(row: ArmVerdict) -> str:
    """The spiral column: ``step 93``, ``none`` or the note explaining why it is unknown."""
    if row.spiral_note:
        return row.spiral_note
    return "none" if row.spiral_step is None else f"step {row.spiral_step}"


def summary_line(row: ArmVerdict, settings: VerdictSettings) -> str:
    """One sentence per non-baseline arm, in the seed's words."""
    k = settings.gate_step
    parts = []
    if row.degradation is not None and not row.is_baseline:
        side = "within" if row.passes_gate else "above"
        verdict = "passes" if row.passes_gate else "fails"
        parts.append(f"val@{k} degradation = {row.degradation:.4f}, {side} the {settings.gate:g} gate → {verdict}")
    if row.below_floor:
        parts.append(
            f"terminal val {row.terminal.value:.4f} (step {row.terminal.step}) < {settings.floor:.4f} floor: "
            "worse than dropping the anchor entirely"
        )
    if row.spiral_step is not None:
        parts.append(f"length spiral ignites at step {row.spiral_step}")
    return f"- **{row.arm}**: " + "; ".join(parts) + "." if parts else f"- **{row.arm}**: nothing to flag."


def render_verdict(rows: Sequence[ArmVerdict], settings: VerdictSettings, spiral_parameters: str) -> str:
    """The verdict.md text."""
    k = settings.gate_step
    val_headers = [f"val@{s}" for s in settings.val_steps]
    has_floor = settings.floor is not None
    headers = ["Arm", *val_headers, "terminal val", f"Δ val@{k} vs baseline", "gate", *(["floor"] if has_floor else []),
               "spiral ignition"]
    floor_note = f"no-merger floor: {settings.floor:.4f}" if has_floor else "no no-merger floor (none given)"
    lines = [
        "# Verdict",
        "",
        f"Baseline arm: **{settings.baseline}** · gate: val@{k} degradation ≤ {settings.gate:g} · "
        f"{floor_note} · nearest validation step within ±{settings.tolerance} steps.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        degradation, gate = gate_cell(row, settings.gate)
        floor = ["BELOW" if row.below_floor else "ok"] if has_floor else []
        terminal = f"{row.terminal.value:.4f} (@{row.terminal.step})"
        cells = [row.arm, *(format_point(row.points[s]) for s in settings.val_steps), terminal, degradation, gate, *floor]
        lines.append("| " + " | ".join([*cells, spiral_cell(row)]) + " |")
    lines += ["", *(summary_line(row, settings) for row in rows), ""]
    lines += [
        "## How to read this",
        "",
        f"- `0.7362 (@48)`: no validation at exactly k; the nearest one (step 48) was used. `—`: none within "
        f"±{settings.tolerance} steps. Δ = baseline val@{k} − arm val@{k} (positive = worse than the baseline).",
        "- terminal val: the run's last validation (step in parentheses)" + ("; BELOW = under the floor." if has_floor else "."),
        f"- spiral ignition: {spiral_parameters}",
        "- validation metric per arm: " + ", ".join(f"{row.arm} `{row.val_metric}`" for row in rows),
        "",
    ]
    return "\n".join(lines)
