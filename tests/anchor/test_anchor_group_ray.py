"""Actor and anchor as separate Ray worker groups on CPU (FSDP2, 2 ranks each, gloo).

The anchor group gets its snapshot from the actor group through Ray's object store, and
its M̄ (β = 0: M̄ = M) must equal a dense gradient computed independently with plain
Hugging Face + torch at the snapshot weights on the paired mini-batch. Then the actor
takes the same results in strict mode and merges them.
"""

import pytest
import torch

from tests.anchor.test_anchor_worker import _dense_reference, _minibatch
from tests.verl_harness import compose_ppo_config, make_ppo_batch
from verl_commeff.config import AnchorConfig, CodecConfig, CommEffConfig

WORLD = 2


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2 * WORLD, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _group(cls, config, name):
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    pool = RayResourcePool(process_on_nodes=[WORLD], use_gpu=False, max_colocate_count=1, name_prefix=name)
    return RayWorkerGroup(resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(
        cls=ray.remote(cls), config=config, role="actor"), device_name="cpu", name_prefix=name)


def test_separate_anchor_group_returns_the_dense_gradient_and_the_actor_merges_it(ray_session, tiny_model_dir):
    import ray
    from transformers import AutoModelForCausalLM
    from verl.utils import tensordict_utils as tu

    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    config = compose_ppo_config(tiny_model_dir, "fsdp2", micro_batch=1).actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(q_source="fast", rank=16, pp_size=2),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards"))
    actor = _group(CommEffActorRolloutRefWorker, config, "actor")
    anchor = _group(AnchorWorker, config, "anchor")  # placement=separate: its own resource pool
    actor.init_model()
    anchor.init_model()
    actor.commeff_setup(cfg, 1)
    anchor.anchor_setup(cfg, 1)

    snapshot_refs = actor.commeff_snapshot()  # one ObjectRef per actor rank
    batch = make_ppo_batch(seed=11)
    result_refs = anchor.anchor_fire(1, 1, _minibatch(batch), snapshot_refs)  # non-blocking: one ref per rank
    results = ray.get(result_refs)

    # independent expectation at the snapshot weights (FSDP2 shards rows: concatenate the ranks' shards)
    from verl_commeff.anchor.snapshot_delta import SnapshotDecoder

    payloads = ray.get(snapshot_refs)  # the first snapshot of each rank: a dense keyframe
    assert all(p.is_keyframe for p in payloads)
    shards = [SnapshotDecoder().decode(p) for p in payloads]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    names = [n for n, _ in model.named_parameters()]
    state = {n: torch.cat([s[i] for s in shards]) for i, n in enumerate(names)}
    targets = [n for n in names if n.endswith(("proj.weight"))]
    expected = _dense_reference(tiny_model_dir, state, batch, targets)
    for i, (name, want) in enumerate(zip(targets, expected)):
        got = torch.cat([r.m_bar[i] for r in results])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)

    # the actor takes the very results (strict: fire 1 at tick 1) and merges them
    actor.commeff_offer(1, result_refs)
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    metrics = tu.get(actor.update_actor(td), "metrics")
    assert metrics["commeff/merger/merged_ticks"] == [1.0, 1.0]  # both ranks merged at tick 1
    assert metrics["commeff/anchor/fires_used"] == [1.0, 1.0]
    assert metrics["commeff/anchor/age"] == [0.0, 0.0]  # K = 0
