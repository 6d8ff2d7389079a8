"""The anchor worker group under Ray on CPU: colocated placement, a dying anchor, a restart (issue 10).

The actor's pool is made as verl's ``ResourcePoolManager`` makes it for the trainer
(``use_gpu=True``, ``max_colocate_count=3``: on the CPU platform each bundle holds one
CPU, of which the actor's worker takes a third). The colocated anchor group goes into the
same bundles; before the fix its master-address lookup asked for a whole CPU there and
waited forever.

The anchor then dies at fire 2 (the test-only fault hook, ``os._exit`` in the worker):
in ``sync=free`` the actor keeps merging with fire 1's M̄ and counts the failed fire;
the restarted group loads the anchor's state backed up after fire 1 (the backup after fire 2
died with the worker), so its M̄ EMA continues, and its fire 3 reaches the actor with no Q gap.
"""

import os
import threading

import pytest
import torch

from tests.anchor.test_anchor_worker import _minibatch
from tests.verl_harness import compose_ppo_config, make_ppo_batch
from verl_commeff.anchor.fault_hook import FAULT_ENV, GROUP_ENV
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig

WORLD = 1
BUILD_GUARD_S = 600  # a hang guard, not a timing assertion: building takes seconds, the old bug never returned


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ[FAULT_ENV], os.environ[GROUP_ENV] = "exit@2", "commeff_anchor"  # Ray's workers inherit these
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    del os.environ[FAULT_ENV], os.environ[GROUP_ENV]


def _build_guarded(build):
    """``build()`` in a thread; fail (instead of hanging the suite) if it never returns."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("wg", build()), daemon=True)
    thread.start()
    thread.join(BUILD_GUARD_S)
    assert "wg" in out, "creating the colocated anchor group hung (the actor's bundle cannot host it)"
    return out["wg"]


def _update(actor, fire):
    """One actor step of one tick on a fresh batch; returns its metrics (one value per rank)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    batch = make_ppo_batch(seed=100 + fire)
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    return tu.get(actor.update_actor(td), "metrics")


def test_colocated_anchor_builds_in_the_actors_bundles_survives_death_and_restarts(ray_session, tiny_model_dir):
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    from verl_commeff.trainer.anchor_group import anchor_resource_pool, build_anchor_group, restart_anchor_group
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    config = compose_ppo_config(tiny_model_dir, "fsdp2", micro_batch=1).actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(q_source="anchor", rank=16, pp_size=2),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.5, placement="colocated", sync="free"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))
    pool = RayResourcePool(process_on_nodes=[WORLD], use_gpu=True, max_colocate_count=3, name_prefix="actor_pool")
    actor = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(
        cls=ray.remote(CommEffActorRolloutRefWorker), config=config, role="actor"), device_name="cpu",
        name_prefix="actor")
    actor.init_model()
    actor.commeff_setup(cfg, 1)

    # colocated: the anchor goes into the actor's own bundles
    anchor_pool = anchor_resource_pool(cfg.anchor, pool, actor.world_size)
    assert anchor_pool is pool
    anchor = _build_guarded(lambda: build_anchor_group(anchor_pool, config, cfg, 1, "cpu"))
    assert anchor.world_size == WORLD

    backups = {}

    def fire(group, tick, keyframe=False):
        snapshot = actor.commeff_snapshot(keyframe=keyframe)
        refs = group.anchor_fire(tick, tick, _minibatch(make_ppo_batch(seed=tick)), snapshot)
        backups[tick] = group.anchor_state_backup(tick)  # the state after the fire, as the driver asks (sync=free)
        ray.wait(refs, num_returns=len(refs))  # finished (or failed) before the actor polls: free mode never waits
        actor.commeff_offer(tick, refs)
        return _update(actor, tick)

    # fire 1: the anchor runs and the actor merges it; both started from the same (bootstrap) Q
    m = fire(anchor, 1)
    # backward passes are counted per micro-batch: make_ppo_batch's 4 samples in micro-batches of 1
    assert m["commeff/anchor/fires_used"] == [1.0] and m["commeff/anchor/backwards"] == [4.0]
    assert m["commeff/anchor/q_gap"] == [0.0] and m["commeff/anchor/ema_updates"] == [1.0]

    # fire 2: the anchor process exits; sync=free keeps merging with fire 1's M̄, its age now 1
    m = fire(anchor, 2)
    assert m["commeff/anchor/failed_fires"] == [1.0] and m["commeff/anchor/fires_used"] == [1.0]
    assert m["commeff/merger/merged_ticks"] == [2.0] and m["commeff/merger/age"] == [1.0]

    # restart: a new group (new name prefix: the fault hook leaves it alone). The backup after fire 2 died
    # with its worker; the one after fire 1 (owned by this process) outlived it: the new group continues from it
    after_fire_1 = ray.get(backups[1])
    anchor, restored = _build_guarded(lambda: restart_anchor_group(
        anchor, lambda: build_anchor_group(pool, config, cfg, 1, "cpu", name_prefix="commeff_anchor_r1"), actor,
        restore_points=[(2, backups[2]), (1, backups[1])]))
    assert restored == 1
    loaded = anchor.anchor_state_dict()
    for got, want in zip(loaded, after_fire_1):  # per rank: the EMA and the codec exactly as after fire 1
        assert got["ema"]["updates"] == want["ema"]["updates"] == 1
        assert all(torch.equal(a, b) for a, b in zip(got["ema"]["m_bar"], want["ema"]["m_bar"]))
        assert torch.equal(got["codec"]["live"], want["codec"]["live"])
    m = fire(anchor, 3, keyframe=True)  # a fresh anchor holds no delta base: the driver asks for a keyframe
    assert m["commeff/anchor/fires_used"] == [2.0] and m["commeff/anchor/failed_fires"] == [1.0]
    assert m["commeff/merger/age"] == [0.0]  # fire 3's M̄ is fresh
    assert m["commeff/anchor/q_gap"] == [0.0]  # the new anchor sketched against the actor's Q, not the bootstrap
    assert m["commeff/anchor/ema_updates"] == [2.0]  # fire 3 folded into fire 1's EMA (it restarted at 1 before)
