"""The state of the data-parallel PowerSGD codec, in the style of torch's ``PowerSGDState``.

One :class:`DPCodecState` per rank holds the knobs and everything that survives a tick:
the random generator that seeds Q, the error-feedback memory of this rank's row shards,
the warm-started Q of every compressed matrix, the iteration counter, the count of
skipped (non-finite) exchanges and the byte ledger. It holds no process group, so
:meth:`DPCodecState.state_dict` is a plain dict that checkpoints and resumes exactly.

The two memories are kept stacked by shape group (one ``(B, ...)`` tensor per group of
same-shape matrices, :class:`StackedMemory`), the layout the batched exchange computes
in; checkpoints store them per matrix name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from verl_commeff.config import DPCodecConfig

__all__ = ["ByteLedger", "DPCodecState", "StackedMemory"]


@dataclass
class ByteLedger:
    """Bytes handed to the codec's collectives, counted from the tensors themselves.

    The step fields are reset by whoever logs them (:meth:`DPCodecState.metrics`); the
    ``run_*`` fields add up every exchange since the start of training (checkpointed).

    Attributes:
        sent: bytes this rank handed to cross-replica collectives (the slow link): the
            whole model's gradients, P and Q factors for the compressed matrices and the
            dense rest.
        dense_equiv: bytes this rank would have handed to the dense cross-replica
            all-reduce of the same gradients (every parameter, 1-D included).
        factors_sent: the part of ``sent`` that is P and Q factors.
        factors_dense_equiv: the dense bytes of the matrices those factors stand for.
        intra: bytes handed to collectives inside the replica (shard group: P gather, Q
            reduce-scatter / all-gather; the fast link, not part of the ratio).
        cross_calls: number of cross-replica collectives issued.
        compressed: number of matrices exchanged as P/Q factors.
        ticks: exchanges counted.
        simulated: exchanges whose replica group had one rank (bytes are logical).
        run_sent, run_dense_equiv: ``sent`` and ``dense_equiv`` summed over the run.
    """

    sent: int = 0
    dense_equiv: int = 0
    factors_sent: int = 0
    factors_dense_equiv: int = 0
    intra: int = 0
    cross_calls: int = 0
    compressed: int = 0
    ticks: int = 0
    simulated: int = 0
    run_sent: int = 0
    run_dense_equiv: int = 0

    def add_sent(self, num_bytes: int, factors: bool) -> None:
        """Count ``num_bytes`` handed to a cross-replica collective (P/Q ``factors`` or dense)."""
        self.sent += num_bytes
        self.run_sent += num_bytes
        self.cross_calls += 1
        if factors:
            self.factors_sent += num_bytes

    def add_dense_equiv(self, num_bytes: int) -> None:
        self.dense_equiv += num_bytes
        self.run_dense_equiv += num_bytes

    def metrics(self, prefix: str = "commeff") -> dict[str, float]:
        """The ledger as flat ``commeff/...`` metrics (host ints: no device sync).

        ``bytes/dp_codec/{sent,dense_equiv,ratio}`` are the whole model's data-parallel
        bytes of this step against a dense all-reduce of the same gradients; ``per_tick_*``
        the same per exchange; ``run_*`` since the start of training; ``factors_*`` the
        compressed matrices' share and ``dense_rest_sent`` what crossed dense.
        """
        b = f"{prefix}/bytes/dp_codec"
        out = {
            f"{b}/sent": float(self.sent),
            f"{b}/dense_equiv": float(self.dense_equiv),
            f"{b}/factors_sent": float(self.factors_sent),
            f"{b}/factors_dense_equiv": float(self.factors_dense_equiv),
            f"{b}/dense_rest_sent": float(self.sent - self.factors_sent),
            f"{b}/intra_sent": float(self.intra),
            f"{b}/run_sent": float(self.run_sent),
            f"{b}/run_dense_equiv": float(self.run_dense_equiv),
            f"{prefix}/dp_codec/cross_collectives": float(self.cross_calls),
            f"{prefix}/dp_codec/compressed_matrices": float(self.compressed),
            f"{prefix}/dp_codec/ticks": float(self.ticks),
            f"{prefix}/dp_codec/simulated_ticks": float(self.simulated),
        }
        if self.ticks:
            out[f"{b}/per_tick_sent"] = self.sent / self.ticks
            out[f"{b}/per_tick_dense_equiv"] = self.dense_equiv / self.ticks
        if self.dense_equiv:
            out[f"{b}/ratio"] = self.sent / self.dense_equiv
        if self.run_dense_equiv:
            out[f"{b}/run_ratio"] = self.run_sent / self.run_dense_equiv
        return out

    def reset(self) -> None:
        """Zero the step fields (the ``run_*`` totals stay)."""
        for f in fields(self):
            if not f.name.startswith("run_"):
                setattr(self, f.name, 0)


class StackedMemory:
    """Per-matrix tensors stored stacked by shape group: one ``(B, ...)`` tensor per group.

    A group is the tuple of its matrices' names, in exchange order. :meth:`get` returns a
    group's stacked tensor (restacking from other groups' rows, e.g. after a resume, when
    the grouping changed); :meth:`as_dict` gives every matrix's row as a view.
    """

    def __init__(self):
        self._groups: dict[tuple[str, ...], torch.Tensor] = {}

    def get(self, names: tuple[str, ...], fill_zeros_like: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The (B, ...) tensor of ``names``; None when a name has no entry.

        Args:
            fill_zeros_like: a (B, ...) tensor; given, missing rows are zeros (a fresh
                matrix's error memory) and None is returned only when no row exists.
        """
        stacked = self._groups.get(names)
        if stacked is not None:
            return stacked
        rows = self.as_dict()
        if not any(n in rows for n in names) or (fill_zeros_like is None and not all(n in rows for n in names)):
            return None
        return torch.stack([rows[n] if n in rows else torch.zeros_like(fill_zeros_like[i])
                            for i, n in enumerate(names)])

    def put(self, names: tuple[str, ...], stacked: torch.Tensor) -> None:
        """Store ``stacked`` (B, ...) for ``names``; groups holding any of them are dropped."""
        if names not in self._groups:
            overlap = [key for key in self._groups if set(key) & set(names)]
            for key in overlap:
                rest = [(i, n) for i, n in enumerate(key) if n not in names]
                old = self._groups.pop(key)
                for i, n in rest:  # keep the matrices that left the group as their own rows
                    self._groups[(n,)] = old[i : i + 1]
        self._groups[names] = stacked

    def as_dict(self) -> dict[str, torch.Tensor]:
        """name → that matrix's row (a view)."""
        return {n: t[i] for key, t in self._groups.items() for i, n in enumerate(key)}

    def load(self, rows: dict[str, torch.Tensor]) -> None:
        """Replace the contents with per-matrix ``rows`` (cloned); :meth:`get` restacks them."""
        self._groups = {(n,): t.detach().clone().unsqueeze(0) for n, t in rows.items()}

    def clear(self) -> None:
        self._groups.clear()

    def __len__(self) -> int:
        return sum(len(key) for key in self._groups)


