"""Row resharding between an N-rank actor and an A-rank anchor (plain tensors, and 2 gloo ranks).

The expectation is torch's own: FSDP2 shards a parameter's rows as ``torch.chunk`` does
(ranks past the last chunk hold none), and a shard assembled or split for another group
size must equal that group's ``torch.chunk`` of the full tensor, bit for bit.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import Replicate, Shard

from verl_commeff.anchor.reshard import (ResultRouting, RoutedResults, RowLayout, assemble_local, fsdp2_layout,
                                         needed_sources, owner_of, take_routed)

ROWS = [1, 2, 3, 5, 7, 10, 13]  # uneven against every world size below


def _chunks(full: torch.Tensor, world: int) -> list[torch.Tensor]:
    """FSDP2's per-rank shards of ``full``: torch.chunk, then empty shards for the ranks left over."""
    parts = list(torch.chunk(full, world))
    return parts + [full[:0]] * (world - len(parts))


def _model(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, generator=g) for n in ROWS]  # one "parameter" per row count, (n, 3)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_row_layout_matches_torch_chunk(world):
    layout = fsdp2_layout(world, -1)
    for n in ROWS:
        full = torch.arange(n)
        for rank, want in enumerate(_chunks(full, world)):
            offset, count = layout.rows((n, 3), rank)
            assert count == want.numel(), (n, world, rank)
            if count:
                assert offset == int(want[0]), (n, world, rank)


def test_hsdp_layout_replicates_the_shard_dimension():
    layout = fsdp2_layout(4, 2)  # verl: (ddp=2, fsdp=2), placements (Replicate, Shard(0))
    assert layout == RowLayout((2, 2), (Replicate(), Shard(0)))
    assert [layout.rows((5, 3), r) for r in range(4)] == [(0, 3), (3, 2), (0, 3), (3, 2)]
    assert fsdp2_layout(4, 4) == fsdp2_layout(4, -1) == RowLayout((4,), (Shard(0),))


def test_layouts_other_than_row_sharding_are_refused():
    with pytest.raises(ValueError, match="Shard\\(0\\)"):
        RowLayout((2,), (Shard(1),))
    with pytest.raises(ValueError, match="between 1 and"):
        owner_of(0, 3, 2)


@pytest.mark.parametrize("actor_world", [1, 2, 3, 4])
def test_assemble_gives_each_anchor_rank_its_torch_chunk(actor_world):
    full = _model()
    actor_shards = [[_chunks(t, actor_world)[r] for t in full] for r in range(actor_world)]
    shapes = [t.shape for t in full]
    for anchor_world in range(1, actor_world + 1):
        for a in range(anchor_world):
            fetched = []
            got = assemble_local(shapes, fsdp2_layout(actor_world, -1), lambda r: fetched.append(r) or actor_shards[r],
                                 fsdp2_layout(anchor_world, -1), a)
            for t, g in zip(full, got):
                torch.testing.assert_close(g, _chunks(t, anchor_world)[a], rtol=0, atol=0)
            assert fetched == needed_sources(shapes, fsdp2_layout(actor_world, -1), fsdp2_layout(anchor_world, -1), a)
    # A = 1 reads every actor rank holding rows; A = N reads only its own
    assert needed_sources(shapes, fsdp2_layout(actor_world, -1), fsdp2_layout(1, -1), 0) == list(range(actor_world))
    for r in range(actor_world):
        assert needed_sources(shapes, fsdp2_layout(actor_world, -1), fsdp2_layout(actor_world, -1), r) == [r]


def test_assemble_from_hsdp_actor_reads_one_replica():
    full = _model(1)
    actor = fsdp2_layout(4, 2)
    actor_shards = [[_chunks(t, 2)[r % 2] for t in full] for r in range(4)]
    got = assemble_local([t.shape for t in full], actor, lambda r: actor_shards[r], fsdp2_layout(1, -1), 0)
    for t, g in zip(full, got):
        torch.testing.assert_close(g, t, rtol=0, atol=0)
    assert needed_sources([t.shape for t in full], actor, fsdp2_layout(1, -1), 0) == [0, 1]


