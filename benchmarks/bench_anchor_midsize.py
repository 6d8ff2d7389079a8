"""The actor's own comm-eff cost per step on a mid-size shape, as ratios to a stock verl step.

A Qwen2 model with Qwen2.5-0.5B-shaped decoder layers (hidden 896, intermediate 4864,
14 heads, 2 KV heads; a few layers, a small vocabulary, random init) is built locally
and trained in this process by two real verl FSDP2 actors (1 rank, CPU, fp32): stock
verl and the comm-eff actor (boundary codec r=77 on every layer boundary but the last,
``signed_ema`` merger with an anchor result held on every tick, Q refreshed every
``q_cadence`` ticks from the fast path). The two run interleaved on the same batches; a
step is one tick (one PPO mini-batch). Printed, as medians over the measured ticks and as
ratios to the stock step's median from the same run:

- ``codec``: the boundary hooks' forward work (projection ĥ = (h·Q)·Qᵀ, reconstruction
  telemetry, sketch) timed inside the hooks, plus the projection's backward, which is not
  timed (two (tokens × H × r) matmuls, the same work as the forward projection);
- ``q refresh``: staging a new Q (QR) and making it live (conditioning), the mean per tick
  (it runs on one tick in ``q_cadence``);
- ``merger``: ``Merger.apply_`` (statistics, dose, in-place merge) with
  ``commeff.merger.kernels`` = ``--kernels`` (compiled: one fused pass per tensor per pass),
  the mean per tick: a new M̄ arrives once per ``--cadence`` ticks (its sign bits are
  unpacked on the first tick that merges it) and is held on every tick;
- ``snapshot``: what ``commeff_snapshot`` does on the actor (delta-encode this rank's shards
  in ``commeff.anchor.snapshot_dtype`` against its previous snapshot where the weights live,
  then the payload to the host; the ``ray.put`` is left out: no Ray here). It is taken on every
  tick here so the payload is a one-tick delta, but the actor snapshots only the weights of a
  retained mini-batch, one tick in ``--cadence``: the per-tick figure is the snapshot's time
  divided by the cadence, and the cost of one snapshot is printed too; its bytes and changed
  fraction are printed;
- ``tick``: the whole comm-eff tick over the stock tick (everything above and the anchor
  bookkeeping; noisier than the direct timings: the difference of two noisy medians);
- ``wait`` (with ``--ray``): the actor's wait on firing ticks for a real anchor worker group
  with ``placement=separate`` under Ray (its own process; K = cadence = ``--cadence``, the
  codec's Q from the anchor), on the same model and batch shape, as a fraction of that run's
  tick; its fetch per fire and the snapshot time on the actor are printed too. On this 2-core
  machine the anchor's forward and backward share the cores with the actor's tick.

Usage: ``python benchmarks/bench_anchor_midsize.py [--layers 4] [--ticks 10] [--transport sign] [--tokens 128]
[--snapshot-dtype auto|fp32|bf16] [--kernels auto|compiled|eager] [--cadence 5] [--ray]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

# Qwen2.5-0.5B's decoder layer.
MIDSIZE_QWEN2 = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                     max_position_embeddings=1024)


class _Timed:
    """Wraps a callable and adds its wall time to ``sink[key]`` (the current tick's total)."""

    def __init__(self, fn, sink: dict, key: str):
        self.fn, self.sink, self.key = fn, sink, key

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.sink[self.key] += time.perf_counter() - start


def bench(model_dir: str, layers: int, ticks: int, transport: str, tokens: int, snapshot_dtype: str,
          kernels: str, cadence: int) -> dict:
    from torch.distributed.tensor import distribute_tensor

    from tests.verl_harness import (compose_ppo_config, init_single_process_world, make_ppo_batch,
                                    stock_and_commeff_actors, update)
    from verl_commeff.config import AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
    from verl_commeff.mergers import pack_signs
    from verl_commeff.workers.actor_state import AnchorResult, ReadyResult
    from verl_commeff.workers.weight_shards import live_shards

    init_single_process_world()
    config = compose_ppo_config(model_dir, "fsdp2").actor_rollout_ref
    cfg = CommEffConfig(codec=CodecConfig(rank=77, pp_size=layers, q_source="fast", q_cadence=cadence),
                        anchor=AnchorConfig(delay_k=0, cadence=cadence, transport=transport,
                                              snapshot_dtype=snapshot_dtype),
                        merger=MergerConfig(kernels=kernels))
    stock, actor = stock_and_commeff_actors(config, cfg)
    state = actor.actor.engine.commeff

    cost: dict[str, float] = defaultdict(float)  # this tick's seconds per part
    state.merger.apply_ = _Timed(state.merger.apply_, cost, "merger")
    state.codec._project = _Timed(state.codec._project, cost, "codec")
    state.codec._measure = _Timed(state.codec._measure, cost, "codec")
    state.codec.refresh = _Timed(state.codec.refresh, cost, "q_refresh")
    state.codec.activate_staged = _Timed(state.codec.activate_staged, cost, "q_refresh")

    target_numel = sum(p.numel() for _, p in state.targets)
    gen = torch.Generator().manual_seed(0)
    times = defaultdict(list)
    loads = []
    half = tokens // 2
    for tick in tqdm(range(1, ticks + 1), desc="ticks (stock + comm-eff)", unit="tick"):
        if tick % cadence == 0:  # one fire per cadence ticks (the schedule's); its M̄ is held until the next
            m_bar = [distribute_tensor(torch.randn(p.shape, generator=gen), p.device_mesh, p.placements)
                     for _, p in state.targets]
            held = pack_signs(m_bar) if transport == "sign" else m_bar
            state.offer(ReadyResult(AnchorResult(tick, tick, held)))
        batch = make_ppo_batch(batch_size=4, prompt_len=half, response_len=tokens - half, vocab=2000, seed=tick)
        batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
        arms = (("stock", stock), ("commeff", actor)) if tick % 2 else (("commeff", actor), ("stock", stock))
        for name, worker in arms:
            cost.clear()
            start = time.perf_counter()
            update(worker, batch)
            times[name].append(time.perf_counter() - start)
            if name == "commeff":
                for key in ("merger", "codec", "q_refresh"):
                    times[key].append(cost[key])
        start = time.perf_counter()
        with torch.no_grad():  # commeff_snapshot without its ray.put
            payload = actor._commeff_snapshot_encoder().encode(live_shards(actor.actor.engine.module)).to_host()
        times["snapshot"].append(time.perf_counter() - start)
        if not payload.is_keyframe:
            times["snapshot_bytes"].append(payload.nbytes())
            times["snapshot_changed"].append(payload.changed_fraction())
        dense_fp32 = payload.dense_fp32_bytes()
        del payload
        loads.append(os.getloadavg()[0])
    # Measured: whole cadence periods from the first fire (ticks before it are cold: no M̄ held yet).
    first, periods = cadence - 1, (ticks - cadence + 1) // cadence
    window = slice(first, first + periods * cadence)
    med = {k: statistics.median(v[window]) for k, v in times.items()}
    for key in ("q_refresh", "merger"):  # work done once per cadence (Q refresh, unpacking a new M̄'s signs): mean
        med[key] = statistics.mean(times[key][window])
    snap = {"dtype": str(actor._commeff_snapshot_encoder().dtype).replace("torch.", ""), "dense_fp32": dense_fp32,
            "bytes": statistics.mean(times["snapshot_bytes"]), "changed": statistics.mean(times["snapshot_changed"])}
    return {"median_s": med, "target_numel": target_numel, "load": statistics.mean(loads),
            "measured": periods * cadence, "snapshot": snap}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4: 3 codec boundaries)")
    parser.add_argument("--ticks", type=int, default=14,
                        help="ticks per arm; the cold ticks before the first fire (cadence - 1) are not counted, "
                             "then whole cadence periods (default 14: two periods at cadence 5)")
    parser.add_argument("--transport", choices=("sign", "shards"), default="sign",
                        help="how the held M̄ arrives: packed sign bits or dense fp32 shards (default sign)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence, 4 sequences (default 128)")
    parser.add_argument("--snapshot-dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="commeff.anchor.snapshot_dtype (auto: the actor's FSDP param_dtype)")
    parser.add_argument("--kernels", choices=("auto", "compiled", "eager"), default="auto",
                        help="commeff.merger.kernels (default auto: compiled on this CPU)")
    parser.add_argument("--ray", action="store_true",
                        help="also measure the actor's wait for a separately placed anchor group under Ray")
    parser.add_argument("--cadence", type=int, default=5,
                        help="anchor cadence = q_cadence: one snapshot and one Q refresh per this many ticks "
                             "(default 5, the seed's K=5 arm)")
    args = parser.parse_args(argv)
    if args.ticks < 2 * args.cadence - 1:
        parser.error(f"--ticks={args.ticks} must be at least 2 * cadence - 1 = {2 * args.cadence - 1} "
                     "(cold ticks, then whole cadence periods are measured)")
    from verl_commeff.presets.tiny_model import build_tiny_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(os.path.join(tmp, "midsize"), vocab_size=2048,
                                     num_hidden_layers=args.layers, **MIDSIZE_QWEN2)
        wait = None
        if args.ray:  # first: the in-process benchmark sets RANK/MASTER_PORT, which Ray workers would inherit
            import ray

            from benchmarks.bench_tick import bench_wait

            ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
            wait = bench_wait(model_dir, args.ticks + 1, "separate", codec_rank=77, pp_size=args.layers,
                              delay_k=args.cadence, cadence=args.cadence,
                              batch=dict(prompt_len=args.tokens // 2, response_len=args.tokens - args.tokens // 2,
                                         vocab=2000))
            ray.shutdown()
        r = bench(model_dir, args.layers, args.ticks, args.transport, args.tokens, args.snapshot_dtype,
                  args.kernels, args.cadence)
    med = r["median_s"]
    stock = med["stock"]
    print(f"Qwen2.5-0.5B-shaped layers (hidden 896, inter 4864, 14/2 heads) x {args.layers}, vocab 2048, fp32, CPU, "
          f"fsdp2 1 rank; {r['target_numel'] / 1e6:.1f} M target params; batch 4 x {args.tokens} tokens; r=77, "
          f"{args.layers - 1} boundaries, cadence = q_cadence = {args.cadence}, a new M̄ every cadence, held every tick "
          f"(transport={args.transport}, merger kernels={args.kernels}); "
          f"medians of {r['measured']} interleaved ticks; torch threads {torch.get_num_threads()}, "
          f"load avg {r['load']:.2f}")
    print(f"  stock verl step          {stock * 1e3:9.1f} ms   1.000")
    per_tick = dict(med, snapshot=med["snapshot"] / args.cadence)  # one snapshot per cadence ticks
    rows = [("codec hooks (fwd)", "codec"), ("Q refresh", "q_refresh"), ("merger apply_", "merger"),
            (f"snapshot (1 in {args.cadence} ticks)", "snapshot")]
    total = 0.0
    for label, key in rows:
        total += per_tick[key]
        print(f"  {label:24s} {per_tick[key] * 1e3:9.1f} ms   {per_tick[key] / stock:.3f}")
    print(f"  sum of the parts above   {total * 1e3:9.1f} ms   {total / stock:.3f}")
    print(f"  (one snapshot: {med['snapshot'] * 1e3:.1f} ms = {med['snapshot'] / stock:.3f} of a stock step, "
          f"on the ticks that take one)")
    print(f"  comm-eff tick            {med['commeff'] * 1e3:9.1f} ms   {med['commeff'] / stock:.3f}")
    snap = r["snapshot"]
    print(f"  snapshot payload: {snap['dtype']} deltas, {snap['changed'] * 100:.2f} % of elements changed per step, "
          f"{snap['bytes'] / 2**20:.2f} MiB vs {snap['dense_fp32'] / 2**20:.2f} MiB dense fp32 "
          f"({snap['dense_fp32'] / snap['bytes']:.1f}x)")
    if wait is None:
        print("  anchor wait (placement=separate): not measured (--ray)")
    else:
        print(f"  anchor wait (separate)   {wait['wait_s'] * 1e3:9.1f} ms   {wait['wait_s'] / wait['tick_s']:.3f} "
              f"of that run's tick ({wait['tick_s'] * 1e3:.0f} ms, under Ray, anchor on the same 2 cores), "
              f"mean over {wait['fires']} firing ticks; fetch {wait['fetch_s'] * 1e3:.1f} ms per fire, "
              f"snapshot {wait['snapshot_s'] * 1e3:.1f} ms on the actor")


if __name__ == "__main__":
    main()
