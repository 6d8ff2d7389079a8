"""The byte ledger as the report reads it: mean bytes per step, per path, per arm (SPEC §6).

Runs log ``commeff/bytes/<path>/sent`` and ``.../dense_equiv`` every step
(:mod:`verl_commeff.ledger`). Logs written before the ledger had one key per codec path
(``commeff/bytes/codec_sent``, ``codec_dense``, ``q_bcast_sent``, ``anchor_sent``: M̄ and
sketch together); they are read as the ``codec``, ``q_bcast`` and ``anchor_m_bar`` paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from verl_commeff.ledger import BYTES_PREFIX, PATHS

__all__ = ["ArmBytes", "arm_bytes"]

LEGACY = {  # old key → (path, field)
    f"{BYTES_PREFIX}codec_sent": ("codec", "sent"),
    f"{BYTES_PREFIX}codec_dense": ("codec", "dense_equiv"),
    f"{BYTES_PREFIX}q_bcast_sent": ("q_bcast", "sent"),
    f"{BYTES_PREFIX}anchor_sent": ("anchor_m_bar", "sent"),
}


@dataclass(frozen=True)
class ArmBytes:
    """One arm's mean bytes per training step.

    Attributes:
        sent: path → mean bytes sent per step (paths the arm logs, in ledger order).
        dense_equiv: path → mean dense-equivalent bytes per step.
    """

    sent: dict[str, float]
    dense_equiv: dict[str, float]

    @property
    def total_sent(self) -> float:
        return sum(self.sent.values())

    @property
    def total_dense(self) -> float:
        return sum(self.dense_equiv.values())

    @property
    def ratio(self) -> float:
        """All sent over all dense-equivalent bytes (NaN when nothing has a dense equivalent)."""
        return self.total_sent / self.total_dense if self.total_dense else float("nan")


def _column(table: pd.DataFrame, path: str, field: str) -> pd.Series:
    key = f"{BYTES_PREFIX}{path}/{field}"
    if key in table.columns:
        return table[key]
    legacy = [old for old, target in LEGACY.items() if target == (path, field) and old in table.columns]
    return table[legacy[0]] if legacy else pd.Series(dtype=float)


def arm_bytes(table: pd.DataFrame) -> ArmBytes | None:
    """Mean bytes per step of every ledger path ``table`` logs; None when it logs none.

    The mean is over the steps that log the path (a step without an anchor fire logs 0
    anchor bytes, so it counts).
    """
    sent, dense = {}, {}
    for path in PATHS:
        values = _column(table, path, "sent").dropna()
        if values.empty:
            continue
        sent[path] = float(values.mean())
        dense_values = _column(table, path, "dense_equiv").dropna()
        dense[path] = float(dense_values.mean()) if not dense_values.empty else 0.0
    return ArmBytes(sent, dense) if sent else None
