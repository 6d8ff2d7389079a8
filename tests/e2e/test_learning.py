"""The method's effect is visible and guarded, by arms run in the same session on the learnable tiny preset.

The warm-started tiny policy solves part of the generated problems but often answers in prose, which
verl's strict GSM8K reward scores 0 (``verl_commeff/presets/warm_start.py``); GRPO learns the ``#### n``
format (and some arithmetic) within ten steps. One run's training-reward gain over ten steps is within
this preset's seed-to-seed spread (16 prompts a step: the step-to-step swing is ±0.1, and it differs by
machine, docs/tiny_study.md), so no test holds a run to an absolute reward threshold. Instead the tests
compare arms of the same session, which share the preset, the prompt order and the sampling seeds:

- the no-merger floor (``floor_run``: MERGER=none under the same schedule) learns: its validation
  accuracy (128 problems × 2 samples, about ±0.03) rises over the ten steps;
- the default comm-eff arm (``commeff_run``: the recipe's defaults at K=0, cadence 1) is not worse than
  the floor, by validation at step 10 and by the mean training reward over the run;
- sensitivity: ``signed_ema_flipped`` (tests/e2e/flipped_merger.py) is signed_ema at full dose fed −M̄,
  a merger that pushes every coordinate the wrong way. It must end clearly below the floor, which proves
  these comparisons would catch a merger that does harm.

val@0 is the same for every arm (same preset, same validation seeds), so it is read from ``commeff_run``.
"""

import os
import statistics

import pytest

from tests.e2e.conftest import CADENCE, K, STEPS
from tests.e2e.harness import ROOT, records, recipe_env, run, train_scores

VAL = "val-core/openai/gsm8k/acc/mean@2"
MIN_VAL_GAIN = 0.05  # the floor's val@STEPS over val@0 (dense gained 0.12-0.18 by step 10 over three seeds here)
TOLERANCE = 0.08  # the default may trail the floor by at most this (about 2σ of a difference of two val@k)
HARM = 0.1  # the flipped merger must trail the floor by at least this
LAST = 5  # steps averaged at the end of a run


@pytest.fixture(scope="session")
def flipped_run(tmp_path_factory, learnable_preset):
    """The comm-eff run with the flipped-sign merger at full dose, reaching verl's processes through
    VERL_USE_EXTERNAL_MODULES; validated at its last step."""
    tmp = tmp_path_factory.mktemp("flipped_run")
    env = recipe_env(tmp, learnable_preset, "flipped", STEPS=STEPS, TEST_FREQ=STEPS, K=K, CADENCE=CADENCE,
                     MERGER="signed_ema_flipped", ADAPTIVE="off", PROBE="off",
                     VERL_USE_EXTERNAL_MODULES="tests.e2e.flipped_merger",
                     PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", f"trainer.default_local_dir={tmp / 'ckpt'}",
         "trainer.val_before_train=False"], env, tmp, "flipped")
    return records(tmp, "flipped")


def val_at(recs: dict, step: int) -> float:
    return recs[step][VAL]


def test_grpo_learns_without_a_merger(floor_run, commeff_run):
    assert len(train_scores(floor_run)) == STEPS
    assert val_at(floor_run, STEPS) >= val_at(commeff_run, 0) + MIN_VAL_GAIN, (val_at(commeff_run, 0), val_at(floor_run, STEPS))


def test_the_default_arm_is_not_worse_than_no_merger(commeff_run, floor_run):
    scores, floor = train_scores(commeff_run), train_scores(floor_run)
    assert len(scores) == STEPS
    assert commeff_run[STEPS]["commeff/merger/merged_ticks"] > 0  # the merger was in the loop
    assert val_at(commeff_run, STEPS) >= val_at(floor_run, STEPS) - TOLERANCE, (val_at(commeff_run, STEPS),
                                                                              val_at(floor_run, STEPS))
    assert statistics.fmean(scores) >= statistics.fmean(floor) - TOLERANCE, (scores, floor)


def test_a_wrong_sign_merger_learns_measurably_worse(commeff_run, floor_run, flipped_run):
    flipped, floor = train_scores(flipped_run), train_scores(floor_run)
    assert len(flipped) == STEPS
    assert flipped_run[STEPS]["commeff/merger/merged_ticks"] == commeff_run[STEPS]["commeff/merger/merged_ticks"]
    assert flipped_run[STEPS]["commeff/merger/lambda"] == 1.0  # full dose: the wrong sign really reached G
    # same start (same preset, same first rollouts), clearly worse end
    assert val_at(flipped_run, STEPS) <= val_at(floor_run, STEPS) - HARM, (val_at(flipped_run, STEPS),
                                                                          val_at(floor_run, STEPS))
    assert statistics.fmean(flipped[-LAST:]) <= statistics.fmean(floor[-LAST:]) - HARM, (floor, flipped)
