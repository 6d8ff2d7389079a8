"""Dose control: how much of the merger's correction δ_t is applied at tick t (SPEC §4).

The merger applies G′ = G + λ_t·δ_t. λ_t comes from two controls, both off by default:

- age decay (seed next step #2): λ_t ← λ_t·μ^age, age = ticks since the held M̄ was
  produced (μ = 1 is off);
- adaptive (seed next step #4): λ_t = clamp(λ_0 + κ·(c̄ − c_t), 0, λ_cap), where c_t is a
  staleness signal, ``ratio`` c_t = ‖δ_t‖/‖G_t‖ or ``cos`` c_t = cos(G_t, M̄), and c̄ is the
  median of the last ``window`` values of c_t. With mode ``off``, λ_t = λ_0 (no clamp).
- ``evidence`` (issue 17): λ_t = an EMA over fires of the λ* the anchor measured
  (:mod:`verl_commeff.mergers.evidence_dose`), a host number: no c_t, no ring.

Conventions (fixed here, tested):

- c̄ **includes the current c_t**: c_t is pushed into the ring first, then the median is
  taken over the min(pushes, window) most recent values. The first warm tick therefore
  has c̄ = c_t and λ_t = clamp(λ_0, 0, λ_cap).
- For an even count c̄ is the **lower median** (the smaller of the two middle values,
  ``torch.median``'s definition), so c̄ is always one of the observed c_t.
- Age decay multiplies the clamped adaptive λ (so with decay λ_t ≤ λ_cap still holds).
- A tick whose c_t is not finite (or that the caller marks invalid: a non-finite G or M̄)
  is **not pushed**: the ring and its count stay as they were, so one bad tick cannot
  poison c̄ for the next ``window`` ticks. The caller skips that tick's merge.

The stateless functions below are the math; :class:`DoseControl` is the small state
(ring buffer of past c_t and its push count, both on the gradients' device: whether a
tick is pushed is decided on the device). Nothing here reads a device value on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from verl_commeff.mergers.evidence_dose import EvidenceDose

if TYPE_CHECKING:
    from verl_commeff.config import AdaptiveLambdaConfig

__all__ = ["DoseControl", "adaptive_lambda", "age_decay_factor", "cos_signal", "ratio_signal"]

STAT_DTYPE = torch.float64  # dtype of every global statistic and of λ_t, c_t


def age_decay_factor(mu: float, age: int) -> float:
    """μ^age, the age-decay multiplier of λ_t (host arithmetic: both are host numbers).

    Args:
        mu: μ in (0, 1]; 1 disables the decay.
        age: ticks since the held M̄ was produced; ≥ 0.
    """
    if age < 0:
        raise ValueError(f"age={age} is out of range: must be >= 0 (M̄ produced after the tick it is applied at)")
    return float(mu) ** int(age)


def ratio_signal(delta_sq: torch.Tensor, g_sq: torch.Tensor) -> torch.Tensor:
    """c_t = ‖δ_t‖ / ‖G_t‖ from global squared norms (0-d tensors); 0 when ‖G_t‖ = 0."""
    safe = torch.where(g_sq > 0, g_sq, torch.ones_like(g_sq))
    return torch.where(g_sq > 0, torch.sqrt(delta_sq / safe), torch.zeros_like(g_sq))


def cos_signal(dot: torch.Tensor, g_sq: torch.Tensor, m_sq: torch.Tensor) -> torch.Tensor:
    """c_t = cos(G_t, M̄) = ⟨G, M̄⟩ / (‖G‖·‖M̄‖) from global sums (0-d tensors); 0 if a norm is 0."""
    denom = torch.sqrt(g_sq * m_sq)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, dot / safe, torch.zeros_like(denom))


def adaptive_lambda(c_t: torch.Tensor, c_bar: torch.Tensor, lambda0: float, kappa: float, cap: float) -> torch.Tensor:
    """λ_t = clamp(λ_0 + κ·(c̄ − c_t), 0, λ_cap) as a 0-d tensor on c_t's device."""
    return torch.clamp(lambda0 + kappa * (c_bar - c_t), min=0.0, max=cap)


