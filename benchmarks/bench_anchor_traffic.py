"""Anchor traffic per fire: dense fp32 snapshot + fp32 M̄ vs sign bits vs delta-encoded snapshots.

A Qwen2.5-0.5B-shaped model (hidden 896, intermediate 4864, 14 heads / 2 KV heads × 64,
``--layers`` decoder layers, random init, ``--vocab`` token embedding, CPU) takes Adam steps
at lr 1e-6 (the seed's) on random gradients, fp32 master weights. After every step the actor
side encodes its weights with :class:`~verl_commeff.anchor.snapshot_delta.SnapshotEncoder`
(cadence 1), and a second encoder every 5 steps (cadence 5: snapshots 5 steps apart, the
default anchor cadence); the anchor side decodes and the result is checked bit for bit.

Per fire it prints the bytes of

(a) a dense fp32 snapshot + M̄ as fp32 shards of the target matrices (today's shards transport),
(b) a dense fp32 snapshot + M̄ as sign bits (``transport=sign``),
(c) a delta-encoded snapshot in bf16 (the GPU presets' compute dtype: FSDP mixed precision
    casts the fp32 master weights to bf16 for the forward) + sign bits,
(d) a delta-encoded snapshot in fp32 (the CPU preset) + sign bits,

with the ratio of (a) to each; (c) and (d) are the mean over the delta fires (the keyframe
excluded) and amortised with one dense keyframe every ``--keyframe-every`` snapshots.
Also: the changed-element fraction per snapshot at cadence 1 and 5, and encode/decode
seconds per snapshot.

Usage: ``python benchmarks/bench_anchor_traffic.py [--layers 4] [--steps 15] [--vocab 8192]``
(2-core machine: a few layers; per-fire ratios do not depend on the layer count).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from verl_commeff.anchor.snapshot_delta import SnapshotDecoder, SnapshotEncoder  # noqa: E402
from verl_commeff.config import DEFAULT_TARGETS  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS = 896, 4864, 14, 2


def build_model(layers: int, vocab: int) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS, num_hidden_layers=layers, vocab_size=vocab,
                      tie_word_embeddings=True, torch_dtype="float32")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def target_numels(model: torch.nn.Module) -> list[int]:
    wanted = tuple(f".{s}.weight" for s in DEFAULT_TARGETS)
    return [p.numel() for n, p in model.named_parameters() if n.endswith(wanted)]


def mb(x: float) -> str:
    return f"{x / 2**20:9.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--keyframe-every", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model = build_model(args.layers, args.vocab)
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    targets = target_numels(model)
    opt = torch.optim.Adam(params, lr=args.lr)
    print(f"model: {args.layers} Qwen2.5-0.5B-shaped layers + {args.vocab}-token tied embedding, "
          f"{n_params / 1e6:.1f} M parameters, {sum(targets) / 1e6:.1f} M in {len(targets)} target matrices; "
          f"Adam lr {args.lr:g}, random gradients, fp32 master weights")

    dense_fp32 = n_params * 4  # a dense fp32 snapshot
    m_bar_shards = sum(targets) * 4  # M̄ as fp32 shards
    m_bar_signs = sum((n + 7) // 8 for n in targets)  # M̄ as packed sign bits

    runs = {  # name -> (dtype, cadence)
        "bf16 c1": (torch.bfloat16, 1), "fp32 c1": (torch.float32, 1),
        "bf16 c5": (torch.bfloat16, 5), "fp32 c5": (torch.float32, 5),
    }
    encoders = {k: SnapshotEncoder(d) for k, (d, _) in runs.items()}
    decoders = {k: SnapshotDecoder() for k in runs}
    stats = {k: {"bytes": [], "changed": [], "enc_s": [], "dec_s": [], "keyframe": None} for k in runs}
    gen = torch.Generator().manual_seed(1)
    for step in range(0, args.steps + 1):
        if step:
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        shards = [p.detach() for p in params]  # one rank holding everything (no copy: the encoder casts)
        for name, (dtype, cadence) in runs.items():
            if step % cadence:
                continue
            t0 = time.perf_counter()
            snap = encoders[name].encode(shards)
            t1 = time.perf_counter()
            got = decoders[name].decode(snap)
            t2 = time.perf_counter()
            if step == args.steps:  # the last snapshot checked bit for bit (cheap enough once)
                int_of = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[dtype]
                assert all(torch.equal(g.view(int_of), s.to(dtype).view(int_of)) for g, s in zip(got, shards))
            s = stats[name]
            if snap.is_keyframe:
                s["keyframe"] = snap.nbytes()
                continue
            s["bytes"].append(snap.nbytes())
            s["changed"].append(snap.changed_fraction())
            s["enc_s"].append(t1 - t0)
            s["dec_s"].append(t2 - t1)
        if step:
            print(f"step {step}: " + ", ".join(f"{k} changed {stats[k]['changed'][-1]:.4%}"
                                               for k, (_, c) in runs.items() if step % c == 0), flush=True)

    base = dense_fp32 + m_bar_shards
    print("\nbytes per fire (one actor rank holding the whole model; ratio = (a) / this):")
    print(f"  (a) dense fp32 snapshot + fp32 M̄ shards: {mb(base)}   1.0x")
    b = dense_fp32 + m_bar_signs
    print(f"  (b) dense fp32 snapshot + M̄ sign bits:    {mb(b)}   {base / b:.1f}x")
    for label, name in (("(c) delta bf16 snapshot", "bf16 c5"), ("(d) delta fp32 snapshot", "fp32 c5"),
                        ("    delta bf16, cadence 1", "bf16 c1"), ("    delta fp32, cadence 1", "fp32 c1")):
        s = stats[name]
        delta = statistics.mean(s["bytes"])
        amort = ((args.keyframe_every - 1) * delta + s["keyframe"]) / args.keyframe_every
        print(f"  {label} + sign bits: {mb(delta + m_bar_signs)}   {base / (delta + m_bar_signs):.1f}x   "
              f"(with a keyframe every {args.keyframe_every}: {mb(amort + m_bar_signs)}   "
              f"{base / (amort + m_bar_signs):.1f}x)")
    print("\nchanged-element fraction per snapshot (mean / max over the delta snapshots) and seconds per snapshot:")
    for name, s in stats.items():
        print(f"  {name}: changed {statistics.mean(s['changed']):.4%} / {max(s['changed']):.4%}; "
              f"encode {statistics.mean(s['enc_s']):.2f} s, decode {statistics.mean(s['dec_s']):.2f} s "
              f"({len(s['bytes'])} deltas)")


if __name__ == "__main__":
    main()
