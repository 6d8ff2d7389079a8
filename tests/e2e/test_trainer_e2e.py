"""End to end on CPU: verl's real trainer entry point with the plugin, the anchor group and validation.

Runs the recipe the way a user does (``recipes/gsm8k_grpo_commeff.sh`` in its cpu_tiny
preset, a few steps), then reads the metrics verl's file logger wrote. A second case runs
the drop-in form: verl's own ``main_ppo`` with the documented overrides; a third the anchor
colocated with the actor (the GPU preset's default); a fourth loses its anchor mid-run
(``sync=free``); a fifth stops and resumes.
Each run costs about two minutes on 2 cores (Ray, TransferQueue and worker start-up).
"""

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from verl_commeff.schedule import FireSchedule

ROOT = Path(__file__).resolve().parents[2]
STEPS, TEST_FREQ, K, CADENCE, TICKS_PER_STEP = 4, 2, 2, 2, 2  # cpu_tiny: train batch 8, mini-batch 4

# every commeff/ metric a step with a fire must log (SPEC §6)
EXPECTED = {
    "commeff/tick", "commeff/anchor/fires", "commeff/anchor/fires_used", "commeff/anchor/backwards",
    "commeff/anchor/wait_s", "commeff/anchor/age", "commeff/merger/lambda", "commeff/merger/sign_agree",
    "commeff/merger/cold_ticks", "commeff/merger/merged_ticks", "commeff/merger/delta_ratio",
    "commeff/codec/recon_err/layer_1", "commeff/codec/q_cond/layer_1", "commeff/codec/q_updates",
    "commeff/bytes/codec_sent", "commeff/bytes/codec_dense", "commeff/bytes/q_bcast_sent",
    "commeff/bytes/anchor_sent", "commeff/bytes/ratio", "commeff/anchor/q_gap", "commeff/anchor/ema_updates",
    "commeff/anchor/failed_fires", "commeff/anchor/restarts",
}
Q_GAP_TOL = 1e-4  # anchor and actor compute the same orth(sketch): equal up to float rounding (a wrong Q: ~1)


