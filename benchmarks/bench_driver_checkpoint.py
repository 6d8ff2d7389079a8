"""Size of the driver checkpoint's snapshot payloads (``commeff_driver.pt``), per chain vs once per payload.

The replay ring keeps, for every snapshot still needed by a pending fire, the chain of
delta-encoded payloads from the last keyframe (:class:`~verl_commeff.anchor.snapshot_delta.SnapshotChain`).
The chains share their keyframe and earlier deltas. The checkpoint used to resolve every
link of every chain (one copy of a payload per chain that holds it); it now stores each
distinct payload once (:meth:`~verl_commeff.trainer.anchor_driver.AnchorDriver.state_dict` with ``fetch``).

Two parts, both driving the real :class:`~verl_commeff.trainer.anchor_driver.AnchorDriver`
with the seed's schedule (K = 20, cadence 5, 2 ticks per step as in the gpu preset's
128 prompts / mini-batch 64, a keyframe every 32 snapshots), and "saving" after every step:

1. **Measured** on a small Qwen2.5-shaped model (``--layers`` layers, ``--vocab`` tokens, one
   actor rank, fp32 master weights, Adam at lr 1e-6 on random gradients, 2 Adam steps per
   global step, real :class:`~verl_commeff.anchor.snapshot_delta.SnapshotEncoder` in bf16): the
   ``torch.save`` size of the ring's snapshots stored per chain (before) and once per payload
   (now), and the changed fraction of the delta snapshots.
2. **Computed** for a Qwen2.5-1.5B-shaped model (hidden 1536, intermediate 8960, 28 layers,
   12 / 2 heads × 128, 151936-token tied embedding: shapes from a meta-device model, no
   memory) sharded by rows over ``--actor-ranks`` FSDP2 ranks: payload bytes per actor rank
   from the encoder's byte rule (keyframe: 2 bytes per element; delta: a bit per element plus
   2 bytes per changed element) at the changed fraction measured in part 1 (mean) and at
   ``--changed`` (default 7.79 %, the largest bf16 fraction at cadence 5 in docs/benchmarks.md).

Usage: ``python benchmarks/bench_driver_checkpoint.py [--layers 1] [--vocab 4096] [--steps 60]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from verl_commeff.anchor.snapshot_delta import SnapshotEncoder  # noqa: E402
from verl_commeff.schedule import FireSchedule  # noqa: E402
from verl_commeff.trainer.anchor_driver import AnchorDriver  # noqa: E402

K, CADENCE, TICKS_PER_STEP, KEYFRAME_EVERY = 20, 5, 2, 32
SEED_SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def qwen2(device: str, **shape) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(Qwen2Config(torch_dtype="float32", **shape))


def driver_over_steps(take_snapshot, steps: int, keyframe_every: int = KEYFRAME_EVERY):
    """The seed's driver, strict release; yields after every step (a save point)."""
    driver = AnchorDriver(FireSchedule(K, CADENCE, TICKS_PER_STEP), take_snapshot, submit=lambda *job: ["f"],
                          offer=lambda *a: None, keyframe_every=keyframe_every)
    for step in range(1, steps + 1):
        ticks = range((step - 1) * TICKS_PER_STEP + 1, step * TICKS_PER_STEP + 1)
        driver.before_update(step, [("mb", t) for t in ticks])
        yield step, driver
        driver.after_update(ticks[-1])


def per_chain_and_once(driver, size) -> tuple[int, int]:
    """(bytes stored per chain link, as before; bytes stored once per payload, as now)."""
    chains = driver.ring.state_dict()["snapshots"].values()
    entries = [e for chain in chains for link in chain.links for e in link]
    return sum(size(e) for e in entries), sum(size(e) for e in {id(e): e for e in entries}.values())


def saved_bytes(state) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def measured(layers: int, vocab: int, steps: int):
    """Part 1: real payloads, real torch.save sizes."""
    import copy

    shape = dict(SEED_SHAPE, num_hidden_layers=layers, vocab_size=vocab)
    model = qwen2("cpu", **shape)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-6)
    encoder = SnapshotEncoder(torch.bfloat16)
    changed, rows = [], []
    gen = torch.Generator().manual_seed(1)

    def take_snapshot(keyframe=False):
        snap = encoder.encode([p.detach() for p in params], keyframe=keyframe)
        if not snap.is_keyframe:
            changed.append(snap.changed_fraction())
        return [snap]  # one actor rank

    for step, driver in driver_over_steps(take_snapshot, steps):
        # before: every chain link resolved on its own (ray.get gives a new copy each time)
        before = driver.state_dict()
        before["ring"]["snapshots"] = {s: c.map_links(lambda link: [copy.deepcopy(e) for e in link])
                                       for s, c in before["ring"]["snapshots"].items()}
        now = driver.state_dict(fetch=lambda e: e)
        rows.append((step, saved_bytes(before), saved_bytes(now), *per_chain_and_once(driver, lambda e: e.nbytes())))
        for _ in range(TICKS_PER_STEP):  # the step's Adam steps: the next snapshot sees them
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    return sum(p.numel() for p in params), rows, changed


