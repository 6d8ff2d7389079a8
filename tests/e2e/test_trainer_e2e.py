"""End to end on CPU: verl's real trainer entry point with the plugin, the anchor group and validation.

Runs the recipe the way a user does (``recipes/gsm8k_grpo_commeff.sh`` in its cpu_tiny
preset), then reads the metrics verl's file logger wrote (the run is the session's
``commeff_run``, which the learning test reads too). A second case runs the drop-in form:
verl's own ``main_ppo`` with the documented overrides, with the anchor colocated with the
actor (the GPU preset's default); a third loses its anchor mid-run (``sync=free``). Stop and
resume: test_reproducible_e2e.py.
Each run costs about two minutes on 2 cores (Ray, TransferQueue and worker start-up).
"""

import math
import shlex
import subprocess
import sys

from tests.e2e.conftest import CADENCE, K, STEPS, TEST_FREQ, TICKS_PER_STEP
from tests.e2e.harness import ROOT, recipe_env, run
from tests.e2e.harness import records as read_records
from verl_commeff.schedule import FireSchedule

DEAD_K, DEAD_CADENCE = 2, 2  # the dead-anchor case: a fire every other tick, some of them in flight at the death
BACKWARDS_PER_FIRE = 2  # cpu_tiny: a mini-batch of 8 prompts × n=8 = 64 samples in micro-batches of 32

# every commeff/ metric a step with a fire must log (SPEC §6)
EXPECTED = {
    "commeff/tick", "commeff/anchor/fires", "commeff/anchor/fires_used", "commeff/anchor/backwards",
    "commeff/anchor/wait_s", "commeff/anchor/fetch_s", "commeff/anchor/snapshot_s", "commeff/anchor/age",
    "commeff/merger/lambda", "commeff/merger/sign_agree",
    "commeff/merger/cold_ticks", "commeff/merger/merged_ticks", "commeff/merger/delta_ratio",
    "commeff/codec/recon_err/layer_1", "commeff/codec/q_cond/layer_1", "commeff/codec/q_updates",
    "commeff/bytes/codec/sent", "commeff/bytes/codec/dense_equiv", "commeff/bytes/q_bcast/sent",
    "commeff/bytes/anchor_m_bar/sent", "commeff/bytes/anchor_snapshot/sent", "commeff/bytes/anchor_minibatch/sent",
    "commeff/bytes/anchor_sketch/sent", "commeff/bytes/total/sent", "commeff/bytes/total/dense_equiv",
    "commeff/bytes/ratio",
    "commeff/anchor/q_gap", "commeff/anchor/ema_updates", "commeff/anchor/failed_fires", "commeff/anchor/restarts",
}
Q_GAP_TOL = 1e-4  # anchor and actor compute the same orth(sketch): equal up to float rounding (a wrong Q: ~1)


def backwards_per_fire(records) -> int:
    """Backward passes per fire: the dense one per micro-batch, and as many again when the dose probe ran
    (the default evidence dose turns it on; it logs commeff/dose/*)."""
    probe = any("commeff/dose/cos_codec" in d for d in records.values())
    return BACKWARDS_PER_FIRE * (2 if probe else 1)


def _check_commeff_run(records, steps=STEPS, test_freq=TEST_FREQ):
    train_steps = sorted(s for s, d in records.items() if "actor/pg_loss" in d)
    assert train_steps == list(range(1, steps + 1))  # the expected number of training steps ran

    schedule = FireSchedule(K, CADENCE, TICKS_PER_STEP)
    last = records[steps]
    ticks = steps * TICKS_PER_STEP
    assert last["commeff/tick"] == ticks
    assert last["commeff/anchor/fires_used"] == schedule.fires_through(ticks)  # the anchor fired as scheduled
    # and really ran its backward passes (counted on the loss, one per micro-batch; the dose probe runs a second pass)
    assert last["commeff/anchor/backwards"] == backwards_per_fire(records) * schedule.fires_through(ticks)
    assert last["commeff/anchor/fires"] == sum(len(schedule.fires_sourced_in_step(s)) for s in range(1, steps + 1))
    fire_steps = [s for s in train_steps if "commeff/anchor/age" in records[s]]
    assert all(records[s]["commeff/anchor/age"] == K for s in fire_steps[1:])  # strict: staleness exactly K
    _check_anchor_state(records)

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


def test_recipe_end_to_end(commeff_run):
    _check_commeff_run(commeff_run)
    _check_anchor_state(commeff_run)


