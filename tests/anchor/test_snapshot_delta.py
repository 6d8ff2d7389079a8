"""Delta-encoded snapshots: bit-identical on the anchor, clear errors on a wrong base, bytes by hand."""

import pytest
import torch
from torch import nn

from verl_commeff.anchor.snapshot_delta import (
    RowCopy,
    SnapshotBaseError,
    SnapshotChain,
    SnapshotDecoder,
    SnapshotEncoder,
    decode_source,
    resolve_snapshot_dtype,
)
from verl_commeff.ledger import payload_bytes
from verl_commeff.workers.weight_shards import export_local_shards

from tests.mergers.reference import pack_bool_by_hand

_INT = {4: torch.int32, 2: torch.int16}


def _bits(t):
    return t.view(_INT[t.element_size()])


def _bit_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 32, bias=False)).to(dtype)


@pytest.mark.parametrize("param_dtype, snapshot_dtype", [
    (torch.float32, torch.float32),  # the CPU preset: fp32 weights, fp32 snapshots
    (torch.float32, torch.bfloat16),  # FSDP: fp32 master weights, bf16 compute
    (torch.bfloat16, torch.bfloat16),  # bf16 weights
])
def test_decoded_shards_are_bit_identical_over_adam_steps_at_lr_1e6(param_dtype, snapshot_dtype):
    model = _model(param_dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    encoder, decoder = SnapshotEncoder(snapshot_dtype), SnapshotDecoder()
    gen = torch.Generator().manual_seed(1)
    kinds = []
    for step in range(12):
        if step:
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen).to(param_dtype)
            opt.step()
        if step == 5:  # exact special values: a sign-only change of zero and NaN payloads must arrive as they are
            with torch.no_grad():
                w = model[0].weight.view(-1)
                w[:4] = torch.tensor([0.0, -0.0, float("nan"), -float("nan")], dtype=param_dtype)
        if step == 6:
            with torch.no_grad():
                w = model[0].weight.view(-1)
                w[0], w[1] = -0.0, 0.0  # +0 -> -0 and -0 -> +0: equal as floats, different bits
        shards = export_local_shards(model)
        snap = encoder.encode(shards)
        assert snap.snapshot_id == step + 1 and (snap.base_id is None) == (step == 0)
        got = decoder.decode(snap, source=0)
        for s, g in zip(shards, got):
            assert _bit_equal(g, s.to(snapshot_dtype))
        kinds.append([enc.is_delta for enc in snap.tensors])
        if step == 6 and snapshot_dtype == torch.bfloat16:
            first = snap.tensors[0]
            assert first.is_delta and first.values.numel() >= 2  # the two zeros changed bit pattern
    assert not any(kinds[0])  # the keyframe is dense
    if snapshot_dtype == torch.bfloat16:
        assert all(all(k) for k in kinds[1:])  # at lr 1e-6 a bf16 delta is far smaller than the tensor
    else:
        assert not any(any(k) for k in kinds[1:])  # fp32: every element moves at each Adam step -> dense


def test_wrong_base_raises_and_never_guesses():
    enc = SnapshotEncoder(torch.float32)
    t = [torch.randn(40, 8)]
    s1 = enc.encode(t)
    t[0][0, 0] += 1.0
    s2 = enc.encode(t)
    t2 = t[0].clone()
    t[0][1, 0] += 1.0
    s3 = enc.encode(t)
    t3 = t[0].clone()
    assert s2.tensors[0].is_delta and s3.tensors[0].is_delta
    with pytest.raises(SnapshotBaseError, match="delta against snapshot 1, but this anchor holds no snapshot"):
        SnapshotDecoder().decode(s2)
    dec = SnapshotDecoder()
    dec.decode(s1)
    with pytest.raises(SnapshotBaseError, match="delta against snapshot 2, but this anchor holds snapshot 1"):
        dec.decode(s3)  # s2 was skipped
    other = SnapshotEncoder(torch.float32)  # another stream (a restarted actor) with the same ids
    other.encode(t)
    t[0][2, 0] += 1.0
    foreign = other.encode(t)
    assert (foreign.snapshot_id, foreign.base_id) == (2, 1)
    with pytest.raises(SnapshotBaseError, match="stream"):
        dec.decode(foreign)
    # the base the decoder holds is untouched by the failed attempts: the chain continues exactly
    assert _bit_equal(dec.decode(s2)[0], t2) and _bit_equal(dec.decode(s3)[0], t3)


