"""Whole-model data-parallel bytes of the PowerSGD codec at Qwen2.5-1.5B-Instruct's shapes, and its cost.

The model is built from its config on the meta device (hidden 1536, 28 layers, 12 heads, 2 KV
heads, intermediate 8960, vocab 151936, tied embeddings, q/k/v biases: 1,543,714,304
parameters), no download. Three parts:

1. **Bytes** (2 processes joined by gloo = 2 replicas of 1 shard, the codec's real exchange
   path through :func:`~verl_commeff.dp_codec.exchange_named_grads_`, counted by the codec's
   ledger and checked against a counting wrapper around ``torch.distributed.all_reduce``).
   A whole fp32 model per process does not fit this machine, so each setting exchanges two
   parts with random gradients of their exact shapes: the vocabulary part (tied embedding /
   LM head and the final norm) and one decoder layer; the whole model is the first plus 28
   times the second. That sum is checked against a third exchange of the vocabulary part
   with two layers (bytes are additive: one flat buffer per collective, no padding with one
   shard). Printed: the table rank × factor precision × parameter set → whole-model ratio
   (sent / dense all-reduce of every parameter, 1-D included) and a bandwidth what-if
   (seconds of cross-replica traffic per step, 2 exchanges per step, at 1 / 10 / 100 Gbit/s
   per replica link; a 2-replica ring all-reduce moves each rank's buffer once per
   direction).
2. **Structure** (meta tensors, no memory): the aten ops dispatched and the QR calls (and the
   matrices they factor) per warm-started exchange of the whole model, shape-batched (with
   ``qr`` and with ``cholesky_qr2``) vs the per-matrix path it replaced
   (``tests/dp_codec/per_matrix_reference.py``). On a GPU every op is at least one kernel
   launch, and a batched QR of tall matrices is one cuSOLVER factorisation per matrix.
3. **CPU time** per warm-started exchange, one process, one thread (the simulation path:
   compute only, no collective), the three paths on the same gradients in the same process,
   interleaved: the vocabulary part plus ``--timing-layers`` decoder layers at
   ``--timing-rank`` on every 2-D parameter, fp32.

Usage: ``python benchmarks/bench_dp_codec.py [--ranks 4,8,16,32,64,77] [--timing-layers 4]``
(about 10 minutes on a 2-core machine; ``--tiny`` runs a 2-layer, 4096-token model in seconds,
for CI).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

QWEN_1P5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # SPEC §3 default
PRECISIONS = ("full", "bf16")
PARAM_SETS = ("targets", "all_2d")
TICKS_PER_STEP = 2  # the seed's surface: train batch 128, PPO mini-batch 64
PATHS = {  # exchange path → commeff.dp_codec.orthogonalization (the per-matrix reference knows qr only)
    "per-matrix": "qr", "batched": "qr", "batched, cholesky_qr2": "cholesky_qr2",
}


def model_shapes(config: dict) -> tuple[list[tuple[str, tuple[int, ...]]], set[str], set[str], int]:
    """(name, shape) of every parameter of the Qwen2 model, its embedding names, target names, layers."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl_commeff.dp_codec.hsdp import embedding_names

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**config))
    shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    targets = {n for n, s in shapes if len(s) == 2 and any(n.endswith(f".{t}.weight") for t in TARGETS)}
    return shapes, embedding_names(model), targets, config["num_hidden_layers"]


def parts(shapes, layers: int) -> dict[str, list]:
    """The vocabulary part (everything outside the decoder layers), one layer, and the check part."""
    vocab = [(n, s) for n, s in shapes if ".layers." not in n]
    layer = [(n, s) for n, s in shapes if ".layers.0." in n]
    two = [(n, s) for n, s in shapes if ".layers.0." in n or (layers > 1 and ".layers.1." in n)]
    return {"vocab": vocab, "layer": layer, "check": vocab + two}  # "layer" ⊂ "check"


