"""Per-tick cost of the comm-eff actor and the actor's wait for the anchor, on the tiny model on CPU.

Prints ratios from one run (baseline measured in the same process):

1. ``tick``: median wall time of one actor tick (one PPO mini-batch: forward, backward,
   optimizer step) with the codec + signed_ema merger, over a stock verl tick. Both workers
   run in this process, interleaved, on the same batches.
2. ``wait`` (with ``--ray``): the actor's wait for the anchor on firing ticks, anchor group
   ``placement=separate`` (own processes) vs ``colocated`` (processes sharing the actor's
   resource pool), as a fraction of the tick time. The job is submitted one tick before it
   is needed, as with K=1.

Usage: ``python benchmarks/bench_tick.py [--ticks 20] [--ray]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


def _anchor_minibatch(batch):
    """The batch as the anchor receives a mini-batch: verl's no-padding layout and the actor's keys."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, temperature=1.0)
    return td


def bench_tick(model_dir: str, ticks: int) -> dict:
    from tests.verl_harness import (compose_ppo_config, init_single_process_world, make_ppo_batch,
                                    stock_and_commeff_actors, update)

    from verl_commeff.config import AnchorConfig, CodecConfig, CommEffConfig
    from verl_commeff.workers.actor_state import AnchorResult, ReadyResult

    init_single_process_world()
    config = compose_ppo_config(model_dir, "fsdp2").actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(rank=16, pp_size=4, q_source="fast", q_cadence=1),
                        anchor=AnchorConfig(delay_k=0, cadence=1))
    stock, actor = stock_and_commeff_actors(config, cfg)
    state = actor.actor.engine.commeff
    from torch.distributed.tensor import distribute_tensor

    times = {"stock": [], "commeff": []}
    for tick in tqdm(range(1, ticks + 1), desc="ticks", unit="tick"):
        m_bar = [distribute_tensor(torch.randn(p.shape), p.device_mesh, p.placements) for _, p in state.targets]
        state.offer(ReadyResult(AnchorResult(tick, tick, m_bar)))
        batch = make_ppo_batch(seed=tick)
        batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
        for name, worker in (("stock", stock), ("commeff", actor)):
            start = time.perf_counter()
            update(worker, batch)
            times[name].append(time.perf_counter() - start)
    skip = min(3, ticks // 4)  # warm-up ticks
    stock_s, commeff_s = (statistics.median(times[k][skip:]) for k in ("stock", "commeff"))
    return {"stock_tick_s": stock_s, "commeff_tick_s": commeff_s, "tick_ratio": commeff_s / stock_s}


def bench_wait(model_dir: str, ticks: int, placement: str, codec_rank: int = 16, pp_size: int = 4,
               delay_k: int = 1, cadence: int = 2, batch: dict | None = None) -> dict:
    """Actor wait on firing ticks with a real anchor worker group under Ray (default K=1, cadence 2).

    Args:
        model_dir: the HF model both groups load.
        ticks: ticks run; the first fire's period is not counted.
        placement: ``separate`` (own processes) or ``colocated`` (the actor's resource pool).
        codec_rank, pp_size: the boundary codec's r and stage count (``q_source=anchor``).
        delay_k, cadence: the anchor's K and cadence (ticks).
        batch: keyword arguments of ``make_ppo_batch`` (4 sequences of 8 + 8 tokens by default).
    """
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    from tests.verl_harness import compose_ppo_config, make_ppo_batch, update
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.config import AnchorConfig, CodecConfig, CommEffConfig
    from verl_commeff.trainer.anchor_driver import AnchorDriver
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    config = compose_ppo_config(model_dir, "fsdp2").actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(rank=codec_rank, pp_size=pp_size, q_source="anchor"),
                        anchor=AnchorConfig(delay_k=delay_k, cadence=cadence, placement=placement))

    def group(cls, pool, name):
        return RayWorkerGroup(resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(
            cls=ray.remote(cls), config=config, role="actor"), device_name="cpu", name_prefix=name)

    actor_pool = RayResourcePool(process_on_nodes=[1], use_gpu=False, max_colocate_count=2, name_prefix=f"actor_{placement}")
    actor = group(CommEffActorRolloutRefWorker, actor_pool, f"actor_{placement}")
    anchor_pool = actor_pool if placement == "colocated" else RayResourcePool(
        process_on_nodes=[1], use_gpu=False, max_colocate_count=1, name_prefix=f"anchor_{placement}")
    anchor = group(AnchorWorker, anchor_pool, f"anchor_{placement}")
    actor.init_model()
    anchor.init_model()
    actor.commeff_setup(cfg, 1)
    anchor.anchor_setup(cfg, 1)
    driver = AnchorDriver(_schedule(cfg), actor.commeff_snapshot,
                          anchor.anchor_fire, actor.commeff_offer, put=ray.put)

    waits, fetches, snapshots, tick_s = [], [], [], []
    for tick in tqdm(range(1, ticks + 1), desc=f"ticks ({placement})", unit="tick"):
        ppo_batch = make_ppo_batch(seed=tick, **(batch or {}))
        ppo_batch.batch["old_log_probs"] = torch.zeros_like(ppo_batch.batch["advantages"])
        driver.before_update(tick, [_anchor_minibatch(ppo_batch)])
        start = time.perf_counter()
        metrics = update(actor, ppo_batch)
        tick_s.append(time.perf_counter() - start)
        driver.after_update(tick)
        if tick % cadence == 0:
            waits.append(metrics["commeff/anchor/wait_s"][0])
        fetches.append(metrics["commeff/anchor/fetch_s"][0])  # at any tick: a result ready early is prefetched
        snapshots.append(metrics["commeff/anchor/snapshot_s"][0])
    skip = 1  # the first fire (its period includes the workers' first-use costs)
    return {"wait_s": statistics.mean(waits[skip:]), "fetch_s": sum(fetches[cadence * skip:]) / len(waits[skip:]),
            "snapshot_s": statistics.mean(s for s in snapshots[cadence:] if s > 0),
            "tick_s": statistics.median(tick_s[cadence:]), "fires": len(waits) - skip}