def test_reloading_the_same_snapshot_and_per_source_state():
    """Two sources' rows in one kept shard (a plan): each source's chain is its own, and a second decode
    of the snapshot held is a no-op; a decoder without a plan keeps one source and refuses another."""
    enc0, enc1 = SnapshotEncoder(torch.bfloat16), SnapshotEncoder(torch.bfloat16)
    a, b = [torch.randn(10, 7)], [torch.randn(3, 7)]
    dec = SnapshotDecoder([(13, 7)], {0: [RowCopy(0, 0, 0, 10)], 1: [RowCopy(0, 0, 10, 3)]})
    dec.decode(enc0.encode(a), source=0)
    dec.decode(enc1.encode(b), source=1)
    a[0][0, 0] += 1.0
    s = enc0.encode(a)
    first = [t.clone() for t in dec.decode(s, source=0)]
    again = dec.decode(s, source=0)  # another fire on the same snapshot
    both = torch.cat([a[0], b[0]]).bfloat16()
    assert all(_bit_equal(x, y) for x, y in zip(first, again)) and _bit_equal(again[0], both)
    b[0][2, 6] -= 1.0
    assert _bit_equal(dec.decode(enc1.encode(b), source=1)[0], torch.cat([a[0], b[0]]).bfloat16())  # rank 1's own
    assert dec.held(0) == (enc0.stream, 2) and dec.held(1) == (enc1.stream, 2)
    assert dec.nbytes() == 13 * 7 * 2  # one copy of the kept shard, in bf16
    single = SnapshotDecoder()
    single.decode(enc0.encode(a, keyframe=True), source=0)
    with pytest.raises(ValueError, match="without a plan keeps one actor rank's shards"):
        single.decode(enc1.encode(b, keyframe=True), source=1)


def test_bytes_by_hand_and_dense_fallback():
    enc = SnapshotEncoder(torch.float32)
    t = [torch.randn(100), torch.randn(16), torch.randn(4, 4).bfloat16()]
    key = enc.encode(t)
    assert payload_bytes(key) == key.nbytes() == 100 * 4 + 16 * 4 + 16 * 4  # bf16 is cast to the fp32 snapshot dtype
    assert key.dense_fp32_bytes() == (100 + 16 + 16) * 4
    t[0][torch.arange(0, 100, 10)] += 1.0  # 10 of 100 change
    t[1] += 1.0  # all 16 change: 2 + 16·4 = 66 bytes ≥ 64 dense -> dense
    t[2][0, 0] += 1.0  # 1 of 16 changes: 2 + 4 = 6 bytes
    snap = enc.encode(t)
    assert [e.is_delta for e in snap.tensors] == [True, False, True]
    assert snap.tensors[0].mask.numel() == 13 and snap.tensors[0].values.numel() == 10
    assert payload_bytes(snap) == (13 + 10 * 4) + 16 * 4 + (2 + 1 * 4)
    assert snap.changed_fraction() == (10 + 16 + 1) / 132


def test_keyframe_flag_and_reset_send_dense():
    enc = SnapshotEncoder(torch.float32)
    t = [torch.randn(64)]
    enc.encode(t)
    assert enc.encode(t, keyframe=True).is_keyframe
    assert not enc.encode(t).is_keyframe
    enc.reset()
    assert enc.encode(t).is_keyframe
    with pytest.raises(ValueError, match="layout changed"):
        enc.encode([torch.randn(65)])


def test_snapshot_dtype_knob():
    assert resolve_snapshot_dtype("auto", torch.bfloat16) is torch.bfloat16
    assert resolve_snapshot_dtype("auto", torch.float32) is torch.float32
    assert resolve_snapshot_dtype("fp32", torch.bfloat16) is torch.float32
    with pytest.raises(ValueError, match="snapshot_dtype='fp8'"):
        resolve_snapshot_dtype("fp8", None)


