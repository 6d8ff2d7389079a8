"""Bytes and time of the data-parallel PowerSGD exchange on Qwen2.5-1.5B-shaped gradients.

4 CPU processes joined by gloo form a 2 replicas × 2 shards HSDP layout; each holds the
row shard (``torch.chunk`` on dim 0, as FSDP2) of random fp32 gradients of the target
matrices of ``--layers`` Qwen2.5-1.5B decoder layers (q, k, v, o, gate, up, down at hidden
1536, intermediate 8960, 2 KV heads × 128). Per exchange it prints:

1. the bytes every rank handed to cross-replica collectives (the codec's ledger, checked
   against a counting wrapper around ``torch.distributed.all_reduce``), dense and
   PowerSGD, and the theoretical ratio Σ(n + m)·r / Σ n·m;
2. wall time of the dense cross-replica all-reduce, of the PowerSGD exchange, and of the
   PowerSGD exchange's work without the cross-replica collectives (one-replica mode on
   the same shards: matmuls, QR, the intra-replica P gather and Q scatter/gather) = the
   compression overhead;
3. a what-if table: communication time per step for all 28 layers at 1, 10 and 100 Gbit/s
   per replica link, from the measured bytes (a 2-replica ring all-reduce moves each
   rank's buffer once per direction; the shards of a replica share its link).

Usage: ``python benchmarks/bench_dp_codec.py [--layers 1] [--rank 77] [--reps 3]``
(the machine this was written on has 2 cores: keep ``--layers`` small; bytes and times
scale linearly in the layer count, and are reported scaled to 28 layers).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

HIDDEN, INTER, KV = 1536, 8960, 2 * 128
SHAPES = {  # (out, in) of each target matrix: FSDP2 shards dim 0
    "q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN), "down_proj": (HIDDEN, INTER),
}
FULL_LAYERS = 28
REPLICAS, SHARDS = 2, 2


def _theory(rank: int) -> tuple[int, int]:
    """(PowerSGD, dense) elements per layer across replicas, summed over a replica's shards."""
    low = sum((n + m) * min(n, m, rank) for n, m in SHAPES.values())
    return low, sum(n * m for n, m in SHAPES.values())


def _worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_

    replica, index = rank // SHARDS, rank % SHARDS
    shard_groups = [dist.new_group(list(range(r * SHARDS, (r + 1) * SHARDS))) for r in range(REPLICAS)]
    replica_groups = [dist.new_group([r * SHARDS + s for r in range(REPLICAS)]) for s in range(SHARDS)]
    groups = ReplicaGroups(replica=replica_groups[index], shard=shard_groups[replica])
    local_only = ReplicaGroups(replica=None, shard=shard_groups[replica])
    gen = torch.Generator().manual_seed(rank)
    grads = {f"layers.{layer}.{name}": torch.chunk(torch.randn(n, m, generator=gen), SHARDS)[index].clone()
             for layer in range(args.layers) for name, (n, m) in SHAPES.items()}
    rows = {f"layers.{layer}.{name}": n for layer in range(args.layers) for name, (n, _) in SHAPES.items()}

    def shards():
        return [GradShard(k, g.clone(), rows[k]) for k, g in grads.items()]

    counted = {"bytes": 0}
    orig = dist.all_reduce

    def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if group is groups.replica:
            counted["bytes"] += tensor.numel() * tensor.element_size()
        return orig(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = counting
    times = {"dense": [], "powersgd": [], "overhead": []}
    ledgers = {}
    for rep in range(args.reps + 1):  # the first round warms up (allocations, Q memory)
        for mode, state_groups, start in (("dense", groups, 10**9), ("powersgd", groups, 0), ("overhead", local_only, 0)):
            state = DPCodecState(rank=args.rank, start_iter=start, seed=0)
            if mode != "dense":  # a warm-started exchange: Q from one previous exchange
                dp_exchange_(state, shards(), state_groups)
                state.ledger.reset()
            batch = shards()
            counted["bytes"] = 0
            dist.barrier()
            t0 = time.perf_counter()
            dp_exchange_(state, batch, state_groups)
            dist.barrier()
            if rep:
                times[mode].append(time.perf_counter() - t0)
            ledgers[mode] = (state.ledger.sent, state.ledger.dense_equiv, state.ledger.intra, counted["bytes"])
    dist.all_reduce = orig
    out.put((rank, {k: statistics.median(v) for k, v in times.items()}, ledgers))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rank", type=int, default=77)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    world = REPLICAS * SHARDS
    mp.start_processes(_worker, args=(world, port, args, out), nprocs=world, join=True, start_method="spawn")
    results = sorted(out.get() for _ in range(world))

    scale = FULL_LAYERS / args.layers
    low, dense = _theory(args.rank)
    print(f"Qwen2.5-1.5B targets, {args.layers} layer(s) measured, scaled ×{scale:g} to {FULL_LAYERS}; r={args.rank}; "
          f"{REPLICAS} replicas × {SHARDS} shards, gloo on CPU, fp32; median of {args.reps}")
    print(f"theoretical ratio Σ(n+m)·r / Σn·m = {low / dense:.4f}  (×{dense / low:.1f} fewer bytes)")
    print("\nbytes handed to cross-replica collectives per exchange (per rank; ledger == counted all_reduce):")
    for rank, _, ledgers in results:
        d, p = ledgers["dense"], ledgers["powersgd"]
        assert d[0] == d[3] and p[0] == p[3], (rank, d, p)  # the ledger equals what the collectives received
        print(f"  rank {rank}: dense {d[0]:>12,d}  powersgd {p[0]:>11,d}  ratio {p[0] / d[0]:.4f}  "
              f"(intra-replica {p[2]:,d})")
    node_dense = sum(r[2]["dense"][0] for r in results if r[0] // SHARDS == 0) * scale
    node_low = sum(r[2]["powersgd"][0] for r in results if r[0] // SHARDS == 0) * scale
    print(f"per replica (both shards), {FULL_LAYERS} layers: dense {node_dense / 1e6:,.1f} MB, powersgd "
          f"{node_low / 1e6:,.1f} MB, measured ratio {node_low / node_dense:.4f} (theory {low / dense:.4f}; "
          f"theory bytes {4 * low * FULL_LAYERS / 1e6:,.1f} MB)")

    t = {k: max(r[1][k] for r in results) for k in ("dense", "powersgd", "overhead")}
    print("\nwall time per exchange (slowest rank), measured layers / scaled to 28:")
    for k, label in (("dense", "dense all-reduce across replicas"), ("powersgd", "PowerSGD exchange (all)"),
                     ("overhead", "PowerSGD without cross-replica collectives (overhead)")):
        print(f"  {label:<55} {t[k] * 1e3:9.1f} ms  {t[k] * scale:7.2f} s  ({t[k] / t['dense']:.2f}× dense)")

    print(f"\nwhat-if: cross-replica communication per step, {FULL_LAYERS} layers, bytes per replica link above")
    print("| link | dense | PowerSGD r=%d | PowerSGD + measured overhead |" % args.rank)
    print("|---|---|---|---|")
    for gbit in (1, 10, 100):
        bw = gbit * 1e9 / 8
        print(f"| {gbit} Gbit/s | {node_dense / bw:.3f} s | {node_low / bw:.3f} s | "
              f"{node_low / bw + t['overhead'] * scale:.3f} s |")


if __name__ == "__main__":
    main()
