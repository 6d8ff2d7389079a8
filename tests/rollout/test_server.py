"""The ``hf`` server as a Ray actor: generation, log-probs, sleep/abort, and weights received through verl's path.

One Ray session (``ray.init(num_cpus=2)``) and one server actor serve the whole module.
Expectations are independent: direct batch-of-one Hugging Face ``generate`` calls and
plain forwards on a separately loaded copy of the same weights. Tests that replace the
server's weights come last.
"""

import asyncio

import pytest
import torch

from tests.rollout.common import (
    PROMPT_LENGTH,
    PROMPTS,
    RESPONSE_LENGTH,
    first_new_token,
    hf_greedy,
    hf_rollout_overrides,
    hf_token_logprobs,
    load_hf,
    perturbed_state_dict,
    with_extra_eos,
)
from tests.verl_harness import compose_ppo_config, init_single_process_world, make_ppo_batch
from verl_commeff.rollout.options import UnsupportedRolloutOption

EOS = 2
GREEDY = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
LONG_PROMPT = list(range(20, 20 + PROMPT_LENGTH + 5))  # leaves a budget of RESPONSE_LENGTH - 5 tokens


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # a session another module left running
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory):
    """The tiny model with one extra end-of-sequence token that PROMPTS[0]'s greedy answer hits early."""
    free = hf_greedy(load_hf(tiny_model_dir), PROMPTS[0], RESPONSE_LENGTH, [EOS])
    _, stop_token = first_new_token(free)
    path = with_extra_eos(tiny_model_dir, str(tmp_path_factory.mktemp("eos") / "model"), stop_token)
    return {"path": path, "eos": [EOS, stop_token], "free": free}


@pytest.fixture(scope="module")
def config(model):
    return compose_ppo_config(model["path"], "fsdp2", extra=hf_rollout_overrides())


@pytest.fixture(scope="module")
def server(ray_session, config):
    """The server launched the way verl's LLMServerManager does it: HFReplica.init_hybrid(worker_group)."""
    import ray
    from verl.workers.rollout.replica import get_rollout_replica_class

    @ray.remote
    class StandInWorker:  # launch_servers only asks the worker where it runs
        pass

    class WorkerGroup:
        workers = [StandInWorker.remote()]

    replica = get_rollout_replica_class("hf")(replica_rank=0, config=config.actor_rollout_ref.rollout,
                                              model_config=config.actor_rollout_ref.model, gpus_per_node=1)
    asyncio.run(replica.init_hybrid(WorkerGroup()))
    assert replica.server_address.startswith("hf-replica-0@")
    assert ray.get(replica.server_handle.ready.remote())["device"] == "cpu"
    yield replica.server_handle
    ray.kill(replica.server_handle)


def _generate(server, prompt, params, request_id="r"):
    import ray

    return ray.get(server.generate.remote(prompt_ids=prompt, sampling_params=dict(params), request_id=request_id))


def test_greedy_generation_equals_direct_hf_generate_and_respects_length_and_eos(server, model):
    reference = load_hf(model["path"])
    for prompt in PROMPTS + [LONG_PROMPT]:
        budget = min(RESPONSE_LENGTH, PROMPT_LENGTH + RESPONSE_LENGTH - len(prompt))
        out = _generate(server, prompt, GREEDY)
        assert out.token_ids == hf_greedy(reference, prompt, budget, model["eos"])
        assert out.stop_reason == "completed" and out.log_probs is None
        assert out.extra_fields["global_steps"] is None
        ends_with_eos = out.token_ids[-1] in model["eos"]
        assert len(out.token_ids) == budget or ends_with_eos
    first = _generate(server, PROMPTS[0], GREEDY)
    assert first.token_ids[-1] == model["eos"][1] and len(first.token_ids) < RESPONSE_LENGTH  # stopped at EOS
    assert len(_generate(server, LONG_PROMPT, GREEDY).token_ids) <= RESPONSE_LENGTH - 5


def test_concurrent_requests_are_served_together_with_the_same_results(server, model):
    import ray

    reference = load_hf(model["path"])
    prompts = PROMPTS * 3
    refs = [server.generate.remote(prompt_ids=p, sampling_params=dict(GREEDY), request_id=str(i))
            for i, p in enumerate(prompts)]
    for prompt, out in zip(prompts, ray.get(refs)):
        assert out.token_ids == hf_greedy(reference, prompt, RESPONSE_LENGTH, model["eos"])


def test_log_probs_equal_log_softmax_of_a_plain_forward(server, model):
    import ray

    reference = load_hf(model["path"])
    refs = [server.generate.remote(prompt_ids=p, sampling_params=dict(SAMPLED), request_id=str(i))
            for i, p in enumerate(PROMPTS)]
    for prompt, out in zip(PROMPTS, ray.get(refs)):
        assert len(out.log_probs) == len(out.token_ids) > 0
        torch.testing.assert_close(torch.tensor(out.log_probs), hf_token_logprobs(reference, prompt, out.token_ids),
                                   rtol=0, atol=1e-5)


