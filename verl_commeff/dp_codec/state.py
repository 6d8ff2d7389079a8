"""The state of the data-parallel PowerSGD codec, in the style of torch's ``PowerSGDState``.

One :class:`DPCodecState` per rank holds the knobs and everything that survives a tick:
the random generator that seeds Q, the error-feedback memory of this rank's row shards,
the warm-started Q of every compressed matrix, the iteration counter and the byte ledger.
It holds no process group, so :meth:`DPCodecState.state_dict` is a plain dict that
checkpoints and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from verl_commeff.config import DPCodecConfig

__all__ = ["ByteLedger", "DPCodecState"]


@dataclass
class ByteLedger:
    """Bytes handed to the codec's collectives, counted from the tensors themselves.

    Attributes:
        sent: bytes this rank handed to cross-replica collectives (the slow link).
        dense_equiv: bytes this rank would have handed to the dense cross-replica
            all-reduce of the same gradients (its local shards).
        intra: bytes handed to collectives inside the replica (shard group: P gather, Q
            reduce-scatter / all-gather; the fast link, not part of the ratio).
        cross_calls: number of cross-replica collectives issued.
        compressed: number of matrices exchanged as P/Q factors.
        ticks: exchanges counted.
        simulated: exchanges whose replica group had one rank (bytes are logical).
    """

    sent: int = 0
    dense_equiv: int = 0
    intra: int = 0
    cross_calls: int = 0
    compressed: int = 0
    ticks: int = 0
    simulated: int = 0

    def metrics(self, prefix: str = "commeff") -> dict[str, float]:
        """The ledger as flat ``commeff/...`` metrics (host ints: no device sync)."""
        out = {
            f"{prefix}/bytes/dp_codec/sent": float(self.sent),
            f"{prefix}/bytes/dp_codec/dense_equiv": float(self.dense_equiv),
            f"{prefix}/bytes/dp_codec/intra_sent": float(self.intra),
            f"{prefix}/dp_codec/cross_collectives": float(self.cross_calls),
            f"{prefix}/dp_codec/compressed_matrices": float(self.compressed),
            f"{prefix}/dp_codec/ticks": float(self.ticks),
            f"{prefix}/dp_codec/simulated_ticks": float(self.simulated),
        }
        if self.dense_equiv:
            out[f"{prefix}/bytes/dp_codec/ratio"] = self.sent / self.dense_equiv
        return out

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)


class DPCodecState:
    """Knobs and memory of the data-parallel PowerSGD codec on one rank.

    The knobs are torch's (``PowerSGDState``):

    1. ``rank`` (torch's ``matrix_approximation_rank``): r, columns of P (n × r) and
       Q (m × r); per matrix capped at min(n, m). Bytes across replicas per matrix:
       (n + m)·r instead of n·m.
    2. ``start_iter`` (``start_powerSGD_iter``): the first ``start_iter`` exchanges are
       dense all-reduces; compression starts at exchange ``start_iter`` (0-based). No
       minimum of 2 as in DDP: there are no buckets here to be rebuilt.
    3. ``min_compression_rate``: a matrix is compressed only if
       (n + m)·r·rate < n·m; otherwise it goes dense, as do tensors that are not 2-D.
    4. ``use_error_feedback``: the part of this rank's (error-corrected) gradient that the
       low-rank exchange lost is added back next time (kept per row shard).
    5. ``warm_start``: the previous exchange's Q, re-orthonormalised, starts the next power
       step; otherwise a fresh random Q every exchange.
    6. ``seed``: the random generator (numpy, as torch) that seeds each random Q
       initialisation with ``torch.manual_seed(rng.randint(1_000_000_000))``, identical on
       every rank.

    Internal state: ``rng``, ``error_dict`` (name → this rank's error shard),
    ``q_memory_dict`` (name → Q, m × r, identical on every rank), ``iter`` (exchanges so
    far) and ``ledger`` (:class:`ByteLedger`, reset by whoever logs it).
    """

    def __init__(
        self,
        rank: int = 77,
        start_iter: int = 10,
        min_compression_rate: float = 2.0,
        use_error_feedback: bool = True,
        warm_start: bool = True,
        seed: int = 0,
    ):
        from verl_commeff.config import DPCodecConfig

        DPCodecConfig(  # the same validation and messages as the config section
            rank=rank, start_iter=start_iter, min_compression_rate=min_compression_rate,
            use_error_feedback=use_error_feedback, warm_start=warm_start, seed=seed,
        )
        self.rank = rank
        self.start_iter = start_iter
        self.min_compression_rate = min_compression_rate
        self.use_error_feedback = use_error_feedback
        self.warm_start = warm_start
        self.seed = seed
        self.rng = np.random.RandomState(seed)
        self.error_dict: dict[str, torch.Tensor] = {}
        self.q_memory_dict: dict[str, torch.Tensor] = {}
        self.iter = 0
        self.ledger = ByteLedger()

    @classmethod
    def from_config(cls, cfg: "DPCodecConfig") -> "DPCodecState":
        return cls(cfg.rank, cfg.start_iter, cfg.min_compression_rate, cfg.use_error_feedback, cfg.warm_start, cfg.seed)

    @property
    def compressing(self) -> bool:
        """True when the next exchange compresses (``iter >= start_iter``)."""
        return self.iter >= self.start_iter

    def matrix_rank(self, rows: int, cols: int) -> int:
        """r for an n × m matrix if it is worth compressing (torch's rule), else 0."""
        r = min(rows, cols, self.rank)
        return r if (rows + cols) * r * self.min_compression_rate < rows * cols else 0

    # ---- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Knobs, generator, memories and counter (no process group, no ledger)."""
        return {
            "knobs": (self.rank, self.start_iter, self.min_compression_rate, self.use_error_feedback,
                      self.warm_start, self.seed),
            "rng": self.rng.get_state(),
            "error_dict": {k: v.clone() for k, v in self.error_dict.items()},
            "q_memory_dict": {k: v.clone() for k, v in self.q_memory_dict.items()},
            "iter": self.iter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: the checkpoint was written with different knobs.
        """
        knobs = (self.rank, self.start_iter, self.min_compression_rate, self.use_error_feedback,
                 self.warm_start, self.seed)
        if tuple(state["knobs"]) != knobs:
            raise ValueError(f"commeff.dp_codec checkpoint has knobs {tuple(state['knobs'])}, config has {knobs}")
        self.rng.set_state(state["rng"])
        self.error_dict = {k: v.clone() for k, v in state["error_dict"].items()}
        self.q_memory_dict = {k: v.clone() for k, v in state["q_memory_dict"].items()}
        self.iter = state["iter"]
