"""The actor's side of anchor faults (issue 10, item 4): stalled and failed fires, strict and free.

The pending results here are stand-ins for Ray futures with the behaviour of a stalled
anchor (never ready) or a dead one (raises ``AnchorFailure``, as ``RayPendingResult``
turns Ray's errors into); the Ray path itself is tested in
``tests/trainer/test_anchor_group.py``.
"""

import logging

import pytest
import torch

from tests.codec.tiny import HIDDEN, tiny_qwen2
from tests.workers.test_actor_state import anchor_signal, train_tick
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, CommEffConfigError, MergerConfig
from verl_commeff.workers.actor_state import AnchorFailure, AnchorResult, CommEffActorState, ReadyResult


class Stalled:
    """An anchor result that never arrives; waiting without a timeout is a hang."""

    def __init__(self, fire_tick, anchor_rank=0):
        self.fire_tick, self.anchor_rank, self.waits = fire_tick, anchor_rank, []

    def get(self, timeout):
        assert timeout is not None, "the actor waited for the anchor without a timeout (a stalled anchor hangs it)"
        self.waits.append(timeout)
        return None


class Dead:
    """An anchor result whose worker died."""

    def __init__(self, fire_tick, anchor_rank=0):
        self.fire_tick, self.anchor_rank = fire_tick, anchor_rank

    def get(self, timeout):
        raise AnchorFailure(self.fire_tick, self.anchor_rank, "its worker died (ActorDiedError)")


def make_state(sync, age_decay=1.0, **anchor):
    cfg = CommEffConfig(codec=CodecConfig(rank=8, pp_size=2, q_source="fast"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, sync=sync, **anchor),
                        merger=MergerConfig(alpha=0.25, age_decay=age_decay, adaptive=AdaptiveLambdaConfig(mode="off")))
    model = tiny_qwen2(num_layers=4)
    return CommEffActorState(cfg, ticks_per_step=2, model=model, hidden_size=HIDDEN, num_layers=4), model


def signed(g, m, lam=1.0):
    """signed_ema at α = 0.25 and dose λ: G + λ·(1 − α)·(|G|⊙sign(M̄) − G)."""
    return g + lam * 0.75 * (g.abs() * torch.where(m >= 0, 1.0, -1.0) - g)


def test_strict_wait_logs_periodically_and_times_out_naming_fire_and_anchor_rank(caplog):
    state, model = make_state("strict", wait_timeout_s=0.3, wait_log_s=0.05)
    stalled = Stalled(1, anchor_rank=3)
    state.offer(stalled)
    _, grads, _ = train_tick(state, model, seed=1)
    with caplog.at_level(logging.WARNING, logger="verl_commeff.workers.actor_state"):
        with pytest.raises(TimeoutError, match=r"anchor fire 1 from anchor rank 3 .*wait_timeout_s=0.3"):
            state.before_optimizer_step(grads)
    waiting = [r for r in caplog.records if "waiting for anchor fire 1 from anchor rank 3" in r.getMessage()]
    assert len(waiting) >= 2  # a line per wait_log_s while waiting (the timeout is several log periods)
    assert all(t <= 0.05 + 1e-9 for t in stalled.waits)  # never waited longer than one log period at a time
    assert state.metrics()["commeff/anchor/wait_s"] >= 0.3  # the wait is accounted


def test_strict_fails_fast_on_a_dead_anchor_with_the_plugins_message():
    state, model = make_state("strict")
    state.offer(Dead(1, anchor_rank=1))
    _, grads, _ = train_tick(state, model, seed=1)
    with pytest.raises(RuntimeError, match=r"sync=strict cannot continue: anchor fire 1 failed on anchor rank 1"):
        state.before_optimizer_step(grads)


def test_free_continues_on_the_held_m_bar_with_growing_age_counts_failed_fires_and_logs_once(caplog):
    state, model = make_state("free", age_decay=0.5)
    held = anchor_signal(state, 3)
    state.offer(ReadyResult(AnchorResult(1, 1, held)))
    state.offer(Dead(2))
    state.offer(Dead(3))
    _, grads, _ = train_tick(state, model, seed=1)
    state.before_optimizer_step(grads)  # tick 1: fire 1 held (age 0)
    state.metrics()
    with caplog.at_level(logging.WARNING, logger="verl_commeff.workers.actor_state"):
        for seed, age in ((2, 1), (3, 2)):  # ticks 2 and 3: their fires failed; fire 1's M̄ stays, older each tick
            _, grads, before = train_tick(state, model, seed=seed)
            state.before_optimizer_step(grads)
            for g_new, g, m in zip(grads, before, held):
                torch.testing.assert_close(g_new, signed(g, m, lam=0.5**age))  # age decay μ^age applies
    failed = [r for r in caplog.records if "failed on anchor rank" in r.getMessage()]
    assert len(failed) == 1 and "continuing on the held M̄" in failed[0].getMessage()
    metrics = state.metrics()
    assert metrics["commeff/anchor/failed_fires"] == 2 and metrics["commeff/anchor/fires_used"] == 1
    assert metrics["commeff/merger/produced_tick"] == 1 and metrics["commeff/merger/age"] == 1.5
    assert state.state_dict()["failed_fires"] == 2  # survives a checkpoint


@pytest.mark.parametrize("field, value", [("wait_timeout_s", 0), ("wait_log_s", -1.0), ("max_restarts", -1),
                                          ("max_restarts", 1.5)])
def test_anchor_wait_knobs_are_validated(field, value):
    with pytest.raises(CommEffConfigError, match=f"commeff.anchor.{field}="):
        AnchorConfig(**{field: value})
