"""Time of one actor snapshot (``SnapshotEncoder.encode`` + ``to_host``) on a mid-size shape, new vs old.

The weights: the 14 merger-target matrices of 2 Qwen2.5-0.5B-shaped decoder layers (per layer
q and o 896×896, k and v 128×896, gate and up 4864×896, down 896×4864; 29.8 M parameters),
fp32 master weights drawn N(0, 0.02²) (Qwen's initializer range), on the host. For each
snapshot dtype (bf16, fp32) and each regime, an encoder of this tree and the encoder as it was
before (kept below as :class:`_OldEncoder`, the baseline, in this file only) send a keyframe,
then take turns (the order alternates; one untimed round first) encoding the same weights after
each change:

- ``adam``: one ``torch.optim.Adam`` step at lr 1e-6 on N(0, 1) gradients, after 3 warm-up
  steps (the RL regime: measured 1.5–3 % of the bf16 elements change per step; every fp32 one does);
- ``adam_lr1e-3``: the same at lr 1e-3, the learning rate of ``bench_anchor_midsize.py``'s
  harness (90–95 % of the bf16 elements change: a bf16 tensor is still sent as a delta while
  under 93.75 % changed, the byte rule's break-even);
- ``sparse``: 1 % of the elements (random positions) nudged by a relative 2⁻⁶ (the sparser
  deltas of later steps);
- ``all``: every element negated (every bit pattern changes: the dense fallback).

Every payload of the new encoder is checked against the old one's, tensor by tensor, bit for
bit (the wire format is unchanged). Printed: median ms per snapshot of each, the ratio
new/old, the changed fraction; ``--stages`` also times the parts of one encode separately.

Usage: ``PYTHONPATH=$PWD python benchmarks/bench_snapshot_encode.py [--rounds 6] [--threads 2] [--stages]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from verl_commeff.anchor.snapshot_delta import (  # noqa: E402
    EncodedSnapshot,
    EncodedTensor,
    SnapshotEncoder,
    _bits,
    _changed_positions,
)
from verl_commeff.mergers.sign_bits import pack_bool  # noqa: E402

HIDDEN, INTERMEDIATE, KV = 896, 4864, 128


def layer_shapes(layers: int) -> list[tuple[int, int]]:
    per_layer = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),
                 (INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
    return per_layer * layers


# ---------------------------------------------------------------------------- the baseline (main 7be822c)
def _old_pack_bool(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, 8).to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (groups * weights).sum(dim=1, dtype=torch.uint8)


class _OldEncoder(SnapshotEncoder):
    """``SnapshotEncoder.encode`` as on main 7be822c (before this benchmark's branch)."""

    def encode(self, shards, keyframe=False):
        cast = [s.detach().to(self.dtype, copy=True) if s.is_floating_point() else s.detach().clone() for s in shards]
        base = None if keyframe else self._base
        self.last_id += 1
        if base is None:
            snap = EncodedSnapshot(self.stream, self.last_id, None, [EncodedTensor(c.shape, dense=c) for c in cast])
        else:
            changed = [(_bits(c) != _bits(b)).reshape(-1) for c, b in zip(cast, base)]
            counts = torch.stack([torch.count_nonzero(m) for m in changed]).tolist() if changed else []
            tensors = []
            for c, m, n_changed in zip(cast, changed, counts):
                size, n = c.element_size(), c.numel()
                if (n + 7) // 8 + n_changed * size < n * size:
                    tensors.append(EncodedTensor(c.shape, mask=_old_pack_bool(m), values=c.reshape(-1)[m]))
                else:
                    tensors.append(EncodedTensor(c.shape, dense=c))
            snap = EncodedSnapshot(self.stream, self.last_id, self.last_id - 1, tensors)
        self._base = cast
        return snap


# ---------------------------------------------------------------------------- checks and regimes
def same_wire(a: EncodedSnapshot, b: EncodedSnapshot) -> bool:
    """Both payloads carry the same tensors, bit for bit (dense vs delta included)."""
    if len(a.tensors) != len(b.tensors):
        return False
    for x, y in zip(a.tensors, b.tensors):
        if x.is_delta != y.is_delta or x.shape != y.shape:
            return False
        for p, q in zip(x.payload(), y.payload()):
            if p.dtype != q.dtype or p.shape != q.shape or not torch.equal(_bits(p), _bits(q)):
                return False
    return True


def make_change(regime: str, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, gen: torch.Generator):
    with torch.no_grad():
        if regime.startswith("adam"):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        elif regime == "sparse":
            for p in params:
                flat = p.view(-1)
                idx = torch.randint(0, flat.numel(), (flat.numel() // 100,), generator=gen)
                flat[idx] *= 1 + 2.0 ** -6
        elif regime == "all":
            for p in params:
                p.neg_()
        else:
            raise ValueError(regime)


def stages(shards: list[torch.Tensor], dtype: torch.dtype, base: list[torch.Tensor], reps: int = 3) -> dict:
    """ms of each part of one encode, each over all tensors, min of ``reps``."""
    def timed(fn):
        best, out = float("inf"), None
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best * 1e3, out

    res = {}
    res["cast to the snapshot dtype (a copy)"], cast = timed(lambda: [s.to(dtype, copy=True) for s in shards])
    res["bit compare (ne on the int view)"], masks = timed(
        lambda: [torch.ne(_bits(c), _bits(b)).reshape(-1) for c, b in zip(cast, base)])
    res["count_nonzero + one host read"], counts = timed(
        lambda: torch.stack([torch.count_nonzero(m) for m in masks]).tolist())
    res["pack_bool (old: (n/8, 8) multiply-sum)"], _ = timed(lambda: [_old_pack_bool(m) for m in masks])
    res["pack_bool (new: int64 multiply)"], _ = timed(lambda: [pack_bool(m) for m in masks])
    res["gather (old: c[mask])"], _ = timed(lambda: [c.reshape(-1)[m] for c, m in zip(cast, masks)])
    res["positions: nonzero"], _ = timed(lambda: [m.nonzero().squeeze(1) for m in masks])
    res["positions: new (_changed_positions)"], pos = timed(
        lambda: [_changed_positions(m, k) for m, k in zip(masks, counts)])
    res["gather: index_select"], _ = timed(lambda: [c.reshape(-1).index_select(0, p) for c, p in zip(cast, pos)])
    res["changed fraction"] = sum(counts) / sum(m.numel() for m in masks)
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6,
                        help="snapshots timed per regime and dtype (even: each encoder goes first equally often)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also time the parts of one encode")
    parser.add_argument("--regimes", default="adam,sparse,adam_lr1e-3,all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = layer_shapes(args.layers)
    print(f"{len(shapes)} matrices of {args.layers} Qwen2.5-0.5B-shaped layers, "
          f"{sum(a * b for a, b in shapes) / 1e6:.1f} M fp32 parameters on the host; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for regime in args.regimes.split(","):
        for dtype in (torch.bfloat16, torch.float32):
            gen = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
            opt = torch.optim.Adam(params, lr=1e-3 if regime == "adam_lr1e-3" else 1e-6)
            shards = [p.detach() for p in params]
            if regime.startswith("adam"):  # Adam's first steps move every element by lr: start after 3
                for _ in range(3):
                    make_change(regime, params, opt, gen)
            new, old = SnapshotEncoder(dtype), _OldEncoder(dtype)
            old.stream = new.stream = uuid.uuid4().hex
            assert same_wire(new.encode(shards).to_host(), old.encode(shards).to_host())  # keyframes
            times = {"new": [], "old": []}
            changed = []
            for r in range(-1, args.rounds):  # round -1: untimed (the first encode after a keyframe is slower)
                make_change(regime, params, opt, gen)
                got = {}
                for name in (("new", "old") if r % 2 == 0 else ("old", "new")):
                    enc = new if name == "new" else old
                    t0 = time.perf_counter()
                    got[name] = enc.encode(shards).to_host()
                    if r >= 0:
                        times[name].append(time.perf_counter() - t0)
                if not same_wire(got["new"], got["old"]):
                    raise AssertionError(f"{regime} {dtype}: the new payload differs from the old one")
                if r >= 0:
                    changed.append(got["new"].changed_fraction())
            n_new, n_old = statistics.median(times["new"]) * 1e3, statistics.median(times["old"]) * 1e3
            kinds = "delta" if all(t.is_delta for t in got["new"].tensors) else (
                "dense" if not any(t.is_delta for t in got["new"].tensors) else "mixed")
            rows.append((regime, str(dtype).replace("torch.", ""), statistics.mean(changed), kinds, n_old, n_new))
            print(f"{regime:11s} {rows[-1][1]:9s} changed {rows[-1][2] * 100:6.2f} % ({kinds:5s}): "
                  f"old {n_old:7.1f} ms  new {n_new:7.1f} ms  new/old {n_new / n_old:.3f}  "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
            if args.stages:
                make_change(regime, params, opt, gen)
                base = [b.clone() for b in new._base]
                for k, v in stages(shards, dtype, base).items():
                    print(f"    {k:40s} {v * 100:6.2f} %" if k == "changed fraction" else f"    {k:40s} {v:7.1f} ms")
            del params, opt, shards, new, old
    print("\n| regime | snapshot dtype | changed | payload | old ms | new ms | new/old |")
    print("|---|---|---|---|---|---|---|")
    for regime, dt, ch, kinds, o, n in rows:
        print(f"| {regime} | {dt} | {ch * 100:.2f} % | {kinds} | {o:.1f} | {n:.1f} | {n / o:.3f} |")


if __name__ == "__main__":
    main()