@dataclass
class SizedPayload:
    """A stand-in for one actor rank's encoded snapshot: only its bytes."""

    nbytes: int


def computed(actor_ranks: int, steps: int, fraction: float, keyframe_every: int):
    """Part 2: the 1.5B shape's payload bytes per actor rank, the same driver and chains."""
    model = qwen2("meta", **SEED_SHAPE)
    # FSDP2 shards rows as torch.chunk does; the whole model split over the ranks, rank 0's share (the largest)
    shard_numels = [p[0].numel() * -(-p.shape[0] // actor_ranks) if p.dim() else 1 for p in model.parameters()]
    total = sum(p.numel() for p in model.parameters())
    keyframe = sum(2 * n for n in shard_numels)
    delta = sum((n + 7) // 8 + 2 * round(fraction * n) for n in shard_numels)

    def take_snapshot(keyframe=False):
        return [SizedPayload(keyframe_bytes if keyframe else delta)]

    keyframe_bytes = keyframe
    rows = [(step, *per_chain_and_once(driver, lambda e: e.nbytes)) for step, driver in
            driver_over_steps(take_snapshot, steps, keyframe_every)]
    return total, keyframe, delta, rows


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30, help="global steps of the measured part")
    parser.add_argument("--computed-steps", type=int, default=400, help="global steps of the computed part")
    parser.add_argument("--actor-ranks", type=int, default=4)
    parser.add_argument("--changed", type=float, default=0.0779)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"schedule: K={K}, cadence {CADENCE}, {TICKS_PER_STEP} ticks per step, a keyframe every "
          f"{KEYFRAME_EVERY} snapshots; a save point after every step")

    n, rows, changed = measured(args.layers, args.vocab, args.steps)
    print(f"\n1. measured: {n / 1e6:.1f} M parameters, one actor rank, bf16 snapshots, {args.steps} steps; "
          f"changed fraction of the deltas: mean {statistics.mean(changed):.2%}, max {max(changed):.2%}")
    before = [r[1] for r in rows]
    now = [r[2] for r in rows]
    print(f"   torch.save bytes of the driver state, max over steps: per chain {max(before) / 2**20:.2f} MiB, "
          f"once per payload {max(now) / 2**20:.2f} MiB ({max(before) / max(now):.1f}x); mean "
          f"{statistics.mean(before) / 2**20:.2f} vs {statistics.mean(now) / 2**20:.2f} MiB")
    worst = max(rows, key=lambda r: r[1])
    print(f"   at step {worst[0]} (the largest): payload bytes per chain {worst[3] / 2**20:.2f} MiB, "
          f"once {worst[4] / 2**20:.2f} MiB; file {worst[1] / 2**20:.2f} vs {worst[2] / 2**20:.2f} MiB")

    print(f"\n2. computed: Qwen2.5-1.5B shape over {args.actor_ranks} FSDP2 actor ranks "
          f"(bytes of actor rank 0, the largest shard; x{args.actor_ranks} for the whole file)")
    print("| changed fraction | keyframe every | keyframe | delta | per chain: max / mean over steps | "
          "once per payload: max / mean | max ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, fraction, every in ((f"{statistics.mean(changed):.2%} (measured mean)", statistics.mean(changed),
                                    KEYFRAME_EVERY),
                                   (f"{args.changed:.2%}", args.changed, KEYFRAME_EVERY),
                                   (f"{args.changed:.2%}", args.changed, 8)):
        total, keyframe, delta, crows = computed(args.actor_ranks, args.computed_steps, fraction, every)
        chain = [r[1] for r in crows]
        once = [r[2] for r in crows]
        print(f"| {label} | {every} | {gib(keyframe)} | {gib(delta)} | {gib(max(chain))} / "
              f"{gib(statistics.mean(chain))} | {gib(max(once))} / {gib(statistics.mean(once))} | "
              f"{max(chain) / max(once):.1f}x |")
    print(f"({total / 1e9:.2f} B parameters)")


if __name__ == "__main__":
    main()
