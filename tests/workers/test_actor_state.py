"""The actor's per-tick circuit on a plain (unwrapped) tiny Qwen2: clock, codec passes, anchor inbox, merge."""

import math

import pytest
import torch

from tests.codec.tiny import HIDDEN, tiny_qwen2, token_batch
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
from verl_commeff.workers.actor_state import AnchorResult, CommEffActorState, ReadyResult


class NotYet:
    """A pending result that never finishes (free mode must not wait for it)."""

    def __init__(self, fire_tick):
        self.fire_tick = fire_tick

    def get(self, timeout):
        assert timeout == 0, "free mode must poll, never wait"
        return None


def make_state(sync="strict", q_source="fast", rank=8, delay_k=2, cadence=2):
    cfg = CommEffConfig(
        codec=CodecConfig(rank=rank, pp_size=2, q_source=q_source),
        anchor=AnchorConfig(delay_k=delay_k, cadence=cadence, sync=sync),
        merger=MergerConfig(alpha=0.25, adaptive=AdaptiveLambdaConfig(mode="off")),
    )
    model = tiny_qwen2(num_layers=4)
    return CommEffActorState(cfg, ticks_per_step=2, model=model, hidden_size=HIDDEN, num_layers=4), model


def train_tick(state, model, seed):
    tick = state.begin_tick()
    model.zero_grad()
    with state.pass_scope("train"):
        model(token_batch(seed=seed)).logits.square().mean().backward()
    grads = [p.grad for _, p in state.targets]
    before = [g.clone() for g in grads]
    return tick, grads, before


def anchor_signal(state, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for _, p in state.targets]


def test_targets_are_the_seven_projections_of_every_layer():
    state, _ = make_state()
    names = [n for n, _ in state.targets]
    assert len(names) == 4 * 7 and names[0] == "model.layers.0.self_attn.q_proj.weight"


def test_strict_schedule_cold_then_signed_ema_with_anchor_sign():
    state, model = make_state()
    tick, grads, before = train_tick(state, model, seed=1)
    state.before_optimizer_step(grads)  # tick 1: no fire, nothing held -> cold
    assert tick == 1 and all(torch.equal(a, b) for a, b in zip(grads, before))

    m_bar = anchor_signal(state, seed=7)
    state.offer(ReadyResult(AnchorResult(fire_tick=2, source_tick=1, m_bar=m_bar)))  # warm-up fire replays tick 1
    tick, grads, before = train_tick(state, model, seed=2)
    state.before_optimizer_step(grads)
    assert tick == 2
    for g_new, g, m in zip(grads, before, m_bar):
        expected = 0.25 * g + 0.75 * g.abs() * torch.where(m >= 0, 1.0, -1.0)
        torch.testing.assert_close(g_new, expected, rtol=1e-6, atol=1e-12)

    metrics = state.metrics()
    assert metrics["commeff/tick"] == 2 and metrics["commeff/merger/cold_ticks"] == 1
    assert metrics["commeff/anchor/fires_used"] == 1 and metrics["commeff/anchor/age"] == 1
    assert math.isclose(metrics["commeff/merger/lambda"], 1.0)
    assert all(math.isfinite(v) for v in metrics.values())


def test_strict_refuses_a_missing_fire():
    state, model = make_state()
    for seed in (1, 2):
        _, grads, _ = train_tick(state, model, seed)
        if state.clock.tick == 2:
            with pytest.raises(RuntimeError, match="no anchor job was submitted for fire tick 2"):
                state.before_optimizer_step(grads)
        else:
            state.before_optimizer_step(grads)


def test_free_takes_the_newest_finished_due_result_and_never_waits():
    state, model = make_state(sync="free", delay_k=0, cadence=1)
    old, new = anchor_signal(state, 3), anchor_signal(state, 4)
    state.offer(ReadyResult(AnchorResult(1, 1, old)))
    state.offer(ReadyResult(AnchorResult(2, 2, new)))
    state.offer(NotYet(3))
    _, grads, _ = train_tick(state, model, seed=1)
    state.before_optimizer_step(grads)  # tick 1: only fire 1 is due
    _, grads, before = train_tick(state, model, seed=2)
    state.before_optimizer_step(grads)  # tick 2: fire 2 is due and done; fire 3 is not due
    for g_new, g, m in zip(grads, before, new):
        torch.testing.assert_close(g_new, 0.25 * g + 0.75 * g.abs() * torch.where(m >= 0, 1.0, -1.0))
    _, grads, before = train_tick(state, model, seed=3)
    state.before_optimizer_step(grads)  # tick 3: fire 3 not finished -> keep holding fire 2's M̄
    for g_new, g, m in zip(grads, before, new):
        torch.testing.assert_close(g_new, 0.25 * g + 0.75 * g.abs() * torch.where(m >= 0, 1.0, -1.0))


