"""Two replicas on gloo: bf16 factors, every 2-D parameter, and a NaN on one replica only.

1. With ``params=all_2d``, an embedding rank and bf16 factors, the bytes a counting wrapper
   around ``torch.distributed.all_reduce`` sees equal the ledger's, the factors are
   2·Σ(n + m)·r bytes, both replicas end with identical gradients, and those are within
   bf16 rounding of the full-precision exchange of the same gradients (first compressed tick).
2. A NaN on one replica at one tick is skipped on both (the decision comes from summed
   values, so the ranks agree), the memories of both stay as they were, and the following
   ticks equal those of a pair of states that never saw the bad tick.
"""

import torch
import torch.distributed as dist

from tests.dist_harness import run_on_gloo

SHAPES = {"layer.w": (40, 24), "layer.v": (40, 24), "embed": (64, 8), "norm": (24,)}


def _grads(it, replica):
    gen = torch.Generator().manual_seed(100 * it + replica)
    return {n: torch.randn(*s, generator=gen) for n, s in SHAPES.items()}


def _body(rank, world_size):
    from verl_commeff.dp_codec import DPCodecState, ReplicaGroups, exchange_named_grads_

    groups = ReplicaGroups(replica=dist.group.WORLD)
    knobs = dict(rank=3, start_iter=1, seed=2, params="all_2d", embedding_rank=2)
    low, full, clean = DPCodecState(**knobs, factor_precision="bf16"), DPCodecState(**knobs), \
        DPCodecState(**knobs, factor_precision="bf16")
    counted = {"bytes": 0}
    orig = dist.all_reduce

    def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        counted["bytes"] += tensor.numel() * tensor.element_size()
        return orig(tensor, op=op, group=group, async_op=async_op)

    def exchange(state, grads):
        named = [(n, g.clone(), g.shape[0]) for n, g in grads.items()]
        exchange_named_grads_(state, named, embeddings={"embed"}, groups=groups)
        return {n: g for n, g, _ in named}

    for it in range(6):
        grads = _grads(it, rank)
        for state in (low, full, clean):
            state.ledger.reset()
        counted["bytes"] = 0
        dist.all_reduce = counting
        try:
            out = exchange(low, grads)
        finally:
            dist.all_reduce = orig
        ref = exchange(full, grads)
        exchange(clean, grads)
        assert counted["bytes"] == low.ledger.sent
        if it >= 1:
            factors = (40 + 24) * 3 * 2 + (64 + 8) * 2
            assert low.ledger.factors_sent == 2 * factors and low.ledger.sent == 2 * factors + 4 * 24
        if it == 1:  # the first compressed tick: the same inputs, the same Q start (later the memories differ)
            for n in ("layer.w", "layer.v", "embed"):
                rel = (out[n] - ref[n]).norm() / ref[n].norm()
                assert 0 < rel < 1e-2, (n, rel)
        for n, g in out.items():
            both = [torch.empty_like(g) for _ in range(2)]
            dist.all_gather(both, g)
            assert torch.equal(both[0], both[1]), (it, n)

    # a NaN on replica 1 only, at one tick
    errors = {n: t.clone() for n, t in low.error_dict.items()}
    qs = {n: t.clone() for n, t in low.q_memory_dict.items()}
    bad = _grads(99, rank)
    if rank == 1:
        bad["layer.v"][3, 4] = float("nan")
    out = exchange(low, bad)
    assert not torch.isfinite(out["layer.v"]).all()  # on both replicas: verl skips the step everywhere
    assert all(torch.equal(t, errors[n]) for n, t in low.error_dict.items())
    assert all(torch.equal(t, qs[n]) for n, t in low.q_memory_dict.items())
    for it in range(6, 9):
        a, b = exchange(clean, _grads(it, rank)), exchange(low, _grads(it, rank))
        assert all(torch.isfinite(b[n]).all() and torch.equal(a[n], b[n]) for n in a), it
    assert low.metrics()["commeff/dp_codec/skipped_ticks"] == 1


def test_two_replicas_bf16_all_matrices_and_a_one_sided_nan():
    run_on_gloo(_body, world_size=2)
