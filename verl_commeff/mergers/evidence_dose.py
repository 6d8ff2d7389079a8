"""The evidence dose: λ from the anchor's own measurement of what the merge does (issue 17).

The sign agreement between G and M̄ cannot tell a stale, uninformative M̄ from a useful one
correcting a broken fast gradient: it is ≈ 0.5 in both cases. The anchor can measure the
difference, because when it replays tick τ it holds, on the same weights and mini-batch,

- D: the dense gradient (its M for this fire),
- C: the gradient through the codec, with the Q that was live on the actor at τ (the actor's
  fast gradient at τ, up to the step's second tick having moved the weights once),
- s: sign(M̄) of the M̄ the actor held at τ (``sync=strict``: the newest fire ≤ τ).

``signed_ema`` merges G′ = G + λ·δ with δ = (1 − α)(|G| ⊙ s − G), so how well the merged
gradient points along D is a function of λ alone, fixed by five global inner products:

    cos(C + λδ, D) = (a + λb) / (‖D‖·√(c + 2λe + λ²g)),
    a = ⟨C, D⟩, b = ⟨δ, D⟩, c = ‖C‖², e = ⟨C, δ⟩, g = ‖δ‖².

Its only stationary point is λ_c = (bc − ae)/(ag − be), so λ* = argmax over [0, λ_cap] is the
best of {0, λ_cap, λ_c if inside} (:func:`best_dose`; ties go to the smaller λ). λ* is 0 where
the fast gradient is already as good as the merge can make it or s carries no direction, and
high where the codec loses and s persists. The anchor computes it per fire
(:mod:`verl_commeff.anchor.dose_probe`) and sends it as a host float; the actor's merger uses
an EMA of λ* over fires (:class:`EvidenceDose`), starting from a prior (0: no evidence, no
merge), so the actor does no extra host sync.

The evidence is measured at the ticks the anchor replays: with ``cadence`` dividing K those
are the ticks at which a new M̄ arrived (age 0), while the ticks between fires use an M̄ up
to ``cadence − 1`` ticks older. So the anchor also scores the M̄ held before that one against
the same D (age + cadence: ``lambda_star_older``), and the actor's dose at age a interpolates
linearly between the two EMAs (:meth:`EvidenceDose.at_age`); ``merger.age_decay`` still
applies on top.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

__all__ = ["EVIDENCE_SUMS", "EvidenceDose", "best_dose", "evidence_from_sums", "merged_cos", "older_evidence",
           "signed_ema_sums"]

# The global sums the anchor all-reduces per fire, in this order (fp64).
EVIDENCE_SUMS = (
    "c_dot_d",  # a = ⟨C, D⟩
    "delta_dot_d",  # b = ⟨δ, D⟩
    "c_sq",  # c = ‖C‖²
    "c_dot_delta",  # e = ⟨C, δ⟩
    "delta_sq",  # g = ‖δ‖²
    "d_sq",  # ‖D‖²
    "agree_abs_d",  # Σ |D| over coordinates where s = sign(D)
    "abs_d",  # Σ |D|
    "agree_count",  # coordinates where s = sign(D)
    "numel",  # coordinates
)
N_EVIDENCE_SUMS = len(EVIDENCE_SUMS)
PREFIX = "commeff/dose/"


def signed_ema_sums(c: Sequence[torch.Tensor], d: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                    alpha: float) -> torch.Tensor:
    """This rank's partial :data:`EVIDENCE_SUMS` for ``signed_ema``'s correction, a (10,) fp64 tensor.

    Steps (per tensor; sums in fp32 within a tensor, fp64 across tensors):
        1. s = +1 where ``positive`` else −1; δ = (1 − α)(|C|·s − C).
        2. The inner products of C, δ and D, and the |D|-weighted and plain agreement of s
           with sign(D) (sign(0) = +, as everywhere in the mergers).

    Args:
        c: the local gradient tensors through the codec (C).
        d: the local dense gradient tensors (D), shaped like ``c``.
        positive: per tensor, a bool/uint8 mask of sign(M̄) = + (held M̄ at the replayed tick).
        alpha: the merger's α.
    """
    rows = []
    for ci, di, pi in zip(c, d, positive):
        cf, df = ci.float().reshape(-1), di.float().reshape(-1)  # (n,)
        # Step 1: the correction.
        s = pi.reshape(-1).to(torch.float32) * 2.0 - 1.0  # (n,) ±1
        delta = (1.0 - alpha) * (cf.abs() * s - cf)  # (n,)
        # Step 2: the sums.
        agree = (df >= 0).to(torch.float32) * 2.0 - 1.0 == s  # (n,) bool
        rows.append(torch.stack([
            torch.dot(cf, df), torch.dot(delta, df), torch.dot(cf, cf), torch.dot(cf, delta),
            torch.dot(delta, delta), torch.dot(df, df), (df.abs() * agree).sum(), df.abs().sum(),
            agree.sum().to(torch.float32), torch.full((), float(df.numel()), device=df.device),
        ]).to(torch.float64))  # (10,)
    if not rows:
        return torch.zeros(N_EVIDENCE_SUMS, dtype=torch.float64)
    return torch.stack(rows).sum(dim=0)


def merged_cos(sums: dict[str, float], lam: float) -> float:
    """cos(C + λδ, D) from the global sums (0 when a norm is 0)."""
    a, b, c, e, g, dd = (sums[k] for k in ("c_dot_d", "delta_dot_d", "c_sq", "c_dot_delta", "delta_sq", "d_sq"))
    norm_sq = c + 2.0 * lam * e + lam * lam * g
    if norm_sq <= 0.0 or dd <= 0.0:
        return 0.0
    return (a + lam * b) / math.sqrt(norm_sq * dd)


def best_dose(sums: dict[str, float], cap: float) -> float:
    """λ* = argmax over λ ∈ [0, cap] of cos(C + λδ, D), in closed form (see the module doc).

    Candidates: 0, ``cap`` and the stationary point λ_c = (bc − ae)/(ag − be) when it lies
    strictly inside; the largest cos wins, the smaller λ on a tie (a flat cos, e.g. δ = 0,
    gives 0).
    """
    a, b, c, e, g = (sums[k] for k in ("c_dot_d", "delta_dot_d", "c_sq", "c_dot_delta", "delta_sq"))
    candidates = [0.0, float(cap)]
    denom = a * g - b * e
    if denom != 0.0:
        stationary = (b * c - a * e) / denom
        if 0.0 < stationary < cap:
            candidates.append(stationary)
    best, best_cos = 0.0, merged_cos(sums, 0.0)
    for lam in sorted(candidates):
        value = merged_cos(sums, lam)
        if value > best_cos + 1e-12 * max(1.0, abs(best_cos)):
            best, best_cos = lam, value
    return best


def older_evidence(values: Sequence[float], cap: float) -> dict[str, float]:
    """``lambda_star_older`` and ``held_agree_older``: the M̄ held before the one at the replayed tick,
    scored against the same C and D (its sums, :data:`EVIDENCE_SUMS`)."""
    full = evidence_from_sums(values, cap, held=True)
    return {"lambda_star_older": full["lambda_star"], "held_agree_older": full["held_agree"]}


def evidence_from_sums(values: Sequence[float], cap: float, held: bool) -> dict[str, float]:
    """The host-side evidence of one fire from its global :data:`EVIDENCE_SUMS`.

    Keys: ``cos_codec`` = cos(C, D) (how much the fast path loses) always; with a held M̄
    at the replayed tick (``held``) also ``lambda_star``, ``cos_merged`` (at λ*),
    ``cos_full`` (at λ = 1, the seed's dose), ``held_agree`` (|D|-weighted agreement of
    sign(M̄) with sign(D): how well the held M̄ predicts the dense gradient where it matters)
    and ``held_agree_plain`` (unweighted).
    """
    sums = dict(zip(EVIDENCE_SUMS, (float(v) for v in values)))
    out = {"cos_codec": merged_cos(sums, 0.0)}
    if held:
        lam = best_dose(sums, cap)
        out.update(lambda_star=lam, cos_merged=merged_cos(sums, lam), cos_full=merged_cos(sums, 1.0),
                   held_agree=sums["agree_abs_d"] / sums["abs_d"] if sums["abs_d"] > 0 else 0.5,
                   held_agree_plain=sums["agree_count"] / sums["numel"] if sums["numel"] > 0 else 0.5)
    return out


class EvidenceDose:
    """The actor's dose under ``adaptive.mode=evidence``: an EMA of the anchor's λ* over fires.

    Knobs (from :class:`~verl_commeff.config.AdaptiveLambdaConfig`):
        prior: λ before the first evidence (0: no evidence, no merge).
        momentum: ρ of λ ← ρ·λ + (1 − ρ)·λ* per fire that carries a λ* (0 = the latest λ*).
        cap: λ_cap (the anchor already clamps λ* to [0, cap]; kept for the state check).

    State (host numbers only: no device value is ever read): λ, the number of fires that
    carried evidence, and this step's evidence for the metrics.
    """

    def __init__(self, prior: float, momentum: float, cap: float):
        self.prior, self.momentum, self.cap = float(prior), float(momentum), float(cap)
        self.lam = self.prior  # the EMA of λ* at the measured age (``held_age``, 0 when cadence | K)
        self.age = 0.0  # the last measured age
        self.lam_older: Optional[float] = None  # the EMA of λ* for the M̄ held before (age + cadence)
        self.age_older = 0.0
        self.fires = 0
        self._step: list[dict[str, float]] = []

    def _ema(self, old: float, lam_star: float) -> float:
        return self.momentum * old + (1.0 - self.momentum) * min(max(float(lam_star), 0.0), self.cap)

    def take(self, evidence: Optional[dict[str, float]]) -> None:
        """Fold one fire's evidence in (None, or no ``lambda_star``: nothing but the metrics)."""
        if evidence is None:
            return
        self._step.append(dict(evidence))
        if "lambda_star" not in evidence:
            return
        self.lam = self._ema(self.lam, evidence["lambda_star"])
        self.age = float(evidence.get("held_age", 0.0))
        if "lambda_star_older" in evidence:
            self.lam_older = self._ema(self.prior if self.lam_older is None else self.lam_older,
                                       evidence["lambda_star_older"])
            self.age_older = float(evidence["older_age"])
        self.fires += 1

    def at_age(self, age: int) -> float:
        """λ for an M̄ ``age`` ticks old: the EMA at the measured age, linearly towards the older M̄'s EMA
        (clamped to the two ends; the measured-age EMA alone until an older M̄ was scored)."""
        if self.lam_older is None or self.age_older <= self.age or age <= self.age:
            return self.lam
        share = min((age - self.age) / (self.age_older - self.age), 1.0)
        return self.lam + share * (self.lam_older - self.lam)

    def metrics(self) -> dict[str, float]:
        """``commeff/dose/*``: λ (the EMA, before age decay), evidence fires so far, and the means
        of this step's evidence (``lambda_star``, ``cos_codec``, ...); resets the step."""
        out = {PREFIX + "lambda_ema": self.lam, PREFIX + "evidence_fires": float(self.fires)}
        if self.lam_older is not None:
            out[PREFIX + "lambda_ema_older"] = self.lam_older
        keys = sorted({k for e in self._step for k in e})
        for key in keys:
            values = [e[key] for e in self._step if key in e]
            out[PREFIX + key] = sum(values) / len(values)
        self._step = []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "age": self.age, "lam_older": self.lam_older, "age_older": self.age_older,
                "fires": self.fires, "step": list(self._step), "prior": self.prior, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: the checkpoint was written with another prior or momentum.
        """
        for key in ("prior", "momentum"):
            if float(state[key]) != getattr(self, key):
                raise ValueError(f"EvidenceDose.load_state_dict: checkpoint {key}={state[key]!r} differs from "
                                 f"commeff.merger.adaptive.{key}={getattr(self, key)!r}")
        self.lam, self.fires, self._step = float(state["lam"]), int(state["fires"]), list(state["step"])
        self.age, self.lam_older, self.age_older = float(state["age"]), state["lam_older"], float(state["age_older"])