@pytest.mark.parametrize("actor_world, anchor_world", [(3, 2), (4, 3), (4, 1)])
def test_a_smaller_anchor_decodes_delta_snapshots_into_one_copy_of_its_own_shards(actor_world, anchor_world):
    """Each actor rank delta-encodes its shards (bf16) over 6 snapshots with a keyframe at 0 and 4; each anchor
    rank applies the payloads of the actor ranks covering its rows (the worker's _snapshot_shards), then a
    fresh anchor rank (a restart) applies the chains from the last keyframe. Every time its shards are
    torch.chunk's of the actor's full bf16 weights, bit for bit, and the decoder keeps exactly one copy of
    the anchor rank's own shards (before: the whole shards of every actor rank it read, 1.33-1.75x its own
    shards in these layouts, plus an assembled copy of its own shards on every fire)."""
    from types import SimpleNamespace

    from verl_commeff.anchor.reshard import snapshot_plan
    from verl_commeff.anchor.snapshot_delta import SnapshotDecoder, SnapshotEncoder
    from verl_commeff.anchor.worker import _snapshot_shards

    actor, anchor = fsdp2_layout(actor_world, -1), fsdp2_layout(anchor_world, -1)
    full = _model(3)
    shapes = [t.shape for t in full]
    encoders = [SnapshotEncoder(torch.bfloat16) for _ in range(actor_world)]
    states = [SimpleNamespace(decoder=SnapshotDecoder(*snapshot_plan(shapes, actor, anchor, a)), reshard=True)
              for a in range(anchor_world)]
    chains = [[] for _ in range(actor_world)]
    gen = torch.Generator().manual_seed(4)
    for snapshot in range(6):
        keyframe = snapshot in (0, 4)
        payloads = [encoders[r].encode([_chunks(t, actor_world)[r] for t in full], keyframe=keyframe)
                    for r in range(actor_world)]
        chains = [[p] if keyframe else [*c, p] for c, p in zip(chains, payloads)]
        for a, state in enumerate(states):
            got = _snapshot_shards(state, payloads, a)
            for t, g in zip(full, got):
                assert _bits_equal(g, _chunks(t.bfloat16(), anchor_world)[a]), (snapshot, a)
            own = sum(_chunks(t, anchor_world)[a].numel() for t in full) * 2  # bf16
            assert state.decoder.nbytes() == own
        for t in full:  # an optimizer step moves a few rows' elements
            t.view(-1)[torch.randint(0, t.numel(), (3,), generator=gen)] += 0.5
    for a in range(anchor_world):  # a restarted anchor: the whole chains from the keyframe
        fresh = SimpleNamespace(decoder=SnapshotDecoder(*snapshot_plan(shapes, actor, anchor, a)), reshard=True)
        got = _snapshot_shards(fresh, chains, a)
        assert all(_bits_equal(g, w) for g, w in zip(got, _snapshot_shards(states[a], payloads, a)))
        assert fresh.decoder.nbytes() == states[a].decoder.nbytes()


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("actor_world", [1, 2, 3, 4])
def test_one_anchor_rank_splits_m_bar_into_every_actor_ranks_shard(actor_world):
    full = _model(2)
    routing = ResultRouting([t.shape for t in full], fsdp2_layout(actor_world, -1), fsdp2_layout(1, -1), 0)
    assert routing.owned == list(range(actor_world)) and not routing.moves
    split = routing.split(full)
    for r in range(actor_world):
        for t, g in zip(full, split[r]):
            torch.testing.assert_close(g, _chunks(t, actor_world)[r], rtol=0, atol=0)