def test_driver_chain_rebuilds_a_restarted_anchor_exactly():
    """Two actor ranks with real encoders, an anchor's decoder that is replaced mid-run (a restart):
    the pending fires, resubmitted with their chains, decode to the exact snapshot weights."""
    from verl_commeff.schedule import FireSchedule
    from verl_commeff.trainer.anchor_driver import AnchorDriver

    torch.manual_seed(3)
    weights = [[torch.randn(32, 8)], [torch.randn(16, 8)]]  # per actor rank
    encoders = [SnapshotEncoder(torch.bfloat16) for _ in weights]
    truth, keyframes = [], []  # per snapshot: per-rank shards (bf16) as the actor sent them

    def take_snapshot(keyframe=False):
        keyframes.append(keyframe)
        truth.append([[w.bfloat16() for w in ws] for ws in weights])
        return [enc.encode(ws, keyframe=keyframe) for enc, ws in zip(encoders, weights)]

    decoder = {"dec": [SnapshotDecoder(), SnapshotDecoder()]}  # one per anchor rank, each for its actor rank
    checked = []

    def submit(fire, source, minibatch, snapshot):
        for rank in range(2):
            got = decode_source(decoder["dec"][rank], snapshot[rank], rank, resolve=lambda x: x)
            want = truth[snapshot_index[fire]][rank]
            assert all(_bit_equal(g, w) for g, w in zip(got, want)), (fire, rank)
        checked.append(fire)
        return [f"f{fire}"]

    sched = FireSchedule(4, 2, 2)  # K=4, cadence 2, 2 ticks per step: fires are pending across steps
    driver = AnchorDriver(sched, take_snapshot, submit, offer=lambda *a: None, keyframe_every=3)
    snapshot_index = {}
    for step in range(1, 9):
        ticks = list(range((step - 1) * 2 + 1, step * 2 + 1))
        for fire in sched.fires_sourced_in_step(step):
            snapshot_index[fire] = len(truth)  # this step's snapshot (taken in before_update)
        driver.before_update(step, [("mb", t) for t in ticks])
        if step == 5:  # the anchor died: a fresh decoder, pending fires resubmitted with their whole chains
            decoder["dec"] = [SnapshotDecoder(), SnapshotDecoder()]
            assert driver.resubmit_pending()  # some fires were pending
        driver.after_update(ticks[-1])
        for ws in weights:  # an optimizer step moves a few elements
            for w in ws:
                w.view(-1)[torch.randint(0, w.numel(), (5,))] += 0.5
    assert keyframes[0] and keyframes[3]  # the first, then every keyframe_every=3 snapshots
    after_restart = [i for i, k in enumerate(keyframes) if k and i not in (0, 3)]
    assert after_restart  # the first snapshot after the restart is a keyframe
    assert len(checked) > len(set(checked))  # the resubmitted fires really ran again


def test_snapshot_chain_layout():
    chain = SnapshotChain([["k0", "k1"], ["d0", "d1"]])
    assert chain.latest() == ["d0", "d1"]
    assert chain.per_rank_chains() == [["k0", "d0"], ["k1", "d1"]]
    assert chain.map_links(lambda link: [x.upper() for x in link]).links == [["K0", "K1"], ["D0", "D1"]]


