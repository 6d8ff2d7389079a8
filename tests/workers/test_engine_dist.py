"""Two gloo ranks (FSDP2): the merged gradient reaching verl's optimizer is the library merger of stock's."""

import os

import torch

from tests.dist_harness import run_on_gloo


def _body(rank, world_size, model_dir):
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    from torch.distributed.tensor import distribute_tensor
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    from tests.verl_harness import GradsAtStep, compose_ppo_config, make_ppo_batch, stock_and_commeff_actors
    from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
    from verl_commeff.mergers import build_merger
    from verl_commeff.workers.actor_state import AnchorResult, ReadyResult

    config = compose_ppo_config(model_dir, "fsdp2", micro_batch=1,
                                extra=("actor_rollout_ref.actor.optim.clip_grad=1e9",)).actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(enable=False, q_source="fast"), anchor=AnchorConfig(delay_k=0, cadence=1),
                        merger=MergerConfig(alpha=0.25, adaptive={"mode": "ratio", "kappa": 2.0, "cap": 0.9}))
    stock, actor = stock_and_commeff_actors(config, cfg)
    stock_grads, actor_grads = GradsAtStep(stock), GradsAtStep(actor)

    state = actor.actor.engine.commeff
    g = torch.Generator().manual_seed(3)  # the same full M̄ on both ranks, then each keeps its shard
    m_bar = [distribute_tensor(torch.randn(p.shape, generator=g), p.device_mesh, p.placements)
             for _, p in state.targets]
    state.offer(ReadyResult(AnchorResult(fire_tick=1, source_tick=1, m_bar=m_bar)))

    batch = make_ppo_batch(seed=0)
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    mine = batch[rank * 2 : (rank + 1) * 2]  # this DP rank's share, as verl's dispatch gives it
    for worker in (stock, actor):
        td = left_right_2_no_padding(mine.to_tensordict())
        tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                             dataloader_kwargs={"shuffle": False}, compute_loss=True)
        worker.update_actor(td)

    reference = build_merger(cfg.merger)
    reference.hold(m_bar, produced_tick=1, source_tick=1)
    stock_params = dict(stock.actor.engine.module.named_parameters())
    actor_params = dict(actor.actor.engine.module.named_parameters())
    by_id = {id(p): n for n, p in actor_params.items()}
    names = [by_id[id(p)] for _, p in state.targets]
    expected = [stock_grads.grads[0][id(stock_params[n])].clone() for n in names]
    reference.apply_(expected, tick=1)  # the library merger on the stock reduced (sharded) gradients
    for name, want in zip(names, expected):
        got = actor_grads.grads[0][id(actor_params[name])]
        torch.testing.assert_close(got.to_local(), want.to_local(), rtol=1e-6, atol=1e-10, msg=name)
    for name in set(actor_params) - set(names):
        assert torch.equal(actor_grads.grads[0][id(actor_params[name])].to_local(),
                           stock_grads.grads[0][id(stock_params[name])].to_local())
    lam = reference.metrics()["commeff/merger/lambda"]
    assert 0 < lam < 0.9 + 1e-9  # the adaptive dose was active and identical on both ranks


def test_merged_gradient_on_two_ranks(tiny_model_dir):
    run_on_gloo(_body, world_size=2, args=(tiny_model_dir,))


