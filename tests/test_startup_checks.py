"""Checks before Ray starts: model dir, codec vs the model's config.json, data columns and lengths, K vs the run."""

import logging
import os
import subprocess
import sys

import pytest

from verl_commeff.config import CommEffConfigError
from verl_commeff.startup_checks import check_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compose(overrides=()):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl_commeff.conf", version_base=None):
        return compose(config_name="commeff_trainer", overrides=list(overrides))


def _good(model_dir, data_dir, *extra):
    """The cpu_tiny preset's inputs: tiny model (hidden 64, 4 layers), 64 training rows, batch 8 / mini-batch 4."""
    return [f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
            f"data.val_files={data_dir}/test.parquet", "data.train_batch_size=8",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4", "commeff.codec.rank=16", "commeff.codec.pp_size=2",
            "commeff.anchor.delay_k=2", "commeff.anchor.cadence=2", *extra]


def test_the_preset_inputs_pass(tiny_model_dir, gsm8k_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="verl_commeff"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "trainer.total_training_steps=3")))
    assert not caplog.records


def test_missing_model_dir_and_dir_without_config(tiny_model_dir, gsm8k_dir, tmp_path):
    with pytest.raises(CommEffConfigError, match=r"actor_rollout_ref.model.path='.*/nowhere/model' does not exist"):
        check_inputs(_compose(_good(str(tmp_path / "nowhere" / "model"), gsm8k_dir)))
    with pytest.raises(CommEffConfigError, match=r"has no config.json: not a Hugging Face model directory"):
        check_inputs(_compose(_good(str(tmp_path), gsm8k_dir)))


def test_codec_rank_above_the_models_hidden_size(tiny_model_dir, gsm8k_dir):
    with pytest.raises(CommEffConfigError, match=r"commeff.codec.rank=65 is out of range.*hidden_size=64"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "commeff.codec.rank=65")))
    with pytest.raises(CommEffConfigError, match=r"commeff.codec.pp_size=5 is out of range.*num_hidden_layers=4"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "commeff.codec.pp_size=5")))


def test_parquet_without_reward_columns_and_zero_response_length(tiny_model_dir, gsm8k_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(gsm8k_dir, "train.parquet"))
    pq.write_table(table.drop(["reward_model"]), tmp_path / "train.parquet")
    overrides = _good(tiny_model_dir, gsm8k_dir) + [f"data.train_files={tmp_path}/train.parquet"]
    with pytest.raises(CommEffConfigError, match=r"train.parquet has no column 'reward_model', needed by verl's reward"):
        check_inputs(_compose(overrides))
    check_inputs(_compose(overrides + ["reward.custom_reward_function.path=/some/reward.py"]))  # its own columns
    pq.write_table(pa.table({"question": ["1+1?"]}), tmp_path / "bare.parquet")
    with pytest.raises(CommEffConfigError, match=r"bare.parquet has no column 'prompt', needed by the prompt"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir) + [f"data.train_files={tmp_path}/bare.parquet"]))
    with pytest.raises(CommEffConfigError, match=r"data.max_response_length=0 is out of range: must be >= 1"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "data.max_response_length=0")))
    with pytest.raises(CommEffConfigError, match=r"data.val_files: .*missing.parquet does not exist"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir) + [f"data.val_files={tmp_path}/missing.parquet"]))


def test_k_past_the_run_warns(tiny_model_dir, gsm8k_dir, caplog):
    # 3 steps × 2 ticks = 6 ticks, K = 6: fires 2, 4, 6 all replay tick 1
    with caplog.at_level(logging.WARNING, logger="verl_commeff"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "trainer.total_training_steps=3",
                                    "commeff.anchor.delay_k=6")))
    assert len(caplog.records) == 1
    assert "delay_k=6 reaches past the run (3 steps x 2 ticks = 6 ticks): all 3 fires are warm-up" in caplog.text
    caplog.clear()
    # no total_training_steps: the length comes from the parquet (64 rows / 8 = 8 steps) × total_epochs=1 = 16 ticks
    with caplog.at_level(logging.WARNING, logger="verl_commeff"):
        check_inputs(_compose(_good(tiny_model_dir, gsm8k_dir, "trainer.total_epochs=1", "commeff.anchor.delay_k=16")))
    assert "(8 steps x 2 ticks = 16 ticks): all 8 fires" in caplog.text


def test_entry_point_fails_before_ray_on_a_rank_above_hidden_size(tiny_model_dir, gsm8k_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "verl_commeff.main", *_good(tiny_model_dir, gsm8k_dir, "commeff.codec.rank=65"),
           "trainer.device=cpu", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "commeff.codec.rank=65 is out of range" in out, out[-3000:]
    assert "Started a local Ray instance" not in out and "ray.init" not in out
