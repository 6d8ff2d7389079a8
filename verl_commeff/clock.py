"""One clock for the whole method: global steps and ticks (SPEC §1).

- global step ``s`` (1-based): one rollout batch and one ``update_actor`` call;
- tick ``t`` (1-based, monotonic across the run): one optimizer step, i.e. one PPO
  mini-batch of one PPO epoch.

``ticks_per_step = (train_batch_size / ppo_mini_batch_size) × ppo_epochs``; the seed's
surface (128 / 64, one epoch) has 2 ticks per step. Every latency, cadence and age knob
of verl-commeff counts ticks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TickClock", "ticks_per_step"]


def ticks_per_step(train_batch_size: int, ppo_mini_batch_size: int, ppo_epochs: int = 1) -> int:
    """Optimizer steps per global step.

    Args:
        train_batch_size: prompts per global step (verl's ``data.train_batch_size``).
        ppo_mini_batch_size: prompts per PPO mini-batch (``actor.ppo_mini_batch_size``, in
            prompts, before verl multiplies it by ``rollout.n``).
        ppo_epochs: passes over the batch per step (``actor.ppo_epochs``).

    Raises:
        ValueError: a non-positive value, or ``train_batch_size`` not a multiple of
            ``ppo_mini_batch_size`` (the tick clock would not be exact).
    """
    for name, value in (
        ("train_batch_size", train_batch_size),
        ("ppo_mini_batch_size", ppo_mini_batch_size),
        ("ppo_epochs", ppo_epochs),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is out of range: must be an integer >= 1")
    if train_batch_size % ppo_mini_batch_size != 0:
        raise ValueError(
            f"train_batch_size={train_batch_size} is not a multiple of ppo_mini_batch_size={ppo_mini_batch_size}: "
            "verl-commeff counts ticks (optimizer steps) and needs a whole number of mini-batches per step"
        )
    return (train_batch_size // ppo_mini_batch_size) * ppo_epochs


class TickClock:
    """The run's clock: the current global step and the last tick taken.

    Use::

        clock.begin_step()      # at the start of update_actor (or of the rollout step)
        t = clock.advance()     # once per optimizer step, before the merger runs

    Args:
        ticks_per_step: optimizer steps per global step (see :func:`ticks_per_step`).
    """

    def __init__(self, ticks_per_step: int):
        if isinstance(ticks_per_step, bool) or not isinstance(ticks_per_step, int) or ticks_per_step < 1:
            raise ValueError(f"ticks_per_step={ticks_per_step!r} is out of range: must be an integer >= 1")
        self.ticks_per_step = ticks_per_step
        self.step = 0  # the current global step (0: none begun)
        self.tick = 0  # the last tick taken (0: none)

    # ---- conversions -------------------------------------------------------------------
    def step_of_tick(self, tick: int) -> int:
        """The global step that contains ``tick``."""
        if tick < 1:
            raise ValueError(f"tick={tick!r} is out of range: ticks are 1-based")
        return (tick - 1) // self.ticks_per_step + 1

    def ticks_of_step(self, step: int) -> range:
        """The ticks of global step ``step``, in order."""
        if step < 1:
            raise ValueError(f"step={step!r} is out of range: steps are 1-based")
        first = (step - 1) * self.ticks_per_step + 1
        return range(first, first + self.ticks_per_step)

    # ---- advancing ---------------------------------------------------------------------
    @property
    def step_complete(self) -> bool:
        """Every tick of the current step was taken (also true before the first step): a step boundary."""
        return self.tick == self.step * self.ticks_per_step

    def begin_step(self) -> range:
        """Start the next global step; returns its ticks.

        Raises:
            RuntimeError: the previous step did not take all its ticks (the clock would
                drift from the optimizer).
        """
        if not self.step_complete:
            raise RuntimeError(
                f"step {self.step} took {self.tick - (self.step - 1) * self.ticks_per_step} ticks, "
                f"expected {self.ticks_per_step}: the mini-batch count changed mid-run"
            )
        self.step += 1
        return self.ticks_of_step(self.step)

    def advance(self) -> int:
        """Take the next tick of the current step and return it."""
        if self.step == 0:
            raise RuntimeError("advance() before begin_step(): no global step has started")
        if self.tick >= self.step * self.ticks_per_step:
            raise RuntimeError(
                f"tick {self.tick + 1} would exceed step {self.step}'s {self.ticks_per_step} ticks: "
                "call begin_step() first"
            )
        self.tick += 1
        return self.tick

    # ---- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"ticks_per_step": self.ticks_per_step, "step": self.step, "tick": self.tick}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["ticks_per_step"] != self.ticks_per_step:
            raise ValueError(
                f"checkpoint has ticks_per_step={state['ticks_per_step']}, this run has {self.ticks_per_step}: "
                "resuming with another train/mini-batch size would shift every tick-counted knob"
            )
        self.step = state["step"]
        self.tick = state["tick"]
