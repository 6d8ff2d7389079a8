"""Per-seed tables and the staleness curve of a multi-seed study (``verl-commeff study``).

A study regime is a directory of verl file-logger runs named ``<arm>_s<seed>.jsonl`` (what
``recipes/tiny_seed_study.sh`` writes with ``SEEDS``). For each regime this module

1. reads every run and, per (arm, seed), val@k at the requested steps, the training reward
   over the first and last steps and the mean of the anchor's signals over the logged steps;
2. averages each arm over its seeds, and pairs it by seed with the floor arm
   (Δ = arm − floor on the same seed, mean and min over the shared seeds) and, where a
   dense arm ran, reports the share of the floor→dense gap the arm recovers;
3. writes ``study.md`` (the tables, per-seed values included), ``staleness.png`` (final
   validation against the anchor delay K, one line per dose family, the floor and dense
   as bands, one panel per regime) and ``dose_signals.png`` (the evidence signals over steps).

Arms named ``k<K>_c<C>`` are signed_ema at full dose, ``ev_k<K>_c<C>`` the evidence dose,
``ce_k<K>_c<C>`` the codec-error merger; any other name is listed in the tables only.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from verl_commeff.report import figures  # noqa: E402
from verl_commeff.report.errors import ReportError  # noqa: E402
from verl_commeff.report.readers import read_metrics  # noqa: E402
from verl_commeff.report.verdict import detect_val_metric, val_at, validation_series  # noqa: E402

__all__ = ["ArmSeeds", "Regime", "load_regime", "render_study", "write_study"]

RUN_NAME = re.compile(r"^(?P<arm>.+)_s(?P<seed>\d+)$")
DELAY_ARM = re.compile(r"^(?:(?P<family>[a-z]+)_)?k(?P<k>\d+)_c(?P<c>\d+)$")
FAMILIES = {None: "signed_ema, full dose", "ev": "evidence dose", "ce": "codec-error merger"}
SCORE = "critic/score/mean"
# (column, metric): the anchor's signals averaged over the steps that log them
SIGNALS = (
    ("λ applied", "commeff/merger/lambda"),
    ("λ*", "commeff/dose/lambda_star"),
    ("cos(C,D)", "commeff/dose/cos_codec"),
    ("held agree", "commeff/dose/held_agree"),
    ("sign agree G·M̄", "commeff/merger/sign_agree"),
)


@dataclass
class ArmSeeds:
    """One arm of a regime: per seed, val@k, training reward and signals."""

    arm: str
    val: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> step -> val
    reward_first: dict[int, float] = field(default_factory=dict)
    reward_last: dict[int, float] = field(default_factory=dict)
    signals: dict[int, dict[str, float]] = field(default_factory=dict)
    steps: dict[int, pd.DataFrame] = field(default_factory=dict)  # seed -> the run's table

    @property
    def seeds(self) -> list[int]:
        return sorted(self.val)

    def final(self, step: int) -> dict[int, float]:
        return {s: v[step] for s, v in self.val.items() if step in v}


@dataclass
class Regime:
    name: str
    arms: dict[str, ArmSeeds]


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def load_regime(name: str, directory: Path, val_steps: Sequence[int], first: int = 3, last: int = 5) -> Regime:
    """Read every ``<arm>_s<seed>.jsonl`` in ``directory``.

    Raises:
        ReportError: no such runs, or a run lacks the validation metric.
    """
    arms: dict[str, ArmSeeds] = {}
    for path in sorted(Path(directory).glob("*.jsonl")):
        match = RUN_NAME.match(path.stem)
        if match is None:
            continue
        table = read_metrics(path)
        key = detect_val_metric(table, path.stem)
        series = validation_series(table, key, path.stem)
        entry = arms.setdefault(match["arm"], ArmSeeds(match["arm"]))
        seed = int(match["seed"])
        entry.val[seed] = {k: p.value for k in val_steps if (p := val_at(series, k, 0)) is not None}
        scores = table[SCORE].dropna() if SCORE in table.columns else pd.Series(dtype=float)
        entry.reward_first[seed] = _mean(list(scores.iloc[:first]))
        entry.reward_last[seed] = _mean(list(scores.iloc[-last:]))
        entry.signals[seed] = {col: float(table[m].dropna().mean()) for col, m in SIGNALS
                               if m in table.columns and not table[m].dropna().empty}
        entry.steps[seed] = table
    if not arms:
        raise ReportError(f"study regime {name!r}: no <arm>_s<seed>.jsonl runs in {directory}")
    return Regime(name, arms)


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x != x else f"{x:.{digits}f}"


def _paired(arm: ArmSeeds, floor: Optional[ArmSeeds], step: int) -> tuple[list[int], list[float]]:
    if floor is None:
        return [], []
    a, f = arm.final(step), floor.final(step)
    seeds = sorted(set(a) & set(f))
    return seeds, [a[s] - f[s] for s in seeds]


def render_study(regimes: Sequence[Regime], val_steps: Sequence[int], floor: str, dense: str, noise: float) -> str:
    """``study.md``: per regime, the arms' means over seeds, paired Δ vs the floor, per-seed values, signals."""
    final = val_steps[-1]
    lines = ["# Multi-seed study", "",
             f"val@k is the validation accuracy at step k; means over seeds; Δ floor = val@{final} − the floor arm's "
             f"on the same seed (mean, and min over the seeds); gap = Σ(arm − floor) / Σ(dense − floor) over the seeds "
             f"the arm, the floor and dense all ran. "
             f"Validation noise: about ±{noise:g} per value.", ""]
    for regime in regimes:
        lines += [f"## {regime.name}", ""]
        f_arm, d_arm = regime.arms.get(floor), regime.arms.get(dense)
        header = ["arm", "seeds"] + [f"val@{k}" for k in val_steps] + ["Δ floor (mean / min)", "gap recovered",
                                                                       "reward first→last"] + [c for c, _ in SIGNALS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in _ordered(regime.arms):
            arm = regime.arms[name]
            vals = [_fmt(_mean([v[k] for v in arm.val.values() if k in v])) for k in val_steps]
            seeds, deltas = _paired(arm, f_arm, final)
            delta = f"{_mean(deltas):+.3f} / {min(deltas):+.3f}" if deltas and name != floor else "—"
            gap = _gap(arm, f_arm, d_arm, final)
            reward = f"{_mean(list(arm.reward_first.values())):.3f}→{_mean(list(arm.reward_last.values())):.3f}"
            signals = [_fmt(_mean([s[c] for s in arm.signals.values() if c in s])) for c, _ in SIGNALS]
            lines.append("| " + " | ".join([name, ",".join(map(str, arm.seeds))] + vals
                                           + [delta, "—" if gap != gap or name in (floor, dense) else f"{gap:+.0%}",
                                              reward] + signals) + " |")
        lines += ["", f"Per seed, val@{'/'.join(map(str, val_steps))}:", ""]
        for name in _ordered(regime.arms):
            arm = regime.arms[name]
            per = "; ".join(f"s{s}: " + " ".join(_fmt(arm.val[s].get(k, float("nan"))) for k in val_steps) for s in arm.seeds)
            lines.append(f"- `{name}`: {per}")
        lines.append("")
    return "\n".join(lines)


def _gap(arm: ArmSeeds, floor: Optional[ArmSeeds], dense: Optional[ArmSeeds], step: int) -> float:
    """The share of the floor→dense gap the arm recovers at ``step``, over the seeds all three ran:
    Σ(arm − floor) / Σ(dense − floor); NaN without such seeds or without a gap."""
    if floor is None or dense is None:
        return float("nan")
    a, f, d = arm.final(step), floor.final(step), dense.final(step)
    seeds = sorted(set(a) & set(f) & set(d))
    gap = sum(d[s] - f[s] for s in seeds)
    return sum(a[s] - f[s] for s in seeds) / gap if seeds and gap != 0 else float("nan")


def _ordered(arms: dict) -> list[str]:
    def key(name: str):
        m = DELAY_ARM.match(name)
        return (0, name) if m is None else (1, m["family"] or "", int(m["k"]))
    return sorted(arms, key=key)


def plot_staleness(regimes: Sequence[Regime], step: int, floor: str, dense: str, noise: float, path: Path) -> Path:
    """val@``step`` against K per dose family (mean over seeds, the seeds as dots); floor and dense as bands."""
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes):
        for name, color in ((floor, "0.4"), (dense, "tab:green")):
            arm = regime.arms.get(name)
            if arm and arm.final(step):
                m = _mean(list(arm.final(step).values()))
                ax.axhspan(m - noise, m + noise, color=color, alpha=0.15)
                ax.axhline(m, color=color, ls="--", lw=1, label=f"{name} (mean ± {noise:g})")
        families: dict[Optional[str], list[tuple[int, ArmSeeds]]] = {}
        for name, arm in regime.arms.items():
            m = DELAY_ARM.match(name)
            if m is not None:
                families.setdefault(m["family"], []).append((int(m["k"]), arm))
        for family, arms in sorted(families.items(), key=lambda kv: kv[0] or ""):
            arms.sort(key=lambda ka: ka[0])
            ks = [k for k, a in arms if a.final(step)]
            means = [_mean(list(a.final(step).values())) for k, a in arms if a.final(step)]
            line, = ax.plot(ks, means, marker="o", label=FAMILIES.get(family, family))
            for k, a in arms:
                ax.scatter([k] * len(a.final(step)), list(a.final(step).values()), color=line.get_color(), s=10, alpha=0.4)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([0, 1, 2, 5, 20])
        ax.set_xticklabels(["0", "1", "2", "5", "20"])
        ax.set_xlabel("anchor delay K (ticks; cadence max(K, 1))")
        ax.set_title(regime.name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation accuracy at step {step}")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_dose_signals(regimes: Sequence[Regime], path: Path) -> Optional[Path]:
    """Per regime, each probed arm's dose and evidence over steps, averaged over its seeds
    (:func:`~verl_commeff.report.figures.plot_dose_signals`)."""
    rows = []
    for regime in regimes:
        means = {name: pd.concat(list(arm.steps.values())).groupby(level=0).mean()
                 for name, arm in regime.arms.items() if name.startswith("ev_")}
        dosed = figures.dose_arms(means)
        if dosed:
            rows.append((regime.name, {name: dosed[name] for name in _ordered(dosed)}))
    if not rows:
        return None
    colors = figures.arm_colors(_ordered({name: None for _, arms in rows for name in arms}))
    return figures.plot_dose_signals(rows, colors, path)


def write_study(regime_dirs: Sequence[tuple[str, Path]], out: Path, val_steps: Sequence[int], floor: str = "floor",
                dense: str = "dense", noise: float = 0.03) -> list[Path]:
    """Read the regimes and write ``study.md``, ``staleness.png`` and ``dose_signals.png`` into ``out``."""
    regimes = [load_regime(name, directory, val_steps) for name, directory in regime_dirs]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.md"]
    written[0].write_text(render_study(regimes, val_steps, floor, dense, noise))
    written.append(plot_staleness(regimes, val_steps[-1], floor, dense, noise, out / "staleness.png"))
    signals = plot_dose_signals(regimes, out / "dose_signals.png")
    if signals is not None:
        written.append(signals)
    return written