def test_only_the_hybrid_mode_is_implemented(ray_session, config):
    from verl_commeff.rollout.replica import HFReplica

    replica = HFReplica(replica_rank=5, config=config.actor_rollout_ref.rollout,
                        model_config=config.actor_rollout_ref.model)
    with pytest.raises(NotImplementedError, match="hybrid"):
        asyncio.run(replica.init_standalone())


def test_multi_modal_input_and_unknown_sampling_params_are_rejected(server):
    import ray

    with pytest.raises(UnsupportedRolloutOption, match="multi-modal"):
        ray.get(server.generate.remote(prompt_ids=PROMPTS[0], sampling_params=dict(GREEDY), request_id="m",
                                       image_data=["an image"]))
    with pytest.raises(UnsupportedRolloutOption, match="min_p"):
        _generate(server, PROMPTS[0], {**GREEDY, "min_p": 0.1})


def test_sleep_holds_requests_until_kv_cache_is_resumed(server, model):
    import ray

    ray.get(server.sleep.remote())
    pending = server.generate.remote(prompt_ids=PROMPTS[1], sampling_params=dict(GREEDY), request_id="s")
    assert ray.wait([pending], timeout=0.5)[1] == [pending]
    ray.get(server.wake_up.remote(tags=["weights"]))
    assert ray.wait([pending], timeout=0.3)[1] == [pending]
    ray.get(server.wake_up.remote(tags=["kv_cache"]))
    assert ray.get(pending).token_ids == hf_greedy(load_hf(model["path"]), PROMPTS[1], RESPONSE_LENGTH, model["eos"])


def test_abort_with_reject_answers_aborted_until_resumed(server):
    import ray

    ray.get(server.abort_all_requests.remote(reject_request=True))
    out = _generate(server, PROMPTS[1], GREEDY)
    assert (out.token_ids, out.stop_reason) == ([], "aborted")
    ray.get(server.resume_generation.remote())
    assert _generate(server, PROMPTS[1], GREEDY).stop_reason == "completed"


def test_weights_sent_through_the_adapter_replace_the_servers(server, model, config):
    from verl.workers.rollout.base import get_rollout_class

    reference = load_hf(model["path"])
    weights = perturbed_state_dict(reference)
    reference.load_state_dict(weights)
    adapter = get_rollout_class("hf", "async")(config=config.actor_rollout_ref.rollout,
                                              model_config=config.actor_rollout_ref.model, device_mesh=None)
    adapter.bucket_bytes = 64 << 10  # several buckets for this 0.9 MB model
    asyncio.run(adapter.update_weights(iter(weights.items()), global_steps=7))
    for prompt in PROMPTS:
        out = _generate(server, prompt, SAMPLED)
        assert out.extra_fields["global_steps"] == 7
        torch.testing.assert_close(torch.tensor(out.log_probs), hf_token_logprobs(reference, prompt, out.token_ids),
                                   rtol=0, atol=1e-5)
        assert _generate(server, prompt, GREEDY).token_ids == hf_greedy(reference, prompt, RESPONSE_LENGTH,
                                                                        model["eos"])


@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp"])
def test_real_actor_worker_pushes_its_updated_weights_through_verls_naive_sync(server, model, strategy):
    """verl's ActorRolloutRefWorker (role actor_rollout) builds the hf adapter via the registry and syncs."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    from verl_commeff.rollout.adapter import HFServerAdapter

    init_single_process_world()
    config = compose_ppo_config(model["path"], strategy, extra=hf_rollout_overrides())
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout")
    worker.init_model()
    assert isinstance(worker.rollout, HFServerAdapter)

    batch = make_ppo_batch()  # one PPO update moves the actor away from the checkpoint
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    worker.update_actor(td)
    asyncio.run(worker.update_weights(global_steps=1, mode="naive"))  # what CheckpointEngineManager(naive) runs

    prompt = PROMPTS[2]
    out = _generate(server, prompt, SAMPLED)
    assert out.extra_fields["global_steps"] == 1

    # the actor's own log-probs of that response: the rollout now holds exactly the actor's weights
    ids = torch.tensor([prompt + out.token_ids] * 2)  # (2, P+R): two copies fill one micro-batch
    n = len(out.token_ids)
    sample = make_ppo_batch(batch_size=2, prompt_len=len(prompt), response_len=n)
    sample.batch["prompts"], sample.batch["responses"], sample.batch["input_ids"] = ids[:, :-n], ids[:, -n:], ids
    sample.batch["attention_mask"] = torch.ones_like(ids)
    sample.batch["response_mask"] = torch.ones(2, n, dtype=torch.long)
    sample.batch["position_ids"] = torch.arange(ids.shape[1]).expand(2, -1).clone()
    td = left_right_2_no_padding(sample.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
    actor = no_padding_2_padding(tu.get(worker.compute_log_prob(td), "log_probs"), td).float()[0]  # (R,)
    torch.testing.assert_close(torch.tensor(out.log_probs), actor, rtol=0, atol=1e-5)
    checkpoint = hf_token_logprobs(load_hf(model["path"]), prompt, out.token_ids)
    assert (checkpoint - actor).abs().max() > 1e-4  # the update did change the weights
