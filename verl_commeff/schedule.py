"""When the anchor fires, what it replays, and when Q moves (SPEC §2–3).

All arguments count ticks (see :mod:`verl_commeff.clock`).

- The anchor fires at tick ``t`` iff ``t % cadence == 0``.
- Fire ``t`` replays the mini-batch of tick ``t − K`` (``K = delay_k``) with the
  generator weights of that mini-batch (the actor weights at the start of its step).
- Warm-up: while ``t − K < 1`` there is no such tick; the fire replays the oldest
  mini-batch of the run (tick 1) with its own weights (those of step 1).
- Retention ("fire-aware residue"): only ticks ``τ ≡ −K (mod cadence)`` are ever
  replayed, plus tick 1 while warm-up fires remain.
- A fire's inputs are known at the start of the step that contains its source tick, so
  its job can be submitted then (:meth:`FireSchedule.fires_sourced_in_step`).
- Q is refreshed at ticks ``t % q_cadence == 0`` and goes live at the next step boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FireSchedule"]


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} is out of range: must be an integer >= {lo}")


@dataclass(frozen=True)
class FireSchedule:
    """The anchor's fire/replay/retention schedule and the Q-refresh schedule.

    Args:
        delay_k: K, ticks between a fire and the mini-batch it replays (≥ 0).
        cadence: the anchor fires every ``cadence`` ticks (≥ 1).
        ticks_per_step: optimizer steps per global step (≥ 1).
        q_cadence: Q refreshes every ``q_cadence`` ticks (≥ 1; ``None`` = ``cadence``).
    """

    delay_k: int
    cadence: int
    ticks_per_step: int
    q_cadence: int | None = None

    def __post_init__(self):
        _check_int("delay_k", self.delay_k, 0)
        _check_int("cadence", self.cadence, 1)
        _check_int("ticks_per_step", self.ticks_per_step, 1)
        if self.q_cadence is None:
            object.__setattr__(self, "q_cadence", self.cadence)
        _check_int("q_cadence", self.q_cadence, 1)

    # ---- predicates --------------------------------------------------------------------
    def fires_at(self, tick: int) -> bool:
        """The anchor fires at ``tick``."""
        return tick >= 1 and tick % self.cadence == 0

    def q_refresh_at(self, tick: int) -> bool:
        """Q is refreshed (a new basis is staged) at ``tick``."""
        return tick >= 1 and tick % self.q_cadence == 0

    def is_warmup(self, fire_tick: int) -> bool:
        """Fire ``fire_tick`` has no tick ``t − K`` yet and replays tick 1."""
        return fire_tick - self.delay_k < 1

    def source_tick(self, fire_tick: int) -> int:
        """The tick whose mini-batch fire ``fire_tick`` replays."""
        if not self.fires_at(fire_tick):
            raise ValueError(f"tick {fire_tick} is not a fire tick (cadence {self.cadence})")
        return 1 if self.is_warmup(fire_tick) else fire_tick - self.delay_k

    def step_of_tick(self, tick: int) -> int:
        """The global step containing ``tick``."""
        return (tick - 1) // self.ticks_per_step + 1

    def retains(self, tick: int) -> bool:
        """Some fire replays the mini-batch of ``tick`` (the ring must keep it)."""
        if tick < 1:
            return False
        if tick % self.cadence == (-self.delay_k) % self.cadence:
            return True
        return tick == 1 and self.cadence <= self.delay_k  # a warm-up fire exists

    def fires_replaying(self, tick: int) -> list[int]:
        """The fire ticks whose source is ``tick`` (empty when it is not retained)."""
        fires = []
        if tick % self.cadence == (-self.delay_k) % self.cadence:
            fires.append(tick + self.delay_k)
        if tick == 1:  # warm-up fires: every fire tick t ≤ K
            fires = sorted(set(fires) | set(range(self.cadence, self.delay_k + 1, self.cadence)))
        return fires

    def fires_sourced_in_step(self, step: int) -> list[int]:
        """Fire ticks whose inputs become known at the start of ``step`` (submit them then)."""
        first = (step - 1) * self.ticks_per_step + 1
        out: list[int] = []
        for tick in range(first, first + self.ticks_per_step):
            out.extend(self.fires_replaying(tick))
        return sorted(out)

    # ---- counts ------------------------------------------------------------------------
    def fires_through(self, tick: int) -> int:
        """Number of fires at ticks 1..``tick``."""
        return max(tick, 0) // self.cadence

    def q_refreshes_through(self, tick: int) -> int:
        """Number of Q refreshes at ticks 1..``tick``."""
        return max(tick, 0) // self.q_cadence

    def ring_batch_bound(self) -> int:
        """Most mini-batches alive in the ring at once.

        The ring gets a step's retained mini-batches at the start of the step and drops
        each once its fire (tick τ + K) has been consumed. Right after step ``s`` was
        added, the alive residue ticks lie in ``((s−1)·T − K, s·T]`` (T = ticks per step),
        a window of ``K + T`` ticks holding at most ``⌈(K + T) / cadence⌉`` of them; the
        warm-up tick 1 adds at most one more. With T = 1 this is SPEC §3's
        ``⌊K/cadence⌋ + 1`` plus the warm-up batch.
        """
        return -(-(self.delay_k + self.ticks_per_step) // self.cadence) + 1

    def ring_snapshot_bound(self) -> int:
        """Most weight snapshots alive at once: one per step referenced by an alive batch.

        The alive window ``((s−1)·T − K, s·T]`` spans ``⌈K/T⌉ + 1`` steps (step 1, the
        warm-up's, is inside it while warm-up fires are pending), and there are never more
        snapshots than batches.
        """
        return min(self.ring_batch_bound(), -(-self.delay_k // self.ticks_per_step) + 1)
