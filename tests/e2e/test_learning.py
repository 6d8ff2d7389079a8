"""The method's effect is visible: GRPO learns on the learnable tiny preset, and a broken merger would show.

The warm-started tiny policy solves part of the generated problems but often answers in prose,
which verl's strict GSM8K reward scores 0 (``verl_commeff/presets/warm_start.py``); GRPO learns
the ``#### n`` format (and some arithmetic) within ten steps. The assertions compare the mean
training reward of the first and the last steps of each run (16 prompts x 8 responses per step:
a 3-step mean has a standard error of about 0.02, so a gain of 0.1 is well clear of noise).
The comm-eff arm is the session's ``commeff_run`` with the freshest anchor (K=0, cadence 1); with a
stale one (K=5) signed_ema does not learn on this preset (docs/tiny_study.md), a published result,
not something this test hides: a test of learning at K=5 would assert the opposite.

Sensitivity: ``signed_ema_flipped`` (tests/e2e/flipped_merger.py) is signed_ema fed −M̄, i.e. a
merger that takes the wrong sign. It must learn measurably worse than the real merger under the
same schedule, which proves these tests would catch a merger that pushes the gradient the wrong way.
"""

import os
import statistics

import pytest

from tests.e2e.conftest import CADENCE, K, STEPS
from tests.e2e.harness import ROOT, records, recipe_env, run, train_scores

WINDOW = 3  # steps averaged at each end of a run
MIN_GAIN = 0.1  # training reward gain (absolute) a learning run must show between the ends


def gain(scores: list[float]) -> float:
    return statistics.fmean(scores[-WINDOW:]) - statistics.fmean(scores[:WINDOW])


@pytest.fixture(scope="session")
def flipped_run(tmp_path_factory, learnable_preset):
    """The comm-eff run with the flipped-sign merger, reaching verl's processes through VERL_USE_EXTERNAL_MODULES."""
    tmp = tmp_path_factory.mktemp("flipped_run")
    env = recipe_env(tmp, learnable_preset, "flipped", STEPS=STEPS, TEST_FREQ=-1, K=K, CADENCE=CADENCE,
                     MERGER="signed_ema_flipped", VERL_USE_EXTERNAL_MODULES="tests.e2e.flipped_merger",
                     PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", f"trainer.default_local_dir={tmp / 'ckpt'}",
         "trainer.val_before_train=False"], env, tmp, "flipped")
    return records(tmp, "flipped")


def test_dense_arm_learns(dense_run):
    scores = train_scores(dense_run)
    assert len(scores) == STEPS
    assert gain(scores) >= MIN_GAIN, scores


def test_commeff_arm_learns(commeff_run):
    scores = train_scores(commeff_run)
    assert len(scores) == STEPS
    assert gain(scores) >= MIN_GAIN, scores
    assert commeff_run[STEPS]["commeff/merger/merged_ticks"] > 0  # the merger was in the loop while it learned


def test_a_wrong_sign_merger_learns_measurably_worse(commeff_run, flipped_run):
    real, flipped = train_scores(commeff_run), train_scores(flipped_run)
    assert len(flipped) == STEPS
    assert flipped_run[STEPS]["commeff/merger/merged_ticks"] == commeff_run[STEPS]["commeff/merger/merged_ticks"]
    # same start (same preset, same first rollouts' distribution), clearly worse end
    assert statistics.fmean(flipped[-WINDOW:]) <= statistics.fmean(real[-WINDOW:]) - 0.1, (real, flipped)
    assert gain(flipped) < gain(real) - 0.1, (real, flipped)