def _random(named_shapes, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    if device == "meta":
        return [(n, torch.empty(s, device="meta"), s[0] if s else 1) for n, s in named_shapes]
    return [(n, torch.randn(s, generator=gen), s[0] if s else 1) for n, s in named_shapes]


# ---- 1. bytes, 2 processes on gloo ----------------------------------------------------------
def _bytes_worker(rank, world, port, config, ranks, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from verl_commeff.dp_codec import DPCodecState, ReplicaGroups, exchange_named_grads_

    shapes, embeddings, targets, layers = model_shapes(config)
    groups = ReplicaGroups(replica=dist.group.WORLD)
    counted = {"bytes": 0}
    orig = dist.all_reduce

    def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        counted["bytes"] += tensor.numel() * tensor.element_size()
        return orig(tensor, op=op, group=group, async_op=async_op)

    by_name = {n: g for n, g, _ in _random(parts(shapes, layers)["check"], seed=rank)}  # shared by the parts
    grads = {part: [(n, by_name[n], s[0] if s else 1) for n, s in named]
             for part, named in parts(shapes, layers).items()}
    results = {}
    dist.all_reduce = counting
    try:
        for params in PARAM_SETS:
            for precision in PRECISIONS:
                for r in ranks:
                    row = {}
                    for part, named in grads.items():
                        state = DPCodecState(rank=r, start_iter=0, params=params, factor_precision=precision)
                        counted["bytes"] = 0
                        exchange_named_grads_(state, named, targets, embeddings, groups)
                        ledger = state.ledger
                        assert counted["bytes"] == ledger.sent, (part, counted["bytes"], ledger.sent)
                        row[part] = (ledger.sent, ledger.dense_equiv, ledger.factors_sent, ledger.compressed)
                    for i in range(3):  # additivity: vocab + 2 layers == vocab + 2 × layer
                        assert row["check"][i] == row["vocab"][i] + min(layers, 2) * row["layer"][i], (row, i)
                    results[(params, precision, r)] = row
    finally:
        dist.all_reduce = orig
    out.put((rank, results))
    dist.barrier()
    dist.destroy_process_group()


def measure_bytes(config: dict, ranks: list[int]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_bytes_worker, args=(2, port, config, ranks, out), nprocs=2, join=True, start_method="spawn")
    per_rank = dict(out.get() for _ in range(2))
    assert per_rank[0] == per_rank[1], "both replicas must hand the same bytes to the collectives"
    return per_rank[0]


def print_bytes(results: dict, layers: int, ranks: list[int]) -> None:
    def whole(row, i):
        return row["vocab"][i] + layers * row["layer"][i]

    any_row = next(iter(results.values()))
    dense = whole(any_row, 1)
    print(f"\n## 1. Whole-model bytes per exchange (per replica; vocabulary part + {layers} × one layer, "
          f"measured on gloo, ledger == counted all_reduce)\n")
    print(f"dense all-reduce of every gradient: {dense:,d} B ({dense / 1e9:.3f} GB)\n")
    print("| parameters | factor precision | " + " | ".join(f"r = {r}" for r in ranks) + " |")
    print("|---|---|" + "---|" * len(ranks))
    for params in PARAM_SETS:
        for precision in PRECISIONS:
            cells = []
            for r in ranks:
                sent = whole(results[(params, precision, r)], 0)
                cells.append(f"{sent / dense:.4f} ({dense / sent:.0f}×)")
            print(f"| {params} | {precision} | " + " | ".join(cells) + " |")
    print("\nratio = sent / dense (fewer bytes ×); 'targets' leaves the embedding / LM head dense, 1-D always dense")
    print(f"\n## Bandwidth what-if: cross-replica seconds per step ({TICKS_PER_STEP} exchanges), one replica link\n")
    print("| setting | bytes per step | 1 Gbit/s | 10 Gbit/s | 100 Gbit/s |")
    print("|---|---|---|---|---|")
    rows = [("dense all-reduce", dense)]
    for params, precision, r in [("targets", "full", 77), ("all_2d", "full", 77), ("all_2d", "full", 16),
                                 ("all_2d", "bf16", 32), ("all_2d", "bf16", 16), ("all_2d", "bf16", 8)]:
        if (params, precision, r) in results:
            rows.append((f"{params}, {precision}, r = {r}", whole(results[(params, precision, r)], 0)))
    for label, per_tick in rows:
        step = per_tick * TICKS_PER_STEP
        print(f"| {label} | {step / 1e6:,.1f} MB | " + " | ".join(f"{step * 8 / (g * 1e9):.3f} s" for g in (1, 10, 100))
              + " |")


# ---- 2. structure: ops and QRs per exchange on meta tensors ----------------------------------
def exchange_on_one_process(path: str, state, memory, named, targets, embeddings) -> None:
    """One exchange of ``named`` (name, grad, rows) on this process along ``path`` (:data:`PATHS`)."""
    from verl_commeff.dp_codec import ReplicaGroups, exchange_named_grads_
    from verl_commeff.dp_codec.powersgd import GradShard

    from tests.dp_codec.per_matrix_reference import per_matrix_exchange_

    if path != "per-matrix":
        exchange_named_grads_(state, named, targets, embeddings, ReplicaGroups())
    else:
        shards = [GradShard(n, g, rows, compressible=g.dim() == 2, embedding=n in embeddings) for n, g, rows in named]
        per_matrix_exchange_(state, memory, shards, ReplicaGroups())


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.qr_matrices = Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        self.ops[name] += 1
        if name == "linalg_qr":
            self.qr_matrices += args[0].shape[:-2].numel()
        return func(*args, **(kwargs or {}))


def count_ops(config: dict, rank: int) -> dict[str, tuple[int, int, int]]:
    """path → (aten ops, QR calls, matrices factored) of one warm-started exchange, meta tensors."""
    from verl_commeff.dp_codec import DPCodecState

    from tests.dp_codec.per_matrix_reference import PerMatrixMemory

    shapes, embeddings, targets, _ = model_shapes(config)
    out = {}
    for path, orth in PATHS.items():
        state = DPCodecState(rank=rank, start_iter=0, params="all_2d", orthogonalization=orth)
        memory = PerMatrixMemory()
        for tick in range(2):  # the second is warm-started
            named = _random(shapes, 0, device="meta")
            counter = _OpCounter()
            with counter:
                exchange_on_one_process(path, state, memory, named, targets, embeddings)
        out[path] = (sum(counter.ops.values()), counter.ops["linalg_qr"], counter.qr_matrices)
    return out


# ---- 3. CPU time, one process ----------------------------------------------------------------
def time_exchanges(config: dict, layers: int, rank: int, reps: int) -> dict[str, list[tuple[float, float]]]:
    """path → [(CPU seconds, wall seconds)] per warm-started exchange, interleaved."""
    from verl_commeff.dp_codec import DPCodecState

    from tests.dp_codec.per_matrix_reference import PerMatrixMemory

    torch.set_num_threads(1)
    shapes, embeddings, targets, _ = model_shapes(config)
    kept = [(n, s) for n, s in shapes if ".layers." not in n or int(n.split(".layers.")[1].split(".")[0]) < layers]
    states = {path: DPCodecState(rank=rank, start_iter=0, params="all_2d", orthogonalization=orth)
              for path, orth in PATHS.items()}
    memory = PerMatrixMemory()
    times = {k: [] for k in states}
    for rep in range(reps + 1):  # the first round warms up (random Q, allocations)
        for path, state in states.items():
            named = _random(kept, seed=rep)  # drawn afresh (untimed): one copy of the gradients in memory
            c0, w0 = time.process_time(), time.perf_counter()
            exchange_on_one_process(path, state, memory, named, targets, embeddings)
            if rep:
                times[path].append((time.process_time() - c0, time.perf_counter() - w0))
            del named
    return times


def print_ops(config: dict, rank: int) -> None:
    print(f"\n## 2. Ops per warm-started exchange, whole model, r = {rank}, every 2-D parameter (meta tensors)\n")
    print("| path | aten ops | QR calls | matrices factored |")
    print("|---|---|---|---|")
    ops = count_ops(config, rank)
    for path, (n_ops, qr_calls, qr_mats) in ops.items():
        print(f"| {path} | {n_ops:,d} | {qr_calls} | {qr_mats} |")
    for path in list(PATHS)[1:]:
        print(f"\n{path} / per-matrix aten ops: {ops[path][0] / ops['per-matrix'][0]:.3f}")


def print_times(config: dict, layers: int, rank: int, reps: int) -> None:
    times = time_exchanges(config, layers, rank, reps)
    print(f"\n## 3. CPU time per warm-started exchange: vocabulary part + {layers} layers, r = {rank}, "
          f"every 2-D parameter, fp32, 1 thread, median of {reps} (interleaved)\n")
    print("| path | CPU s | wall s |")
    print("|---|---|---|")
    med = {p: (statistics.median(c for c, _ in t), statistics.median(w for _, w in t)) for p, t in times.items()}
    for path in PATHS:
        print(f"| {path} | {med[path][0]:.3f} | {med[path][1]:.3f} |")
    for path in list(PATHS)[1:]:
        print(f"\n{path} / per-matrix: CPU {med[path][0] / med['per-matrix'][0]:.3f}, "
              f"wall {med[path][1] / med['per-matrix'][1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="4,8,16,32,64,77", help="comma-separated r values of the bytes table")
    parser.add_argument("--timing-rank", type=int, default=16)
    parser.add_argument("--timing-layers", type=int, default=4, help="decoder layers in the CPU timing")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 4096-token model: seconds, for CI")
    parser.add_argument("--parts", default="bytes,ops,time", help="comma-separated: bytes, ops, time")
    args = parser.parse_args()
    wanted = set(args.parts.split(","))
    if not wanted <= {"bytes", "ops", "time"}:
        parser.error(f"--parts {args.parts!r}: the parts are bytes, ops, time")
    config = TINY if args.tiny else QWEN_1P5B
    ranks = [int(r) for r in args.ranks.split(",")]
    shapes, embeddings, _, layers = model_shapes(config)
    numel = sum(torch.Size(s).numel() for _, s in shapes)
    print(f"# DP codec at {'a tiny Qwen2' if args.tiny else 'Qwen2.5-1.5B-Instruct'}'s shapes: {numel:,d} parameters, "
          f"{layers} layers, embeddings {sorted(embeddings)}; torch {torch.__version__}")

    if "bytes" in wanted:
        print_bytes(measure_bytes(config, ranks), layers, ranks)
    if "ops" in wanted:
        print_ops(config, args.timing_rank)
    if "time" in wanted:
        print_times(config, min(args.timing_layers, layers), args.timing_rank, args.reps)


if __name__ == "__main__":
    main()