def test_equal_worlds_route_each_rank_to_itself_without_moving_rows():
    full = _model(3)
    for a in range(3):
        routing = ResultRouting([t.shape for t in full], fsdp2_layout(3, -1), fsdp2_layout(3, -1), a)
        assert routing.owned == [a] and not routing.moves
        mine = [_chunks(t, 3)[a] for t in full]
        assert all(torch.equal(g, m) for g, m in zip(routing.split(mine)[a], mine))


def test_routed_results_hand_each_actor_rank_its_own_entry():
    routed = RoutedResults({0: "r0", 1: "r1"})
    assert take_routed(routed, 1) == "r1" and take_routed("plain", 5) == "plain"
    with pytest.raises(KeyError, match="wrong anchor rank"):
        routed.for_rank(2)


# ---- two anchor ranks exchanging rows (gloo) ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_body(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        full = _model(4)
        for actor_world in ACTOR_WORLDS:
            routing = ResultRouting([t.shape for t in full], fsdp2_layout(actor_world, -1), fsdp2_layout(2, -1), rank)
            mine = [_chunks(t, 2)[rank] for t in full]
            split = routing.split(mine)  # by value below: torch's queue would share the tensors by fd
            queue.put((actor_world, rank, routing.moves, {r: [s.numpy().copy() for s in shards]
                                                          for r, shards in split.items()}))
    finally:
        dist.destroy_process_group()


ACTOR_WORLDS = (3, 4)  # 2 anchor ranks: A not dividing N, and A dividing N with rows that do not align


def test_two_anchor_ranks_exchange_the_rows_an_owner_lacks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_split_body, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=300) for _ in range(2 * len(ACTOR_WORLDS))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    full = _model(4)
    for actor_world in ACTOR_WORLDS:
        mine = [g for g in got if g[0] == actor_world]
        assert any(moves for _, _, moves, _ in mine)  # 10 rows: some actor rank straddles both anchor ranks
        routed = {r: shards for _, _, _, split in mine for r, shards in split.items()}
        assert sorted(routed) == list(range(actor_world))
        for _, owner, _, split in mine:
            assert all(owner_of(r, 2, actor_world) == owner for r in split)
        for r in range(actor_world):
            for t, g in zip(full, routed[r]):
                torch.testing.assert_close(torch.from_numpy(g), _chunks(t, actor_world)[r], rtol=0, atol=0)


# ---- the anchor's results for the actor ranks it owns (one process: A = 1) -------------------
@pytest.mark.parametrize("transport", ["shards", "sign"])
def test_one_anchor_rank_sends_each_actor_rank_exactly_its_shard(transport):
    from verl_commeff.anchor.worker import _Reshard
    from verl_commeff.collectives import fingerprint
    from verl_commeff.mergers.sign_bits import pack_signs
    from verl_commeff.workers.actor_state import AnchorResult

    full = _model(5)
    actor, anchor = fsdp2_layout(3, -1), fsdp2_layout(1, -1)
    reshard = _Reshard(actor, anchor, [t.shape for t in full], ResultRouting([t.shape for t in full], actor, anchor, 0))
    routed = reshard.results(full, transport, AnchorResult(fire_tick=4, source_tick=2, m_bar=None, backwards=3))
    assert isinstance(routed, RoutedResults) and sorted(routed.by_actor_rank) == [0, 1, 2]
    for r in range(3):
        got = take_routed(routed, r)  # by value: Ray is not running here
        want = [_chunks(t, 3)[r] for t in full]
        assert (got.fire_tick, got.source_tick, got.backwards) == (4, 2, 3)
        if transport == "sign":  # PackedSigns of exactly this rank's shard, bit for bit
            ref = pack_signs(want)
            assert got.m_bar.shapes == ref.shapes and all(torch.equal(a, b) for a, b in zip(got.m_bar.bits, ref.bits))
            sent = got.m_bar.bits
        else:
            assert all(torch.equal(a, b) for a, b in zip(got.m_bar, want))
            sent = got.m_bar
        assert got.fingerprints.shape == (3, 3)
        torch.testing.assert_close(got.fingerprints[r], fingerprint(sent), rtol=0, atol=0)
