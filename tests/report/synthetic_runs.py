"""Synthetic verl runs with known answers, written in all three formats the report reads.

A run is a list of ``(step, {metric: value})`` records, exactly what verl's
``Tracking.log(data, step)`` receives: step 0 holds only the pre-training validation, every
later step the training metrics (plus validation on validation steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

VAL_KEY = "val-core/openai/gsm8k/reward/mean@1"
BOUNDARIES = (3, 7, 11, 15, 18, 21, 24)

Records = list[tuple[int, dict[str, float]]]


@dataclass
class RunShape:
    """What to plant in a synthetic run.

    Args:
        steps: last training step.
        val: validation step → value (step 0 = before training).
        spiral_at: the first step of a length spiral: from it on the length grows
            ``spiral_rate`` per step (step ``spiral_at`` is already one growth step above the
            flat level) while the score stays flat.
        spiral_rate: relative length growth per step of the spiral.
        grow_with_score: (first, last) steps over which length grows 3 %/step while the
            score rises 0.015/step — healthy learning, not a spiral.
        cadence_ticks: anchor fires / Q refreshes every this many ticks (2 ticks per step);
            None = plugin off.
        seed: noise seed.
    """

    steps: int = 100
    val: dict[int, float] = field(default_factory=dict)
    spiral_at: Optional[int] = None
    spiral_rate: float = 0.10
    grow_with_score: Optional[tuple[int, int]] = None
    cadence_ticks: Optional[int] = 20
    seed: int = 0


def length_and_score(shape: RunShape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-step response length and score (index 0 = step 1), with 1.5 % / 0.01 noise."""
    steps = np.arange(1, shape.steps + 1)
    length = np.full(len(steps), 250.0)
    score = np.full(len(steps), 0.60)
    if shape.grow_with_score is not None:
        first, last = shape.grow_with_score
        ramp = np.clip(steps - first, 0, last - first)
        length *= 1.03**ramp
        score += 0.015 * ramp
    if shape.spiral_at is not None:
        length *= (1.0 + shape.spiral_rate) ** np.clip(steps - shape.spiral_at + 1, 0, None)
    length *= 1.0 + 0.015 * rng.standard_normal(len(steps))
    score += 0.01 * rng.standard_normal(len(steps))
    return length, score


def fires_by(step: int, cadence_ticks: int) -> int:
    """Cumulative anchor fires by the end of ``step`` (2 ticks per step, fire iff tick % cadence == 0)."""
    return (2 * step) // cadence_ticks


def codec_metrics(step: int, cadence_ticks: int, rng: np.random.Generator) -> dict[str, float]:
    """Cumulative counters and per-boundary reconstruction error (high until the first Q update)."""
    fires = fires_by(step, cadence_ticks)
    metrics = {
        "commeff/anchor/fires": float(fires),
        "commeff/codec/q_updates": float(fires),
        "commeff/tick": float(2 * step),
        "commeff/merger/lambda": 1.0,
    }
    for i, layer in enumerate(BOUNDARIES):
        base = 0.55 + 0.02 * i if fires == 0 else 0.08 + 0.01 * i + 0.0005 * step
        metrics[f"commeff/codec/recon_err/layer_{layer}"] = float(base + 0.005 * rng.standard_normal())
    return metrics


# The byte ledger a plugin arm logs: path → (sent, dense_equiv) bytes per step; the anchor's paths and
# the Q broadcast only on steps with a fire, the codec every step.
LEDGER_EVERY_STEP = {"codec": (1000.0, 16000.0)}
LEDGER_FIRE_STEP = {"q_bcast": (256.0, 0.0), "anchor_snapshot": (8000.0, 0.0), "anchor_minibatch": (3000.0, 0.0),
                    "anchor_m_bar": (400.0, 0.0)}


def ledger_metrics(step: int, cadence_ticks: int) -> dict[str, float]:
    """``commeff/bytes/<path>/{sent,dense_equiv}`` of one step (no totals: the report adds its own)."""
    fired = fires_by(step, cadence_ticks) > fires_by(step - 1, cadence_ticks)
    paths = {**LEDGER_EVERY_STEP, **{p: (v if fired else (0.0, 0.0)) for p, v in LEDGER_FIRE_STEP.items()}}
    out = {}
    for path, (sent, dense) in paths.items():
        out[f"commeff/bytes/{path}/sent"] = sent
        out[f"commeff/bytes/{path}/dense_equiv"] = dense
    return out