def _hsdp_body(rank, world_size, model_dir):
    """verl's FSDP2 actor on an HSDP mesh of 2 replicas × 1 shard (fsdp_size=1) with commeff.dp_codec."""
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    import torch.distributed as dist
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding

    from tests.verl_harness import GradsAtStep, compose_ppo_config, make_ppo_batch
    from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, DPCodecConfig, MergerConfig
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    config = compose_ppo_config(model_dir, "fsdp2", micro_batch=1, extra=(
        "actor_rollout_ref.actor.optim.clip_grad=1e9", "actor_rollout_ref.actor.fsdp_config.fsdp_size=1",
    )).actor_rollout_ref

    def commeff(start_iter):
        return CommEffConfig(codec=CodecConfig(enable=False, q_source="fast"), anchor=AnchorConfig(enable=False),
                             merger=MergerConfig(name="none", adaptive=AdaptiveLambdaConfig(mode="off")),
                             dp_codec=DPCodecConfig(enable=True, rank=2, start_iter=start_iter))

    stock = ActorRolloutRefWorker(config, role="actor")
    dense, psgd = CommEffActorRolloutRefWorker(config, role="actor"), CommEffActorRolloutRefWorker(config, role="actor")
    for w in (stock, dense, psgd):
        w.init_model()
    assert stock.actor.engine.device_mesh.mesh_dim_names == ("ddp", "fsdp")
    dense.commeff_setup(commeff(start_iter=10**6), ticks_per_step=1)
    psgd.commeff_setup(commeff(start_iter=0), ticks_per_step=1)
    grads = {name: GradsAtStep(w) for name, w in (("stock", stock), ("dense", dense), ("psgd", psgd))}

    batch = make_ppo_batch(seed=0)
    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    mine = batch[rank * 2 : (rank + 1) * 2]  # this replica's share, as verl's dispatch gives it
    counts, metrics = {}, {}
    orig = dist.all_reduce
    for name, worker in (("stock", stock), ("dense", dense), ("psgd", psgd)):
        replica_group = worker.actor.engine.device_mesh.get_group("ddp")
        seen = counts[name] = {"calls": 0, "bytes": 0}

        def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False, seen=seen, replica_group=replica_group):
            if group is replica_group and tensor.numel() > 4:  # not verl's own scalar metric reductions
                seen["calls"] += 1
                seen["bytes"] += tensor.numel() * tensor.element_size()
            return orig(tensor, op=op, group=group, async_op=async_op)

        td = left_right_2_no_padding(mine.to_tensordict())
        tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                             dataloader_kwargs={"shuffle": False}, compute_loss=True)
        dist.all_reduce = counting
        try:
            metrics[name] = tu.get(worker.update_actor(td), "metrics")
        finally:
            dist.all_reduce = orig

    params = {name: dict(w.actor.engine.module.named_parameters()) for name, w in
              (("stock", stock), ("dense", dense), ("psgd", psgd))}
    dense_bytes = sum(p.to_local().numel() * 4 for p in params["dense"].values())

    def grad(name, pname):
        return grads[name].grads[0][id(params[name][pname])].to_local()

    # stock HSDP all-reduces every FSDP unit's shard across replicas in every micro-batch's backward
    # (2 micro-batches here: twice the gradient's bytes)
    assert counts["stock"]["calls"] >= 4 and counts["stock"]["bytes"] == 2 * dense_bytes, (counts, dense_bytes)
    # owned, dense: one flat all-reduce of every gradient, and the optimizer sees stock's global mean
    assert counts["dense"] == {"calls": 1, "bytes": dense_bytes}, (counts, dense_bytes)
    assert metrics["dense"]["commeff/bytes/dp_codec/sent"][0] == dense_bytes
    for pname in params["stock"]:
        torch.testing.assert_close(grad("dense", pname), grad("stock", pname), rtol=1e-6, atol=1e-9, msg=pname)
    # owned, PowerSGD (the defaults: every 2-D gradient, bf16 factors): two flat all-reduces of P's and
    # Q's plus one dense of the 1-D gradients; bytes as the ledger says
    state = psgd.actor.engine.commeff
    targets = {n for n, p in params["psgd"].items() if any(p is t for _, t in state.targets)}
    compressed = set(state.dp_codec.error_dict)
    assert targets < compressed and compressed == {n for n, p in params["psgd"].items() if p.dim() == 2}
    sent = metrics["psgd"]["commeff/bytes/dp_codec/sent"][0]
    assert counts["psgd"] == {"calls": 3, "bytes": sent} and sent < dense_bytes
    for pname in params["stock"]:
        got, want = grad("psgd", pname), grad("stock", pname)
        if pname in compressed:
            assert torch.linalg.matrix_rank(got) <= 2 and not torch.allclose(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9, msg=pname)
    both = [torch.empty_like(grad("psgd", sorted(targets)[0])) for _ in range(2)]
    dist.all_gather(both, grad("psgd", sorted(targets)[0]).contiguous())
    assert torch.equal(both[0], both[1])  # identical on both replicas


def test_hsdp_actor_owns_the_replica_exchange(tiny_model_dir):
    run_on_gloo(_hsdp_body, world_size=2, args=(tiny_model_dir,))
