"""The anchor's EMA of its dense gradients: M̄ ← β·M̄ + (1 − β)·M (SPEC §3).

Kept by the anchor worker: each fire produces M (one tensor per target, laid out however
the anchor holds its gradients: whole tensors, row shards or DTensors) and folds it into
M̄; the merger then receives M̄ (or its packed signs). The first fire sets M̄ = M.

A fire whose M holds a non-finite value on any rank is rejected
(:meth:`AnchorEMA.try_update_`): M̄ keeps its last finite state, the rejection is counted
and logged (a warning the first time). Without that one NaN would stay in M̄ for good and,
read as a "−" sign, bend every later correction.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from verl_commeff.collectives import all_reduce_

__all__ = ["AnchorEMA", "all_finite"]

logger = logging.getLogger(__name__)


def all_finite(tensors: Sequence[torch.Tensor], group: Optional[dist.ProcessGroup] = None) -> bool:
    """True when every coordinate of ``tensors`` is finite on every rank of ``group``.

    Steps:
        1. One foreach norm per tensor: a norm is finite iff its tensor is.
        2. A 0-d flag, all-reduced with MIN over ``group`` so every rank gets the same answer.
        3. One host read (the caller runs once per fire, not per tick).
    """
    tensors = [t for t in tensors if t.numel() > 0]
    device = tensors[0].device if tensors else torch.device("cpu")
    # Step 1: norms.
    if tensors:
        norms = torch.stack(torch._foreach_norm(tensors, 2))  # (T,)
        flag = torch.isfinite(norms).all().to(torch.float32)
    else:
        flag = torch.ones((), dtype=torch.float32, device=device)
    # Step 2: agree across ranks.
    all_reduce_(flag, group, op=dist.ReduceOp.MIN)
    # Step 3: the read.
    return bool(flag.item() == 1.0)


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
        self.rejected = 0  # fires rejected for a non-finite M

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

    @torch.no_grad()
    def try_update_(self, m: Sequence[torch.Tensor], group: Optional[dist.ProcessGroup] = None,
                    finite: bool = True) -> bool:
        """Fold M into M̄ unless some coordinate of M is non-finite on some rank of ``group``.

        Steps:
            1. Check M (:func:`all_finite`, one tiny all-reduce and one host read); ``finite``
               =False rejects regardless (the caller found another input non-finite).
            2. Rejected: M̄ is left as it was, the rejection is counted (:attr:`rejected`) and
               logged (a warning the first time, then at debug level); return False.
            3. Otherwise :meth:`update_` and return True.

        Args:
            m: this rank's tensors of the fire's gradient.
            group: the ranks holding the other shards of M (None: the default group).
            finite: the caller's own verdict on the fire's other inputs (already agreed
                across ranks).
        """
        m = list(m)
        # Step 1: the check (every rank of group reaches the same verdict).
        ok = all_finite(m, group) and finite
        # Step 2: reject.
        if not ok:
            self.rejected += 1
            log = logger.warning if self.rejected == 1 else logger.debug
            log("commeff anchor: rejected a fire whose gradient M (or sketch) is not finite; M̄ keeps its last "
                "finite state (%d fire(s) folded in, %d rejected so far; counted in commeff/anchor/rejected_fires)",
                self.updates, self.rejected)
            return False
        # Step 3: fold in.
        self.update_(m)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: β, update/rejection counts and M̄ itself (references, not copies)."""
        return {"beta": self.beta, "updates": self.updates, "rejected": self.rejected, "m_bar": self._m_bar}

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
        self.rejected = int(state.get("rejected", 0))