class DPCodecState:
    """Knobs and memory of the data-parallel PowerSGD codec on one rank.

    The first six knobs are torch's (``PowerSGDState``):

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

    Then the plugin's own:

    7. ``params``: ``targets`` (only the shards the caller marks compressible) or
       ``all_2d`` (every 2-D gradient is a candidate).
    8. ``embedding_rank``: r of the vocabulary-sized matrices (None = ``rank``).
    9. ``factor_precision``: ``full`` (P and Q cross in the gradient's dtype: torch's
       hook) or ``bf16`` (rounded before each cross-replica sum; Ĝ is rebuilt from the
       rounded factors, so the error-feedback memory holds the rounding too).
    10. ``orthogonalization``: ``qr`` (torch's) or ``cholesky_qr2`` (the same column space
        from batched Gram / Cholesky / triangular-solve kernels, in float64).

    The constructor's defaults are the codec as torch's hook on the target matrices
    (``params=targets``, full precision, r = 77); the plugin builds the state from its
    config (:meth:`from_config`), whose defaults are the recommended setting.

    Internal state: ``rng``, the error memory (this rank's error shard per matrix,
    :attr:`error_dict`), the Q memory (Q, m × r, identical on every rank,
    :attr:`q_memory_dict`), ``iter`` (exchanges so far, skipped ones included), the
    device count of skipped exchanges and ``ledger`` (:class:`ByteLedger`).
    """

    KNOBS = ("rank", "start_iter", "min_compression_rate", "use_error_feedback", "warm_start", "seed",
             "params", "embedding_rank", "factor_precision", "orthogonalization")
    _V1_KNOB_DEFAULTS = ("targets", None, "full", "qr")  # checkpoints written before the plugin's own knobs

    def __init__(
        self,
        rank: int = 77,
        start_iter: int = 10,
        min_compression_rate: float = 2.0,
        use_error_feedback: bool = True,
        warm_start: bool = True,
        seed: int = 0,
        params: str = "targets",
        embedding_rank: Optional[int] = None,
        factor_precision: str = "full",
        orthogonalization: str = "qr",
    ):
        from verl_commeff.config import DPCodecConfig

        DPCodecConfig(  # the same validation and messages as the config section
            rank=rank, start_iter=start_iter, min_compression_rate=min_compression_rate,
            use_error_feedback=use_error_feedback, warm_start=warm_start, seed=seed,
            params=params, embedding_rank=embedding_rank, factor_precision=factor_precision,
            orthogonalization=orthogonalization,
        )
        self.rank = rank
        self.start_iter = start_iter
        self.min_compression_rate = min_compression_rate
        self.use_error_feedback = use_error_feedback
        self.warm_start = warm_start
        self.seed = seed
        self.params = params
        self.embedding_rank = embedding_rank
        self.factor_precision = factor_precision
        self.orthogonalization = orthogonalization
        self.rng = np.random.RandomState(seed)
        self.errors = StackedMemory()
        self.qs = StackedMemory()
        self.iter = 0
        self.ledger = ByteLedger()
        self._skipped: Optional[torch.Tensor] = None  # 0-d int64 on the gradients' device
        self._skipped_loaded = 0  # from a checkpoint

    @classmethod
    def from_config(cls, cfg: "DPCodecConfig") -> "DPCodecState":
        return cls(**{k: getattr(cfg, k) for k in cls.KNOBS})

    @property
    def compressing(self) -> bool:
        """True when the next exchange compresses (``iter >= start_iter``)."""
        return self.iter >= self.start_iter

    @property
    def factor_dtype(self) -> Optional[torch.dtype]:
        """The dtype P and Q cross replicas in; None = the gradient's own."""
        return torch.bfloat16 if self.factor_precision == "bf16" else None

    def matrix_rank(self, rows: int, cols: int, embedding: bool = False) -> int:
        """r for an n × m matrix if it is worth compressing (torch's rule), else 0."""
        wanted = self.embedding_rank if embedding and self.embedding_rank is not None else self.rank
        r = min(rows, cols, wanted)
        return r if (rows + cols) * r * self.min_compression_rate < rows * cols else 0

    @property
    def error_dict(self) -> dict[str, torch.Tensor]:
        """name → this rank's error-feedback shard (views into the stacked memory)."""
        return self.errors.as_dict()

    @property
    def q_memory_dict(self) -> dict[str, torch.Tensor]:
        """name → the warm-start Q (m × r) of that matrix (views)."""
        return self.qs.as_dict()

    # ---- skipped (non-finite) exchanges -------------------------------------------------
    def count_skipped(self, bad: torch.Tensor) -> None:
        """Add the 0-d bool ``bad`` to the device count (no host sync)."""
        bad = bad.to(torch.int64)
        self._skipped = bad if self._skipped is None else self._skipped + bad.to(self._skipped.device)

    def skipped_ticks(self) -> int:
        """Exchanges skipped as non-finite since the start of training (one host read)."""
        return self._skipped_loaded + (0 if self._skipped is None else int(self._skipped))

    def metrics(self, prefix: str = "commeff") -> dict[str, float]:
        """This step's ledger plus ``dp_codec/skipped_ticks`` (one host read); resets the step's ledger."""
        out = self.ledger.metrics(prefix)
        out[f"{prefix}/dp_codec/skipped_ticks"] = float(self.skipped_ticks())
        self.ledger.reset()
        return out

    # ---- checkpointing -----------------------------------------------------------------
    def _knobs(self) -> tuple:
        return tuple(getattr(self, k) for k in self.KNOBS)

    def state_dict(self) -> dict[str, Any]:
        """Knobs, generator, memories (per matrix name), counters and run totals (no process group)."""
        return {
            "knobs": self._knobs(),
            "rng": self.rng.get_state(),
            "error_dict": {k: v.clone() for k, v in self.error_dict.items()},
            "q_memory_dict": {k: v.clone() for k, v in self.q_memory_dict.items()},
            "iter": self.iter,
            "skipped": self.skipped_ticks(),
            "run_bytes": (self.ledger.run_sent, self.ledger.run_dense_equiv),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (also one written before the plugin's own knobs existed).

        Raises:
            ValueError: the checkpoint was written with different knobs.
        """
        saved: Sequence = tuple(state["knobs"])
        if len(saved) == 6:
            saved = saved + self._V1_KNOB_DEFAULTS
        if saved != self._knobs():
            raise ValueError(f"commeff.dp_codec checkpoint has knobs {saved}, config has {self._knobs()}")
        self.rng.set_state(state["rng"])
        self.errors.load(state["error_dict"])
        self.qs.load(state["q_memory_dict"])
        self.iter = state["iter"]
        self._skipped, self._skipped_loaded = None, int(state.get("skipped", 0))
        self.ledger.run_sent, self.ledger.run_dense_equiv = state.get("run_bytes", (0, 0))
