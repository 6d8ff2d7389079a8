"""verl finds the ``hf`` rollout through its own registries; unsupported options fail with clear errors."""

import pytest
import torch

from tests.rollout.common import compose
from verl_commeff.rollout.options import (
    UnsupportedRolloutOption,
    check_model_config,
    check_rollout_config,
    parse_sampling_params,
    response_budget,
)


def test_verl_registry_lookups_resolve_hf():
    import verl  # noqa: F401  -- the verl.plugins entry point registers the backend
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from verl_commeff.rollout.adapter import HFServerAdapter
    from verl_commeff.rollout.replica import HFReplica

    assert get_rollout_class("hf", "async") is HFServerAdapter
    assert get_rollout_replica_class("hf") is HFReplica


def test_verl_accepts_rollout_name_hf_and_the_backend_accepts_the_config(tiny_model_dir):
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    rollout = omega_conf_to_dataclass(compose(tiny_model_dir).actor_rollout_ref.rollout)
    assert isinstance(rollout, RolloutConfig) and rollout.name == "hf"
    check_rollout_config(rollout)
    check_model_config(compose(tiny_model_dir).actor_rollout_ref.model)


@pytest.mark.parametrize(
    "override, message",
    [
        ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "tensor_model_parallel_size=2"),
        ("actor_rollout_ref.rollout.data_parallel_size=2", "data_parallel_size=2"),
        ("actor_rollout_ref.rollout.quantization=fp8", "quantization"),
        ("actor_rollout_ref.rollout.enable_rollout_routing_replay=True", "router replay"),
        ("actor_rollout_ref.rollout.logprobs_mode=bogus", "logprobs_mode"),
        ("actor_rollout_ref.rollout.prometheus.enable=True", "prometheus"),
    ],
)
def test_unsupported_rollout_options_raise_naming_the_override(tiny_model_dir, override, message):
    config = compose(tiny_model_dir, override).actor_rollout_ref.rollout
    with pytest.raises(UnsupportedRolloutOption, match=message):
        check_rollout_config(config)


def test_verl_default_tensor_parallel_size_is_rejected_with_the_fix(tiny_model_dir):
    from tests.verl_harness import compose_ppo_config

    config = compose_ppo_config(tiny_model_dir, extra=("actor_rollout_ref.rollout.name=hf",)).actor_rollout_ref.rollout
    with pytest.raises(UnsupportedRolloutOption, match=r"tensor_model_parallel_size=2.*set it to 1"):
        check_rollout_config(config)


def test_lora_without_merge_is_rejected():
    check_model_config({"lora_rank": 8, "lora": {"merge": True}})
    with pytest.raises(UnsupportedRolloutOption, match="lora.merge=True"):
        check_model_config({"lora_rank": 8, "lora": {}})


def test_sampling_params_from_the_agent_loop():
    train = {"temperature": 0.8, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    spec, budget = parse_sampling_params(train)
    assert (spec.greedy, spec.temperature, spec.top_k, spec.top_p, spec.logprobs, budget) == (False, 0.8, 0, 0.9,
                                                                                               True, None)
    assert spec.generation_kwargs() == {"do_sample": True, "repetition_penalty": 1.0, "temperature": 0.8,
                                        "top_k": 0, "top_p": 0.9}
    validate = {**train, "temperature": 0, "top_k": -1, "top_p": 1.0}
    assert parse_sampling_params(validate)[0].greedy
    assert parse_sampling_params({**train, "do_sample": False})[0].generation_kwargs() == {
        "do_sample": False, "repetition_penalty": 1.0}
    assert parse_sampling_params({**train, "max_tokens": 7})[1] == 7
    with pytest.raises(UnsupportedRolloutOption, match="min_p"):
        parse_sampling_params({**train, "min_p": 0.1})


def test_response_budget_follows_verls_vllm_server_rule():
    assert response_budget(prompt_len=20, prompt_length=48, response_length=10, max_model_len=1024) == 10
    assert response_budget(prompt_len=53, prompt_length=48, response_length=10, max_model_len=1024) == 5
    assert response_budget(prompt_len=70, prompt_length=48, response_length=10, max_model_len=1024) == 1
    assert response_budget(prompt_len=20, prompt_length=48, response_length=10, max_model_len=25) == 5
    assert response_budget(prompt_len=20, prompt_length=48, response_length=10, max_model_len=1024, requested=3) == 3
    with pytest.raises(ValueError, match="no room"):
        response_budget(prompt_len=25, prompt_length=48, response_length=10, max_model_len=25)


def test_server_device_is_the_actor_ranks_device_among_the_visible_ones(monkeypatch):
    import verl  # noqa: F401

    from verl_commeff.rollout.server import generation_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert generation_device(None) == torch.device("cpu")  # the platform's device (CPU here)
    assert generation_device("3").index == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert generation_device("3").index == 1
    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        generation_device("5")
