"""The seed's figures, drawn from any set of arms (matplotlib, Agg backend, PNG).

* :func:`plot_val_accuracy` — Figure 1: validation accuracy vs step, noise band, floor.
* :func:`plot_train_reward` — training reward vs step (raw and rolling mean).
* :func:`plot_collapse_mechanism` — Figure 2: length / entropy / clip fraction with anchor
  fires and Q refreshes marked.
* :func:`plot_q_telemetry` — Figure 4: reconstruction error per boundary next to clip
  fraction and response length.
* :func:`plot_bytes_per_step` — the byte ledger: bytes per step by path and arm, with the
  ratio against dense-equivalent.
* :func:`plot_dose_signals` — the dose applied and the anchor's evidence (λ*, cos(C, D), the held
  M̄'s agreement with D) vs step, for the arms that log them.

The functions assume their metrics are present; :mod:`verl_commeff.report.builder`
checks that first and names what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from verl_commeff.report import names  # noqa: E402

if TYPE_CHECKING:
    from verl_commeff.report.ledger import ArmBytes

__all__ = ["arm_colors", "counter_increase_steps", "dose_arms", "plot_bytes_per_step", "plot_collapse_mechanism",
           "plot_dose_signals", "plot_q_telemetry", "plot_val_accuracy", "recon_err_columns"]

FIRE_TICK = (0.0, 0.07)  # anchor fires: ticks along the bottom edge (axes fraction)
Q_TICK = (0.93, 1.0)  # Q refreshes: ticks along the top edge
DPI = 120


def arm_colors(arms: list[str]) -> dict[str, str]:
    """One fixed colour per arm (matplotlib's tab10 cycle), shared by every figure."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(arms)}


def counter_increase_steps(table: pd.DataFrame, key: str) -> list[int]:
    """Steps at which a cumulative counter increased (the first logged value counts from 0).

    Returns an empty list when the run does not log the counter (e.g. a plugin-off control).
    """
    if key not in table.columns:
        return []
    counter = table[key].dropna()
    increments = counter.diff().fillna(counter)
    return [int(step) for step in counter.index[increments > 0]]


def recon_err_columns(table: pd.DataFrame) -> list[str]:
    """The run's ``commeff/codec/recon_err/layer_<l>`` columns, ordered by layer."""
    columns = [c for c in table.columns if c.startswith(names.RECON_ERR_PREFIX)]
    return sorted(columns, key=lambda c: int(c[len(names.RECON_ERR_PREFIX) :]) if c[len(names.RECON_ERR_PREFIX) :].isdigit() else 1 << 30)


def mark_events(ax, steps: list[int], color: str, extent: tuple[float, float]) -> None:
    """Short vertical ticks at ``steps`` spanning ``extent`` of the axes height."""
    if steps:
        transform = blended_transform_factory(ax.transData, ax.transAxes)
        ax.vlines(steps, *extent, transform=transform, colors=color, linewidth=1.2, alpha=0.9)


def event_legend_handles() -> list[Line2D]:
    """Legend entries explaining the tick marks."""
    return [
        Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label="anchor fire (bottom ticks)"),
        Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label="Q refresh (top ticks)"),
    ]


def spread_labels(values: list[float], gap: float) -> list[float]:
    """Label heights for ``values`` (same order): at least ``gap`` apart, order kept, each group centred on its values.

    Steps:
        1. Walk the values upwards; each starts a group of its own.
        2. While the top group's lowest label is closer than ``gap`` to the group below, merge
           the two: a group of k labels sits ``gap`` apart, centred on its values' mean.
    """
    def place(group: list[int]) -> list[float]:
        centre = sum(values[i] for i in group) / len(group)
        return [centre + (j - (len(group) - 1) / 2) * gap for j in range(len(group))]

    groups: list[list[int]] = []
    for i in sorted(range(len(values)), key=lambda i: values[i]):
        groups.append([i])  # Step 1
        while len(groups) > 1 and place(groups[-1])[0] - place(groups[-2])[-1] < gap:  # Step 2
            groups[-2:] = [groups[-2] + groups[-1]]
    heights = [0.0] * len(values)
    for group in groups:
        for i, height in zip(group, place(group)):
            heights[i] = height
    return heights


