"""Driver-side anchor orchestration: mini-batch reconstruction, fire submission, strict/free timing."""

import pytest
import torch

from tests.codec.tiny import tiny_qwen2, token_batch
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
from verl_commeff.schedule import FireSchedule
from verl_commeff.trainer.anchor_driver import AnchorDriver, tick_minibatches
from verl_commeff.workers.actor_state import AnchorResult, CommEffActorState, ReadyResult


@pytest.mark.parametrize("dp, mini, epochs", [(1, 4, 1), (2, 4, 1), (2, 2, 2), (4, 8, 1)])
def test_tick_minibatches_are_the_workers_minibatches(dp, mini, epochs):
    """Independent expectation: verl's own chunk-per-rank + make_iterator, concatenated over ranks."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    n = 16
    data = TensorDict({"sample": torch.arange(n)}, batch_size=[n])
    got = [mb["sample"].tolist() for mb in tick_minibatches(data, dp, mini, epochs)]
    per_rank = [
        [mb["sample"].tolist() for mb in tu.make_iterator(chunk, mini // dp, epochs, seed=1 + r,
                                                          dataloader_kwargs={"shuffle": False})]
        for r, chunk in enumerate(tu.chunk_tensordict(data, dp))
    ]
    expected = [sum((rank[i] for rank in per_rank), []) for i in range(len(per_rank[0]))]
    assert got == expected and len(got) == n // mini * epochs


@pytest.mark.parametrize("dp, mini, epochs", [(2, 4, 1), (2, 2, 2)])
def test_tick_minibatches_builds_only_the_kept_ticks(dp, mini, epochs):
    """keep(i) False: None (nothing copied); kept ticks are the very mini-batches built without keep."""
    from tensordict import TensorDict

    n = 16
    data = TensorDict({"sample": torch.arange(n)}, batch_size=[n])
    everything = [mb["sample"].tolist() for mb in tick_minibatches(data, dp, mini, epochs)]
    kept = tick_minibatches(data, dp, mini, epochs, keep=lambda i: i % 3 == 1)
    assert len(kept) == len(everything)
    for i, (mb, want) in enumerate(zip(kept, everything)):
        assert (mb is None) if i % 3 != 1 else mb["sample"].tolist() == want


def test_driver_puts_each_minibatch_once_and_submits_the_ref_to_the_group():
    """put() once per fire (not per anchor rank, not again on resubmission); submit gets what put returned."""
    puts, submitted = [], []

    def put(minibatch):
        puts.append(minibatch)
        return ("ref", minibatch)

    driver = AnchorDriver(FireSchedule(2, 2, 2), take_snapshot=lambda keyframe=False: ["snap"],
                          submit=lambda fire, source, mb, snap: submitted.append((fire, mb)) or ["f"],
                          offer=lambda fire, futures: None, put=put)
    for step in (1, 2):
        ticks = range((step - 1) * 2 + 1, step * 2 + 1)
        driver.before_update(step, [("mb", t) for t in ticks])
    pending = sorted(driver.pending_futures())
    assert pending and puts == [("mb", driver.ring.job(f).source_tick) for f in sorted(f for f, _ in submitted)]
    assert [mb for _, mb in submitted] == [("ref", p) for p in puts]
    before = len(puts)
    assert driver.resubmit_pending() == pending  # an anchor restart: the same refs go to the new group
    assert len(puts) == before and [mb for _, mb in submitted[-len(pending):]] == [
        ("ref", ("mb", driver.ring.job(f).source_tick)) for f in pending]


def test_tick_minibatches_refuses_sizes_verl_refuses():
    from tensordict import TensorDict

    with pytest.raises(ValueError, match="whole per-rank mini-batches"):
        tick_minibatches(TensorDict({"x": torch.arange(10)}, batch_size=[10]), 4, 4, 1)


def _drive(k, cadence, steps, tps=2):
    submitted, offered, snapshots = [], [], []

    def snapshot(keyframe=False):
        snapshots.append(len(snapshots))
        return ("weights", len(snapshots))

    driver = AnchorDriver(
        FireSchedule(k, cadence, tps),
        take_snapshot=snapshot,
        submit=lambda fire, source, mb, snap: submitted.append((fire, source, mb, snap)) or [f"future{fire}"],
        offer=lambda fire, futures: offered.append((fire, futures)),
    )
    step_of_snapshot = {}
    for step in range(1, steps + 1):
        before = len(snapshots)
        ticks = range((step - 1) * tps + 1, step * tps + 1)
        fires = driver.before_update(step, [("minibatch", t) for t in ticks])
        if len(snapshots) > before:
            step_of_snapshot[("weights", len(snapshots))] = step
        for fire in fires:  # submitted no later than the step that needs it
            assert fire >= ticks[0]
        driver.after_update(ticks[-1])
    return driver, submitted, offered, step_of_snapshot


@pytest.mark.parametrize("k, cadence", [(5, 5), (20, 5), (5, 20), (20, 20)])
def test_every_fire_is_submitted_once_with_its_pair_and_handed_to_the_actor(k, cadence):
    driver, submitted, offered, step_of_snapshot = _drive(k, cadence, steps=50)
    fires = [s[0] for s in submitted]
    assert fires == sorted(set(fires)) and set(range(cadence, 101, cadence)) <= set(fires)
    for fire, source, minibatch, snapshot in submitted:
        expected_source = fire - k if fire - k >= 1 else 1
        assert source == expected_source and minibatch == ("minibatch", expected_source)
        assert step_of_snapshot[snapshot] == (expected_source - 1) // 2 + 1  # generator weights of that step
    assert offered == [(fire, [f"future{fire}"]) for fire, *_ in submitted]
    # one snapshot per step that holds a replayed mini-batch, no more
    assert driver.snapshots_taken == len({(s - 1) // 2 for _, s, _, _ in submitted})
    assert len(driver.ring) <= driver.schedule.ring_batch_bound()


def _run_actor(sync, k, cadence, steps, finish_delay=0):
    """The actor's tick loop fed by the driver with an in-process anchor; returns per-step metrics."""
    cfg = CommEffConfig(codec=CodecConfig(enable=False, q_source="fast"),
                        anchor=AnchorConfig(delay_k=k, cadence=cadence, sync=sync),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))
    model = tiny_qwen2(num_layers=2)
    state = CommEffActorState(cfg, 2, model, hidden_size=64, num_layers=2)
    shapes = [p.shape for _, p in state.targets]

    class Later:
        """Finishes ``finish_delay`` ticks after its fire tick (the actor polls it every tick, prefetching)."""

        def __init__(self, result):
            self.fire_tick, self._result = result.fire_tick, result

        def get(self, timeout):
            assert timeout == 0, "free mode must poll, never wait"
            return self._result if state.clock.tick >= self.fire_tick + finish_delay else None

    def submit(fire, source, minibatch, snapshot):
        m = [torch.full(s, float(source)) for s in shapes]  # M̄ stamped with its source tick
        return [AnchorResult(fire, source, m)]

    driver = AnchorDriver(state.schedule, lambda keyframe=False: "snapshot", submit,
                          lambda fire, futures: state.offer(Later(futures[0]) if sync == "free" else ReadyResult(futures[0])))
    history = []
    for step in range(1, steps + 1):
        ticks = list(range((step - 1) * 2 + 1, step * 2 + 1))
        driver.before_update(step, [("mb", t) for t in ticks])
        for _ in ticks:
            state.begin_tick()
            model.zero_grad()
            model(token_batch(seed=step)).logits.mean().backward()
            state.before_optimizer_step([p.grad for _, p in state.targets])
        driver.after_update(ticks[-1])
        history.append(state.metrics())
    return history


