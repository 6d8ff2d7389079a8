"""Two gloo ranks: sharded merging (row shards and DTensors) equals whole-tensor merging."""

import pytest
import torch
import torch.distributed as dist

from tests.dist_harness import run_on_gloo
from verl_commeff.config import AdaptiveLambdaConfig, MergerConfig
from verl_commeff.mergers import AnchorEMA, build_merger, pack_signs

SHAPES = [(5, 3), (8, 4), (3,), (1, 6)]  # uneven row counts: rank 1 may hold an empty shard
P = "commeff/merger/"
TICKS = range(1, 6)
MODES = {
    "off": dict(mode="off", lambda0=0.7),
    "ratio": dict(mode="ratio", lambda0=0.5, kappa=3.0, cap=0.9, window=3),
    "cos": dict(mode="cos", lambda0=0.5, kappa=2.0, cap=0.8, window=3),
}
COMPARED = ("lambda", "c", "sign_agree", "delta_ratio", "cos", "grad_norm")


def _whole(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in SHAPES]


def _grads(tick, m):
    g = _whole(1000 + tick)
    if tick % 2 == 0:  # move c_t around
        g = [x + 1.2 * y for x, y in zip(g, m)]
    return g


def _rows(ts, rank, world):
    return [t.tensor_split(world, dim=0)[rank].clone() for t in ts]


def _run(merger, m_bar, layout):
    """Run the ticks; returns per-tick (whole merged grads, metrics)."""
    merger.hold(layout(m_bar), produced_tick=1, source_tick=1)
    out = []
    for tick in TICKS:
        g = layout(_grads(tick, m_bar))
        merger.apply_(g, tick)
        out.append((g, merger.metrics()))
    return out


def _cfg(mode, **kw):
    return MergerConfig(alpha=0.25, age_decay=0.9, adaptive=AdaptiveLambdaConfig(**MODES[mode]), **kw)