def _schedule(cfg):
    from verl_commeff.schedule import FireSchedule

    return FireSchedule(cfg.anchor.delay_k, cfg.anchor.cadence, 1, cfg.q_cadence)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=20, help="ticks measured per arm (default 20)")
    parser.add_argument("--ray", action="store_true", help="also measure the actor's wait with Ray anchor groups")
    args = parser.parse_args(argv)
    from verl_commeff.presets.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(os.path.join(tmp, "tiny"))
        waits = {}
        if args.ray:  # first: the in-process benchmark sets RANK/MASTER_PORT, which Ray workers would inherit
            import ray

            ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)  # logical CPUs: both placements stay up
            for placement in ("separate", "colocated"):
                waits[placement] = bench_wait(model_dir, args.ticks, placement)
            ray.shutdown()
        result = bench_tick(model_dir, args.ticks)
    print(f"tiny Qwen2 (hidden 64, 4 layers), CPU, fsdp2, 1 rank, {args.ticks} ticks per arm, median after warm-up")
    print(f"  stock verl tick        {result['stock_tick_s'] * 1e3:8.1f} ms")
    print(f"  codec + merger tick    {result['commeff_tick_s'] * 1e3:8.1f} ms")
    print(f"  ratio commeff / stock  {result['tick_ratio']:8.3f}")
    for placement, w in waits.items():
        print(f"  anchor {placement:9s}: wait on firing ticks {w['wait_s'] * 1e3:7.1f} ms = "
              f"{w['wait_s'] / w['tick_s']:.3f} of a tick ({w['tick_s'] * 1e3:.1f} ms, K=1, cadence 2, under Ray)")
        print(f"  anchor {placement:9s}: fetch {w['fetch_s'] * 1e3:7.1f} ms per fire, snapshot "
              f"{w['snapshot_s'] * 1e3:7.1f} ms per snapshot (actor side)")


if __name__ == "__main__":
    main()
