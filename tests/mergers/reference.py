"""Plain-torch / plain-Python reference of the merger math, written from SPEC §4 alone.

Independent of verl_commeff.mergers: the tests compare the library against these.
"""

from __future__ import annotations

import math
import statistics

import torch


def sign_pm1(m: torch.Tensor) -> torch.Tensor:
    """sign with 0 (and -0.0) → +1, NaN → −1 (the documented convention)."""
    return torch.where(m >= 0, torch.ones_like(m), -torch.ones_like(m))


def delta(g: torch.Tensor, m: torch.Tensor, alpha: float) -> torch.Tensor:
    """δ = (1 − α)·(|G| ⊙ sign(M̄) − G), computed in fp64."""
    g64 = g.double()
    return (1 - alpha) * (g64.abs() * sign_pm1(m).double() - g64)


def merged(gs, ms, alpha: float, lam: float):
    """G + λ·δ per tensor (fp64 → the grads' dtype)."""
    return [(g.double() + lam * delta(g, m, alpha)).to(g.dtype) for g, m in zip(gs, ms)]


def closed_form(gs, ms, alpha: float):
    """α·G + (1 − α)·|G| ⊙ sign(M̄): the λ = 1 formula of the seed."""
    return [alpha * g + (1 - alpha) * g.abs() * sign_pm1(m) for g, m in zip(gs, ms)]


def _flat(ts):
    return torch.cat([t.reshape(-1).double() for t in ts])


def ratio_c(gs, ms, alpha: float) -> float:
    d = torch.cat([delta(g, m, alpha).reshape(-1) for g, m in zip(gs, ms)])
    gn = _flat(gs).norm().item()
    return d.norm().item() / gn if gn > 0 else 0.0


def cos_c(gs, ms) -> float:
    g, m = _flat(gs), _flat(ms)
    denom = g.norm().item() * m.norm().item()
    return torch.dot(g, m).item() / denom if denom > 0 else 0.0


def sign_agree(gs, ms) -> float:
    g, m = _flat(gs), _flat(ms)
    return ((g >= 0) == (m >= 0)).double().mean().item()


class RefDose:
    """λ_t = clamp(λ0 + κ(c̄ − c_t), 0, cap)·μ^age, c̄ = lower median of the last `window` c (incl. c_t)."""

    def __init__(self, lambda0, kappa, cap, window, mu=1.0, adaptive=True):
        self.lambda0, self.kappa, self.cap, self.window, self.mu = lambda0, kappa, cap, window, mu
        self.adaptive = adaptive
        self.history: list[float] = []

    def __call__(self, c: float, age: int = 0) -> float:
        if not self.adaptive:
            return self.lambda0 * self.mu**age
        self.history.append(c)
        c_bar = statistics.median_low(self.history[-self.window :])
        lam = min(max(self.lambda0 + self.kappa * (c_bar - c), 0.0), self.cap)
        return lam * self.mu**age


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def pack_bool_by_hand(flags) -> list[int]:
    """Plain-Python bit packing (the documented wire layout): bit i % 8 of byte i // 8 is flag i."""
    out = [0] * ((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i // 8] |= 1 << (i % 8)
    return out