class DoseControl:
    """The dose λ_t for each warm tick: adaptive λ from a ring of past c_t, then age decay.

    Knobs (from the config; the state holds no process group):
        adaptive.mode: ``off`` | ``ratio`` | ``cos`` (which c_t drives λ_t).
        adaptive.lambda0, kappa, cap, window: λ_0, κ, λ_cap and the median window.
        age_decay: μ of the age decay (1 = off).

    State:
        c_history: (window,) fp64 ring of the latest c_t values, created on the first push
            on c_t's device; NaN marks a slot never written; slot ``pushes % window`` is
            written next.
        pushes: 0-d int64 device tensor, how many c_t values were pushed (valid ticks only).

    Args:
        adaptive: the :class:`~verl_commeff.config.AdaptiveLambdaConfig` (duck-typed).
        age_decay: μ in (0, 1].
    """

    def __init__(self, adaptive: "AdaptiveLambdaConfig", age_decay: float = 1.0):
        if adaptive.cap is None:
            raise ValueError("DoseControl: commeff.merger.adaptive.cap is unresolved (None): build the config through "
                             "MergerConfig, which resolves it from the mode and alpha")
        self.mode = adaptive.mode
        self.lambda0 = float(adaptive.lambda0)
        self.kappa = float(adaptive.kappa)
        self.cap = float(adaptive.cap)
        self.window = int(adaptive.window)
        self.age_decay = float(age_decay)
        self.c_history: Optional[torch.Tensor] = None
        self.pushes: Optional[torch.Tensor] = None
        # the anchor's evidence: λ_t under mode ``evidence``, logged as commeff/dose/* in any mode
        self.evidence = EvidenceDose(adaptive.prior, adaptive.momentum, adaptive.cap)

    @property
    def adaptive(self) -> bool:
        """True when λ_t follows c_t (mode ``ratio`` or ``cos``)."""
        return self.mode in ("ratio", "cos")

    def take_evidence(self, evidence: Optional[dict[str, float]]) -> None:
        """One fire's evidence from the anchor (host floats; None: the fire carried none)."""
        self.evidence.take(evidence)

    def metrics(self) -> dict[str, float]:
        """``commeff/dose/*`` of this step (host numbers; empty when no fire carried evidence and the
        mode is not ``evidence``)."""
        out = self.evidence.metrics()
        if self.mode != "evidence" and self.evidence.fires == 0 and len(out) == 2:
            return {}
        if self.mode != "evidence":
            out.pop("commeff/dose/lambda_ema")  # not the applied dose in this mode
        return out

    def _push(self, c_t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Write c_t into the ring if ``valid`` and return c̄, the lower median of the filled slots.

        Masked on the device (no host read): an invalid tick rewrites the slot with its old
        value and does not advance ``pushes``.
        """
        if self.c_history is None:
            self.c_history = torch.full((self.window,), float("nan"), dtype=STAT_DTYPE, device=c_t.device)  # (window,)
            self.pushes = torch.zeros((), dtype=torch.int64, device=c_t.device)
        elif self.c_history.device != c_t.device:  # once, after a resume onto another device
            self.c_history, self.pushes = self.c_history.to(c_t.device), self.pushes.to(c_t.device)
        slot = (self.pushes % self.window).reshape(1)  # (1,) int64 on the device
        old = self.c_history.index_select(0, slot)  # (1,)
        self.c_history.index_copy_(0, slot, torch.where(valid, c_t.reshape(1), old))
        self.pushes += valid.to(torch.int64)
        return torch.nanmedian(self.c_history)  # NaN slots (never written) are left out

    def dose(
        self, c_t: torch.Tensor, age: int, valid: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """λ_t for one warm tick.

        Steps:
            1. Adaptive off: λ_t = λ_0; ``evidence``: λ_t = the EMA of the anchor's λ* at this age.
            2. Adaptive on: push c_t unless it is non-finite or ``valid`` is False, c̄ = lower
               median of the last ``window`` pushed c_t (incl. this one),
               λ_t = clamp(λ_0 + κ·(c̄ − c_t), 0, λ_cap).
            3. Age decay: λ_t ← λ_t·μ^age.

        Args:
            c_t: 0-d fp64 tensor, this tick's signal (ignored when adaptive is off).
            age: ticks since the held M̄ was produced.
            valid: 0-d bool device tensor, False when the tick must not reach the ring (its
                G or M̄ is not finite); None = True. λ_t of an invalid tick is meaningless:
                the caller skips its merge.

        Returns:
            (λ_t, c̄): 0-d fp64 tensors on c_t's device; c̄ is None when adaptive is off.
        """
        decay = age_decay_factor(self.age_decay, age)
        # Step 1: the fixed dose, or the evidence dose (both host numbers).
        if self.mode == "evidence":
            return torch.full((), self.evidence.at_age(age) * decay, dtype=STAT_DTYPE, device=c_t.device), None
        if not self.adaptive:
            return torch.full((), self.lambda0 * decay, dtype=STAT_DTYPE, device=c_t.device), None
        # Step 2: the adaptive dose.
        c_t = c_t.to(STAT_DTYPE)
        ok = torch.isfinite(c_t) if valid is None else torch.isfinite(c_t) & valid
        c_bar = self._push(c_t, ok)
        lam = adaptive_lambda(c_t.to(STAT_DTYPE), c_bar, self.lambda0, self.kappa, self.cap)
        # Step 3: age decay.
        return lam * decay, c_bar

    def state_dict(self) -> dict[str, Any]:
        """The ring and its fill count, and the evidence dose (the knobs come from the config)."""
        return {"c_history": self.c_history, "pushes": self.pushes, "evidence": self.evidence.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: the checkpoint's ring has a different window.
        """
        if state.get("evidence") is not None:  # absent in checkpoints from before issue 17
            self.evidence.load_state_dict(state["evidence"])
        hist = state["c_history"]
        if hist is not None and hist.shape != (self.window,):
            raise ValueError(
                f"DoseControl.load_state_dict: checkpoint c_history has shape {tuple(hist.shape)}, "
                f"commeff.merger.adaptive.window={self.window} needs ({self.window},)"
            )
        if hist is None:
            self.c_history, self.pushes = None, None
            return
        self.c_history = hist.detach().clone().to(STAT_DTYPE)
        pushes = state["pushes"]
        if not isinstance(pushes, torch.Tensor):  # a checkpoint from before the device-side count
            if pushes < self.window:
                self.c_history[pushes:] = float("nan")  # unwritten slots were zeros then
            pushes = torch.tensor(pushes)
        self.pushes = pushes.detach().clone().to(device=self.c_history.device, dtype=torch.int64)
