"""The actor's comm-eff tick against a stock tick at the seed's shape, on one GPU, with torch alone.

Runs where only torch and transformers are installed (no verl, Ray, vLLM, omegaconf or
tensordict: a bare GPU box). A Qwen2.5-1.5B-shaped Qwen2 (random init from its config, no
download), fp32 master weights, bf16 autocast, sdpa, AdamW, clip 1.0, one micro-batch of
``--batch × --tokens`` tokens per tick; the comm-eff state is driven through
:class:`~verl_commeff.workers.actor_state.CommEffActorState` exactly as verl's engine hooks
drive it (``begin_tick``, the ``train`` pass scope, ``before_optimizer_step``, the step
boundary, ``metrics`` once per step), 2 ticks per step, an anchor result offered for every
fire (sign bits of a random M̄, an anchor Q sketch). All variants share one model and
optimizer and run interleaved, one tick each per round, on the same batches.

Reports:

1. per-variant tick time (median of the measured ticks, CUDA events) and its ratio to stock;
   ``Merger.apply_`` per tick;
2. the merger's two passes per implementation (triton / compiled / eager) against the
   bandwidth limit: one read of G + its sign bits for the statistics, a read-modify-write
   of G + bits for the merge, at the copy bandwidth measured in the same run;
3. host syncs per tick by call site (``torch.cuda.set_sync_debug_mode("warn")``), apart
   from the once-per-step ``metrics()`` read;
4. bytes per rank of each comm-eff buffer (:meth:`CommEffActorState.buffers`);
5. the data-parallel codec's time per exchange (one replica: its real exchange path).

Usage::

    python benchmarks/bench_gpu_tick.py                  # the 1.5B shape, one CUDA GPU, < 5 min on an H200
    python benchmarks/bench_gpu_tick.py --json out.json  # also write every figure
    python benchmarks/bench_gpu_tick.py --tiny           # a tiny model on the CPU (CI runs this)

A benchmark, not a test: it prints figures; ``tests/benchmarks/test_bench_gpu_tick.py`` only
keeps the tiny mode working.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from verl_commeff.config import (  # noqa: E402
    AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig)
from verl_commeff.mergers.kernels import MergerKernels  # noqa: E402
from verl_commeff.mergers.sign_bits import PackedSigns  # noqa: E402
from verl_commeff.workers.actor_state import AnchorResult, CommEffActorState, ReadyResult, buffer_bytes  # noqa: E402

# Qwen2.5-1.5B-Instruct's config.json (the seed's model), and a tiny one for the CPU mode.
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=True)
TICKS_PER_STEP = 2
CADENCE = 5  # the anchor fires (a new M̄ is held) every 5 ticks, the seed's K=5 arm


def build_model(shape: dict, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.train()


def commeff_config(variant: str, tiny: bool) -> CommEffConfig:
    """The comm-eff config of a variant: codec r=77 / pp 8 at the seed's shape (r=8 / pp 2 tiny)."""
    rank, pp = (8, 2) if tiny else (77, 8)
    kernels = variant.split("_")[-1] if variant.startswith("commeff_") and variant != "commeff_fast" else "auto"
    fast = variant in ("codec", "commeff_fast")
    return CommEffConfig(
        codec=CodecConfig(rank=rank, pp_size=pp, q_source="fast" if fast else "anchor",
                          q_cadence=CADENCE if fast else None),
        anchor=AnchorConfig(enable=variant != "codec", delay_k=CADENCE, cadence=CADENCE, transport="sign"),
        # Full dose (λ = 1, the seed's signed_ema): every tick merges, the merger's worst case.
        merger=MergerConfig(name="none" if variant == "codec" else "signed_ema", kernels=kernels,
                            adaptive=AdaptiveLambdaConfig(mode="off"),
                            checksum_every=CADENCE),  # 10x the default rate: the measured ticks include a check
    )


