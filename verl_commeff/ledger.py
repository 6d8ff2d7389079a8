"""The byte ledger: every path the comm-eff circuit sends bytes on, counted per step (SPEC §6).

Each path logs, per global step and per rank (verl averages the actor's metrics over its
ranks; the driver's anchor paths are what one anchor rank receives):

- ``commeff/bytes/<path>/sent``: bytes handed over on the path this step, counted from the
  tensors themselves (:func:`payload_bytes`: ``numel × element_size`` of every tensor);
- ``commeff/bytes/<path>/dense_equiv``: the bytes the same step of **dense training** (the
  plugin off) sends on that path: the dense activations for the boundary codec, the dense
  all-reduce for the data-parallel codec, and 0 for the paths only the method has (the Q
  broadcast and all of the anchor's traffic);
- ``commeff/bytes/<path>/ratio``: sent / dense_equiv, where dense_equiv > 0.

The paths (:data:`PATHS`):

1. ``codec``: the boundary codec's activations, logical bytes (tokens × r instead of tokens × H);
2. ``q_bcast``: the codec's Q broadcasts (H × r × 4 per boundary per refresh);
3. ``dp_codec``: the data-parallel codec's cross-replica collectives (real bytes; logical in
   simulation with one replica). It carries the whole model's data-parallel gradient: P and
   Q factors of the compressed matrices plus the dense rest, 1-D parameters included,
   against a dense all-reduce of every gradient, so its ``ratio`` is the whole-model figure;
   the codec adds ``per_tick_*``, ``run_*`` (since the start of training) and the
   ``factors_*`` / ``dense_rest_sent`` split (:class:`~verl_commeff.dp_codec.state.ByteLedger`);
4. ``anchor_snapshot``: actor → anchor, this rank's generator-weight snapshot put in Ray's
   object store (delta-encoded: masks + changed values, or dense tensors; ``.../as_dense_fp32``
   adds what dense fp32 shards would have cost);
5. ``anchor_minibatch``: driver → anchor, the replayed global mini-batch's tensors (every
   anchor rank receives the whole mini-batch and takes its share);
6. ``anchor_m_bar``: anchor → actor, M̄ as fp32 shards or as packed sign bits;
7. ``anchor_sketch``: anchor → actor, the Q sketch when the anchor refreshes Q.

:func:`ledger_totals` adds ``commeff/bytes/total/sent``, ``commeff/bytes/total/dense_equiv``
and ``commeff/bytes/ratio`` (all sent over all dense-equivalent bytes: the method's traffic
against dense training's) once a step's metrics from the actor and the driver are together.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["BYTES_PREFIX", "PATHS", "ledger_totals", "path_metrics", "payload_bytes"]

BYTES_PREFIX = "commeff/bytes/"
PATHS = ("codec", "q_bcast", "dp_codec", "anchor_snapshot", "anchor_minibatch", "anchor_m_bar", "anchor_sketch")


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_nested:  # verl's no-padding layout: jagged nested tensors (values + offsets)
        try:
            return _tensor_bytes(t.values()) + _tensor_bytes(t.offsets())
        except (RuntimeError, AttributeError, NotImplementedError):  # strided layout: its components
            return sum(_tensor_bytes(c) for c in t.unbind())
    return t.numel() * t.element_size()


def _is_tensordict(obj: Any) -> bool:
    """Whether ``obj`` is a TensorDict (verl's batches); without tensordict installed nothing is."""
    try:
        from tensordict import TensorDictBase
    except ImportError:  # a torch-only process (the core on a bare GPU box) holds no TensorDict
        return False
    return isinstance(obj, TensorDictBase)


def payload_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj``: a tensor, a TensorDict, a mapping, a sequence, packed signs.

    Non-tensor leaves (strings, numbers, verl's non-tensor entries) count 0: they are
    metadata, not payload.
    """
    if isinstance(obj, torch.Tensor):
        return _tensor_bytes(obj)
    from verl_commeff.anchor.snapshot_delta import EncodedSnapshot
    from verl_commeff.mergers.sign_bits import PackedSigns

    if isinstance(obj, PackedSigns):
        return payload_bytes(obj.bits)
    if isinstance(obj, EncodedSnapshot):  # masks + changed values, or dense tensors; ids are metadata
        return payload_bytes(obj.payload())
    if _is_tensordict(obj):
        return sum(payload_bytes(v) for v in obj.values(include_nested=False, leaves_only=False))
    if isinstance(obj, Mapping):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def path_metrics(path: str, sent: float, dense_equiv: float) -> dict[str, float]:
    """``commeff/bytes/<path>/{sent,dense_equiv[,ratio]}`` for one path.

    Raises:
        ValueError: ``path`` is not one of :data:`PATHS`.
    """
    if path not in PATHS:
        raise ValueError(f"byte ledger path {path!r} is not one of {PATHS}")
    out = {f"{BYTES_PREFIX}{path}/sent": float(sent), f"{BYTES_PREFIX}{path}/dense_equiv": float(dense_equiv)}
    if dense_equiv:
        out[f"{BYTES_PREFIX}{path}/ratio"] = sent / dense_equiv
    return out


def ledger_totals(metrics: Mapping[str, float]) -> dict[str, float]:
    """Totals over the paths present in ``metrics`` (empty when no path is logged)."""
    present = [p for p in PATHS if f"{BYTES_PREFIX}{p}/sent" in metrics]
    if not present:
        return {}
    sent = sum(float(metrics[f"{BYTES_PREFIX}{p}/sent"]) for p in present)
    dense = sum(float(metrics.get(f"{BYTES_PREFIX}{p}/dense_equiv", 0.0)) for p in present)
    out = {f"{BYTES_PREFIX}total/sent": sent, f"{BYTES_PREFIX}total/dense_equiv": dense}
    if dense:
        out[f"{BYTES_PREFIX}ratio"] = sent / dense
    return out
