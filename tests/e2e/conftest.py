"""Session fixtures of the e2e tests: the shared learnable preset and the runs several tests read."""

import os
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, build_preset, records, recipe_env, run

# The comm-eff run both the machinery checks and the learning test read (cpu_tiny: 16 prompts per step,
# mini-batch 8 -> 2 ticks per step). K=0, cadence 1: a fire every tick on that tick's own mini-batch at its
# generator weights, the freshest anchor there is. On this preset a stale anchor (K >= 2) carries no usable
# signal (cos(G, M̄) ~ 0 at K=5) and signed_ema then stops learning: see docs/tiny_study.md.
STEPS, TEST_FREQ, K, CADENCE, TICKS_PER_STEP = 10, 5, 0, 1, 2


@pytest.fixture(scope="session")
def learnable_preset(tmp_path_factory):
    """Built once per session; COMMEFF_E2E_PRESET_DIR reuses a directory across sessions (the builder is a
    no-op when its settings stamp matches, so a rerun of one e2e test skips the warm start)."""
    reuse = os.environ.get("COMMEFF_E2E_PRESET_DIR")
    return build_preset(Path(reuse) if reuse else tmp_path_factory.mktemp("learnable_preset"))


@pytest.fixture(scope="session")
def commeff_run(tmp_path_factory, learnable_preset):
    """recipes/gsm8k_grpo_commeff.sh, K=0, cadence 1, separate anchor group, validation every TEST_FREQ steps."""
    tmp = tmp_path_factory.mktemp("commeff_run")
    env = recipe_env(tmp, learnable_preset, "recipe", STEPS=STEPS, TEST_FREQ=TEST_FREQ, K=K, CADENCE=CADENCE)
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", f"trainer.default_local_dir={tmp / 'ckpt'}"], env, tmp, "recipe")
    return records(tmp, "recipe")


@pytest.fixture(scope="session")
def floor_run(tmp_path_factory, learnable_preset):
    """The no-merger floor under the same schedule (MERGER=none, K=0, cadence 1), validated at its last step
    only (val@0 is the commeff_run's: same preset, same validation seeds)."""
    tmp = tmp_path_factory.mktemp("floor_run")
    env = recipe_env(tmp, learnable_preset, "floor", STEPS=STEPS, TEST_FREQ=STEPS, K=K, CADENCE=CADENCE, MERGER="none",
                     ADAPTIVE="off", PROBE="off")  # no dose, no probe: the anchor only fires and refreshes Q
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", f"trainer.default_local_dir={tmp / 'ckpt'}",
         "trainer.val_before_train=False"], env, tmp, "floor")
    return records(tmp, "floor")



def pytest_collection_modifyitems(items):
    """An e2e test's setup may build the session's preset (the warm start) before its own run: on a
    loaded 2-core machine that can pass pytest.ini's 900 s per test, so e2e tests get 1800 s."""
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.timeout(1800))


__all__ = ["ROOT", "STEPS", "TEST_FREQ", "K", "CADENCE", "TICKS_PER_STEP"]
