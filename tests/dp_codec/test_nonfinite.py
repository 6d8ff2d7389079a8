"""A non-finite exchange must not poison the codec (issue 19, item 1), one process.

A run that meets one NaN/Inf tick is compared with a run that never saw it: the bad tick's
output is non-finite (verl then skips that optimizer step), the error and Q memories come
out of it bit-identical to what they were before, it is counted in
``commeff/dp_codec/skipped_ticks``, and every later tick is finite and bit-identical to the
clean run. Before the fix the memories became NaN and every later exchange returned NaN.
The decision costs no host transfer: only ``metrics()`` reads the count.
"""

import math

import pytest
import torch

from verl_commeff.dp_codec import DPCodecState, exchange_named_grads_

from tests.host_syncs import count_host_transfers

SHAPES = {"w1": (40, 24), "w2": (40, 24), "w3": (24, 40), "bias": (40,)}


def _grads(it):
    gen = torch.Generator().manual_seed(it)
    return {n: torch.randn(*s, generator=gen) for n, s in SHAPES.items()}


def _poisoned(it, where, value):
    grads = _grads(it)
    grads[where].view(-1)[5] = value
    return grads


def _exchange(state, grads):
    named = [(n, g.clone(), g.shape[0]) for n, g in grads.items()]
    exchange_named_grads_(state, named, embeddings=())
    return {n: g for n, g, _ in named}


def _memories(state):
    return ({n: t.clone() for n, t in state.error_dict.items()}, {n: t.clone() for n, t in state.q_memory_dict.items()})


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("precision", ["full", "bf16"])
@pytest.mark.parametrize("where, value", [("w2", float("nan")), ("w3", float("inf")), ("bias", float("-inf"))])
def test_one_bad_tick_is_skipped_and_the_run_continues_as_if_it_never_happened(precision, where, value):
    knobs = dict(rank=3, start_iter=1, seed=4, params="all_2d", factor_precision=precision)
    clean, hit = DPCodecState(**knobs), DPCodecState(**knobs)
    for it in range(4):  # tick 0 dense, 1-3 compressed (warm from tick 2)
        _exchange(clean, _grads(it))
        _exchange(hit, _grads(it))
    before = _memories(hit)
    bad = _exchange(hit, _poisoned(99, where, value))
    assert not all(torch.isfinite(g).all() for g in bad.values())  # verl's own check skips this step
    after = _memories(hit)
    assert _same(after[0], before[0]) and _same(after[1], before[1]), "the bad tick changed a memory"
    for it in range(4, 8):
        a, b = _exchange(clean, _grads(it)), _exchange(hit, _grads(it))
        for n in a:
            assert torch.isfinite(b[n]).all() and torch.equal(a[n], b[n]), (it, n)
    assert hit.metrics()["commeff/dp_codec/skipped_ticks"] == 1
    assert clean.metrics()["commeff/dp_codec/skipped_ticks"] == 0
    assert hit.state_dict()["skipped"] == 1


def test_a_bad_first_compressed_tick_leaves_no_poisoned_memory():
    """The first compressed exchange has no memory to keep: the error stays zero and Q its
    random start, so the next tick matches a run that never saw the bad one within rounding
    (the start is re-orthonormalised once more)."""
    knobs = dict(rank=3, start_iter=1, seed=4, params="all_2d")
    clean, hit = DPCodecState(**knobs), DPCodecState(**knobs)
    _exchange(clean, _grads(0))
    _exchange(hit, _grads(0))
    _exchange(hit, _poisoned(99, "w1", float("nan")))
    assert all(torch.equal(e, torch.zeros_like(e)) for e in hit.error_dict.values())
    assert all(torch.isfinite(q).all() for q in hit.q_memory_dict.values())
    for it in range(1, 4):
        a, b = _exchange(clean, _grads(it)), _exchange(hit, _grads(it))
        for n in a:
            torch.testing.assert_close(b[n], a[n], atol=1e-5, rtol=1e-4)
    assert hit.metrics()["commeff/dp_codec/skipped_ticks"] == 1


def test_the_skip_costs_no_host_transfer_and_metrics_read_once():
    state = DPCodecState(rank=3, start_iter=0, seed=4, params="all_2d", factor_precision="bf16")
    _exchange(state, _grads(0))
    with count_host_transfers(within="verl_commeff/") as seen:
        _exchange(state, _grads(1))
        _exchange(state, _poisoned(2, "w1", float("nan")))
        _exchange(state, _grads(3))
    assert len(seen) == 0, seen.describe()
    with count_host_transfers(within="verl_commeff/") as seen:
        metrics = state.metrics()
    assert seen.d2h == 1 and metrics["commeff/dp_codec/skipped_ticks"] == 1
    assert math.isfinite(metrics["commeff/bytes/dp_codec/ratio"])
