"""Shared fixtures: the tiny local model and data (built once per session, no downloads)."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from verl_commeff.presets.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen2")))


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory):
    from verl_commeff.presets.gsm8k_synth import write_gsm8k_parquet

    out = str(tmp_path_factory.mktemp("gsm8k"))
    write_gsm8k_parquet(out, n_train=64, n_test=16)
    return out
