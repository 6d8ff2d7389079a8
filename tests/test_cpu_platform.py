"""verl's real actor worker runs on the plugin's CPU platform, picked by verl's own auto-detection."""

import pytest
import torch

from tests.verl_harness import compose_ppo_config, init_single_process_world, make_ppo_batch


def test_verl_autodetects_the_cpu_platform_and_resolves_fsdp_engines():
    import os

    import verl  # noqa: F401  -- loads the verl.plugins entry point
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_name, get_nccl_backend
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    assert os.environ.get("VERL_PLATFORM", "") in ("", "cpu")
    assert type(get_platform()).__name__ == "PlatformCPU"
    assert (get_device_name(), get_nccl_backend()) == ("cpu", "gloo")
    for backend in ("fsdp", "fsdp2"):
        assert EngineRegistry.get_engine_cls("language_model", backend) is FSDPEngineWithLMHead


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp2"])
def test_real_actor_worker_log_prob_and_update_on_cpu(strategy, tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    init_single_process_world()
    worker = ActorRolloutRefWorker(compose_ppo_config(tiny_model_dir, strategy).actor_rollout_ref, role="actor")
    worker.init_model()
    batch = make_ppo_batch()

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
    log_probs = no_padding_2_padding(tu.get(worker.compute_log_prob(td), "log_probs"), td).float()  # (B, R)

    # independent expectation: a plain Hugging Face forward of the same checkpoint
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    b = batch.batch
    with torch.no_grad():
        logits = hf(b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
    r = b["responses"].shape[1]
    expected = torch.log_softmax(logits[:, -r - 1 : -1], -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    mask = b["response_mask"].bool()
    torch.testing.assert_close(log_probs[mask], expected[mask], rtol=0, atol=1e-5)

    batch.batch["old_log_probs"] = log_probs
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    before = [p.detach().clone() for p in worker.actor.engine.module.parameters()]
    metrics = tu.get(worker.update_actor(td), "metrics")
    assert metrics["grad_norm"][0] > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, worker.actor.engine.module.parameters()))
