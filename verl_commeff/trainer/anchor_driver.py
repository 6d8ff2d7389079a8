"""The trainer's side of the anchor: which fires to submit when, with what, and to whom (SPEC §3).

At the start of every global step's actor update the driver

1. reconstructs the step's global PPO mini-batches, one per tick, exactly as verl's workers
   iterate them (:func:`tick_minibatches`);
2. offers them to the :class:`~verl_commeff.replay_ring.ReplayRing`, which keeps the
   fire-paired ones and asks for one generator-weight snapshot (the actor's shards, put
   in Ray's object store by each actor rank) when the step has a kept mini-batch;
3. submits every fire whose inputs are now complete to the anchor worker group
   (non-blocking: the anchor computes while the actor trains) and hands the resulting
   futures to the actor ranks, which wait for them (``sync=strict``) or poll them
   (``sync=free``) at their fire ticks;

and after the update it releases the fires the actor has consumed (taken, dropped or failed on
every actor rank: a late ``sync=free`` fire stays pending until then).

Nothing here waits for the actor: the snapshot call is non-blocking (its futures go to
the anchor, which resolves them), and each fire's mini-batch is put in Ray's object store
once (``put``) and handed to the anchor group as that one ref, which every anchor rank
reads (not serialised into each rank's call). Only the kept rows travel: the ring keeps
only fire-paired mini-batches, and the trainer builds only those
(:func:`tick_minibatches` with ``keep``). The ledger's ``anchor_minibatch`` path
(:mod:`verl_commeff.ledger`) counts a fire's mini-batch bytes once per submission to the
anchor group (what is put), whatever the number of anchor ranks reading it.

With ``sync=free`` the anchor group can be restarted after a failure. So that its M̄ EMA
survives, the driver queues a copy of the anchor's state after every fire (``backup``) and
keeps the copies of the pending fires and of the two newest consumed ones; a restarted group
loads the newest one older than every pending fire (:meth:`AnchorDriver.restore_points`) and
reruns the pending fires on it.

Snapshots are delta-encoded by the actors (:mod:`verl_commeff.anchor.snapshot_delta`): the
ring keeps, for each snapshot, the chain of payloads from the last keyframe
(:class:`~verl_commeff.anchor.snapshot_delta.SnapshotChain`); a running anchor gets only
the snapshot's own payload, a fresh one (restart, resume) the whole chain, and the next
snapshot after either is a keyframe.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Sequence

from verl_commeff.anchor.snapshot_delta import SnapshotChain, chains_from_payloads, chains_to_payloads
from verl_commeff.ledger import path_metrics, payload_bytes
from verl_commeff.replay_ring import ReplayRing
from verl_commeff.schedule import FireSchedule

__all__ = ["AnchorDriver", "tick_minibatches"]


def tick_minibatches(data: Any, dp_size: int, mini_batch_size: int, epochs: int,
                     keep: Optional[Callable[[int], bool]] = None) -> list[Any]:
    """The global mini-batch of every tick of a step, in tick order.

    verl dispatches the step's batch to the DP ranks in contiguous chunks, and each rank
    iterates its chunk in mini-batches of ``mini_batch_size / dp_size`` samples (no
    shuffling), ``epochs`` times. Global mini-batch ``i`` is therefore the concatenation
    over ranks of each chunk's ``i``-th slice; tick ``e·n + i`` (epoch e) replays it.

    Args:
        data: the step's batch (a TensorDict, in the order the workers receive it).
        dp_size: the actor's data-parallel size.
        mini_batch_size: samples per global mini-batch (``ppo_mini_batch_size × n``).
        epochs: ``ppo_epochs``.
        keep: ``keep(i)`` for the step's i-th tick (0-based): whether to build its
            mini-batch; the others are None (nothing is copied for them). None = all.

    Raises:
        ValueError: sizes that do not divide as verl requires.
    """
    from verl.utils import tensordict_utils as tu

    n = data.shape[0]
    if n % dp_size or mini_batch_size % dp_size or (n // dp_size) % (mini_batch_size // dp_size):
        raise ValueError(f"batch of {n} samples, dp_size={dp_size}, mini_batch_size={mini_batch_size}: "
                         "the batch must split into whole per-rank mini-batches")
    per_rank, per_rank_mini = n // dp_size, mini_batch_size // dp_size
    per_epoch = per_rank // per_rank_mini
    minibatches = []
    for tick in range(per_epoch * epochs):
        if keep is not None and not keep(tick):
            minibatches.append(None)
            continue
        i = tick % per_epoch
        rows = [r * per_rank + i * per_rank_mini + j for r in range(dp_size) for j in range(per_rank_mini)]
        minibatches.append(tu.index_select_tensor_dict(data, rows))
    return minibatches


class AnchorDriver:
    """Drives the replay ring and the anchor worker group from the trainer.

    Args:
        schedule: the fire schedule (K, cadence, ticks per step, Q cadence).
        take_snapshot: ``take_snapshot(keyframe=bool)`` returns the actor's generator-weight
            snapshot (one object per actor rank; e.g. the ObjectRefs of
            ``actor_wg.commeff_snapshot(keyframe=...)``); ``keyframe=True`` asks for dense payloads.
        submit: ``submit(fire_tick, source_tick, minibatch, snapshot)`` starts a fire on the
            anchor group and returns its futures (one per anchor rank), without blocking.
        offer: ``offer(fire_tick, futures)`` hands a fire's futures to the actor ranks.
        put: stores a fire's mini-batch once and returns what ``submit`` passes on (``ray.put``:
            a ref every anchor rank reads); default: the mini-batch itself.
        keyframe_every: ask for a keyframe every this many snapshots
            (``commeff.anchor.snapshot_keyframe_every``; 1 = every snapshot dense).
        backup: ``backup(fire_tick)`` asks for a copy of the anchor's state (M̄ EMA and codec) right
            after fire ``fire_tick``, just submitted, and returns its futures
            (``anchor_wg.anchor_state_backup``); None = no backups. See :meth:`restore_points`.
    """

    def __init__(
        self,
        schedule: FireSchedule,
        take_snapshot: Callable[[], Any],
        submit: Callable[[int, int, Any, Any], Sequence[Any]],
        offer: Callable[[int, Sequence[Any]], None],
        put: Optional[Callable[[Any], Any]] = None,
        keyframe_every: int = 1,
        backup: Optional[Callable[[int], Sequence[Any]]] = None,
    ):
        self.schedule = schedule
        self.ring = ReplayRing(schedule)
        self._take_snapshot = take_snapshot
        self._submit = submit
        self._offer = offer
        self._put = put if put is not None else (lambda minibatch: minibatch)
        self.fires_submitted = 0
        self.snapshots_taken = 0
        self._submit_s = 0.0
        self._futures: dict[int, Sequence[Any]] = {}  # fire tick -> futures, until the actor has taken it
        self._puts: dict[int, Any] = {}  # fire tick -> its stored mini-batch, reused by a resubmission
        self._minibatch_bytes = 0  # this step, once per submission to the anchor group
        self.keyframe_every = keyframe_every
        self._chain: list[Any] = []  # per-rank snapshot objects since the last keyframe, oldest first
        self._keyframe_due = True  # the first snapshot, and the first after a restart or resume
        self._backup = backup
        self._backups: dict[int, Sequence[Any]] = {}  # fire tick -> futures of the anchor's state after it
        self.last_fire = 0  # the newest fire submitted

    def _submit_fire(self, job, whole_chain: bool = False) -> Sequence[Any]:
        # one object for the whole group: every anchor rank reads the global mini-batch (and takes its share)
        self._minibatch_bytes += payload_bytes(job.batch)
        if job.fire_tick not in self._puts:
            self._puts[job.fire_tick] = self._put(job.batch)
        snapshot = job.snapshot
        if isinstance(snapshot, SnapshotChain):  # a fresh anchor holds no base: the chain from the keyframe
            snapshot = snapshot.per_rank_chains() if whole_chain else snapshot.latest()
        futures = self._submit(job.fire_tick, job.source_tick, self._puts[job.fire_tick], snapshot)
        self.last_fire = max(self.last_fire, job.fire_tick)
        if self._backup is not None:  # the state right after the fire, on every anchor rank
            self._backups[job.fire_tick] = self._backup(job.fire_tick)
        return futures

    def _snapshot(self) -> SnapshotChain:
        self.snapshots_taken += 1
        keyframe = self._keyframe_due or len(self._chain) >= self.keyframe_every
        taken = self._take_snapshot(keyframe=keyframe)
        self._chain = [taken] if keyframe else [*self._chain, taken]
        self._keyframe_due = False
        return SnapshotChain(list(self._chain))

    def request_keyframe(self) -> None:
        """The next snapshot is a dense keyframe (a fresh anchor holds no base for a delta)."""
        self._keyframe_due = True

    def before_update(self, step: int, minibatches: Sequence[Any]) -> list[int]:
        """Offer step ``step``'s per-tick mini-batches; submit and hand over the fires they complete.

        Returns:
            The fire ticks submitted.
        """
        start = time.perf_counter()
        jobs = self.ring.add_step(step, minibatches, self._snapshot)
        for job in jobs:
            futures = self._submit_fire(job)
            self._offer(job.fire_tick, futures)
            self._futures[job.fire_tick] = futures
            self.fires_submitted += 1
        self._submit_s += time.perf_counter() - start
        return [job.fire_tick for job in jobs]

    def after_update(self, last_tick: int, unconsumed: Iterable[int] = ()) -> list[int]:
        """Release the ring entries of the fires the actor has consumed.

        A fire is consumed when every actor rank has taken its result, dropped it (a newer one
        was held) or counted it as failed. With ``sync=strict`` that is every fire up to
        ``last_tick``; with ``sync=free`` a fire can still be computing, or finished and not
        yet polled, after its tick: it stays pending (in the ring, its futures kept), so a
        checkpoint saves it and an anchor restart reruns it instead of turning it into a failure.

        Args:
            last_tick: the step's last tick (no fire after it is due yet).
            unconsumed: fires some actor rank still holds unconsumed (``commeff_unconsumed_fires``).

        Returns:
            The fires released.
        """
        keep = set(unconsumed)
        released = []
        for fire in [job.fire_tick for job in self.ring.pending_jobs() if job.fire_tick <= last_tick]:
            if fire in keep:
                self.ring.mark_late(fire)
                continue
            self.ring.release(fire)
            self._futures.pop(fire, None)
            self._puts.pop(fire, None)
            released.append(fire)
        # backups: of every pending fire (each may become the newest consumed) and of the two newest
        # consumed ones (the newest one's backup fails if the anchor died right after that fire)
        pending = {job.fire_tick for job in self.ring.pending_jobs()}
        consumed = sorted(f for f in self._backups if f not in pending)
        for fire in consumed[:-2]:
            del self._backups[fire]
        return released

    def note_backup(self, fire: int, futures: Sequence[Any]) -> None:
        """Record ``futures`` as the anchor's state after fire ``fire`` (a resume: the checkpoint's)."""
        self._backups[fire] = futures

    def restore_points(self) -> list[tuple[int, Sequence[Any]]]:
        """Backups a restarted anchor can continue from, newest first: (fire, futures of each rank's state).

        Each is the anchor's state after a fire older than every pending fire (the pending ones run
        again on the new group, so the state must not include them). Its M̄ EMA is then the one the
        uninterrupted anchor had, and the rerun fires fold into it as they would have. The newest is
        normally the last fire the actor consumed; the next is a fallback if that one's backup
        failed (its worker died before writing it).
        """
        pending = {job.fire_tick for job in self.ring.pending_jobs()}
        oldest = min(pending, default=None)
        return [(fire, self._backups[fire]) for fire in sorted(self._backups, reverse=True)
                if fire not in pending and (oldest is None or fire < oldest)]

    def pending_futures(self) -> dict[int, Sequence[Any]]:
        """The futures of every submitted fire the actor has not taken yet, by fire tick."""
        return dict(self._futures)

    def resubmit_pending(self, ready: Optional[dict[int, Sequence[Any]]] = None) -> list[int]:
        """Hand every pending fire to the actor again: its result from ``ready`` if there, else resubmitted.

        After a resume, ``ready`` holds the results drained into the checkpoint (the anchor's
        state was saved after computing them); after an anchor restart it is empty and the
        pending fires run again on the new group. Either way the anchor is fresh: a
        resubmitted fire carries its snapshot's whole chain from the keyframe, and the next
        snapshot is a keyframe.

        Returns:
            The fire ticks submitted again.
        """
        ready = ready or {}
        resubmitted = []
        self.request_keyframe()
        for job in self.ring.pending_jobs():
            futures = ready.get(job.fire_tick)
            if futures is None:
                futures = self._submit_fire(job, whole_chain=True)
                resubmitted.append(job.fire_tick)
            self._offer(job.fire_tick, futures)
            self._futures[job.fire_tick] = futures
        return resubmitted

    def metrics(self) -> dict[str, float]:
        """Driver-side ``commeff/anchor/*`` metrics and the mini-batch path of the byte ledger, this step."""
        out = {
            "commeff/anchor/fires": float(self.fires_submitted),
            "commeff/anchor/snapshots": float(self.snapshots_taken),
            "commeff/anchor/ring_batches": float(len(self.ring)),
            "commeff/anchor/ring_snapshots": float(self.ring.num_snapshots),
            "commeff/anchor/late_fires": float(self.ring.late_fires),
            "commeff/anchor/submit_s": self._submit_s,
        }
        out.update(path_metrics("anchor_minibatch", self._minibatch_bytes, 0))
        self._submit_s = 0.0
        self._minibatch_bytes = 0
        return out

    def state_dict(self, fetch: Optional[Callable[[Any], Any]] = None) -> dict[str, Any]:
        """The ring (mini-batches, snapshots, pending fires) and the counters.

        Args:
            fetch: for a checkpoint: resolves a snapshot chain entry to its payload (``resolve``).
                Every distinct payload is then fetched and stored once, in
                ``snapshot_payloads`` keyed by its id, and the ring's chains hold the keys
                (:func:`~verl_commeff.anchor.snapshot_delta.chains_to_payloads`). None: the chains as they are.
        """
        state = {"ring": self.ring.state_dict(), "fires_submitted": self.fires_submitted,
                 "snapshots_taken": self.snapshots_taken, "last_fire": self.last_fire}
        if fetch is not None:
            state["ring"]["snapshots"], state["snapshot_payloads"] = chains_to_payloads(
                state["ring"]["snapshots"], fetch)
        return state

    def load_state_dict(self, state: dict[str, Any], put: Optional[Callable[[Any], Any]] = None) -> None:
        """Restore :meth:`state_dict` output.

        Args:
            state: from :meth:`state_dict`.
            put: stores a snapshot payload (``ray.put``), once per payload, for a state saved with
                ``fetch``. A checkpoint from before payloads were kept once (its chains hold the
                payloads themselves) is stored per distinct payload object too.
        """
        ring = dict(state["ring"])
        if put is not None:
            payloads = state.get("snapshot_payloads")
            if payloads is None:  # an older checkpoint: the payloads are in the chains
                ring["snapshots"], payloads = chains_to_payloads(ring["snapshots"], lambda payload: payload)
            ring["snapshots"] = chains_from_payloads(ring["snapshots"], payloads, put)
        self.ring.load_state_dict(ring)
        self.fires_submitted = state["fires_submitted"]
        self.snapshots_taken = state["snapshots_taken"]
        self.last_fire = state.get("last_fire", 0)
        self._backups = {}  # of the last run's anchor: a resume notes the checkpoint's state (note_backup)
        self._chain = []  # the resumed actors' encoders are fresh: the next snapshot is a keyframe
        self.request_keyframe()
