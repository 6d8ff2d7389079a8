"""Warm start: answer styles as the reward reads them, knob validation, the target check and the cache."""

import json

import pytest
from verl.utils.reward_score.gsm8k import compute_score

from verl_commeff.presets.gsm8k_synth import DIFFICULTIES
from verl_commeff.presets.warm_start import SUMMARY_FILE, WarmStartConfig, prose_answer, warm_start


def test_prose_answers_score_zero_under_verls_strict_gsm8k_reward():
    solution = "3 + 4 = 7. 7 - 2 = 5.\n#### 5"
    assert compute_score(solution, "5") == 1.0
    prose = prose_answer(solution)
    assert prose == "3 + 4 = 7. 7 - 2 = 5.\nThe answer is 5."
    assert compute_score(prose, "5") == 0  # right answer, wrong format: what GRPO can learn to fix


@pytest.mark.parametrize("kwargs, field", [({"target_accuracy": 0.0}, "target_accuracy"), ({"max_steps": 0}, "max_steps"),
                                           ({"lr": -1.0}, "lr"), ({"gsm8k_format_share": 1.2}, "gsm8k_format_share")])
def test_bad_knobs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WarmStartConfig(**kwargs)


def test_unreached_target_is_an_error_and_writes_nothing(tiny_model_dir, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    cfg = WarmStartConfig(target_accuracy=1.0, max_steps=2, eval_every=1, batch_size=2, n_eval=4)
    with pytest.raises(RuntimeError, match="did not reach sampled accuracy 1.0 within 2 steps"):
        warm_start(str(model), DIFFICULTIES["tiny_rl"], cfg, progress=False)
    assert not (model / SUMMARY_FILE).exists()


def test_a_summary_with_the_same_settings_is_a_cache_hit(tiny_model_dir, tmp_path):
    import dataclasses
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    cfg, difficulty = WarmStartConfig(), DIFFICULTIES["tiny_rl"]
    settings = {"difficulty": dataclasses.asdict(difficulty), "config": dataclasses.asdict(cfg)}
    (model / SUMMARY_FILE).write_text(json.dumps({"settings": settings, "steps": 123}))
    weights = (model / "model.safetensors").read_bytes()
    assert warm_start(str(model), difficulty, cfg, progress=False)["steps"] == 123  # no training ran
    assert (model / "model.safetensors").read_bytes() == weights
