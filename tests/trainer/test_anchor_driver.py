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


class _CopyingStore:
    """Ray's object store as the checkpoint sees it: ``put`` returns a handle, every ``get`` deserialises
    a fresh copy (as ``ray.get`` does), so two gets of one handle are two payloads in memory."""

    def __init__(self):
        import pickle

        self._pickle, self._objects, self.puts, self.gets = pickle, {}, 0, 0

    class Ref:
        pass

    def put(self, obj):
        ref = self.Ref()
        self._objects[id(ref)] = (ref, self._pickle.dumps(obj))
        self.puts += 1
        return ref

    def get(self, ref):
        self.gets += 1
        return self._pickle.loads(self._objects[id(ref)][1])


def test_checkpoint_stores_each_shared_snapshot_payload_once_and_resumes_bit_exactly():
    """K=8, cadence 2, 2 ticks per step, a keyframe every 8 snapshots: the ring's snapshots share their
    keyframe and earlier deltas. The checkpoint fetches and stores each distinct payload once (before: once
    per chain that holds it: here the keyframe 3 times), puts each once on resume, and a fresh anchor
    decodes every pending fire's chain to the actor's bf16 weights of that snapshot, bit for bit."""
    import io

    from verl_commeff.anchor.snapshot_delta import EncodedSnapshot, SnapshotDecoder, SnapshotEncoder

    torch.manual_seed(0)
    weights = [[torch.randn(256, 256), torch.randn(256)] for _ in range(2)]  # 2 actor ranks
    encoders = [SnapshotEncoder(torch.bfloat16) for _ in weights]
    store = _CopyingStore()
    truth = {}  # snapshot handle -> that rank's bf16 shards

    def take_snapshot(keyframe=False):
        refs = []
        for enc, ws in zip(encoders, weights):
            refs.append(store.put(enc.encode(ws, keyframe=keyframe)))
            truth[id(refs[-1])] = [w.bfloat16() for w in ws]
        return refs

    sched = FireSchedule(8, 2, 2)
    driver = AnchorDriver(sched, take_snapshot, submit=lambda *job: ["f"], offer=lambda *a: None, keyframe_every=8)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 10):
        ticks = range((step - 1) * 2 + 1, step * 2 + 1)
        driver.before_update(step, [("mb", t) for t in ticks])
        driver.after_update(ticks[-1])
        for ws in weights:  # an optimizer step moves a few elements
            for w in ws:
                w.view(-1)[torch.randint(0, w.numel(), (6,), generator=gen)] += 0.25

    chains = driver.ring.state_dict()["snapshots"]
    entries = [entry for chain in chains.values() for link in chain.links for entry in link]
    distinct = {id(e): e for e in entries}
    keyframe_copies = max(sum(e is x for x in entries) for e in entries)
    assert len(chains) >= 4 and keyframe_copies >= 3  # the chains really share links
    nbytes = {key: store.get(e).nbytes() for key, e in distinct.items()}
    store.gets = 0

    state = driver.state_dict(fetch=store.get)
    assert store.gets == len(distinct)  # each payload fetched once
    payloads = state["snapshot_payloads"]
    assert len(payloads) == len(distinct) and all(isinstance(p, EncodedSnapshot) for p in payloads.values())
    assert sum(p.nbytes() for p in payloads.values()) == sum(nbytes.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    # the file holds the distinct payloads once (plus metadata), not once per chain
    per_chain = sum(nbytes[id(e)] for e in entries)
    assert sum(nbytes.values()) < buffer.tell() < sum(nbytes.values()) + 32 * 1024 < per_chain

    buffer.seek(0)
    resumed = AnchorDriver(sched, take_snapshot, submit=lambda *job: ["f"], offer=lambda *a: None, keyframe_every=8)
    fresh = _CopyingStore()
    resumed.load_state_dict(torch.load(buffer, weights_only=False), put=fresh.put)
    assert fresh.puts == len(distinct)  # each payload put once
    pending = resumed.ring.pending_jobs()
    assert [j.fire_tick for j in pending] == [j.fire_tick for j in driver.ring.pending_jobs()] and pending
    for job, original in zip(pending, driver.ring.pending_jobs()):
        for rank, (chain, original_chain) in enumerate(zip(job.snapshot.per_rank_chains(),
                                                           original.snapshot.per_rank_chains())):
            decoder = SnapshotDecoder()  # a fresh anchor: the whole chain from the keyframe
            got = decoder.decode_chain([fresh.get(ref) for ref in chain], rank)
            want = truth[id(original_chain[-1])]
            assert all(g.dtype == w.dtype and torch.equal(g.view(torch.int16), w.view(torch.int16))
                       for g, w in zip(got, want)), (job.fire_tick, rank)


class _Fire:
    """A fire's future as the actor polls it: computing until ``state`` says done, or dead (its group killed)."""

    def __init__(self, result, state="done"):
        self.fire_tick, self.result, self.state = result.fire_tick, result, state

    def get(self, timeout):
        from verl_commeff.workers.actor_state import AnchorFailure

        assert timeout == 0, "free mode polls"
        if self.state == "dead":
            raise AnchorFailure(self.fire_tick, 0, "its worker died (ActorDiedError)")
        return self.result if self.state == "done" else None


class _FreeRun:
    """A sync=free actor rank fed by the driver, K=2, cadence 2, 2 ticks per step: fires 2, 4, 6, ...
    Fire ``late`` is still computing when its tick comes and when its step ends."""

    def __init__(self, late):
        cfg = CommEffConfig(codec=CodecConfig(enable=False, q_source="fast"),
                            anchor=AnchorConfig(delay_k=2, cadence=2, sync="free"),
                            merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))  # evidence needs strict
        self.model = tiny_qwen2(num_layers=2)
        self.state = CommEffActorState(cfg, 2, self.model, hidden_size=64, num_layers=2)
        self.late, self.fires, self.held = late, {}, []
        self.group = 0  # the anchor group of the moment (a restart makes a new one)
        self.driver = AnchorDriver(self.state.schedule, lambda keyframe=False: "snapshot", self.submit,
                                   lambda fire, futures: self.state.offer(futures[0]),
                                   backup=lambda fire: [("state after fire", fire, "group", self.group)])

    def submit(self, fire, source, minibatch, snapshot):
        shapes = [p.shape for _, p in self.state.targets]
        result = AnchorResult(fire, source, [torch.full(s, float(fire)) for s in shapes])
        self.fires[fire] = _Fire(result, "computing" if fire == self.late else "done")
        return [self.fires[fire]]

    def step(self, step):
        ticks = list(range((step - 1) * 2 + 1, step * 2 + 1))
        self.driver.before_update(step, [("mb", t) for t in ticks])
        for _ in ticks:
            self.state.begin_tick()
            self.model.zero_grad()
            self.model(token_batch(seed=step)).logits.mean().backward()
            self.state.before_optimizer_step([p.grad for _, p in self.state.targets])
            self.held.append(self.state.merger.produced_tick)
        # what the trainer does: release only what the actor consumed
        return self.driver.after_update(ticks[-1], self.state.unconsumed_fires())