def refreshed_before(step: int, cadence_ticks: Optional[int]) -> bool:
    """Whether Q changed during the previous step (the clip fraction spikes one step later)."""
    return cadence_ticks is not None and step > 1 and fires_by(step - 1, cadence_ticks) > fires_by(step - 2, cadence_ticks)


def make_run(shape: RunShape) -> Records:
    """The records verl would log for ``shape``."""
    rng = np.random.default_rng(shape.seed)
    length, score = length_and_score(shape, rng)
    records: Records = [(0, {VAL_KEY: shape.val[0]})] if 0 in shape.val else []
    for step in range(1, shape.steps + 1):
        data = {
            "response_length/mean": float(length[step - 1]),
            "critic/score/mean": float(score[step - 1]),
            "actor/entropy": float(0.5 + 5.0 * np.exp(-step / 10.0)),
            "actor/pg_clipfrac": 0.02 + 0.1 * refreshed_before(step, shape.cadence_ticks),
        }
        if shape.cadence_ticks is not None:
            data.update(codec_metrics(step, shape.cadence_ticks, rng))
            data.update(ledger_metrics(step, shape.cadence_ticks))
        if step in shape.val:
            data[VAL_KEY] = shape.val[step]
        records.append((step, data))
    return records


def drop_metric(records: Records, metric: str) -> Records:
    """The same run without one metric."""
    return [(step, {k: v for k, v in data.items() if k != metric}) for step, data in records]


def write_jsonl(records: Records, path: Path) -> Path:
    """verl FileLogger layout: one ``{"step", "data"}`` JSON object per line."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records))
    return path


def write_tensorboard(records: Records, directory: Path) -> Path:
    """verl's tensorboard logger: ``SummaryWriter.add_scalar(key, value, step)`` per metric."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for step, data in records:
        for key, value in data.items():
            writer.add_scalar(key, value, step)
    writer.close()
    return directory


def write_wandb_csv(records: Records, path: Path) -> Path:
    """A wandb history export: ``_step``, wandb's own ``_runtime``/``_timestamp``, empty cells."""
    rows = [{"_step": s, "_runtime": 1.5 * s, "_timestamp": 1.7e9 + s, **d} for s, d in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


WRITERS = {"jsonl": (write_jsonl, ".jsonl"), "tensorboard": (write_tensorboard, ""), "csv": (write_wandb_csv, ".csv")}


def write_run(records: Records, root: Path, name: str, fmt: str) -> Path:
    """Write ``records`` as run ``name`` in format ``fmt`` (jsonl / tensorboard / csv) under ``root``."""
    writer, suffix = WRITERS[fmt]
    return writer(records, root / fmt / f"{name}{suffix}")


SEED_K5 = {0: 0.70, 25: 0.7263, 50: 0.7362}
SEED_K20 = {0: 0.70, 25: 0.5921, 50: 0.6482, 75: 0.4898, 100: 0.4435}
SEED_DENSE = {0: 0.70, 25: 0.7627, 50: 0.7657}


def seed_arms() -> dict[str, Records]:
    """The seed's three arms: dense control (plugin off), K=5 (50 steps), K=20 (spiral at 91)."""
    return {
        "dense": make_run(RunShape(steps=50, val=SEED_DENSE, cadence_ticks=None, seed=1)),
        "K5": make_run(RunShape(steps=50, val=SEED_K5, cadence_ticks=5, seed=2)),
        "K20": make_run(RunShape(steps=100, val=SEED_K20, cadence_ticks=20, spiral_at=91, spiral_rate=0.12, seed=3)),
    }


def move_validation(records: Records, shift: int) -> Records:
    """The same run with every validation after step 0 logged ``shift`` steps later (or earlier)."""
    moved: Records = []
    for step, data in records:
        moved.append((step, {k: v for k, v in data.items() if k != VAL_KEY}))
        if VAL_KEY in data:
            moved.append((step + shift if step > 0 else 0, {VAL_KEY: data[VAL_KEY]}))
    return moved


def series_of(records: Records, metric: str) -> pd.Series:
    """One metric of a run as a step-indexed series (steps that lack it are left out)."""
    points = {step: data[metric] for step, data in records if metric in data}
    return pd.Series(points, dtype=float)