class Variant:
    """One variant's comm-eff state on the shared model (None for stock) and its timings."""

    def __init__(self, name: str, model, tiny: bool, device: torch.device, seed: int):
        self.name = name
        base, _, flag = name.partition("+")  # "<variant>+tf32": fp32 matmuls on TF32 during its ticks
        if flag not in ("", "tf32"):
            raise ValueError(f"variant {name!r}: the only suffix is +tf32")
        self.tf32 = flag == "tf32"
        self.state = None
        if base != "stock":
            cfg = model.config
            self.state = CommEffActorState(commeff_config(base, tiny), TICKS_PER_STEP, model,
                                           cfg.hidden_size, cfg.num_hidden_layers)
            self.state.codec.to(device)
            gen = torch.Generator(device=device).manual_seed(seed)
            shapes = [p.shape for _, p in self.state.targets]
            self._fire_bits = [[torch.randint(0, 256, ((s.numel() + 7) // 8,), dtype=torch.uint8, device=device,
                                              generator=gen) for s in shapes] for _ in range(2)]
            self._shapes = shapes
            self._sketch = torch.randn(len(self.state.codec.layers), cfg.hidden_size, self.state.codec.rank,
                                       device=device, generator=gen)  # (B, H, r)
            if device.type == "cuda":
                self._time_merger()
        self.tick_ms: list[float] = []
        self.merger_ms: list[float] = []
        self._merger_events: list[tuple] = []

    def _time_merger(self) -> None:
        """Record CUDA events around every ``Merger.apply_`` (read after the tick's synchronize)."""
        apply = self.state.merger.apply_

        def timed(grads, tick):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            apply(grads, tick)
            end.record()
            self._merger_events.append((start, end))

        self.state.merger.apply_ = timed

    def held_signs(self) -> PackedSigns:
        """The sign bits of the first fire (what the merger holds after it)."""
        return PackedSigns(bits=self._fire_bits[0], shapes=self._shapes)

    def offer_due(self, tick: int) -> None:
        """Offer the anchor result of fire ``tick`` (as the trainer does at the start of its source step)."""
        if self.state is None or not self.state.cfg.anchor.enable or not self.state.schedule.fires_at(tick):
            return
        bits = self._fire_bits[(tick // CADENCE) % 2]
        result = AnchorResult(fire_tick=tick, source_tick=max(1, tick - CADENCE),
                              m_bar=PackedSigns(bits=bits, shapes=self._shapes),
                              sketch=self._sketch if self.state.cfg.codec.q_source == "anchor" else None,
                              backwards=1, ema_updates=tick // CADENCE)
        self.state.offer(ReadyResult(result))

    def collect(self) -> None:
        """Read the merger's events (after a synchronize)."""
        self.merger_ms.extend(s.elapsed_time(e) for s, e in self._merger_events)
        self._merger_events.clear()


def run_tick(variant: Variant, model, optimizer, ids: torch.Tensor, device: torch.device,
             syncs: collections.Counter | None = None) -> None:
    """One optimizer step of ``variant`` (stock: plain forward/backward/clip/step)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32
    try:
        _tick(variant, model, optimizer, ids, device, syncs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _tick(variant: Variant, model, optimizer, ids: torch.Tensor, device: torch.device,
          syncs: collections.Counter | None) -> None:
    state = variant.state
    if state is not None:
        if state.clock.step_complete:
            state.at_step_boundary()  # the engine's _commeff_boundary before train_batch
        tick = state.begin_tick()
        variant.offer_due(tick)
    scope = state.pass_scope("train") if state is not None else contextlib.nullcontext()
    with scope, torch.autocast(device.type, dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits  # (b, s, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    if state is not None:
        state.before_optimizer_step([p.grad for _, p in state.targets])
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if torch.isfinite(grad_norm):  # verl's engine skips a non-finite step the same way (a host read)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if state is not None and state.clock.step_complete:
        with _sync_site_scope(syncs, "metrics()"):
            state.metrics()  # once per step: the allowed host read


def _sync_sites(caught) -> collections.Counter:
    """Call sites (file:line) of the sync-debug warnings in ``caught``."""
    sites: collections.Counter = collections.Counter()
    for w in caught:
        if "synchroniz" in str(w.message):
            name = ("verl_commeff/" + w.filename.split("verl_commeff/")[-1] if "verl_commeff/" in w.filename
                    else os.path.basename(w.filename))
            sites[f"{name}:{w.lineno}"] += 1
    return sites


@contextlib.contextmanager
def _sync_site_scope(counter: collections.Counter | None, label: str):
    """Count the host syncs inside under ``[label]`` (only during a sync-count pass); the
    enclosing count does not see them."""
    if counter is None:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    counter[f"[{label}]"] += sum(_sync_sites(caught).values())


def count_syncs(variant: Variant, model, optimizer, batches, device) -> collections.Counter:
    """Host syncs per call site over ``len(batches)`` ticks (CUDA sync debug mode ``warn``)."""
    counter: collections.Counter = collections.Counter()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ids in batches:
                run_tick(variant, model, optimizer, ids, device, syncs=counter)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sites = _sync_sites(caught)
    counter.update(sites)
    counter["per tick (excl. metrics)"] = sum(sites.values()) / len(batches)
    return counter


def time_kernels(variant: Variant, device: torch.device, repeats: int, tune: bool) -> dict:
    """The merger's two passes per implementation on gradients shaped like the targets, vs the bandwidth limit."""
    grads = [torch.randn_like(p) for _, p in variant.state.targets]
    held = variant.held_signs()
    numel = sum(g.numel() for g in grads)
    bits_bytes = sum((g.numel() + 7) // 8 for g in grads)
    g_bytes = sum(g.numel() * g.element_size() for g in grads)
    limit_bytes = (g_bytes + bits_bytes) + (2 * g_bytes + bits_bytes)  # stats read + merge read-modify-write
    bandwidth = copy_bandwidth(device)
    out = {"target_coords": numel, "limit_gb": limit_bytes / 1e9, "copy_bandwidth_gbs": bandwidth / 1e9,
           "limit_ms": limit_bytes / bandwidth * 1e3}
    coef = torch.full((), 0.75, dtype=torch.float32, device=device)
    for mode in ("triton", "compiled", "eager"):
        if mode == "triton" and device.type != "cuda":
            continue
        kernels = MergerKernels(mode)
        masks = kernels.hold_masks(held)
        work = [g.clone() for g in grads]
        kernels.stats(work, masks), kernels.scale_mismatched_(work, masks, coef)  # build / warm up
        out[mode] = {"stats_ms": _median_ms(lambda: kernels.stats(work, masks), repeats, device),
                     "merge_ms": _median_ms(lambda: kernels.scale_mismatched_(work, masks, coef), repeats, device),
                     "held_mask_bytes": masks.nbytes()}
        del work, masks
    if tune and device.type == "cuda":
        out["triton_tuning"] = tune_triton(grads, held.bits, coef, device, repeats)
    return out


def tune_triton(grads, bits, coef, device, repeats) -> list[dict]:
    """The Triton kernels' time over a few launch shapes (chunk, block, warps), to choose the defaults."""
    from verl_commeff.mergers.triton_kernels import MultiTensorMerge

    rows = []
    for chunk, block, warps, hints in ((16384, 2048, None, True), (16384, 2048, None, False), (16384, 1024, 4, True),
                                       (16384, 2048, 8, True), (65536, 4096, 8, True), (4096, 1024, 4, True),
                                       (32768, 2048, 4, True), (8192, 2048, 8, True), (65536, 2048, 4, True)):
        merge = MultiTensorMerge(chunk, block, warps, align_hints=hints)
        work = [g.clone() for g in grads]
        merge.stats(work, bits), merge.scale_mismatched_(work, bits, coef)
        rows.append({"chunk": chunk, "block": block, "warps": warps, "hints": hints,
                     "stats_ms": _median_ms(lambda: merge.stats(work, bits), repeats, device),
                     "merge_ms": _median_ms(lambda: merge.scale_mismatched_(work, bits, coef), repeats, device)})
        del work
    return rows


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = (1 << 28) if device.type == "cuda" else (1 << 22)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), 10, device)
    return 2 * src.numel() * 4 / (ms / 1e3)


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_ticks(runs: list, model, optimizer, batches, device, top: int = 12) -> dict:
    """The CUDA kernels with the most self device time over a step (2 ticks) of each variant."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for v in runs:
        if v.name not in ("stock", "codec", "codec+tf32", "commeff_triton"):
            continue
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for ids in batches[:TICKS_PER_STEP]:
                run_tick(v, model, optimizer, ids, device)
            torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages():
            ms = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) / 1e3
            if ms > 0:
                rows.append((e.key, e.count, ms))
        rows.sort(key=lambda r: -r[2])
        out[v.name] = {"total_ms": sum(r[2] for r in rows), "top": rows[:top], "all": rows}
    if "stock" in out:  # what each variant adds: the ops whose device time or count differ most from stock
        base = {key: (count, ms) for key, count, ms in out["stock"]["all"]}
        for name, p in out.items():
            if name != "stock":
                diff = [(key, count - base.get(key, (0, 0.0))[0], ms - base.get(key, (0, 0.0))[1])
                        for key, count, ms in p["all"]]
                p["vs_stock"] = sorted(diff, key=lambda r: -abs(r[2]))[:top]
    for p in out.values():
        del p["all"]
    return out


def time_dp_codec(model, device: torch.device, repeats: int, tiny: bool) -> dict:
    """Time per exchange of the data-parallel codec on one replica (its real path, torch alone):
    the old default (torch's hook on the targets, r = 77, fp32 factors) and the new one (every
    2-D parameter, r = 16, bf16 factors) with each orthonormalisation."""
    from verl_commeff.dp_codec import DPCodecState, ReplicaGroups, exchange_tensors_
    from verl_commeff.dp_codec.hsdp import embedding_names, exchange_module_grads_
    from verl_commeff.workers.actor_state import select_targets

    named = [(n, p) for n, p in model.named_parameters()]
    for _, p in named:
        p.grad = torch.randn_like(p)
    targets = {n for n, _ in select_targets(model, CommEffConfig().anchor.targets)}
    embeddings = embedding_names(model)
    settings = (
        ("targets_r77_fp32", dict(rank=8 if tiny else 77, params="targets")),
        ("all2d_r16_bf16_qr", dict(rank=4 if tiny else 16, params="all_2d", factor_precision="bf16")),
        ("all2d_r16_bf16_cholqr2", dict(rank=4 if tiny else 16, params="all_2d", factor_precision="bf16",
                                        orthogonalization="cholesky_qr2")),
    )
    out = {}
    for label, knobs in settings:
        state = DPCodecState(start_iter=0, **knobs)
        if knobs["params"] == "targets":
            exchange = lambda: exchange_module_grads_(state, named, targets, ReplicaGroups(), embeddings)  # noqa: E731
        else:
            exchange = lambda: exchange_tensors_(state, [p.grad for _, p in named],  # noqa: E731
                                                 [i for i, (n, _) in enumerate(named) if n in embeddings])
        exchange()  # first exchange: Q initialisation
        out[label] = {"exchange_ms": _median_ms(exchange, repeats, device)}
    for _, p in named:
        p.grad = None
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (CI mode)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per tick (8; tiny 2)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per sequence (1024; tiny 32)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (28: the 1.5B model)")
    parser.add_argument("--warmup", type=int, default=5, help="ticks per variant before timing")
    parser.add_argument("--ticks", type=int, default=10, help="measured ticks per variant")
    parser.add_argument("--variants", default="stock,codec,commeff_triton,commeff_compiled,commeff_eager,commeff_fast")
    parser.add_argument("--no-dp-codec", action="store_true", help="skip the DP codec timing")
    parser.add_argument("--tune-kernels", action="store_true", help="also time the Triton kernels' launch shapes")
    parser.add_argument("--profile", action="store_true", help="also profile a step of stock, codec, commeff (CUDA)")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny for the CPU mode")
    shape = dict(TINY if args.tiny else QWEN25_15B)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    batch, tokens = args.batch or (2 if args.tiny else 8), args.tokens or (32 if args.tiny else 1024)
    variants = [v for v in args.variants.split(",") if v]
    if device.type != "cuda":
        variants = [v for v in variants if v != "commeff_triton"]
    torch.manual_seed(0)
    print(f"[bench] device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{shape['num_hidden_layers']} layers, {batch} x {tokens} tokens per tick", flush=True)
    model = build_model(shape, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    runs = [Variant(name, model, args.tiny, device, seed=i) for i, name in enumerate(variants)]
    n_params = sum(p.numel() for p in model.parameters())
    n_targets = sum(p.numel() for _, p in runs[-1].state.targets) if runs[-1].state is not None else 0
    print(f"[bench] {n_params / 1e9:.3f} B parameters, {n_targets / 1e9:.3f} B target coordinates", flush=True)
    gen = torch.Generator(device=device).manual_seed(1)
    batches = [torch.randint(0, shape["vocab_size"], (batch, tokens), device=device, generator=gen)
               for _ in range(args.warmup + args.ticks)]
    for i, ids in enumerate(batches):  # interleaved: one tick of each variant per round
        for v in runs:
            start = time.perf_counter()
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
            run_tick(v, model, optimizer, ids, device)
            if device.type == "cuda":
                end.record()
                end.synchronize()
                ms = begin.elapsed_time(end)
            else:
                ms = (time.perf_counter() - start) * 1e3
            if i >= args.warmup:
                v.tick_ms.append(ms)
            if v.state is not None and device.type == "cuda":
                v.collect()
                if i < args.warmup:
                    v.merger_ms.clear()
        print(f"[bench] round {i + 1}/{len(batches)}: " + ", ".join(f"{v.name} {v.tick_ms[-1]:.0f} ms"
              if v.tick_ms else f"{v.name} warm-up" for v in runs), flush=True)
    stock = statistics.median(runs[0].tick_ms) if runs[0].name == "stock" else None
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": shape, "batch": batch, "tokens": tokens,
              "params": n_params, "target_coords": n_targets, "variants": {}}
    for v in runs:
        med = statistics.median(v.tick_ms)
        report["variants"][v.name] = {"tick_ms": med, "ratio": med / stock if stock else None,
                                      "merger_ms": statistics.median(v.merger_ms) if v.merger_ms else None,
                                      "ticks_ms": v.tick_ms}
    main_run = next((v for v in runs if v.state is not None and v.state.cfg.anchor.enable), None)
    if main_run is not None:
        report["buffers"] = buffer_bytes(main_run.state.buffers())
        if device.type == "cuda":
            report["syncs"] = {v.name: dict(count_syncs(v, model, optimizer, batches[:2 * TICKS_PER_STEP], device))
                               for v in runs}
        report["kernels"] = time_kernels(main_run, device, repeats=5 if args.tiny else 20, tune=args.tune_kernels)
    if args.profile and device.type == "cuda":
        report["profile"] = profile_ticks(runs, model, optimizer, batches, device)
    if not args.no_dp_codec:
        report["dp_codec"] = time_dp_codec(model, device, repeats=3 if args.tiny else 10, tiny=args.tiny)
        if stock:
            for v in report["dp_codec"].values():
                v["ratio_to_stock_tick"] = v["exchange_ms"] / stock
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def print_report(r: dict) -> None:
    print(f"\n== {r['device']} | torch {r['torch']} | {r['params'] / 1e9:.3f} B params | {r['batch']} x {r['tokens']} "
          "tokens per tick ==")
    print(f"{'variant':<20}{'tick ms':>10}{'x stock':>9}{'merger ms':>11}")
    for name, v in r["variants"].items():
        ratio = f"{v['ratio']:.3f}" if v["ratio"] else "-"
        merger = f"{v['merger_ms']:.2f}" if v["merger_ms"] is not None else "-"
        print(f"{name:<20}{v['tick_ms']:>10.1f}{ratio:>9}{merger:>11}")
    if "kernels" in r:
        k = r["kernels"]
        print(f"\nmerger passes over {k['target_coords'] / 1e9:.3f} B coords: limit {k['limit_gb']:.2f} GB at "
              f"{k['copy_bandwidth_gbs']:.0f} GB/s copy = {k['limit_ms']:.2f} ms")
        for mode in ("triton", "compiled", "eager"):
            if mode in k:
                m = k[mode]
                total = m["stats_ms"] + m["merge_ms"]
                print(f"  {mode:<9} stats {m['stats_ms']:8.2f} ms  merge {m['merge_ms']:8.2f} ms  = {total:8.2f} ms "
                      f"({total / k['limit_ms']:.1f}x limit), held masks {m['held_mask_bytes'] / 2**20:.1f} MiB")
        for row in k.get("triton_tuning", []):
            print(f"  triton chunk {row['chunk']:>6} block {row['block']:>5} warps {str(row['warps']):>4} "
                  f"hints {str(row['hints']):>5}: "
                  f"stats {row['stats_ms']:.2f} ms, merge {row['merge_ms']:.2f} ms")
    if "syncs" in r:
        print("\nhost syncs over 2 steps (4 ticks) by site; [metrics()] = inside the once-per-step read:")
        for name, sites in r["syncs"].items():
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(sites.items())))
    if "buffers" in r:
        print("\ncomm-eff buffers per rank (MiB): " + ", ".join(f"{k} {v / 2**20:.3f}" for k, v in r["buffers"].items()))
    for name, p in r.get("profile", {}).items():
        print(f"\nprofile of one step (2 ticks), {name}: {p['total_ms']:.1f} ms of device time"
              + ("; ops differing most from stock (ms, calls):" if "vs_stock" in p else "; top ops:"))
        for key, count, ms in p.get("vs_stock", p["top"]):
            print(f"  {ms:+9.2f} ms  {count:+6d}x  {key[:90]}")
    if "dp_codec" in r:
        print("\nDP codec, one replica: " + ", ".join(
            f"{k} {v['exchange_ms']:.1f} ms" + (f" ({v['ratio_to_stock_tick']:.3f} of a stock tick)"
                                               if "ratio_to_stock_tick" in v else "")
            for k, v in r["dp_codec"].items()))


if __name__ == "__main__":
    main()
