"""Drive real verl 0.9.1 worker classes in the test process (CPU platform, gloo, no Ray)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def init_single_process_world() -> None:
    """The env vars verl's Worker reads, and a 1-rank gloo process group (once per process)."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        os.environ[key] = value
    dist.init_process_group("gloo", rank=0, world_size=1)


def compose_ppo_config(model_dir: str, strategy: str = "fsdp", mini_batch: int = 4, micro_batch: int = 2,
                       use_remove_padding: bool = False, extra: tuple[str, ...] = ()):
    """verl's own ppo_trainer.yaml, composed with hydra, for the tiny model on CPU in fp32."""
    import verl
    from hydra import compose, initialize_config_dir

    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.model.use_remove_padding={use_remove_padding}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"actor_rollout_ref.actor.strategy={strategy}",
        f"actor_rollout_ref.ref.strategy={strategy}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        "+actor_rollout_ref.ref.fsdp_config.mixed_precision="
        "{param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.total_training_steps=10",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision="
        "{param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}",
        f"data.train_batch_size={mini_batch}",
        *extra,
    ]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def make_ppo_batch(batch_size: int = 4, prompt_len: int = 8, response_len: int = 8, vocab: int = 300, seed: int = 0):
    """A padded PPO batch as the trainer builds it: left-padded prompts, right-padded responses."""
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, vocab, (batch_size, prompt_len), generator=g)  # (B, P)
    responses = torch.randint(5, vocab, (batch_size, response_len), generator=g)  # (B, R)
    prompt_mask = torch.ones(batch_size, prompt_len, dtype=torch.long)
    response_mask = torch.ones(batch_size, response_len, dtype=torch.long)
    for i in range(batch_size):
        left = i % 3
        prompt_mask[i, :left] = 0
        right = (2 * i) % (response_len - 1)
        if right:
            response_mask[i, -right:] = 0
    attention_mask = torch.cat([prompt_mask, response_mask], 1)  # (B, P+R)
    return DataProto.from_single_dict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": attention_mask,
            "position_ids": compute_position_id_with_mask(attention_mask),
            "response_mask": response_mask,
            "advantages": torch.randn(batch_size, response_len, generator=g) * response_mask,
        },
        meta_info={"temperature": 1.0},
    )


def log_probs(worker, batch, ref: bool = False):
    """The worker's log-probs of ``batch``'s responses (old-log-prob pass, or the ref pass), padded (B, R)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
    out = worker.compute_ref_log_prob(td) if ref else worker.compute_log_prob(td)
    return no_padding_2_padding(tu.get(out, "log_probs"), td).float()


def update(worker, batch, batch_size: int = 4):
    """One ``update_actor`` on ``batch`` as one mini-batch; returns the worker's metrics."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=batch_size, mini_batch_size=batch_size,
                         epochs=1, seed=1, dataloader_kwargs={"shuffle": False}, compute_loss=True)
    return tu.get(worker.update_actor(td), "metrics")


def stock_and_commeff_actors(actor_config, commeff_cfg, ticks_per_step: int = 1):
    """A stock verl actor and a comm-eff actor on the same ``actor_rollout_ref`` config, both
    initialised (same seed, same weights), the comm-eff one set up with ``commeff_cfg``."""
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    stock = ActorRolloutRefWorker(actor_config, role="actor")
    actor = CommEffActorRolloutRefWorker(actor_config, role="actor")
    for w in (stock, actor):
        w.init_model()
    actor.commeff_setup(commeff_cfg, ticks_per_step=ticks_per_step)
    return stock, actor


class GradsAtStep:
    """The gradients the optimizer steps with, captured by an optimizer pre-step hook."""

    def __init__(self, worker):
        self.grads = []
        worker.actor.engine.optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        self.grads.append({id(p): p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]})
