"""The whole model's data-parallel bytes next to the accuracy they cost (issue 18).

Arms with ``commeff.dp_codec`` log, every step, ``commeff/bytes/dp_codec/sent`` (everything
this rank handed to the cross-replica collectives: P/Q factors and the dense rest, 1-D
parameters included) and ``commeff/bytes/dp_codec/dense_equiv`` (the dense all-reduce of
the same gradients). The run's ratio is Σ sent / Σ dense_equiv over its steps (dense
warm-up ticks included), not a mean of per-step ratios. An arm that logs neither exchanges
its gradients densely: its ratio is 1 by definition and it is drawn as such.

* :func:`dp_bytes` reads one arm; :func:`plot_dp_bytes` writes ``dp_bytes.png`` (left: the
  per-step ratio; right: the run ratio against val@gate, the Pareto view);
  :func:`dp_bytes_section` the table appended to ``verdict.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from verl_commeff.report.figures import plt, save

__all__ = ["DP_DENSE", "DP_SENT", "DPBytes", "dp_bytes", "dp_bytes_section", "plot_dp_bytes"]

DP_SENT = "commeff/bytes/dp_codec/sent"
DP_DENSE = "commeff/bytes/dp_codec/dense_equiv"


@dataclass(frozen=True)
class DPBytes:
    """One arm's whole-model data-parallel bytes.

    Attributes:
        per_step: sent / dense_equiv per training step (index: step).
        run_ratio: Σ sent / Σ dense_equiv over the run.
        sent_per_step: mean bytes sent per step (per rank).
    """

    per_step: pd.Series
    run_ratio: float
    sent_per_step: float


def dp_bytes(table: pd.DataFrame) -> Optional[DPBytes]:
    """The arm's whole-model DP bytes; None when it does not log them (a dense arm)."""
    if DP_SENT not in table.columns or DP_DENSE not in table.columns:
        return None
    both = table[[DP_SENT, DP_DENSE]].dropna()
    both = both[both[DP_DENSE] > 0]
    if both.empty:
        return None
    return DPBytes(both[DP_SENT] / both[DP_DENSE], float(both[DP_SENT].sum() / both[DP_DENSE].sum()),
                   float(both[DP_SENT].mean()))


def _ratio(entry: Optional[DPBytes]) -> float:
    return 1.0 if entry is None else entry.run_ratio


def plot_dp_bytes(arms: dict[str, Optional[DPBytes]], gate_values: dict[str, Optional[float]], gate_step: int,
                  colors: dict[str, str], path: Path) -> Path:
    """Left: the whole-model DP ratio per step (log); right: run ratio (log) vs val@``gate_step``.

    Args:
        arms: arm → its :class:`DPBytes`, None for a dense arm (ratio 1).
        gate_values: arm → val@gate_step (None: the arm has none; it is left off the right panel).
        colors: arm → colour.
        path: the PNG to write.
    """
    fig, (steps_ax, pareto_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for arm, entry in arms.items():
        if entry is None:
            steps_ax.axhline(1.0, color=colors[arm], linestyle=":", linewidth=1.5, label=f"{arm} (dense)")
        else:
            steps_ax.plot(entry.per_step.index, entry.per_step.to_numpy(), marker=".", color=colors[arm], label=arm)
    steps_ax.set_yscale("log")
    steps_ax.set_xlabel("training step")
    steps_ax.set_ylabel("sent / dense all-reduce (whole model)")
    steps_ax.set_title("Data-parallel bytes per step, whole model")
    steps_ax.grid(alpha=0.3, which="both")
    steps_ax.legend(fontsize=8, loc="best")
    for arm, entry in arms.items():
        value = gate_values.get(arm)
        if value is None:
            continue
        x = _ratio(entry)
        pareto_ax.scatter([x], [value], color=colors[arm], s=50, zorder=3)
        pareto_ax.annotate(f"{arm}\n×{1 / x:.0f} fewer" if entry is not None else f"{arm}\n(dense)", (x, value),
                           xytext=(5, 4), textcoords="offset points", fontsize=8, color=colors[arm])
    pareto_ax.set_xscale("log")
    pareto_ax.invert_xaxis()  # fewer bytes to the right
    pareto_ax.set_xlabel("run's sent / dense all-reduce (whole model; right = fewer bytes)")
    pareto_ax.set_ylabel(f"validation accuracy at step {gate_step}")
    pareto_ax.set_title("Bytes vs accuracy")
    pareto_ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, path)


def dp_bytes_section(arms: dict[str, Optional[DPBytes]], gate_values: dict[str, Optional[float]],
                     gate_step: int) -> str:
    """The markdown table appended to verdict.md: arm, run ratio, fewer-bytes factor, val@gate."""
    lines = [
        "## Data-parallel bytes, whole model",
        "",
        f"| Arm | sent / dense all-reduce (run) | fewer bytes | mean bytes sent per step | val@{gate_step} |",
        "|---|---|---|---|---|",
    ]
    for arm, entry in arms.items():
        value = gate_values.get(arm)
        val = "—" if value is None else f"{value:.4f}"
        if entry is None:
            lines.append(f"| {arm} | 1 (dense) | 1× | — | {val} |")
        else:
            lines.append(f"| {arm} | {entry.run_ratio:.4f} | {1 / entry.run_ratio:.1f}× | "
                         f"{entry.sent_per_step:,.0f} B | {val} |")
    lines += ["", "Σ `commeff/bytes/dp_codec/sent` / Σ `commeff/bytes/dp_codec/dense_equiv` over the run "
              "(every parameter, 1-D included; dense warm-up ticks included); an arm without the DP codec "
              "exchanges densely (1).", ""]
    return "\n".join(lines)
