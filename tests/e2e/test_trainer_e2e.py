"""End to end on CPU: verl's real trainer entry point with the plugin, the anchor group and validation.

Runs the recipe the way a user does (``recipes/gsm8k_grpo_commeff.sh`` in its cpu_tiny
preset), then reads the metrics verl's file logger wrote (the run is the session's
``commeff_run``, which the learning test reads too). A second case runs the drop-in form:
verl's own ``main_ppo`` with the documented overrides, a third stops and resumes.
Each run costs about two minutes on 2 cores (Ray, TransferQueue and worker start-up).
"""

import math
import shlex
import subprocess
import sys

from tests.e2e.conftest import CADENCE, K, STEPS, TEST_FREQ, TICKS_PER_STEP
from tests.e2e.harness import records, recipe_env, run
from verl_commeff.schedule import FireSchedule

# every commeff/ metric a step with a fire must log (SPEC §6)
EXPECTED = {
    "commeff/tick", "commeff/anchor/fires", "commeff/anchor/fires_used", "commeff/anchor/backwards",
    "commeff/anchor/wait_s", "commeff/anchor/age", "commeff/merger/lambda", "commeff/merger/sign_agree",
    "commeff/merger/cold_ticks", "commeff/merger/merged_ticks", "commeff/merger/delta_ratio",
    "commeff/codec/recon_err/layer_1", "commeff/codec/q_cond/layer_1", "commeff/codec/q_updates",
    "commeff/bytes/codec/sent", "commeff/bytes/codec/dense_equiv", "commeff/bytes/q_bcast/sent",
    "commeff/bytes/anchor_m_bar/sent", "commeff/bytes/anchor_snapshot/sent", "commeff/bytes/anchor_minibatch/sent",
    "commeff/bytes/anchor_sketch/sent", "commeff/bytes/total/sent", "commeff/bytes/total/dense_equiv",
    "commeff/bytes/ratio",
}


def _check_commeff_run(records, steps=STEPS, test_freq=TEST_FREQ):
    train_steps = sorted(s for s, d in records.items() if "actor/pg_loss" in d)
    assert train_steps == list(range(1, steps + 1))  # the expected number of training steps ran

    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    last = records[steps]
    ticks = steps * TICKS_PER_STEP
    assert last["commeff/tick"] == ticks
    assert last["commeff/anchor/fires_used"] == schedule.fires_through(ticks)  # the anchor fired as scheduled
    assert last["commeff/anchor/backwards"] == schedule.fires_through(ticks)  # and really ran a backward each time
    assert last["commeff/anchor/fires"] == sum(len(schedule.fires_sourced_in_step(s)) for s in range(1, steps + 1))
    fire_steps = [s for s in train_steps if "commeff/anchor/age" in records[s]]
    assert all(records[s]["commeff/anchor/age"] == K for s in fire_steps[1:])  # strict: staleness exactly K

    # the merger changed the gradients on merged ticks
    assert last["commeff/merger/merged_ticks"] == ticks - (CADENCE - 1)
    assert last["commeff/merger/cold_ticks"] == CADENCE - 1
    assert all(records[s]["commeff/merger/delta_ratio"] > 0 for s in train_steps[1:])

    # the codec was live on train (bytes compressed) and old-log-prob (the actor's old log-probs
    # differ from the unprojected rollout's), not on rollout/validation
    assert 0 < last["commeff/bytes/codec/sent"] < last["commeff/bytes/codec/dense_equiv"]
    assert last["training/rollout_probs_diff_max"] > 1e-5

    # validation was logged (before training and every TEST_FREQ steps)
    val = {s for s, d in records.items() if any(k.startswith("val-core/openai/gsm8k/") for k in d)}
    assert val == {0, *range(test_freq, steps + 1, test_freq)}

    # every commeff/ metric is present and finite
    for step in fire_steps:
        assert EXPECTED <= set(records[step]), EXPECTED - set(records[step])
    for step in train_steps:
        for key, value in records[step].items():
            if key.startswith("commeff/"):
                assert math.isfinite(value), (step, key, value)


def test_recipe_end_to_end(commeff_run):
    _check_commeff_run(commeff_run)


def test_drop_in_on_verls_main_ppo(tmp_path, learnable_preset):
    """The same run through `python -m verl.trainer.main_ppo` + trainer_mode=commeff + `+commeff.*` overrides."""
    env = recipe_env(tmp_path, learnable_preset, "dropin", STEPS=4, TEST_FREQ=2, K=K, CADENCE=CADENCE)
    dry = subprocess.run(["bash", "recipes/gsm8k_grpo_commeff.sh"], cwd=ROOT, env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout
    args = shlex.split(next(line for line in dry.splitlines() if "verl_commeff.main" in line))
    overrides = args[args.index("verl_commeff.main") + 1 :]
    overrides = [("+" + o if o.startswith("commeff.") else o) for o in overrides]
    run([sys.executable, "-m", "verl.trainer.main_ppo", *overrides, "trainer.v1.trainer_mode=commeff",
         "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "dropin")
    _check_commeff_run(records(tmp_path, "dropin"), steps=4, test_freq=2)


def test_resume_continues_clock_anchor_and_q_exactly(tmp_path, learnable_preset):
    """Stop after step 3 (checkpoint), resume to step 5: the run continues as an uninterrupted one would."""
    ckpt = "trainer.default_local_dir=" + str(tmp_path / "ckpt")
    first = recipe_env(tmp_path, learnable_preset, "resume", STEPS=3, TEST_FREQ=-1, K=K, CADENCE=CADENCE)
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, "trainer.save_freq=3", "trainer.val_before_train=False"],
         first, tmp_path, "first")
    before = records(tmp_path, "resume")
    second = {**first, "STEPS": "5", "VERL_FILE_LOGGER_ROOT": str(tmp_path / "logs2")}
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, "trainer.resume_mode=auto", "trainer.val_before_train=False"],
         second, tmp_path, "second")
    after = records(tmp_path, "resume", logs="logs2")
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