def test_drop_in_on_verls_main_ppo(tmp_path, learnable_preset):
    """The same run through `python -m verl.trainer.main_ppo` + trainer_mode=commeff + `+commeff.*` overrides."""
    env = recipe_env(tmp_path, learnable_preset, "dropin", STEPS=4, TEST_FREQ=2, K=K, CADENCE=CADENCE,
                     PLACEMENT="colocated")  # the anchor shares the actor's bundles (it used to hang on CPU)
    dry = subprocess.run(["bash", "recipes/gsm8k_grpo_commeff.sh"], cwd=ROOT, env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout
    args = shlex.split(next(line for line in dry.splitlines() if "verl_commeff.main" in line))
    overrides = args[args.index("verl_commeff.main") + 1 :]
    overrides = [("+" + o if o.startswith("commeff.") else o) for o in overrides]
    run([sys.executable, "-m", "verl.trainer.main_ppo", *overrides, "trainer.v1.trainer_mode=commeff",
         "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "dropin")
    dropin = read_records(tmp_path, "dropin")
    _check_commeff_run(dropin, steps=4, test_freq=2)
    _check_anchor_state(dropin)


def test_free_sync_survives_a_dead_anchor_and_restarts_it(tmp_path, learnable_preset):
    """sync=free: the anchor process exits at fire 6 (test-only fault hook); the run goes on to the end,
    counts the failed fire, rebuilds the anchor group once, and the new group delivers fires again,
    continuing the old group's M̄ EMA (backed up after fire 4, the last one the anchor finished)."""
    env = recipe_env(tmp_path, learnable_preset, "dead_anchor", STEPS=5, TEST_FREQ=-1, K=DEAD_K, CADENCE=DEAD_CADENCE,
                     SYNC="free", ADAPTIVE="off",  # the evidence dose needs sync=strict
                     COMMEFF_TEST_ANCHOR_FAULT="exit@6", COMMEFF_TEST_ANCHOR_FAULT_GROUP="commeff_anchor")
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", "trainer.val_before_train=False",
          "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "dead_anchor")
    records = read_records(tmp_path, "dead_anchor")
    assert sorted(records) == [1, 2, 3, 4, 5]  # the run went on (it used to end in Ray's ActorDiedError)
    failed = [s for s in records if records[s]["commeff/anchor/failed_fires"] > 0]
    first = min(failed)
    assert records[first]["commeff/anchor/restarts"] == 1 and records[5]["commeff/anchor/restarts"] == 1
    assert records[first - 1]["commeff/anchor/failed_fires"] == 0
    # the restarted group ran fires and the actor used them, on the actor's Q
    assert records[5]["commeff/anchor/backwards"] > records[first]["commeff/anchor/backwards"]
    # its EMA continued: every fire but the failed one is folded in (a fresh EMA would count from 1 again)
    fires = FireSchedule(DEAD_K, DEAD_CADENCE, TICKS_PER_STEP).fires_through(10)
    assert records[5]["commeff/anchor/ema_updates"] == fires - records[5]["commeff/anchor/failed_fires"] == fires - 1
    assert all(records[s]["commeff/anchor/q_gap"] < Q_GAP_TOL for s in records if "commeff/anchor/q_gap" in records[s])


def test_one_anchor_rank_serves_two_actor_ranks(tmp_path, learnable_preset):
    """NGPUS=2, ANCHOR_NGPUS=1 (placement=separate): one anchor process reshards the 2 actor ranks' FSDP2
    snapshots and sends each its own M̄ shard; every fire arrives and is merged, staleness exactly K, and
    the actor's cross-rank check (every tick) finds each rank's held M̄ equal to the anchor's fingerprint of it."""
    steps = 3
    env = recipe_env(tmp_path, learnable_preset, "small_anchor", STEPS=steps, TEST_FREQ=-1, K=K, CADENCE=CADENCE,
                     NGPUS=2, ANCHOR_NGPUS=1)
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", "trainer.val_before_train=False", "commeff.merger.checksum_every=1",
         "trainer.default_local_dir=" + str(tmp_path / "ckpt")], env, tmp_path, "small_anchor")
    records = read_records(tmp_path, "small_anchor")
    assert sorted(s for s, d in records.items() if "actor/pg_loss" in d) == list(range(1, steps + 1))
    schedule, ticks = FireSchedule(K, CADENCE, TICKS_PER_STEP), steps * TICKS_PER_STEP
    last = records[steps]
    assert last["commeff/tick"] == ticks
    assert last["commeff/anchor/fires_used"] == schedule.fires_through(ticks)
    # the one anchor rank runs the whole mini-batch: 64 samples in micro-batches of 32, as with NGPUS=1
    assert last["commeff/anchor/backwards"] == backwards_per_fire(records) * schedule.fires_through(ticks)
    assert last["commeff/merger/merged_ticks"] == ticks - (CADENCE - 1)
    for step in range(1, steps + 1):
        assert records[step]["commeff/merger/inputs_identical"] == 1.0, step
        assert records[step]["commeff/anchor/age"] == K and records[step]["commeff/bytes/anchor_m_bar/sent"] > 0
    _check_anchor_state(records)
