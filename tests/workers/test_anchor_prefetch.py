"""Anchor results are prefetched (issue 11, deliverable 2): fetched at the first tick they are
ready, moved to the gradients' device there, and only a result not ready by its fire tick is
waited for (``sync=strict``). The pending results are stand-ins for Ray futures that become
ready at a given tick (or after a given number of waits) and count how often they are fetched.
"""

import logging

import pytest
import torch

from tests.codec.tiny import tiny_qwen2
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
from verl_commeff.workers.actor_state import AnchorFailure, AnchorResult, CommEffActorState, ReadyResult


def make_state(sync="strict"):
    cfg = CommEffConfig(codec=CodecConfig(enable=False, q_source="fast"),
                        anchor=AnchorConfig(delay_k=2, cadence=2, sync=sync), merger=MergerConfig(alpha=0.25, adaptive=AdaptiveLambdaConfig(mode="off")))
    return CommEffActorState(cfg, ticks_per_step=2, model=tiny_qwen2(num_layers=2), hidden_size=64, num_layers=2)


def signal(state, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for _, p in state.targets]


def tick(state, seed):
    """One tick without a model pass: begin, then the optimizer step on seeded gradients."""
    t = state.begin_tick()
    state.before_optimizer_step(signal(state, 100 + seed))
    return t


class Moves(AnchorResult):
    """An anchor result that records where the actor moves it."""

    moves: list = []

    def to(self, device, non_blocking=False):
        self.moves.append((torch.device(device), non_blocking))
        return super().to(device, non_blocking)


class ReadyAt:
    """Finishes at tick ``ready_at`` of ``state``'s clock; records the ticks it was fetched at."""

    def __init__(self, state, result, ready_at):
        self.state, self.result, self.ready_at = state, result, ready_at
        self.fire_tick, self.fetched_at, self.timeouts = result.fire_tick, [], []

    def get(self, timeout):
        self.timeouts.append(timeout)
        if self.state.clock.tick < self.ready_at:
            return None
        self.fetched_at.append(self.state.clock.tick)
        return self.result


def test_a_result_ready_early_is_fetched_at_the_first_tick_after_and_moved_to_the_gradients_device():
    state = make_state()
    state.offer(ReadyResult(AnchorResult(2, 1, signal(state, 1))))  # warm-up fire
    early = ReadyAt(state, Moves(4, 2, signal(state, 2)), ready_at=3)
    state.offer(early)
    Moves.moves.clear()
    for t in (1, 2):
        tick(state, t)
    assert early.fetched_at == [] and all(t == 0 for t in early.timeouts)  # polled, never waited
    tick(state, 3)
    assert early.fetched_at == [3]  # at tick 3's start, not at its fire tick 4
    assert Moves.moves == [(torch.device("cpu"), True)]  # moved once, to the gradients' device, non_blocking
    polls = len(early.timeouts)
    tick(state, 4)
    assert len(early.timeouts) == polls and early.fetched_at == [3]  # taken from its slot: no get at the fire
    assert state.merger.produced_tick == 4
    metrics = state.metrics()
    assert metrics["commeff/anchor/wait_s"] == 0.0  # it was there in time
    assert metrics["commeff/anchor/fetch_s"] > 0.0 and metrics["commeff/anchor/fires_used"] == 2


class LateWithWait:
    """Not finished at its fire tick: ready after ``waits_needed`` calls of ``wait`` (as Ray's ``ray.wait``)."""

    def __init__(self, result, waits_needed):
        self.fire_tick, self.result, self.waits_needed = result.fire_tick, result, waits_needed
        self.waits, self.fetches = [], 0

    def wait(self, timeout):
        assert timeout is not None and timeout > 0
        self.waits.append(timeout)
        return len(self.waits) >= self.waits_needed

    def get(self, timeout):
        if len(self.waits) < self.waits_needed:
            assert timeout == 0, "the actor must wait through wait(), fetching only what is there"
            return None
        self.fetches += 1
        return self.result


def test_strict_waits_for_a_result_that_is_late_and_fetches_it_once(caplog):
    state = make_state()
    late = LateWithWait(AnchorResult(2, 1, signal(state, 1)), waits_needed=2)
    state.offer(late)
    tick(state, 1)
    assert late.waits == [] and late.fetches == 0  # polled at tick 1, not ready, not waited for
    with caplog.at_level(logging.WARNING, logger="verl_commeff.workers.actor_state"):
        tick(state, 2)
    assert len(late.waits) == 2 and late.fetches == 1 and state.merger.produced_tick == 2
    assert sum("waiting for anchor fire 2" in r.getMessage() for r in caplog.records) == 1  # one wait came back empty
    metrics = state.metrics()
    assert metrics["commeff/anchor/wait_s"] > 0.0 and metrics["commeff/anchor/fetch_s"] > 0.0


class DeadAt:
    """A fire whose worker died; counts how often it was asked."""

    def __init__(self, fire_tick):
        self.fire_tick, self.anchor_rank, self.asked = fire_tick, 0, 0

    def get(self, timeout):
        self.asked += 1
        raise AnchorFailure(self.fire_tick, self.anchor_rank, "its worker died (ActorDiedError)")


def test_strict_failure_found_by_the_prefetch_surfaces_at_its_fire_tick_only():
    state = make_state()
    state.offer(ReadyResult(AnchorResult(2, 1, signal(state, 1))))
    dead = DeadAt(4)
    state.offer(dead)
    for t in (1, 2, 3):  # the prefetch finds the failure at tick 1; ticks 1-3 run on
        tick(state, t)
    assert dead.asked == 1 and state.merger.produced_tick == 2
    with pytest.raises(RuntimeError, match=r"sync=strict cannot continue: anchor fire 4 failed on anchor rank 0"):
        tick(state, 4)


def test_a_resubmitted_fire_replaces_the_failure_its_first_run_left():
    state = make_state(sync="free")
    state.offer(DeadAt(2))
    tick(state, 1)  # the failure is fetched into fire 2's slot
    state.offer(ReadyResult(AnchorResult(2, 1, signal(state, 1))))  # the restarted anchor group's run
    tick(state, 2)
    metrics = state.metrics()
    assert state.merger.produced_tick == 2 and metrics["commeff/anchor/failed_fires"] == 0
