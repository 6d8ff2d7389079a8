"""The replay ring: fire-paired mini-batches and the weight snapshots they reference (SPEC §3).

At the start of every global step the trainer hands the ring that step's mini-batches
and a way to snapshot the generator weights (the actor weights the rollout sampled
with). The ring keeps only the mini-batches some fire will replay
(:meth:`FireSchedule.retains`), takes one snapshot per step that has one, and returns the
fire jobs whose inputs are now complete, so they can be submitted to the anchor at once
(the anchor's result is needed only at the fire tick, ``K`` ticks later). When the actor
has consumed fire ``t``'s result it calls :meth:`ReplayRing.release`; a mini-batch is
dropped when no pending fire needs it, and a snapshot when no kept mini-batch needs it.
A fire past its tick that the actor has not consumed yet (``sync=free``: the anchor is
behind) is marked late (:meth:`ReplayRing.mark_late`): it stays pending, and the ring's
bound counts only what the fires not yet due need (the late ones are the anchor's backlog,
``late_fires``).

Everything pending stays in :meth:`state_dict`, so a resumed run resubmits exactly the
jobs that were in flight (:meth:`ReplayRing.pending_jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from verl_commeff.schedule import FireSchedule

__all__ = ["FireJob", "ReplayRing"]


@dataclass(frozen=True)
class FireJob:
    """One anchor fire's inputs.

    Args:
        fire_tick: the tick t at which the actor needs the result.
        source_tick: the tick whose mini-batch is replayed (t − K, or 1 in warm-up).
        source_step: the global step of ``source_tick``; ``snapshot`` holds the actor
            weights at its start (the weights that generated the mini-batch).
        warmup: t − K < 1, so the oldest mini-batch (tick 1) is replayed.
        batch: the mini-batch, as the trainer handed it over.
        snapshot: the generator weights, as the trainer's snapshot function returned them.
    """

    fire_tick: int
    source_tick: int
    source_step: int
    warmup: bool
    batch: Any
    snapshot: Any


class ReplayRing:
    """Bounded store of the mini-batches and weight snapshots pending anchor fires.

    Args:
        schedule: the fire/retention schedule (K, cadence, ticks per step).
    """

    def __init__(self, schedule: FireSchedule):
        self.schedule = schedule
        self.last_step = 0
        self._batches: dict[int, Any] = {}  # source tick -> mini-batch
        self._snapshots: dict[int, Any] = {}  # global step -> generator weights
        self._pending: set[int] = set()  # fire ticks submitted and not yet released
        self._late: set[int] = set()  # pending fires past their tick, not consumed by the actor yet

    # ---- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Mini-batches kept."""
        return len(self._batches)

    @property
    def num_snapshots(self) -> int:
        return len(self._snapshots)

    @property
    def late_fires(self) -> int:
        """Pending fires past their tick that the actor has not consumed (the anchor's backlog)."""
        return len(self._late)

    # ---- filling -----------------------------------------------------------------------
    def add_step(self, step: int, minibatches: Sequence[Any], snapshot: Callable[[], Any]) -> list[FireJob]:
        """Offer step ``step``'s mini-batches; returns the fire jobs they complete.

        Args:
            step: the global step, exactly one more than the previous call's.
            minibatches: one entry per tick of the step, in tick order.
            snapshot: called at most once, only when the step has a kept mini-batch, to
                take the generator weights of this step.

        Raises:
            ValueError: a skipped or repeated step, or the wrong number of mini-batches.
            RuntimeError: the ring would exceed its bound (fires are not being released).
        """
        sched = self.schedule
        if step != self.last_step + 1:
            raise ValueError(f"step={step} is out of order: the ring expects step {self.last_step + 1}")
        if len(minibatches) != sched.ticks_per_step:
            raise ValueError(
                f"step {step} has {len(minibatches)} mini-batches, expected ticks_per_step={sched.ticks_per_step}"
            )
        first_tick = (step - 1) * sched.ticks_per_step + 1
        kept = [(first_tick + i, mb) for i, mb in enumerate(minibatches) if sched.retains(first_tick + i)]
        if kept:
            self._snapshots[step] = snapshot()
        for tick, mb in kept:
            self._batches[tick] = mb
        fires = sched.fires_sourced_in_step(step)
        self._pending.update(fires)
        self.last_step = step
        # the bound: what the fires not marked late need (a late fire's entries are the anchor's backlog)
        batches = {sched.source_tick(t) for t in self._pending - self._late}
        snapshots = {sched.step_of_tick(t) for t in batches}
        if len(batches) > sched.ring_batch_bound() or len(snapshots) > sched.ring_snapshot_bound():
            raise RuntimeError(
                f"replay ring over its bound after step {step}: {len(batches)} mini-batches "
                f"(bound {sched.ring_batch_bound()}), {len(snapshots)} snapshots "
                f"(bound {sched.ring_snapshot_bound()}) for fires not marked late; pending fires "
                f"{sorted(self._pending)} (late: {sorted(self._late)}) were never released"
            )
        return [self.job(t) for t in fires]

    # ---- reading -----------------------------------------------------------------------
    def job(self, fire_tick: int) -> FireJob:
        """The inputs of pending fire ``fire_tick``, with the t−K pairing checked."""
        sched = self.schedule
        if fire_tick not in self._pending:
            raise KeyError(f"fire {fire_tick} is not pending in the replay ring (pending: {sorted(self._pending)})")
        source = sched.source_tick(fire_tick)
        step = sched.step_of_tick(source)
        warmup = sched.is_warmup(fire_tick)
        # The pairing invariant: data of tick t−K (tick 1 in warm-up) with that data's own weights.
        if source != (1 if warmup else fire_tick - sched.delay_k) or source not in self._batches:
            raise AssertionError(f"fire {fire_tick}: mini-batch of tick {source} is not in the ring")
        if step not in self._snapshots:
            raise AssertionError(f"fire {fire_tick}: snapshot of step {step} (tick {source}) is not in the ring")
        return FireJob(fire_tick, source, step, warmup, self._batches[source], self._snapshots[step])

    def pending_jobs(self) -> list[FireJob]:
        """Every submitted, unreleased fire, oldest first (resubmit these after a resume)."""
        return [self.job(t) for t in sorted(self._pending)]

    # ---- draining ----------------------------------------------------------------------
    def release(self, fire_tick: int) -> None:
        """Fire ``fire_tick``'s result was consumed: drop what no pending fire needs."""
        if fire_tick not in self._pending:
            raise KeyError(f"fire {fire_tick} is not pending in the replay ring (pending: {sorted(self._pending)})")
        self._pending.discard(fire_tick)
        self._late.discard(fire_tick)
        needed = {self.schedule.source_tick(t) for t in self._pending}
        for tick in [t for t in self._batches if t not in needed]:
            del self._batches[tick]
        steps = {self.schedule.step_of_tick(t) for t in self._batches}
        for step in [s for s in self._snapshots if s not in steps]:
            del self._snapshots[step]

    def mark_late(self, fire_tick: int) -> None:
        """Pending fire ``fire_tick`` is past its tick and not consumed by the actor: keep it (late)."""
        if fire_tick not in self._pending:
            raise KeyError(f"fire {fire_tick} is not pending in the replay ring (pending: {sorted(self._pending)})")
        self._late.add(fire_tick)

    # ---- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "batches": dict(self._batches),
            "snapshots": dict(self._snapshots),
            "pending": sorted(self._pending),
            "late": sorted(self._late),
            "schedule": (self.schedule.delay_k, self.schedule.cadence, self.schedule.ticks_per_step),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.schedule.delay_k, self.schedule.cadence, self.schedule.ticks_per_step)
        if tuple(state["schedule"]) != mine:
            raise ValueError(
                f"checkpoint ring has (delay_k, cadence, ticks_per_step)={tuple(state['schedule'])}, "
                f"this run has {mine}: its pending fires would pair the wrong mini-batches"
            )
        self.last_step = state["last_step"]
        self._batches = dict(state["batches"])
        self._snapshots = dict(state["snapshots"])
        self._pending = set(state["pending"])
        self._late = set(state.get("late", ()))  # absent in checkpoints from before late fires were kept