def test_anchor_weights_equal_the_actor_snapshot_bit_for_bit_through_the_worker(tiny_model_dir):
    """The real path: actor shards -> encoder -> AnchorWorker.anchor_fire (decode, load) -> the anchor's
    parameters, for a keyframe and then a delta after an actor update (fsdp2, fp32 CPU preset)."""
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from tests.anchor.test_anchor_worker import _config, _minibatch
    from tests.verl_harness import init_single_process_world, log_probs, make_ppo_batch, update
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig

    init_single_process_world()
    actor = ActorRolloutRefWorker(_config(tiny_model_dir, "fsdp2"), role="actor")
    actor.init_model()
    anchor = AnchorWorker(_config(tiny_model_dir, "fsdp2"))
    anchor.init_model()
    anchor.anchor_setup(CommEffConfig(codec=CodecConfig(q_source="fast"), anchor=AnchorConfig(delay_k=0, cadence=1),
                                      merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off"))),
                        ticks_per_step=1)
    encoder = SnapshotEncoder(torch.float32)
    for tick in (1, 2):
        if tick == 2:  # the actor moves on: the next snapshot is a delta
            warm = make_ppo_batch(seed=5)
            warm.batch["old_log_probs"] = log_probs(actor, warm)
            update(actor, warm)
        shards = export_local_shards(actor.actor.engine.module)
        payload = encoder.encode(shards)
        assert payload.is_keyframe == (tick == 1)
        anchor.anchor_fire(fire_tick=tick, source_tick=tick, minibatch=_minibatch(make_ppo_batch(seed=tick)),
                           snapshot=[payload])
        loaded = export_local_shards(anchor.actor.engine.module)
        assert len(loaded) == len(shards) and all(_bit_equal(a, b) for a, b in zip(loaded, shards))
    assert payload.base_id == 1 and not payload.is_keyframe


# ---------------------------------------------------------------------------- the encoder's fast paths
_SHAPES = [(13, 7), (64,), (5,), (3, 1000), (1,), (0, 4), (8, 9)]  # 91 and 5 and 1: not multiples of 8


def _check_payload_by_hand(snap, new, old):
    """Each tensor of ``snap`` against the rule worked out in plain Python over the bit patterns."""
    for enc, a, b in zip(snap.tensors, new, old):
        now, before = _bits(a).reshape(-1).tolist(), _bits(b).reshape(-1).tolist()
        flags = [x != y for x, y in zip(now, before)]
        n, size = len(flags), a.element_size()
        assert enc.is_delta == ((n + 7) // 8 + sum(flags) * size < n * size)
        if enc.is_delta:
            assert enc.mask.tolist() == pack_bool_by_hand(flags)
            assert _bits(enc.values).tolist() == [x for x, f in zip(now, flags) if f]
        else:
            assert _bits(enc.dense).reshape(-1).tolist() == now


@pytest.mark.parametrize("snapshot_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("positions", ["word_by_word", "nonzero", "default"])
def test_delta_and_dense_payloads_by_hand_and_round_trip(snapshot_dtype, positions, monkeypatch):
    """Sparse, dense and mixed snapshots of odd-sized tensors, a keyframe mid-way: every payload equals
    the encoding worked out by hand and the decoder reproduces each snapshot bit for bit, whichever
    way the changed positions are found."""
    from verl_commeff.anchor import snapshot_delta

    if positions != "default":  # 0: every delta word by word; huge: every delta by one nonzero
        monkeypatch.setattr(snapshot_delta, "_SPARSE_BELOW", 0 if positions == "word_by_word" else 10**9)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(s, generator=gen) for s in _SHAPES]
    enc, dec = SnapshotEncoder(snapshot_dtype), SnapshotDecoder()
    previous = None
    for step in range(7):
        if step in (1, 4, 5):  # sparse: ~3 % of elements, the first and the last (the odd tail) included
            for w in weights:
                flat = w.view(-1)
                if flat.numel():
                    idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 32),), generator=gen)
                    flat[idx] *= 1.5
                    flat[0] += 1.0
                    flat[-1] -= 1.0
        elif step == 2:  # dense: every element changes
            for w in weights:
                w.neg_()
        elif step == 3:  # mixed: half the tensors unchanged, the others fully
            for w in weights[::2]:
                w.mul_(3.0)
        shards = [w.clone() for w in weights]
        snap = enc.encode(shards, keyframe=(step == 5))
        cast = [s.to(snapshot_dtype) for s in shards]
        assert snap.is_keyframe == (step in (0, 5))
        if snap.is_keyframe:
            assert all(_bit_equal(e.dense, c) for e, c in zip(snap.tensors, cast))
        else:
            _check_payload_by_hand(snap, cast, previous)
        delta = [e.is_delta for e in snap.tensors]
        if step in (1, 4, 6):  # the rule picks the delta for every tensor of 64 elements or more
            assert all(d for d, s in zip(delta, _SHAPES) if torch.Size(s).numel() >= 64)
        elif step == 2:
            assert not any(delta)
        elif step == 3:  # the unchanged ones: a delta of 0 values (the empty (0, 4): dense); the changed: dense
            assert delta == [False, True, False, True, False, False, False]
            assert all(e.values.numel() == 0 for e in snap.tensors[1:5:2])
        got = dec.decode(snap.to_host())
        assert all(_bit_equal(g, c) for g, c in zip(got, cast))
        previous = cast


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 65, 1003, 4096])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.02, 0.3, 1.0])
@pytest.mark.parametrize("sparse_below", [0, 40, 10**9])
def test_changed_positions_equal_the_set_flags(n, density, sparse_below, monkeypatch):
    from verl_commeff.anchor import snapshot_delta

    monkeypatch.setattr(snapshot_delta, "_SPARSE_BELOW", sparse_below)
    gen = torch.Generator().manual_seed(n)
    flags = torch.rand(n + 3, generator=gen) < density
    for view in (flags[:n], flags[3:]):  # offset 0, and an offset that is not a multiple of 8
        want = [i for i, f in enumerate(view.tolist()) if f]
        got = snapshot_delta._changed_positions(view, len(want))
        assert got.dtype == torch.int64 and got.tolist() == want
