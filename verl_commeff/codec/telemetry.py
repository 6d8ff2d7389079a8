"""Per-step telemetry of the boundary codec, read on the host once per step (SPEC §6).

The hooks only add to device tensors (reconstruction error) or to Python ints derived from
tensor shapes (token counts, bytes), so recording never synchronises with the device. Q's
conditioning needs singular values, whose CUDA solver checks its status on the host: a
basis that goes live is only remembered, and its conditioning is computed when the step's
metrics are read (:meth:`CodecTelemetry.metrics`, which reads everything in one transfer).

Metric names (``l`` is the 0-based index of a boundary layer):

- ``commeff/codec/recon_err/layer_{l}``: mean over this step's projected forwards of
  ‖h − hQQᵀ‖/‖h‖ (omitted when the step had none);
- ``commeff/codec/q_cond/layer_{l}``: σ_max/σ_min of the live Q (computed at the step's metrics read);
- ``commeff/codec/q_updates``: staged bases made live so far (cumulative);
- ``commeff/codec/activations``: activation rows (token vectors) observed for the sketch so
  far, summed over boundaries (cumulative, this rank; skipped observations included);
- ``commeff/codec/skipped_observations``: (forward, boundary) sketch contributions left out
  because they were not finite (cumulative, this rank);
- ``commeff/codec/skipped_refreshes``: (refresh, boundary) pairs whose orth(V) was not finite,
  so the boundary kept its newest Q (cumulative, this rank);
- ``commeff/bytes/codec/sent`` / ``commeff/bytes/codec/dense_equiv`` (and ``.../ratio``):
  logical boundary wire bytes this step, compressed (tokens × r) vs dense-equivalent
  (tokens × H), per boundary, in the forward and (when a gradient flows back) the backward
  direction, at the activation dtype;
- ``commeff/bytes/q_bcast/sent``: Q broadcast bytes this step (H × r × 4 per boundary per
  refresh); its ``dense_equiv`` is 0 (dense training broadcasts no basis).

The byte paths follow :mod:`verl_commeff.ledger`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from verl_commeff.codec.basis import conditioning
from verl_commeff.ledger import path_metrics

__all__ = ["CodecTelemetry"]

CODEC_PREFIX = "commeff/codec/"
TELEMETRY_DTYPE = torch.float32


class CodecTelemetry:
    """Accumulators of the codec's telemetry for one rank.

    Args:
        layers: 0-based layer index of each boundary (B of them).
        device: where the device-side accumulators live.
    """

    def __init__(self, layers: Sequence[int], device: torch.device):
        self.layers = list(layers)
        num_boundaries = len(self.layers)
        # Per step.
        self.recon_err_sum = torch.zeros(num_boundaries, dtype=TELEMETRY_DTYPE, device=device)  # (B,)
        self.recon_count = [0] * num_boundaries
        self.codec_sent = 0
        self.codec_dense = 0
        self.q_bcast_sent = 0
        # Current / cumulative.
        self.q_cond = torch.ones(num_boundaries, dtype=TELEMETRY_DTYPE, device=device)  # (B,)
        self._q_pending: torch.Tensor | None = None  # (B, H, r) live Q whose q_cond is not computed yet
        self.q_updates = 0
        self.activations = 0
        # (skipped observations, skipped refreshes), counted on the device: no host read per tick
        self.skipped = torch.zeros(2, dtype=TELEMETRY_DTYPE, device=device)  # (2,)

    def to(self, device: torch.device) -> "CodecTelemetry":
        """Move the device-side accumulators to ``device``."""
        self.recon_err_sum = self.recon_err_sum.to(device)
        self.q_cond = self.q_cond.to(device)
        self.skipped = self.skipped.to(device)
        return self

    # ---- recording (no host sync) --------------------------------------------------------
    def record_recon_err(self, boundary: int, err: torch.Tensor) -> None:
        """Add one projected forward's ‖h − hQQᵀ‖/‖h‖ (0-d device tensor) at ``boundary``."""
        self.recon_err_sum[boundary] += err
        self.recon_count[boundary] += 1

    def record_wire(self, tokens: int, rank: int, hidden: int, element_size: int) -> None:
        """One boundary crossing in one direction: tokens × r sent instead of tokens × H."""
        self.codec_sent += tokens * rank * element_size
        self.codec_dense += tokens * hidden * element_size

    def record_observed(self, tokens: int, skipped: torch.Tensor) -> None:
        """``tokens`` activation rows were observed at a boundary; ``skipped`` (0-d bool device
        tensor): their contribution was left out of the sketch (not finite)."""
        self.activations += tokens
        self.skipped[0] += skipped

    def record_refresh(self, skipped: torch.Tensor) -> None:
        """A refresh; ``skipped`` (B,) bool device tensor: the boundaries that kept their Q."""
        self.skipped[1] += skipped.sum()

    def record_q_bcast(self, num_bytes: int) -> None:
        """A refresh broadcast ``num_bytes`` of new bases."""
        self.q_bcast_sent += num_bytes

    def record_q_update(self, live: torch.Tensor) -> None:
        """A staged basis went live: ``live`` (B, H, r), kept by reference; its conditioning is
        computed at the next :meth:`metrics` (the SVD's status check would sync here)."""
        self.q_updates += 1
        self._q_pending = live

    def _settle_q_cond(self) -> None:
        """Compute the conditioning of the basis that went live last (if not yet done)."""
        if self._q_pending is not None:
            self.q_cond = conditioning(self._q_pending).to(device=self.q_cond.device, dtype=TELEMETRY_DTYPE)
            self._q_pending = None

    # ---- once per step ---------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The flat ``commeff/`` dict for this step (one device→host read); resets the per-step parts."""
        self._settle_q_cond()
        values = torch.cat([self.recon_err_sum, self.q_cond, self.skipped]).tolist()  # the one host sync
        num_boundaries = len(self.layers)
        out: dict[str, float] = {}
        for b, layer in enumerate(self.layers):
            if self.recon_count[b] > 0:
                out[f"{CODEC_PREFIX}recon_err/layer_{layer}"] = values[b] / self.recon_count[b]
            out[f"{CODEC_PREFIX}q_cond/layer_{layer}"] = values[num_boundaries + b]
        out[f"{CODEC_PREFIX}q_updates"] = self.q_updates
        out[f"{CODEC_PREFIX}activations"] = self.activations
        out[f"{CODEC_PREFIX}skipped_observations"] = values[2 * num_boundaries]
        out[f"{CODEC_PREFIX}skipped_refreshes"] = values[2 * num_boundaries + 1]
        out.update(path_metrics("codec", self.codec_sent, self.codec_dense))
        out.update(path_metrics("q_bcast", self.q_bcast_sent, 0))
        self._reset_step()
        return out

    def _reset_step(self) -> None:
        self.recon_err_sum.zero_()
        self.recon_count = [0] * len(self.layers)
        self.codec_sent = self.codec_dense = self.q_bcast_sent = 0

    # ---- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything, per-step parts included (tensors cloned)."""
        self._settle_q_cond()
        return {
            "recon_err_sum": self.recon_err_sum.clone(),
            "recon_count": list(self.recon_count),
            "codec_sent": self.codec_sent,
            "codec_dense": self.codec_dense,
            "q_bcast_sent": self.q_bcast_sent,
            "q_cond": self.q_cond.clone(),
            "q_updates": self.q_updates,
            "activations": self.activations,
            "skipped": self.skipped.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (tensors land on the current device)."""
        num_boundaries = len(self.layers)
        for key in ("recon_err_sum", "q_cond"):
            if tuple(state[key].shape) != (num_boundaries,):
                raise ValueError(f"codec telemetry state {key} has shape {tuple(state[key].shape)}, "
                                 f"expected ({num_boundaries},)")
        device = self.recon_err_sum.device
        self.recon_err_sum = state["recon_err_sum"].to(device=device, dtype=TELEMETRY_DTYPE).clone()
        self.q_cond = state["q_cond"].to(device=device, dtype=TELEMETRY_DTYPE).clone()
        self._q_pending = None
        self.recon_count = [int(c) for c in state["recon_count"]]
        self.codec_sent = int(state["codec_sent"])
        self.codec_dense = int(state["codec_dense"])
        self.q_bcast_sent = int(state["q_bcast_sent"])
        self.q_updates = int(state["q_updates"])
        self.activations = int(state["activations"])
        skipped = state.get("skipped")  # absent in checkpoints from before the non-finite checks
        self.skipped = (torch.zeros(2) if skipped is None else skipped).to(device=device, dtype=TELEMETRY_DTYPE).clone()