def save(fig, path: Path) -> Path:
    """Write a figure as PNG and release it."""
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def save_step_plot(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """Label a one-panel per-step figure (x: training step), add grid and legend, and write it."""
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_val_accuracy(
    validation: dict[str, pd.Series], colors: dict[str, str], floor: Optional[float], noise: float, path: Path
) -> Path:
    """Figure 1: validation accuracy vs step per arm, ±noise band, no-merger floor line.

    Args:
        validation: arm → validation values indexed by step.
        colors: arm → colour.
        floor: the no-merger floor (horizontal dashed line); None draws none.
        noise: half-width of the shaded rollout-noise band around each curve.
        path: the PNG to write.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ends = []  # (arm, last step, last value)
    for arm, series in validation.items():
        steps, values = series.index.to_numpy(), series.to_numpy()
        ax.fill_between(steps, values - noise, values + noise, color=colors[arm], alpha=0.15, linewidth=0)
        ax.plot(steps, values, marker="o", color=colors[arm], label=arm)
        ends.append((arm, steps[-1], float(values[-1])))
    if floor is not None:
        ax.axhline(floor, color="0.35", linestyle="--", linewidth=1, label=f"no-merger floor {floor:.4f}")
    low, high = ax.get_ylim()
    label_ys = spread_labels([value for _, _, value in ends], gap=0.04 * (high - low))
    for (arm, step, value), label_y in zip(ends, label_ys):  # end values, moved apart where they would overlap
        ax.annotate(f"{value:.3f}", (step, value), xytext=(6, label_y), textcoords=("offset points", "data"),
                    va="center", fontsize=8, color=colors[arm])
    return save_step_plot(fig, ax, "validation accuracy", f"Validation accuracy vs step (shaded: ±{noise:g} rollout noise)",
                          path)


def plot_train_reward(runs: dict[str, pd.DataFrame], colors: dict[str, str], path: Path, window: int = 5) -> Path:
    """Training reward (verl's ``critic/score/mean``) vs step per arm: raw (thin) and a centred rolling mean.

    Args:
        runs: arm → metrics table indexed by step.
        colors: arm → colour.
        path: the PNG to write.
        window: steps of the rolling mean (the batch of one step is small and noisy).
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for arm, table in runs.items():
        series = table[names.SCORE].dropna()
        smooth = series.rolling(window, center=True, min_periods=1).mean()
        ax.plot(series.index, series.to_numpy(), color=colors[arm], alpha=0.3, linewidth=0.8)
        ax.plot(smooth.index, smooth.to_numpy(), color=colors[arm], linewidth=1.8, label=arm)
    return save_step_plot(fig, ax, "training reward (mean score of the step's rollouts)",
                          f"Training reward vs step (thick: {window}-step rolling mean)", path)


def plot_collapse_mechanism(
    runs: dict[str, pd.DataFrame], colors: dict[str, str], spirals: dict[str, Optional[int]], path: Path
) -> Path:
    """Figure 2: response length, entropy and clip fraction vs step, events marked.

    Anchor fires (increases of ``commeff/anchor/fires``) are ticks on the bottom edge of
    every panel, Q refreshes (increases of ``commeff/codec/q_updates``) ticks on the top
    edge, in the arm's colour; a detected spiral ignition is a dotted vertical line.
    """
    panels = [(names.RESPONSE_LENGTH, "response length (mean tokens)"), (names.ENTROPY, "policy entropy"),
              (names.CLIPFRAC, "PG clip fraction")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 8.5), sharex=True)
    for ax, (metric, label) in zip(axes, panels):
        for arm, table in runs.items():
            series = table[metric].dropna()
            ax.plot(series.index, series.to_numpy(), color=colors[arm], linewidth=1.3, label=arm)
            mark_events(ax, counter_increase_steps(table, names.ANCHOR_FIRES), colors[arm], FIRE_TICK)
            mark_events(ax, counter_increase_steps(table, names.Q_UPDATES), colors[arm], Q_TICK)
            if spirals.get(arm) is not None:
                ax.axvline(spirals[arm], color=colors[arm], linestyle=":", linewidth=1.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    if any(step is not None for step in spirals.values()):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="spiral ignition"))
    axes[0].legend(handles=handles + event_legend_handles(), fontsize=8, loc="upper left")
    axes[-1].set_xlabel("training step")
    axes[0].set_title("Collapse mechanism: length, entropy, clip fraction")
    fig.tight_layout()
    return save(fig, path)


