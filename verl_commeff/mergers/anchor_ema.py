"""The anchor's EMA of its dense gradients: M̄ ← β·M̄ + (1 − β)·M (SPEC §3).

Kept by the anchor worker: each fire produces M (one tensor per target, laid out however
the anchor holds its gradients: whole tensors, row shards or DTensors) and folds it into
M̄; the merger then receives M̄ (or its packed signs). The first fire sets M̄ = M.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["AnchorEMA"]


class AnchorEMA:
    """Exponential moving average of the anchor's gradient M over fires.

    Args:
        beta: β_anc in [0, 1): weight of the old M̄ (0 = M̄ is the latest M; the seed uses 0.5).
    """

    def __init__(self, beta: float):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"AnchorEMA: beta={beta!r} is out of range: must be a number in [0, 1)")
        self.beta = float(beta)
        self._m_bar: Optional[list[torch.Tensor]] = None
        self.updates = 0  # fires folded in so far

    @property
    def m_bar(self) -> Optional[list[torch.Tensor]]:
        """The current M̄ (one tensor per target), or None before the first update."""
        return self._m_bar

    @torch.no_grad()
    def update_(self, m: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fold one fire's gradient into M̄ and return M̄.

        Steps:
            1. First update: M̄ = a copy of M.
            2. Later updates: check M matches M̄ (count and shapes), then
               M̄ ← β·M̄ + (1 − β)·M in place (two fused foreach kernels).

        Args:
            m: the fire's gradient, one tensor per target (same layout every fire).

        Returns:
            M̄ (the internal tensors; do not modify them).
        """
        m = list(m)
        # Step 1: the first fire sets M̄.
        if self._m_bar is None:
            self._m_bar = [t.detach().clone() for t in m]
            self.updates = 1
            return self._m_bar
        # Step 2: M̄ ← β·M̄ + (1 − β)·M.
        if len(m) != len(self._m_bar):
            raise ValueError(f"AnchorEMA.update_: got {len(m)} tensors, M̄ holds {len(self._m_bar)}")
        for i, (new, old) in enumerate(zip(m, self._m_bar)):
            if new.shape != old.shape:
                raise ValueError(
                    f"AnchorEMA.update_: m[{i}] has shape {tuple(new.shape)}, M̄[{i}] has {tuple(old.shape)}"
                )
        if self.beta == 0.0:
            torch._foreach_copy_(self._m_bar, m)
        else:
            torch._foreach_mul_(self._m_bar, self.beta)
            torch._foreach_add_(self._m_bar, m, alpha=1.0 - self.beta)
        self.updates += 1
        return self._m_bar

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: β, update count and M̄ itself (references, not copies)."""
        return {"beta": self.beta, "updates": self.updates, "m_bar": self._m_bar}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: the checkpoint's β differs from this EMA's β.
        """
        if float(state["beta"]) != self.beta:
            raise ValueError(
                f"AnchorEMA.load_state_dict: checkpoint beta={state['beta']!r} differs from "
                f"this EMA's beta={self.beta!r}"
            )
        m_bar = state["m_bar"]
        self._m_bar = None if m_bar is None else [t.detach().clone() for t in m_bar]
        self.updates = int(state["updates"])