def _body(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    m_bar = _whole(7)
    m_bar[0][1, :] = 0.0  # exact zeros: sign convention across shards

    def as_dtensor(ts):
        return [distribute_tensor(t, mesh, [Shard(0)]) for t in ts]

    for mode in MODES:
        # Reference: whole tensors, no reduction (identical on both ranks).
        ref = _run(build_merger(_cfg(mode)), m_bar, lambda ts: [t.clone() for t in ts])
        # Row shards reduced over an explicit group, with the cross-rank check on every tick.
        rows = _run(build_merger(_cfg(mode, checksum_every=1), process_group=dist.group.WORLD), m_bar,
                    lambda ts: _rows(ts, rank, world))
        # DTensors: the group comes from the mesh.
        dts = _run(build_merger(_cfg(mode)), m_bar, as_dtensor)
        lams = set()
        for (g_ref, met_ref), (g_row, met_row), (g_dt, met_dt) in zip(ref, rows, dts):
            for i, whole in enumerate(g_ref):
                torch.testing.assert_close(g_row[i], whole.tensor_split(world, dim=0)[rank], rtol=1e-6, atol=1e-7)
                torch.testing.assert_close(g_dt[i].full_tensor(), whole, rtol=1e-6, atol=1e-7)
            for key in COMPARED:
                if key == "c" and mode == "off":
                    continue
                assert met_row[P + key] == pytest.approx(met_ref[P + key], rel=1e-6, abs=1e-9), (mode, key)
                assert met_dt[P + key] == pytest.approx(met_ref[P + key], rel=1e-6, abs=1e-9), (mode, key)
            assert met_row[P + "inputs_identical"] == 1.0
            lams.add(round(met_ref[P + "lambda"], 9))
        assert len(lams) >= 3, (mode, lams)  # age decay / adaptive really moved λ

    # Sign-bit transport from DTensor shards: same as dense DTensor M̄.
    dense = _run(build_merger(_cfg("ratio")), m_bar, as_dtensor)
    merger = build_merger(_cfg("ratio"))
    merger.hold(pack_signs(as_dtensor(m_bar)), 1, 1)
    for tick, (g_dense, _) in zip(TICKS, dense):
        g = as_dtensor(_grads(tick, m_bar))
        merger.apply_(g, tick)
        assert all(torch.equal(a.to_local(), b.to_local()) for a, b in zip(g, g_dense))

    # AnchorEMA on DTensors.
    ema = AnchorEMA(0.5)
    fires = [_whole(50 + k) for k in range(3)]
    for f in fires:
        ema.update_(as_dtensor(f))
    for i in range(len(SHAPES)):
        expect = 0.25 * fires[0][i] + 0.25 * fires[1][i] + 0.5 * fires[2][i]
        torch.testing.assert_close(ema.m_bar[i].full_tensor(), expect, rtol=1e-6, atol=1e-6)

    # Ranks that disagree (whole tensors differing per rank) fail the cross-rank check.
    bad = build_merger(_cfg("ratio", checksum_every=1))
    bad.hold(m_bar, 1, 1)
    bad.apply_(_whole(rank), 1)
    with pytest.raises(RuntimeError, match="with replicated gradients, on the local statistics"):
        bad.metrics()


def test_sharded_and_dtensor_merge_equal_whole():
    run_on_gloo(_body, world_size=2)


def _reject_body(rank, world):
    """A NaN in one rank's shard of M: every rank rejects the fire, M̄ stays as it was on both."""
    ema = AnchorEMA(0.5)
    first = _rows(_whole(1), rank, world)
    assert ema.try_update_(first)
    second = _rows(_whole(2), rank, world)
    if rank == 1:
        second[1][0, 0] = float("nan")
    assert not ema.try_update_(second, group=dist.group.WORLD)
    assert ema.rejected == 1 and all(torch.equal(a, b) for a, b in zip(ema.m_bar, first))


def _anchor_fingerprints(sent):
    """What the anchor ships: every rank's fingerprint of the tensors it sent, in rank order."""
    from verl_commeff.collectives import fingerprint, gather_rows

    return gather_rows(fingerprint(sent))  # (world, 3)


def _fingerprint_body(rank, world):
    """Each rank's held M̄ shard / sign bits / live Q is fingerprinted; one corrupted rank is named."""
    _reject_body(rank, world)  # (one spawn for both fault tests)
    m_bar = _whole(7)
    q = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))  # the replicated Q, same on both ranks
    # (a) dense row shards: a clean check passes, then one coordinate of rank 1's held shard flips sign.
    merger = build_merger(_cfg("ratio", checksum_every=2), process_group=dist.group.WORLD, replicated=lambda: [q])
    shards = _rows(m_bar, rank, world)
    merger.hold(shards, 1, 1, fingerprints=_anchor_fingerprints(shards))
    for tick in (1, 2):
        merger.apply_(_rows(_grads(tick, m_bar), rank, world), tick)
    assert merger.metrics()[P + "inputs_identical"] == 1.0
    if rank == 1:
        shards[1][0, 0] = -shards[1][0, 0]  # a corrupted shard (the merger holds it by reference)
    for tick in (3, 4):
        merger.apply_(_rows(_grads(tick, m_bar), rank, world), tick)
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[1\] hold an M̄ \(fire produced for tick 1\) whose "
                                           r"fingerprint .* differs from the anchor's fingerprint"):
        merger.metrics()

    # (b) sign bits: one flipped bit on rank 0.
    signs = build_merger(_cfg("ratio", checksum_every=1), process_group=dist.group.WORLD)
    packed = pack_signs(_rows(m_bar, rank, world))
    signs.hold(packed, 2, 1, fingerprints=_anchor_fingerprints(packed.bits))
    if rank == 0:
        packed.bits[1][0] ^= 1
    signs.apply_(_rows(_grads(2, m_bar), rank, world), 2)
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[0\] hold an M̄"):
        signs.metrics()

    # (c) the live Q drifts on one rank.
    q_local = q.clone()
    if rank == 1:
        q_local[2, 1] += 1e-3
    drift = build_merger(_cfg("ratio", checksum_every=1), process_group=dist.group.WORLD,
                         replicated=lambda: [q_local])
    drift.apply_(_rows(_grads(1, m_bar), rank, world), 1)  # cold: Q is still checked
    with pytest.raises(RuntimeError, match=r"live Q\) differ across ranks"):
        drift.metrics()

    # (d) ranks holding different fires (one rank kept a stale M̄).
    stale = build_merger(_cfg("ratio", checksum_every=1), process_group=dist.group.WORLD)
    stale.hold(_rows(m_bar, rank, world), 3 if rank == 0 else 2, 1)
    stale.apply_(_rows(_grads(3, m_bar), rank, world), 3)
    with pytest.raises(RuntimeError, match=r"ranks disagree on \(tick, held fire's produced tick, source tick\) = "
                                           r"\[\(3, 3, 1\), \(3, 2, 1\)\]"):
        stale.metrics()


def test_non_finite_anchor_shard_rejected_everywhere_and_checksum_catches_a_corrupted_rank():
    run_on_gloo(_fingerprint_body, world_size=2)
