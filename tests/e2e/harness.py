"""Run the recipes the way a user does and read what verl's file logger wrote.

Every e2e run uses one learnable tiny preset (warm-started model + data), built once per
session by :func:`build_preset` with the same command the recipes run, so the runs start
from the same policy and the build is paid once. A run costs about two minutes on 2 cores
(Ray, TransferQueue and worker start-up, then a few seconds per step).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_preset(out: Path) -> Path:
    """The cpu_tiny preset (``python -m verl_commeff.presets``, warm start included) in ``out``."""
    subprocess.run([sys.executable, "-m", "verl_commeff.presets", "--out", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=1800)
    return out


def recipe_env(tmp_path: Path, preset: Path, exp: str, **knobs) -> dict:
    """Environment of a cpu_tiny recipe run: metrics in ``tmp_path/logs/e2e/<exp>.jsonl``; knobs are recipe knobs."""
    # the recipe calls `python3`: make it this interpreter (the project's venv), activated or not
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "PATH": path, "PRESET": "cpu_tiny", "PRESET_DIR": str(preset), "EXP": exp, "PROJECT": "e2e",
           "VERL_FILE_LOGGER_ROOT": str(tmp_path / "logs"), "TOKENIZERS_PARALLELISM": "false"}
    env.update({key: str(value) for key, value in knobs.items()})
    return env


def run(cmd: list, env: dict, tmp_path: Path, name: str) -> None:
    """Run ``cmd`` from the repository root; on failure show the log's tail."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
    assert code == 0, f"{name} failed ({code}):\n" + log.read_text()[-4000:]


def records(tmp_path: Path, exp: str, logs: str = "logs") -> dict[int, dict]:
    """step → metrics of run ``exp`` (verl's file logger, project ``e2e``)."""
    path = tmp_path / logs / "e2e" / f"{exp}.jsonl"
    return {row["step"]: row["data"] for row in map(json.loads, path.read_text().splitlines())}


def train_scores(recs: dict[int, dict]) -> list[float]:
    """The training reward (``critic/score/mean``) of every training step, in step order."""
    return [recs[s]["critic/score/mean"] for s in sorted(recs) if "critic/score/mean" in recs[s]]
