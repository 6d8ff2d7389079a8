"""Reruns and resumes reproduce: the tiny CPU recipe with the same seed logs the same metrics, bit for bit.

The reference is the session's ``commeff_run`` (comm-eff recipe, K=0, cadence 1, STEPS steps,
validation every TEST_FREQ). A second run of the same command stops after step STOP with a
checkpoint and must log, step for step, what the reference logged; resumed from that
checkpoint to STEPS it must again log what the reference logged (anchor fires, merged
gradients' losses, Q, validation: every metric). Excluded from the comparison: measurements
of the machine (``timing_*``, ``perf/*``, memory, ``*_s``) and the rollout log-prob
diagnostics, which depend on how the hf server batched the requests (a batched forward is not
batch-invariant in the last bits; tokens are, see docs/reliability.md). Two runs in all.
"""

import pytest

from tests.e2e.conftest import CADENCE, K, STEPS, TEST_FREQ
from tests.e2e.harness import records, recipe_env, run

STOP = 4  # the stopped run's last step (a checkpoint); the resumed run continues to STEPS
# rollout-vs-actor log-prob diagnostics: training/rollout_probs_diff_*, training/rollout_actor_probs_pearson_corr, ...
ROLLOUT_LOGPROB_DIAGNOSTICS = ("training/rollout_", "rollout_corr/")


def is_compared(key: str) -> bool:
    measurement = key.startswith(("timing_s/", "timing_per_token_ms/", "perf/", "actor/perf/")) or key.endswith("_s")
    return not measurement and not key.startswith(ROLLOUT_LOGPROB_DIAGNOSTICS)


def differences(reference: dict, other: dict, steps) -> list:
    out = []
    for step in steps:
        ref = {k: v for k, v in reference[step].items() if is_compared(k)}
        got = {k: v for k, v in other[step].items() if is_compared(k)}
        out += [(step, key, ref.get(key), got.get(key)) for key in sorted(set(ref) | set(got)) if ref.get(key) != got.get(key)]
    return out


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory, learnable_preset):
    tmp = tmp_path_factory.mktemp("reproducible")
    ckpt = f"trainer.default_local_dir={tmp / 'ckpt'}"
    env = recipe_env(tmp, learnable_preset, "recipe", STEPS=STOP, TEST_FREQ=TEST_FREQ, K=K, CADENCE=CADENCE)
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, f"trainer.save_freq={STOP}"], env, tmp, "stopped")
    env = {**env, "STEPS": str(STEPS), "VERL_FILE_LOGGER_ROOT": str(tmp / "logs_resumed")}
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", ckpt, "trainer.resume_mode=auto", "trainer.val_before_train=False"],
        env, tmp, "resumed")
    return records(tmp, "recipe"), records(tmp, "recipe", logs="logs_resumed")


def test_a_rerun_with_the_same_seed_logs_identical_metrics(commeff_run, stopped_and_resumed):
    rerun, _ = stopped_and_resumed
    assert sorted(rerun) == list(range(0, STOP + 1))  # validation at 0, training steps 1..STOP
    assert len(rerun[1]) > 50 and rerun[STOP]["commeff/merger/merged_ticks"] >= 1  # the whole set, merger included
    # the stopped run also validates at its last step, which the reference does not: compare the reference's keys
    rerun = {**rerun, STOP: {k: v for k, v in rerun[STOP].items() if k in commeff_run[STOP]}}
    assert differences(commeff_run, rerun, range(0, STOP + 1)) == []


def test_a_resumed_run_logs_what_the_uninterrupted_run_logs(commeff_run, stopped_and_resumed):
    _, resumed = stopped_and_resumed
    assert sorted(resumed) == list(range(STOP + 1, STEPS + 1))
    assert resumed[STEPS]["commeff/anchor/fires_used"] > commeff_run[STOP]["commeff/anchor/fires_used"]
    assert differences(commeff_run, resumed, range(STOP + 1, STEPS + 1)) == []