def test_free_sync_keeps_a_late_fire_pending_and_a_restart_reruns_it_without_a_failure():
    """Fire 4 is still computing at the end of step 2 (its tick is the step's last). It stays pending; the
    anchor group is then killed and restarted: the pending fires run again on the new group, the actor takes
    fire 4's new result at tick 5 and counts no failure. (Before: fire 4 was released at step 2's end, not
    rerun, and the actor found its old future dead: a failed fire, i.e. another restart.)"""
    run = _FreeRun(late=4)
    assert run.step(1) == [2]  # fire 2 consumed at its tick
    assert run.step(2) == []  # fire 4 (due at tick 4, the step's last) is still computing
    assert sorted(run.driver.pending_futures()) == [4, 6] and run.state.unconsumed_fires() == [4, 6]
    for fire in run.fires.values():  # the restart kills the old group: every old future is dead
        fire.state = "dead"
    run.late = None
    # the new group continues from the anchor's state after fire 2, the newest fire older than every pending one
    assert run.driver.restore_points() == [(2, [("state after fire", 2, "group", 0)])]
    run.group = 1
    assert run.driver.resubmit_pending() == [4, 6]  # the new group runs them again
    assert run.step(3) == [4, 6]
    metrics = run.state.metrics()
    assert run.held[-2:] == [4, 6] and metrics["commeff/anchor/failed_fires"] == 0
    assert metrics["commeff/anchor/fires_used"] == 3
    # fire 8 is pending now; the backups kept: of the two newest consumed fires (the new group's), and of 8
    assert run.driver.restore_points() == [(6, [("state after fire", 6, "group", 1)]),
                                           (4, [("state after fire", 4, "group", 1)])]
    assert sorted(run.driver._backups) == [4, 6, 8]


def test_free_sync_resume_delivers_a_fire_that_was_unconsumed_at_the_checkpoint():
    """Checkpoint after step 2 with fire 4 still computing: the ring saves it as pending, the checkpoint drains
    its result (as the trainer does), and the resumed actor takes it at tick 5, then fire 6 at tick 6, as the
    uninterrupted run does. (Before: fire 4 was released and not in the checkpoint: the resumed run lost it.)"""
    import copy

    ref = _FreeRun(late=4)
    for step in (1, 2):
        ref.step(step)
    saved_driver, saved_actor = copy.deepcopy(ref.driver.state_dict()), copy.deepcopy(ref.state.state_dict())
    drained = {fire: [f.result] for fire, f in ref.fires.items() if fire in ref.driver.pending_futures()}
    ref.fires[4].state = "done"  # the uninterrupted run: fire 4 finishes during step 3
    ref.step(3)

    resumed = _FreeRun(late=None)
    resumed.driver.load_state_dict(saved_driver)
    resumed.state.load_state_dict(saved_actor)
    resumed.driver.resubmit_pending({fire: [_Fire(r) for r in results] for fire, results in drained.items()})
    resumed.step(3)
    assert sorted(drained) == [4, 6]
    assert resumed.held == ref.held[-2:] == [4, 6]
    got, want = resumed.state.metrics(), ref.state.metrics()
    assert got["commeff/anchor/fires_used"] == want["commeff/anchor/fires_used"] == 3
