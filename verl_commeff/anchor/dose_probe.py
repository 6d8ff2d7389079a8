"""The anchor's dose probe: per fire, what the merge did at the replayed tick (issue 17).

When fire f replays tick τ = f − K, the anchor holds the generator weights and mini-batch of
τ and has just computed the dense gradient D there. The probe adds, on the same weights and
data (``commeff.anchor.probe=on``):

1. C: one more forward/backward with the boundary projection live, through the Q that was
   live on the actor at τ (the anchor keeps the actor's Q history: it computes every Q
   refresh itself when ``codec.q_source=anchor``);
2. s = sign(M̄) of the M̄ the actor held at τ: under ``sync=strict``, the newest accepted
   fire ≤ τ (with K = 0 that is this very fire), and of the M̄ held before it (an older age of
   the same kind); the probe keeps the last few M̄ as packed sign bits, 1 bit per coordinate,
   keyed by fire tick;
3. the global sums of :data:`~verl_commeff.mergers.evidence_dose.EVIDENCE_SUMS` (one
   all-reduce over the anchor's ranks), from which λ* and the signals follow in closed form
   (:func:`~verl_commeff.mergers.evidence_dose.evidence_from_sums`): host floats, sent to the
   actor with the fire's result.

Costs on the anchor per fire: one forward/backward, one copy of its target gradients, one
all-reduce of 10 numbers and one host read; memory: the sign bits of a few M̄ and a few Q.
Nothing runs on the actor.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, Optional, Sequence

import torch

from verl_commeff.collectives import all_reduce_
from verl_commeff.mergers.evidence_dose import evidence_from_sums, older_evidence, signed_ema_sums
from verl_commeff.mergers.sign_bits import PackedSigns, pack_signs, sign_mask
from verl_commeff.schedule import FireSchedule

__all__ = ["DoseProbe"]


class DoseProbe:
    """The actor's held-M̄ signs and live-Q history on one anchor rank, and the per-fire evaluation.

    Args:
        schedule: the fire schedule (K, cadence, ticks per step, Q cadence).
        alpha: the merger's α (the correction evaluated is ``signed_ema``'s).
        cap: λ_cap, the upper end of λ*'s range.
    """

    def __init__(self, schedule: FireSchedule, alpha: float, cap: float):
        self.schedule, self.alpha, self.cap = schedule, float(alpha), float(cap)
        # fires whose M̄ may be the held one at a replayed tick, or the one before it: ⌈K/cadence⌉ + 2, one spare
        self.keep_signs = -(-schedule.delay_k // schedule.cadence) + 3
        # Q versions live during the last K + T ticks, one spare
        self.keep_bases = -(-(schedule.delay_k + schedule.ticks_per_step) // schedule.q_cadence) + 2
        self._signs: dict[int, PackedSigns] = {}  # fire tick -> sign(M̄) after that fire (local shards)
        self._bases: list[tuple[int, torch.Tensor]] = []  # (first tick live on the actor, Q (B, H, r)), ascending

    # ---- history ------------------------------------------------------------------------
    def record_held(self, fire_tick: int, m_bar: Sequence[torch.Tensor]) -> None:
        """sign(M̄) after accepted fire ``fire_tick`` (the actor holds it from that tick on)."""
        self._signs[fire_tick] = pack_signs(list(m_bar))
        for old in sorted(self._signs)[:-self.keep_signs]:
            del self._signs[old]

    def record_basis(self, refresh_tick: int, bases: torch.Tensor) -> None:
        """The Q the actor stages at Q-refresh tick ``refresh_tick``: live from the next step's first tick."""
        live_from = self.schedule.step_of_tick(refresh_tick) * self.schedule.ticks_per_step + 1
        self._bases = [(t, q) for t, q in self._bases if t < live_from] + [(live_from, bases.detach().clone())]
        self._bases = self._bases[-self.keep_bases:]

    def reset_basis(self, bases: torch.Tensor) -> None:
        """Q live from tick 1 on (the first basis, or the actor's Q adopted after a restart)."""
        self._bases = [(1, bases.detach().clone())]

    def held_at(self, tick: int) -> Optional[tuple[int, PackedSigns]]:
        """(fire tick, signs) of the M̄ the actor held at ``tick`` (strict sync), or None (cold, or pruned)."""
        fires = [f for f in self._signs if f <= tick]
        if not fires:
            return None
        fire = max(fires)
        return fire, self._signs[fire]

    def _masks(self, held: Optional[tuple[int, PackedSigns]]) -> list[torch.Tensor]:
        return [sign_mask(bits, shape) for bits, shape in zip(held[1].bits, held[1].shapes)]

    def basis_at(self, tick: int) -> Optional[torch.Tensor]:
        """The Q live on the actor at ``tick`` (None without history)."""
        starts = [t for t, _ in self._bases]
        i = bisect.bisect_right(starts, tick) - 1
        return self._bases[i][1] if i >= 0 else None

    # ---- one fire -----------------------------------------------------------------------
    def evaluate(self, source_tick: int, dense: Sequence[torch.Tensor],
                 through_codec: Callable[[Optional[torch.Tensor]], Sequence[torch.Tensor]]) -> dict[str, float]:
        """The evidence of the fire replaying ``source_tick``.

        Steps:
            1. s: the signs of the M̄ held at ``source_tick`` (None: the actor was cold there).
            2. C = ``through_codec(Q)`` with the Q live at ``source_tick`` (the caller runs the
               forward/backward; it returns this rank's target gradients).
            3. This rank's partial sums, ONE all-reduce over the anchor's ranks, one host read.
            4. λ* and the signals (:func:`~verl_commeff.mergers.evidence_dose.evidence_from_sums`);
               ``held_age``: ticks from the held M̄'s fire to ``source_tick``; for the M̄ held before
               it, ``lambda_star_older``, ``held_agree_older`` and ``older_age``.

        Args:
            source_tick: the replayed tick τ.
            dense: D, this rank's dense target gradients at τ (kept: not overwritten by step 2).
            through_codec: runs the projected forward/backward with the given Q live.
        """
        # Step 1: the held signs.
        held = self.held_at(source_tick)
        # Step 2: C.
        codec = list(through_codec(self.basis_at(source_tick)))
        # Step 3: the sums, for the held M̄ and the one held before it (both in one all-reduce).
        older = self.held_at(held[0] - 1) if held is not None else None
        if held is None:
            positive = [torch.ones_like(d, dtype=torch.bool) for d in dense]  # only cos(C, D) is read
        else:
            positive = self._masks(held)
        sums = [signed_ema_sums(codec, dense, positive, self.alpha)]  # (10,)
        if older is not None:
            sums.append(signed_ema_sums(codec, dense, self._masks(older), self.alpha))
        device = dense[0].device if dense else torch.device("cpu")
        values = all_reduce_(torch.stack(sums).to(device)).tolist()  # (1 or 2, 10): the one host read
        # Step 4: the evidence.
        evidence = evidence_from_sums(values[0], self.cap, held is not None)
        if held is not None:
            evidence["held_age"] = float(source_tick - held[0])
        if older is not None:
            evidence.update(older_evidence(values[1], self.cap), older_age=float(source_tick - older[0]))
        return evidence

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sign and basis histories (references; the caller copies to the host)."""
        return {"signs": {f: {"bits": list(p.bits), "shapes": [tuple(s) for s in p.shapes]} for f, p in self._signs.items()},
                "bases": list(self._bases)}

    def load_state_dict(self, state: dict[str, Any], device: Optional[torch.device | str] = None) -> None:
        """Restore :meth:`state_dict` output (tensors moved to ``device`` when given)."""
        move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        self._signs = {int(f): PackedSigns([move(b) for b in p["bits"]], [torch.Size(s) for s in p["shapes"]])
                       for f, p in state["signs"].items()}
        self._bases = [(int(t), move(q)) for t, q in state["bases"]]