def test_anchor_sketch_refreshes_q_which_goes_live_only_at_the_step_boundary():
    state, model = make_state(q_source="anchor")
    live_before = state.codec.live_basis.clone()
    sketch = torch.randn(1, HIDDEN, 8, generator=torch.Generator().manual_seed(5))  # (B=1, H, r)
    m_bar = anchor_signal(state, 6)
    state.offer(ReadyResult(AnchorResult(2, 1, m_bar, sketch=sketch)))
    for seed in (1, 2):
        _, grads, _ = train_tick(state, model, seed)
        state.before_optimizer_step(grads)
    assert torch.equal(state.codec.live_basis, live_before)  # staged, not live mid-step
    assert state.at_step_boundary()
    q, r = torch.linalg.qr(sketch[0])
    expected = q * torch.sign(torch.diagonal(r))  # independent orth with diag(R) >= 0
    torch.testing.assert_close(state.codec.live_basis[0], expected, rtol=1e-5, atol=1e-5)


def test_codec_is_live_on_train_and_old_log_prob_only():
    state, model = make_state(rank=4)
    ids = token_batch(seed=9)
    with torch.no_grad():
        plain = model(ids).logits
        for name, projected in (("train", True), ("old_log_prob", True), ("ref", False)):
            with state.pass_scope(name):
                out = model(ids).logits
            assert torch.equal(out, plain) != projected, name


def test_state_dict_round_trip():
    state, model = make_state()
    m_bar = anchor_signal(state, 7)
    state.offer(ReadyResult(AnchorResult(2, 1, m_bar)))
    for seed in (1, 2):
        _, grads, _ = train_tick(state, model, seed)
        state.before_optimizer_step(grads)
    saved = state.state_dict()
    other, other_model = make_state()
    other_model.load_state_dict(model.state_dict())
    other.load_state_dict(saved)
    a = train_tick(state, model, 3)
    b = train_tick(other, other_model, 3)
    state.before_optimizer_step(a[1])
    other.before_optimizer_step(b[1])
    assert a[0] == b[0] == 3
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_dp_codec_simulation_runs_before_the_merger_and_logs_bytes():
    """One replica (SPEC §5 simulation): dense warm-up, then every 2-D gradient (the default
    ``params=all_2d``: targets and embeddings) is the rank-r PowerSGD estimate of itself, 1-D
    gradients untouched; the ledger reaches the step's metrics."""
    from verl_commeff.config import DPCodecConfig

    cfg = CommEffConfig(
        codec=CodecConfig(enable=False),
        anchor=AnchorConfig(delay_k=2, cadence=10),
        merger=MergerConfig(alpha=0.25, adaptive=AdaptiveLambdaConfig(mode="off")),
        dp_codec=DPCodecConfig(enable=True, rank=2, start_iter=1),
    )
    model = tiny_qwen2(num_layers=2)
    state = CommEffActorState(cfg, ticks_per_step=2, model=model, hidden_size=HIDDEN, num_layers=2)
    target_ids = {id(p) for _, p in state.targets}
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2 and id(p) not in target_ids}
    assert any("embed" in n for n in matrices)
    for seed in (1, 2):
        tick, grads, before = train_tick(state, model, seed=seed)
        vectors = {n: p.grad.clone() for n, p in model.named_parameters() if p.dim() < 2}
        others = {n: p.grad.clone() for n, p in model.named_parameters() if n in matrices}
        state.before_optimizer_step(grads)  # merger cold: G' = G, so what changed is the exchange
        for n, p in model.named_parameters():
            if n in vectors:
                assert torch.equal(p.grad, vectors[n]), n
            elif n in others and tick > 1:  # non-target matrices too: rank r
                assert torch.linalg.matrix_rank(p.grad) <= 2 and not torch.allclose(p.grad, others[n]), n
        if tick == 1:
            assert all(torch.equal(a, b) for a, b in zip(grads, before))
        else:
            for g, b in zip(grads, before):
                assert torch.linalg.matrix_rank(g) <= 2 and not torch.allclose(g, b)
                assert torch.linalg.norm(g) <= torch.linalg.norm(b) * (1 + 1e-5)  # a projection of b
    metrics = state.metrics()
    dense = sum(p.numel() * 4 for p in model.parameters())
    assert metrics["commeff/bytes/dp_codec/dense_equiv"] == 2 * dense
    assert metrics["commeff/bytes/dp_codec/sent"] < 2 * dense
    assert metrics["commeff/dp_codec/simulated_ticks"] == 2 and metrics["commeff/dp_codec/compressed_matrices"] > 0
    restored = CommEffActorState(cfg, ticks_per_step=2, model=model, hidden_size=HIDDEN, num_layers=2)
    restored.load_state_dict(state.state_dict())
    assert restored.dp_codec.iter == 2 and set(restored.dp_codec.error_dict) == set(state.dp_codec.error_dict)


