"""The ``verl-commeff`` command line (argparse only; the work lives in the subcommands' packages).

Subcommands:
    report: the seed's figures and verdict table from one or more runs' metrics.
    study: per-seed tables, the staleness curve and the dose signals of a multi-seed study.

Exit status: 0 on success, 1 on a report error (one line on stderr, no traceback),
2 on a usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

PROG = "verl-commeff"


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number ≥ 0."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def step_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated steps, e.g. ``25,50,75,100``."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not steps:
        raise argparse.ArgumentTypeError("expected at least one step")
    return steps


def add_report_parser(subparsers) -> None:
    """The ``report`` subcommand's arguments."""
    from verl_commeff.report.spiral import SpiralParams

    defaults = SpiralParams()
    parser = subparsers.add_parser(
        "report",
        help="figures and verdict table from runs' metrics",
        description="Write val_accuracy.png, train_reward.png, collapse_mechanism.png, q_telemetry.png and verdict.md "
        "(the seed's Figures 1, 2, 4 and verdict table) from runs' metrics. See docs/report.md.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="[NAME=]PATH: a verl file-logger .jsonl, a wandb history .csv, or a TensorBoard "
                        "directory / event file; NAME defaults to the experiment name (file stem / directory name)")
    parser.add_argument("--baseline", required=True, metavar="NAME", help="the arm the val@gate-step gate compares against")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if missing)")
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--floor", type=float, default=0.63, help="no-merger floor for the terminal validation (default 0.63)")
    floor.add_argument("--floor-arm", metavar="NAME",
                       help="take the floor from this arm's terminal validation (e.g. the study's merger=none arm)")
    floor.add_argument("--no-floor", action="store_true",
                       help="no floor: no floor line, no floor column (when no no-merger arm ran)")
    parser.add_argument("--noise", type=non_negative_float, default=0.024, help="± noise band in val_accuracy.png (default 0.024)")
    parser.add_argument("--gate", type=non_negative_float, default=0.05, help="allowed val@gate-step degradation (default 0.05)")
    parser.add_argument("--gate-step", type=positive_int, default=50, help="the gated val@k step (default 50)")
    parser.add_argument("--val-steps", type=step_list, default=(25, 50, 75, 100), metavar="K,K,...",
                        help="the val@k columns (default 25,50,75,100)")
    parser.add_argument("--val-tolerance", type=non_negative_int, default=12, metavar="STEPS",
                        help="farthest validation step that may stand for val@k (default 12)")
    parser.add_argument("--val-metric", metavar="KEY",
                        help="validation key for every arm (default: auto-detect val-core/<source>/<var>/mean@<n>)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out a figure (or a spiral cell) whose metric a run lacks, with a warning, instead of failing")
    spiral = parser.add_argument_group("spiral detector (docs/report.md)")
    spiral.add_argument("--spiral-window", type=int, default=defaults.window, metavar="STEPS",
                        help=f"rolling window (default {defaults.window}, at least 3)")
    spiral.add_argument("--spiral-min-growth", type=float, default=defaults.min_growth, metavar="FRAC",
                        help=f"min relative length growth per step (default {defaults.min_growth})")
    spiral.add_argument("--spiral-score-tol", type=float, default=defaults.score_tolerance, metavar="SCORE",
                        help=f"max score rise across a window for it to count as flat (default {defaults.score_tolerance})")
    spiral.add_argument("--spiral-patience", type=positive_int, default=defaults.patience, metavar="N",
                        help=f"consecutive qualifying windows needed (default {defaults.patience})")
    spiral.add_argument("--spiral-departure", type=non_negative_float, default=defaults.departure, metavar="FRAC",
                        help=f"rise over the pre-spiral length that marks ignition (default {defaults.departure})")
    parser.set_defaults(handler=run_report, usage_error=parser.error)


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``report``: build the options and write the report."""
    from verl_commeff.report.builder import ReportOptions, write_report
    from verl_commeff.report.spiral import SpiralParams
    from verl_commeff.report.verdict import VerdictSettings

    try:
        spiral = SpiralParams(args.spiral_window, args.spiral_min_growth, args.spiral_score_tol,
                              args.spiral_patience, args.spiral_departure)
    except ValueError as error:
        args.usage_error(str(error))
    settings = VerdictSettings(baseline=args.baseline, val_steps=args.val_steps, gate_step=args.gate_step,
                               gate=args.gate, floor=None if args.no_floor else args.floor, tolerance=args.val_tolerance)
    options = ReportOptions(out_dir=args.out, settings=settings, floor_arm=args.floor_arm, noise=args.noise, val_metric=args.val_metric,
                            skip_missing=args.skip_missing, spiral=spiral)
    result = write_report(args.runs, options, log=print)
    for warning in result.warnings:
        print(f"{PROG} report: warning: {warning}", file=sys.stderr)
    return 0


def add_study_parser(subparsers) -> None:
    """The ``study`` subcommand's arguments."""
    parser = subparsers.add_parser(
        "study",
        help="per-seed tables and the staleness curve of a multi-seed study",
        description="Read <arm>_s<seed>.jsonl runs (recipes/tiny_seed_study.sh with SEEDS) per regime directory and "
        "write study.md (means over seeds, paired deltas against the floor arm, the share of the floor-to-dense gap "
        "recovered, per-seed values, the anchor's signals), staleness.png and dose_signals.png.",
    )
    parser.add_argument("regimes", nargs="+", metavar="REGIME",
                        help="[NAME=]DIR: a directory of <arm>_s<seed>.jsonl runs; NAME defaults to the directory name")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--val-steps", type=step_list, default=(0, 5, 10, 15, 20), metavar="K,K,...",
                        help="the val@k columns; the last is the final one (default 0,5,10,15,20)")
    parser.add_argument("--floor", default="floor", metavar="ARM", help="the no-merger arm (default floor)")
    parser.add_argument("--dense", default="dense", metavar="ARM", help="the dense arm (default dense)")
    parser.add_argument("--noise", type=non_negative_float, default=0.03, help="± validation noise (default 0.03)")
    parser.set_defaults(handler=run_study, usage_error=parser.error)


def run_study(args: argparse.Namespace) -> int:
    """Handler of ``study``."""
    from verl_commeff.report.seeds import write_study

    regimes = []
    for text in args.regimes:
        name, sep, path = text.partition("=")
        directory = Path(path if sep else name)
        regimes.append((name if sep else directory.name, directory))
    for path in write_study(regimes, args.out, args.val_steps, args.floor, args.dense, args.noise):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(prog=PROG, description="Tools for verl-commeff runs.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_report_parser(subparsers)
    add_study_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``verl-commeff`` console script.

    Args:
        argv: arguments without the program name; None = ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    from verl_commeff.report.errors import ReportError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ReportError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