def _env(tmp_path, exp):
    # the recipe calls `python3`: make it this interpreter (the project's venv), activated or not
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {**os.environ, "PATH": path, "PRESET": "cpu_tiny", "PRESET_DIR": str(tmp_path / "preset"), "STEPS": str(STEPS),
            "TEST_FREQ": str(TEST_FREQ), "K": str(K), "CADENCE": str(CADENCE), "EXP": exp, "PROJECT": "e2e",
            "VERL_FILE_LOGGER_ROOT": str(tmp_path / "logs"), "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd, env, tmp_path, name):
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
    assert code == 0, f"{name} failed ({code}):\n" + log.read_text()[-4000:]


def _records(tmp_path, exp):
    path = tmp_path / "logs" / "e2e" / f"{exp}.jsonl"
    return {row["step"]: row["data"] for row in map(json.loads, path.read_text().splitlines())}


def _check_commeff_run(records):
    train_steps = sorted(s for s, d in records.items() if "actor/pg_loss" in d)
    assert train_steps == list(range(1, STEPS + 1))  # the expected number of training steps ran

    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    last = records[STEPS]
    ticks = STEPS * TICKS_PER_STEP
    assert last["commeff/tick"] == ticks
    assert last["commeff/anchor/fires_used"] == schedule.fires_through(ticks)  # the anchor fired as scheduled
    assert last["commeff/anchor/backwards"] == schedule.fires_through(ticks)  # and really ran a backward each time
    assert last["commeff/anchor/fires"] == sum(len(schedule.fires_sourced_in_step(s)) for s in range(1, STEPS + 1))
    fire_steps = [s for s in train_steps if "commeff/anchor/age" in records[s]]
    assert all(records[s]["commeff/anchor/age"] == K for s in fire_steps[1:])  # strict: staleness exactly K
    _check_anchor_state(records)

    # the merger changed the gradients on merged ticks
    assert last["commeff/merger/merged_ticks"] == ticks - (CADENCE - 1)
    assert last["commeff/merger/cold_ticks"] == CADENCE - 1
    assert all(records[s]["commeff/merger/delta_ratio"] > 0 for s in train_steps[1:])

    # the codec was live on train (bytes compressed) and old-log-prob (the actor's old log-probs
    # differ from the unprojected rollout's), not on rollout/validation
    assert 0 < last["commeff/bytes/codec_sent"] < last["commeff/bytes/codec_dense"]
    assert last["training/rollout_probs_diff_max"] > 1e-5

    # validation was logged (before training and every TEST_FREQ steps)
    val = {s for s, d in records.items() if any(k.startswith("val-core/openai/gsm8k/") for k in d)}
    assert val == {0, *range(TEST_FREQ, STEPS + 1, TEST_FREQ)}

    # every commeff/ metric is present and finite
    for step in fire_steps:
        assert EXPECTED <= set(records[step]), EXPECTED - set(records[step])
    for step in train_steps:
        for key, value in records[step].items():
            if key.startswith("commeff/"):
                assert math.isfinite(value), (step, key, value)


def _check_anchor_state(records):
    """Every fire sketched against the actor's own Q, folded into one continuing EMA, and none failed."""
    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    for step, data in records.items():
        if "commeff/anchor/q_gap" not in data:
            continue
        tick = step * TICKS_PER_STEP
        assert data["commeff/anchor/q_gap"] < Q_GAP_TOL, (step, data["commeff/anchor/q_gap"])
        assert data["commeff/anchor/ema_updates"] == schedule.fires_through(tick)
        assert data["commeff/anchor/failed_fires"] == 0 and data["commeff/anchor/restarts"] == 0


def test_recipe_end_to_end(tmp_path):
    _run(["bash", "recipes/gsm8k_grpo_commeff.sh", "trainer.default_local_dir=" + str(tmp_path / "ckpt")],
         _env(tmp_path, "recipe"), tmp_path, "recipe")
    _check_commeff_run(_records(tmp_path, "recipe"))


def test_drop_in_on_verls_main_ppo(tmp_path):
    """The same run through `python -m verl.trainer.main_ppo` + trainer_mode=commeff + `+commeff.*` overrides."""
    env = _env(tmp_path, "dropin")
    dry = subprocess.run(["bash", "recipes/gsm8k_grpo_commeff.sh"], cwd=ROOT, env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout
    args = shlex.split(next(line for line in dry.splitlines() if "verl_commeff.main" in line))
    overrides = args[args.index("verl_commeff.main") + 1 :]
    overrides = [("+" + o if o.startswith("commeff.") else o) for o in overrides]
    subprocess.run([sys.executable, "-m", "verl_commeff.presets", "--out", env["PRESET_DIR"]], check=True, env=env)
    _run([sys.executable, "-m", "verl.trainer.main_ppo", *overrides, "trainer.v1.trainer_mode=commeff",
          "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "dropin")
    _check_commeff_run(_records(tmp_path, "dropin"))


def test_colocated_anchor_end_to_end(tmp_path):
    """placement=colocated (the GPU preset's default) runs on CPU: the anchor shares the actor's bundles."""
    env = {**_env(tmp_path, "colocated"), "STEPS": "3", "TEST_FREQ": "-1", "PLACEMENT": "colocated"}
    _run(["bash", "recipes/gsm8k_grpo_commeff.sh", "trainer.val_before_train=False",
          "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "colocated")
    records = _records(tmp_path, "colocated")
    assert sorted(records) == [1, 2, 3]
    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    for step, data in records.items():
        tick = step * TICKS_PER_STEP
        assert data["commeff/anchor/fires_used"] == data["commeff/anchor/backwards"] == schedule.fires_through(tick)
        if step > 1:
            assert data["commeff/anchor/age"] == K
    _check_anchor_state(records)


def test_free_sync_survives_a_dead_anchor_and_restarts_it(tmp_path):
    """sync=free: the anchor process exits at fire 6 (test-only fault hook); the run goes on to the end,
    counts the failed fire, rebuilds the anchor group once, and the new group delivers fires again."""
    env = {**_env(tmp_path, "dead_anchor"), "STEPS": "5", "TEST_FREQ": "-1", "SYNC": "free",
           "COMMEFF_TEST_ANCHOR_FAULT": "exit@6", "COMMEFF_TEST_ANCHOR_FAULT_GROUP": "commeff_anchor"}
    _run(["bash", "recipes/gsm8k_grpo_commeff.sh", "trainer.val_before_train=False",
          "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "dead_anchor")
    records = _records(tmp_path, "dead_anchor")
    assert sorted(records) == [1, 2, 3, 4, 5]  # the run went on (it used to end in Ray's ActorDiedError)
    failed = [s for s in records if records[s]["commeff/anchor/failed_fires"] > 0]
    first = min(failed)
    assert records[first]["commeff/anchor/restarts"] == 1 and records[5]["commeff/anchor/restarts"] == 1
    assert records[first - 1]["commeff/anchor/failed_fires"] == 0
    # the restarted group ran fires and the actor used them: a new EMA, on the actor's Q
    assert records[5]["commeff/anchor/backwards"] > records[first]["commeff/anchor/backwards"]
    assert records[5]["commeff/anchor/ema_updates"] < FireSchedule(K, CADENCE, TICKS_PER_STEP).fires_through(10)
    assert all(records[s]["commeff/anchor/q_gap"] < Q_GAP_TOL for s in records if "commeff/anchor/q_gap" in records[s])


def test_resume_continues_clock_anchor_and_q_exactly(tmp_path):
    """Stop after step 3 (checkpoint), resume to step 5: the run continues as an uninterrupted one would."""
    ckpt = "trainer.default_local_dir=" + str(tmp_path / "ckpt")
    first = {**_env(tmp_path, "resume"), "STEPS": "3", "TEST_FREQ": "-1"}
    _run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, "trainer.save_freq=3", "trainer.val_before_train=False"],
         first, tmp_path, "first")
    before = _records(tmp_path, "resume")
    second = {**first, "STEPS": "5", "VERL_FILE_LOGGER_ROOT": str(tmp_path / "logs2")}
    _run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, "trainer.resume_mode=auto", "trainer.val_before_train=False"],
         second, tmp_path, "second")
    path = tmp_path / "logs2" / "e2e" / "resume.jsonl"
    after = {row["step"]: row["data"] for row in map(json.loads, path.read_text().splitlines())}
    assert sorted(before) == [1, 2, 3] and sorted(after) == [4, 5]

    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    for step, data in {**before, **after}.items():
        tick = step * TICKS_PER_STEP
        assert data["commeff/tick"] == tick
        assert data["commeff/anchor/fires_used"] == schedule.fires_through(tick)
        assert data["commeff/anchor/backwards"] == schedule.fires_through(tick)  # the resubmitted fire ran too
        assert data["commeff/merger/merged_ticks"] == tick - (CADENCE - 1)
        # Q refreshed at every fire (q_source=anchor), live from the next step: the staged Q survived the stop
        assert data["commeff/codec/q_updates"] == schedule.q_refreshes_through((step - 1) * TICKS_PER_STEP)
        if step > 1:
            assert data["commeff/anchor/age"] == K
    # the anchor's side resumed too: its EMA continues (update count) and it sketches against the actor's
    # restored Q (q_gap), not a fresh EMA and the bootstrap Q
    _check_anchor_state({**before, **after})