def test_rejected_fire_keeps_the_held_m_bar_and_q_and_is_counted(caplog):
    state, model = make_state(sync="strict", q_source="anchor", delay_k=0, cadence=1)
    m_bar = anchor_signal(state, 6)
    state.offer(ReadyResult(AnchorResult(1, 1, m_bar)))
    state.offer(ReadyResult(AnchorResult(2, 2, None, rejected=True, backwards=1)))
    _, grads, _ = train_tick(state, model, seed=1)
    state.before_optimizer_step(grads)
    staged_before = state.codec.state_dict()["staged"]
    with caplog.at_level("WARNING", logger="verl_commeff.workers.actor_state"):
        _, grads, before = train_tick(state, model, seed=2)
        state.before_optimizer_step(grads)  # tick 2: the rejected fire; fire 1's M̄ is still used
    for g_new, g, m in zip(grads, before, m_bar):
        torch.testing.assert_close(g_new, 0.25 * g + 0.75 * g.abs() * torch.where(m >= 0, 1.0, -1.0))
    assert state.merger.produced_tick == 1
    staged_after = state.codec.state_dict()["staged"]
    assert (staged_before is None) == (staged_after is None)  # no Q refresh from a rejected fire
    metrics = state.metrics()
    assert metrics["commeff/anchor/rejected_fires"] == 1 and metrics["commeff/anchor/fires_used"] == 1
    assert metrics["commeff/anchor/backwards"] == 1
    assert any("rejected fire 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("packed", [False, True])
def test_anchor_result_to_device_keeps_every_field(packed):
    """A checkpoint holds host copies of pending results; AnchorResult.to moves all of its tensors."""
    from verl_commeff.mergers.sign_bits import pack_signs, unpack_signs

    m_bar = [torch.randn(3, 5), torch.randn(7)]
    held = pack_signs(m_bar) if packed else m_bar
    result = AnchorResult(4, 2, held, sketch=torch.randn(2, 8, 3), compute_s=1.5, backwards=1,
                          q_fingerprint=torch.randn(2), ema_updates=3)
    moved = result.to("meta")
    tensors = (moved.m_bar.bits if packed else moved.m_bar) + [moved.sketch, moved.q_fingerprint]
    assert all(t.device.type == "meta" for t in tensors)
    back = result.to("cpu")  # a copy on the same device: nothing lost
    assert (back.fire_tick, back.source_tick, back.compute_s, back.backwards, back.ema_updates) == (4, 2, 1.5, 1, 3)
    if packed:
        assert all(torch.equal(a, b) for a, b in zip(unpack_signs(back.m_bar), unpack_signs(held)))
    else:
        assert all(torch.equal(a, b) for a, b in zip(back.m_bar, m_bar))
    assert torch.equal(back.sketch, result.sketch) and torch.equal(back.q_fingerprint, result.q_fingerprint)


@pytest.mark.parametrize("transport", ["shards", "sign"])
def test_anchor_paths_of_the_byte_ledger_count_the_handed_over_tensors(transport):
    """Snapshot, M̄ (shards or sign bits) and sketch: sent = the tensors' own nbytes, from the tensors."""
    from verl_commeff.mergers.sign_bits import pack_signs
    from verl_commeff.workers.weight_shards import export_local_shards

    state, model = make_state(q_source="anchor")
    snapshot = export_local_shards(model)
    snapshot_bytes = sum(p.numel() for p in model.parameters()) * 4  # fp32 model: 4 bytes per parameter
    assert state.record_snapshot(snapshot) == snapshot_bytes
    m_bar = anchor_signal(state, 6)
    numel = sum(m.numel() for m in m_bar)
    held = pack_signs(m_bar) if transport == "sign" else m_bar
    sketch = torch.randn(1, HIDDEN, 8)  # (B=1, H, r)
    state.offer(ReadyResult(AnchorResult(2, 1, held, sketch=sketch)))
    for seed in (1, 2):
        _, grads, _ = train_tick(state, model, seed)
        state.before_optimizer_step(grads)
    metrics = state.metrics()
    # independent sizes: fp32 shards are 4 bytes a coordinate, sign bits ceil(numel_i / 8) bytes per tensor
    m_bar_bytes = numel * 4 if transport == "shards" else sum(-(-m.numel() // 8) for m in m_bar)
    assert metrics["commeff/bytes/anchor_snapshot/sent"] == snapshot_bytes
    assert metrics["commeff/bytes/anchor_m_bar/sent"] == m_bar_bytes
    assert metrics["commeff/bytes/anchor_m_bar/as_shards"] == numel * 4
    assert metrics["commeff/bytes/anchor_sketch/sent"] == HIDDEN * 8 * 4
    for path in ("anchor_snapshot", "anchor_m_bar", "anchor_sketch"):
        assert metrics[f"commeff/bytes/{path}/dense_equiv"] == 0  # dense training has no anchor
    # the totals add every path of the step (here: codec, Q broadcast and the anchor's)
    paths = ("codec", "q_bcast", "anchor_snapshot", "anchor_m_bar", "anchor_sketch")
    assert metrics["commeff/bytes/total/sent"] == sum(metrics[f"commeff/bytes/{p}/sent"] for p in paths)
    assert metrics["commeff/bytes/total/dense_equiv"] == metrics["commeff/bytes/codec/dense_equiv"] > 0
    assert metrics["commeff/bytes/ratio"] == pytest.approx(
        metrics["commeff/bytes/total/sent"] / metrics["commeff/bytes/codec/dense_equiv"])
    again = state.metrics()  # per step: reset
    assert all(again[f"commeff/bytes/{p}/sent"] == 0 for p in ("anchor_snapshot", "anchor_m_bar", "anchor_sketch"))


class _LatePending:
    """A pending result that finishes only when the test says so."""

    def __init__(self, result):
        self.fire_tick, self.result, self.ready = result.fire_tick, result, False

    def get(self, timeout):
        return self.result if self.ready else None


def test_free_sync_never_goes_back_to_an_older_fire_and_counts_the_dropped_one():
    state, model = make_state(sync="free", delay_k=0, cadence=1)
    late = _LatePending(AnchorResult(1, 1, anchor_signal(state, 1), backwards=2))
    state.offer(late)
    state.offer(ReadyResult(AnchorResult(2, 2, anchor_signal(state, 2), backwards=2)))
    for seed in (1, 2):  # tick 1: fire 1 not finished (cold); tick 2: fire 2 is held
        _, grads, _ = train_tick(state, model, seed)
        state.before_optimizer_step(grads)
    assert state.merger.produced_tick == 2
    late.ready = True  # fire 1 finishes after fire 2 was taken
    _, grads, _ = train_tick(state, model, 3)
    state.before_optimizer_step(grads)
    assert state.merger.produced_tick == 2  # still the newer fire (it used to fall back to fire 1)
    metrics = state.metrics()
    assert metrics["commeff/anchor/dropped_fires"] == 1 and metrics["commeff/anchor/fires_used"] == 1
    assert metrics["commeff/anchor/backwards"] == 4  # the dropped fire ran and arrived: its work is counted


def test_free_sync_keeps_the_sketch_of_a_superseded_fire():
    """Fires 1 (with a sketch) and 2 (without) finish together: fire 2 is held, fire 1's sketch still refreshes Q."""
    state, model = make_state(sync="free", q_source="anchor", delay_k=0, cadence=1)
    sketch = torch.randn(1, HIDDEN, 8, generator=torch.Generator().manual_seed(5))  # (B=1, H, r)
    first = _LatePending(AnchorResult(1, 1, anchor_signal(state, 1), sketch=sketch))
    state.offer(first)
    state.offer(_LatePending(AnchorResult(2, 2, anchor_signal(state, 2))))
    _, grads, _ = train_tick(state, model, 1)
    state.before_optimizer_step(grads)  # tick 1: nothing finished
    first.ready = state._inbox[2].ready = True
    _, grads, _ = train_tick(state, model, 2)
    state.before_optimizer_step(grads)
    assert state.merger.produced_tick == 2
    staged = state.codec.state_dict()["staged"]
    assert staged is not None  # before: fire 2 carried no sketch and fire 1's was dropped, Q never moved
    q, r = torch.linalg.qr(sketch[0])
    q = q * torch.where(torch.diagonal(r) >= 0, 1.0, -1.0)  # orth() fixes column signs: diag(R) >= 0
    torch.testing.assert_close(staged[0], q, rtol=1e-5, atol=1e-5)
    assert state.metrics()["commeff/anchor/dropped_fires"] == 1
