"""The recipes' commands compose into valid configs (verl's schema + the commeff node), without running."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _dry_run(recipe, env=(), args=()):
    out = subprocess.run(["bash", str(RECIPES / recipe), *args], env={**os.environ, "DRY_RUN": "1", **dict(env)},
                         capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "verl_commeff.main" in line]
    assert commands, out
    return [cmd[cmd.index("verl_commeff.main") + 1 :] for cmd in commands]


def _composed(overrides):
    from hydra import compose, initialize_config_module

    from verl_commeff.config import to_commeff_config
    from verl_commeff.main import check_config

    with initialize_config_module(config_module="verl_commeff.conf", version_base=None):
        cfg = compose(config_name="commeff_trainer", overrides=overrides)
    check_config(cfg)
    return cfg, to_commeff_config(cfg.commeff)


def test_commeff_recipe_is_the_locked_surface_with_the_k5_arm():
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh")
    cfg, commeff = _composed(overrides)
    assert cfg.data.train_batch_size == 128 and cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 64
    assert cfg.actor_rollout_ref.rollout.n == 8 and cfg.actor_rollout_ref.actor.optim.lr == 1e-6
    assert cfg.data.max_response_length == 2048 and cfg.trainer.test_freq == 25
    assert not cfg.actor_rollout_ref.actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward
    assert cfg.actor_rollout_ref.actor.entropy_coeff == 0 and cfg.trainer.total_training_steps == 50
    assert (commeff.anchor.delay_k, commeff.anchor.cadence, commeff.codec.rank, commeff.codec.pp_size) == (5, 5, 77, 8)
    assert (commeff.merger.name, commeff.merger.alpha, commeff.anchor.beta) == ("signed_ema", 0.25, 0.5)


def test_knobs_and_extra_overrides_reach_the_config():
    env = {"K": "20", "CADENCE": "20", "STEPS": "100", "MU": "0.9", "SYNC": "free", "ROLLOUT": "hf"}
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", env, ["commeff.merger.adaptive.mode=ratio"])
    cfg, commeff = _composed(overrides)
    assert (commeff.anchor.delay_k, commeff.anchor.cadence, commeff.merger.age_decay) == (20, 20, 0.9)
    assert commeff.anchor.sync == "free" and commeff.merger.adaptive.mode == "ratio"
    assert cfg.trainer.total_training_steps == 100 and cfg.actor_rollout_ref.rollout.name == "hf"


def test_dp_codec_knob_turns_on_powersgd_across_hsdp_replicas():
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh")
    cfg, commeff = _composed(overrides)
    assert not commeff.dp_codec.enable and cfg.actor_rollout_ref.actor.fsdp_config.fsdp_size == -1
    env = {"DP_CODEC": "1", "FSDP_SIZE": "2", "DP_RANK": "32", "DP_START": "4"}
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", env)
    cfg, commeff = _composed(overrides)
    assert commeff.dp_codec.enable and (commeff.dp_codec.rank, commeff.dp_codec.start_iter) == (32, 4)
    assert cfg.actor_rollout_ref.actor.fsdp_config.fsdp_size == 2
    bad = subprocess.run(["bash", str(RECIPES / "gsm8k_grpo_commeff.sh")], env={**os.environ, "DRY_RUN": "1", "DP_CODEC": "yes"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "DP_CODEC must be 0 or 1" in bad.stderr


def test_dense_recipe_with_dp_codec_runs_only_the_dp_codec():
    (overrides,) = _dry_run("gsm8k_grpo_dense.sh")
    assert not _composed(overrides)[1].enable  # the plugin off: verl's stock actor
    env = {"DP_CODEC": "1", "FSDP_SIZE": "2", "DP_PARAMS": "all_2d", "DP_RANK": "16", "DP_EMBED_RANK": "8",
           "DP_PRECISION": "bf16", "SEED": "3"}
    (overrides,) = _dry_run("gsm8k_grpo_dense.sh", env)
    cfg, commeff = _composed(overrides)
    assert commeff.enable and not commeff.codec.enable and not commeff.anchor.enable and commeff.merger.name == "none"
    dp = commeff.dp_codec
    assert dp.enable and (dp.params, dp.rank, dp.embedding_rank, dp.factor_precision, dp.seed) == ("all_2d", 16, 8, "bf16", 3)
    assert cfg.trainer.experiment_name == "dense_dp_codec"


def test_cpu_tiny_ngpus_knob_makes_two_replicas_with_a_mirrored_anchor():
    base = {"PRESET": "cpu_tiny", "PRESET_DIR": "/nonexistent"}  # dry run: the preset is not built
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", base)
    cfg, commeff = _composed(overrides)
    assert cfg.trainer.n_gpus_per_node == 1 and commeff.anchor.n_gpus_per_node == 1  # the default: one process
    env = {**base, "NGPUS": "2", "FSDP_SIZE": "1", "DP_CODEC": "1"}
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", env)
    cfg, commeff = _composed(overrides)
    assert cfg.trainer.n_gpus_per_node == 2 and commeff.anchor.n_gpus_per_node == 2
    assert commeff.anchor.placement == "separate" and cfg.actor_rollout_ref.actor.fsdp_config.fsdp_size == 1
    assert commeff.dp_codec.enable


def test_dense_recipe_turns_the_plugin_off():
    (overrides,) = _dry_run("gsm8k_grpo_dense.sh")
    cfg, commeff = _composed(overrides)
    assert not commeff.enable and cfg.trainer.experiment_name == "dense"


def test_decoupling_grid_runs_the_four_cells():
    cells = [_composed(o)[1] for o in _dry_run("decoupling_grid.sh")]
    assert [(c.anchor.delay_k, c.anchor.cadence) for c in cells] == [(5, 5), (20, 5), (5, 20), (20, 20)]
    assert all(c.q_cadence == c.anchor.cadence for c in cells)


def test_decoupling_grid_refuses_an_unknown_cell():
    result = subprocess.run(["bash", str(RECIPES / "decoupling_grid.sh")], env={**os.environ, "DRY_RUN": "1",
                            "CELLS": "E"}, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown cell 'E'" in result.stderr


def test_dp_codec_study_runs_each_arm_per_seed_on_two_replicas(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "REPORT": "0", "OUT": str(tmp_path), "ARMS": "dense a_r1_bf16", "SEEDS": "0 1"}
    subprocess.run(["bash", str(RECIPES / "dp_codec_study.sh")], env=env, capture_output=True, text=True, check=True)
    for seed in (0, 1):
        runs = {}
        for arm in ("dense", "a_r1_bf16"):
            log = (tmp_path / f"{arm}_s{seed}.log").read_text().splitlines()
            line = next(l for l in log if l.startswith("python3 -m verl_commeff.main"))  # not set -x traces
            cmd = shlex.split(line.split("+ echo")[0])  # the trace of the recipe's echo shares the line
            runs[arm] = _composed(cmd[cmd.index("verl_commeff.main") + 1 :])
        dense_cfg, dense = runs["dense"]
        cfg, commeff = runs["a_r1_bf16"]
        assert not dense.enable and commeff.dp_codec.enable and not commeff.anchor.enable
        dp = commeff.dp_codec
        assert (dp.params, dp.rank, dp.factor_precision, dp.start_iter, dp.seed) == ("all_2d", 1, "bf16", 0, seed)
        for c in (dense_cfg, cfg):
            assert c.trainer.n_gpus_per_node == 2 and c.actor_rollout_ref.actor.fsdp_config.fsdp_size == 1
            assert c.data.seed == 42 + seed and c.trainer.total_training_steps == 20 and c.trainer.test_freq == 5
    bad = subprocess.run(["bash", str(RECIPES / "dp_codec_study.sh")], env={**env, "ARMS": "dense nope"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown arm 'nope'" in bad.stderr


def test_seed_codec_rank_and_pp_size_knobs_reach_the_config():
    base = {"PRESET": "cpu_tiny", "PRESET_DIR": "/nonexistent"}
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", base)
    cfg, commeff = _composed(overrides)
    # SEED=0 (the default) is what the recipes always ran: data.seed 42, verl's rollout.seed 42, codec seed 0
    assert (cfg.data.seed, cfg.actor_rollout_ref.rollout.seed, commeff.codec.seed) == (42, 42, 0)
    assert (commeff.codec.rank, commeff.codec.pp_size) == (16, 2)
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", {**base, "SEED": "3", "CODEC_RANK": "1", "PP_SIZE": "4",
                                                     "RANK": "7"})  # a launcher's RANK is never read
    cfg, commeff = _composed(overrides)
    assert (cfg.data.seed, cfg.actor_rollout_ref.rollout.seed, commeff.codec.seed) == (45, 45, 3)
    assert (commeff.codec.rank, commeff.codec.pp_size) == (1, 4)
    for knob, value, message in (("SEED", "-1", "SEED must be an integer >= 0, got '-1'"),
                                 ("CODEC_RANK", "0", "CODEC_RANK must be an integer >= 1, got '0'"),
                                 ("PP_SIZE", "1", "PP_SIZE must be an integer >= 2, got '1'"),
                                 ("SEED", "08", "SEED must be an integer >= 0, got '08'")):
        bad = subprocess.run(["bash", str(RECIPES / "gsm8k_grpo_commeff.sh")],
                             env={**os.environ, **base, "DRY_RUN": "1", knob: value}, capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, (knob, value, bad.stderr[-300:])


def test_the_default_dose_is_the_evidence_dose_and_adaptive_off_is_the_seeds_arm():
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh")
    _, commeff = _composed(overrides)
    assert (commeff.merger.adaptive.mode, commeff.merger.adaptive.cap, commeff.anchor.probe) == ("evidence", 4 / 3, "on")
    (overrides,) = _dry_run("gsm8k_grpo_commeff.sh", {"ADAPTIVE": "off"})
    _, seed = _composed(overrides)
    assert (seed.merger.adaptive.mode, seed.merger.adaptive.lambda0, seed.merger.adaptive.cap) == ("off", 1.0, 1.0)
    assert seed.anchor.probe == "off"
    assert all(c.merger.adaptive.mode == "off" for c in (_composed(o)[1] for o in _dry_run("decoupling_grid.sh")))