def plot_recon_panel(ax, arm: str, table: pd.DataFrame) -> None:
    """Reconstruction error of every boundary of one arm, coloured by layer."""
    columns = recon_err_columns(table)
    cmap = plt.get_cmap("viridis")
    for i, column in enumerate(columns):
        series = table[column].dropna()
        layer = column[len(names.RECON_ERR_PREFIX) :]
        ax.plot(series.index, series.to_numpy(), color=cmap(i / max(1, len(columns) - 1)), linewidth=1.1,
                label=f"layer {layer}")
    mark_events(ax, counter_increase_steps(table, names.Q_UPDATES), "0.3", Q_TICK)
    ax.set_title(f"{arm}: ‖h − hQQᵀ‖/‖h‖ per boundary", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")


def plot_q_telemetry(runs: dict[str, pd.DataFrame], colors: dict[str, str], path: Path) -> Path:
    """Figure 4: per-boundary reconstruction error (one panel per arm) over clip fraction and length.

    Args:
        runs: the arms with codec telemetry (arm → per-step table).
        colors: arm → colour (bottom panels).
        path: the PNG to write.
    """
    fig = plt.figure(figsize=(min(24.0, max(8.0, 4.5 * len(runs))), 9))
    grid = fig.add_gridspec(3, len(runs))
    clip_ax = fig.add_subplot(grid[1, :])
    length_ax = fig.add_subplot(grid[2, :], sharex=clip_ax)
    recon_axes = [fig.add_subplot(grid[0, 0], sharex=clip_ax)]
    recon_axes += [fig.add_subplot(grid[0, i], sharex=clip_ax, sharey=recon_axes[0]) for i in range(1, len(runs))]
    for ax, (arm, table) in zip(recon_axes, runs.items()):
        plot_recon_panel(ax, arm, table)
    recon_axes[0].set_ylabel("reconstruction error")
    for ax, metric, label in ((clip_ax, names.CLIPFRAC, "PG clip fraction"), (length_ax, names.RESPONSE_LENGTH, "response length")):
        for arm, table in runs.items():
            series = table[metric].dropna()
            ax.plot(series.index, series.to_numpy(), color=colors[arm], linewidth=1.3, label=arm)
            mark_events(ax, counter_increase_steps(table, names.Q_UPDATES), colors[arm], Q_TICK)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    clip_ax.legend(handles=clip_ax.get_legend_handles_labels()[0] + event_legend_handles()[1:], fontsize=8, loc="upper left")
    length_ax.set_xlabel("training step")
    fig.suptitle("Q telemetry: codec reconstruction error vs clip fraction and response length")
    fig.tight_layout()
    return save(fig, path)


def plot_bytes_per_step(arms: dict[str, "ArmBytes"], colors: dict[str, str], path: Path) -> Path:
    """Mean bytes per training step by path, grouped by arm (log scale), and the ratio against dense.

    Left: one group per ledger path (and the total), one bar per arm; a black tick over a
    bar marks that path's dense-equivalent bytes (what dense training sends there), none for
    the paths only the method has. Right: total sent / total dense-equivalent per arm.

    Args:
        arms: arm → its :class:`~verl_commeff.report.ledger.ArmBytes` (arms that log bytes).
        colors: arm → colour.
        path: the PNG to write.
    """
    from verl_commeff.ledger import PATHS

    paths = [p for p in PATHS if any(p in a.sent for a in arms.values())] + ["total"]
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(max(9.0, 1.3 * len(paths) + 4.5), 5),
                                       gridspec_kw={"width_ratios": [max(3, len(paths)), 1.4]})
    width = 0.8 / len(arms)
    for i, (arm, ledger) in enumerate(arms.items()):
        sent = {**ledger.sent, "total": ledger.total_sent}
        dense = {**ledger.dense_equiv, "total": ledger.total_dense}
        xs = [j + (i - (len(arms) - 1) / 2) * width for j, p in enumerate(paths)]
        values = [sent.get(p, 0.0) for p in paths]
        ax.bar(xs, [v if v > 0 else float("nan") for v in values], width, color=colors[arm], label=arm)
        for x, p in zip(xs, paths):
            if dense.get(p, 0.0) > 0:
                ax.hlines(dense[p], x - width / 2, x + width / 2, colors="black", linewidth=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(paths)))
    ax.set_xticklabels(paths, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel("bytes per step (mean over steps, per rank)")
    ax.set_title("Bytes per step by path (black tick: dense-equivalent)")
    ax.grid(alpha=0.3, axis="y")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linewidth=2, label="dense-equivalent"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    names_ = list(arms)
    ratios = [arms[a].ratio for a in names_]
    ratio_ax.bar(range(len(names_)), ratios, color=[colors[a] for a in names_])
    for j, r in enumerate(ratios):
        ratio_ax.annotate("n/a" if r != r else f"{r:.3g}", (j, 0 if r != r else r), textcoords="offset points",
                          xytext=(0, 3), ha="center", fontsize=8)
    ratio_ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1)
    ratio_ax.set_xticks(range(len(names_)))
    ratio_ax.set_xticklabels(names_, rotation=30, ha="right", fontsize=9)
    ratio_ax.set_title("sent / dense-equivalent")
    ratio_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, path)


def dose_arms(runs: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The arms that log the anchor's dose evidence (``commeff/dose/*``: ``anchor.probe`` on)."""
    return {arm: t for arm, t in runs.items() if names.COS_CODEC in t.columns and not t[names.COS_CODEC].dropna().empty}


def plot_dose_signals(rows: list[tuple[str, dict[str, pd.DataFrame]]], colors: dict[str, str], path: Path) -> Path:
    """The dose applied and the anchor's evidence vs step: one row of panels per (title, arm → table).

    Panels: :data:`~verl_commeff.report.names.DOSE_PANELS` (a metric an arm does not log is left out of
    its panel).
    """
    panels = names.DOSE_PANELS
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4 * len(panels), 3.2 * len(rows)), squeeze=False)
    for r, (title, runs) in enumerate(rows):
        for c, (label, metric) in enumerate(panels):
            ax = axes[r][c]
            for arm, table in runs.items():
                if metric in table.columns and not table[metric].dropna().empty:
                    series = table[metric].dropna()
                    ax.plot(series.index, series.to_numpy(), color=colors[arm], marker=".", linewidth=1.2, label=arm)
            ax.set_title(f"{title}: {label}" if title else label, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[r][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, path)
