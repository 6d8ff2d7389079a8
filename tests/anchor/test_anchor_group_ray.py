"""Actor and anchor as separate Ray worker groups on CPU (FSDP2, gloo): 2 actor ranks, 2 or 1 anchor ranks.

The anchor group gets its snapshot from the actor group through Ray's object store, and
its M̄ (β = 0: M̄ = M) must equal a dense gradient computed independently with plain
Hugging Face + torch at the snapshot weights on the paired mini-batch, each actor rank's
result in that rank's own shard layout (with one anchor rank: resharded from the anchor's
whole tensors). Then the actor takes the same results in strict mode and merges them,
its cross-rank check comparing each rank's held M̄ with the anchor's fingerprint of it.
The snapshot call does not block the caller: it returns at once, and the snapshot is still
the weights before an ``update_actor`` submitted right after it.
"""

import pytest
import torch

from tests.anchor.test_anchor_worker import _dense_reference, _minibatch
from tests.verl_harness import compose_ppo_config, make_ppo_batch
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig

WORLD = 2


@pytest.fixture
def ray_session():  # one per test: shutting Ray down frees the groups' bundles
    import ray

    ray.init(num_cpus=2 * WORLD, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _group(cls, config, name, world=WORLD):
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    pool = RayResourcePool(process_on_nodes=[world], use_gpu=False, max_colocate_count=1, name_prefix=name)
    return RayWorkerGroup(resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(
        cls=ray.remote(cls), config=config, role="actor"), device_name="cpu", name_prefix=name)


@pytest.mark.parametrize("anchor_world", [WORLD, 1])
def test_separate_anchor_group_returns_the_dense_gradient_and_the_actor_merges_it(ray_session, tiny_model_dir,
                                                                                  anchor_world):
    import ray
    from transformers import AutoModelForCausalLM
    from verl.utils import tensordict_utils as tu

    from verl_commeff.anchor.reshard import owner_of, take_routed
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.collectives import fingerprint
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    config = compose_ppo_config(tiny_model_dir, "fsdp2", micro_batch=1).actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(q_source="fast", rank=16, pp_size=2),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards"),
                        merger=MergerConfig(checksum_every=1, adaptive=AdaptiveLambdaConfig(mode="off")))  # the cross-rank check runs at tick 1
    actor = _group(CommEffActorRolloutRefWorker, config, "actor")
    anchor = _group(AnchorWorker, config, "anchor", anchor_world)  # placement=separate: its own resource pool
    actor.init_model()
    anchor.init_model()
    actor.commeff_setup(cfg, 1)
    anchor.anchor_setup(cfg, 1, WORLD)

    from verl_commeff.workers.weight_shards import resolve

    snapshot_refs = actor.commeff_snapshot()  # non-blocking: one future per actor rank (a ref to the put shards)
    assert len(snapshot_refs) == WORLD and all(isinstance(r, ray.ObjectRef) for r in snapshot_refs)
    batch = make_ppo_batch(seed=11)
    minibatch_ref = ray.put(_minibatch(batch))  # one object the whole anchor group reads
    result_refs = anchor.anchor_fire(1, 1, minibatch_ref, snapshot_refs)  # non-blocking: one ref per anchor rank
    assert len(result_refs) == anchor_world
    # what each actor rank fetches: its owner anchor rank's return value, then its own entry
    results = [take_routed(ray.get(result_refs[owner_of(r, anchor_world, WORLD)]), r) for r in range(WORLD)]

    # independent expectation at the snapshot weights (FSDP2 shards rows: concatenate the ranks' shards)
    from verl_commeff.anchor.snapshot_delta import SnapshotDecoder

    payloads = [resolve(r) for r in snapshot_refs]  # the first snapshot of each rank: a dense keyframe
    assert all(p.is_keyframe for p in payloads)
    decoders = [SnapshotDecoder() for _ in range(WORLD)]  # one per actor rank, as the anchor keeps them

    def decoded(refs):  # each rank's next snapshot, decoded against the previous one (copies: decoder state)
        return [[t.clone() for t in d.decode(resolve(r))] for d, r in zip(decoders, refs)]

    shards = [[t.clone() for t in d.decode(p)] for d, p in zip(decoders, payloads)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    names = [n for n, _ in model.named_parameters()]
    state = {n: torch.cat([s[i] for s in shards]) for i, n in enumerate(names)}
    targets = [n for n in names if n.endswith(("proj.weight"))]
    expected = _dense_reference(tiny_model_dir, state, batch, targets)
    for i, (name, want) in enumerate(zip(targets, expected)):
        for r, result in enumerate(results):  # each actor rank's M̄ has that rank's own shard shape
            assert result.m_bar[i].shape == shards[r][names.index(name)].shape, (name, r)
        got = torch.cat([r.m_bar[i] for r in results])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
    for r, result in enumerate(results):  # fingerprints per actor rank: row r is what actor rank r receives
        assert result.fingerprints.shape == (WORLD, 3)
        torch.testing.assert_close(result.fingerprints[r], fingerprint(result.m_bar), rtol=1e-12, atol=0)

    # the actor takes the very results (strict: fire 1 at tick 1) and merges them
    actor.commeff_offer(1, result_refs)
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    before = actor.commeff_snapshot()  # non-blocking, then update_actor at once: the snapshot comes first
    metrics = tu.get(actor.update_actor(td), "metrics")
    after_refs = actor.commeff_snapshot()
    before = decoded(before)  # a delta against the first snapshot (nothing changed)
    after = decoded(after_refs)  # a delta against `before`
    assert all(torch.equal(a, b) for rank_a, rank_b in zip(before, shards) for a, b in zip(rank_a, rank_b))
    assert not all(torch.equal(a, b) for rank_a, rank_b in zip(after, shards) for a, b in zip(rank_a, rank_b))
    assert all(s > 0 for s in metrics["commeff/anchor/snapshot_s"])  # the rank timed the snapshot it took
    assert all(s > 0 for s in metrics["commeff/anchor/fetch_s"])  # and fetching the result
    assert metrics["commeff/merger/merged_ticks"] == [1.0, 1.0]  # both ranks merged at tick 1
    assert metrics["commeff/anchor/fires_used"] == [1.0, 1.0]
    assert metrics["commeff/anchor/age"] == [0.0, 0.0]  # K = 0
    # every rank's held M̄ matched the anchor's fingerprint of its shard (a mismatch raises in metrics())
    assert metrics["commeff/merger/inputs_identical"] == [1.0, 1.0]