def test_strict_staleness_is_exactly_k_and_every_fire_is_used():
    k, cadence, steps = 4, 2, 12
    history = _run_actor("strict", k, cadence, steps)
    assert history[-1]["commeff/anchor/fires_used"] == steps * 2 // cadence
    ages = [h["commeff/anchor/age"] for h in history if "commeff/anchor/age" in h]
    assert ages[-8:] == [k] * 8  # after warm-up every fire is exactly K ticks stale
    assert history[-1]["commeff/merger/cold_ticks"] == cadence - 1  # cold until the first fire


def test_free_mode_never_waits_and_reports_the_realised_age():
    k, cadence, steps = 2, 2, 12
    history = _run_actor("free", k, cadence, steps, finish_delay=2)  # results land late
    ages = [h["commeff/anchor/age"] for h in history if "commeff/anchor/age" in h]
    assert ages and min(ages) > k  # realised staleness exceeds the nominal K when results are late
    assert all(h["commeff/anchor/wait_s"] == 0.0 for h in history)  # polling only, no waiting


def test_driver_counts_the_replayed_minibatches_bytes_per_step():
    """anchor_minibatch/sent = the nbytes of the mini-batches handed to submit this step (0 on other steps)."""
    from tensordict import TensorDict

    def minibatch(t):
        return TensorDict({"input_ids": torch.full((4, 6), t, dtype=torch.int64),
                           "advantages": torch.zeros(4, 6)}, batch_size=[4])

    submitted = []
    driver = AnchorDriver(FireSchedule(2, 2, 2), take_snapshot=lambda keyframe=False: ["ref"],
                          submit=lambda fire, source, mb, snap: submitted.append(mb) or ["f"],
                          offer=lambda fire, futures: None)
    per_step = []
    for step in (1, 2, 3):
        ticks = range((step - 1) * 2 + 1, step * 2 + 1)
        before = len(submitted)
        driver.before_update(step, [minibatch(t) for t in ticks])
        driver.after_update(ticks[-1])
        expected = sum(mb["input_ids"].nbytes + mb["advantages"].nbytes for mb in submitted[before:])
        got = driver.metrics()
        per_step.append(got["commeff/bytes/anchor_minibatch/sent"])
        assert got["commeff/bytes/anchor_minibatch/sent"] == expected
        assert got["commeff/bytes/anchor_minibatch/dense_equiv"] == 0
    assert len(submitted) >= 2 and sum(per_step) == len(submitted) * (4 * 6 * 8 + 4 * 6 * 4)
