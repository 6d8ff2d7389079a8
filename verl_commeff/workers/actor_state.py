"""The actor side of the comm-eff circuit, one tick at a time (SPEC §1–4).

:class:`CommEffActorState` is what the actor's FSDP engine carries: the tick clock, the
boundary codec installed on the model, the merger, the anchor results waiting to be
used, and the telemetry. It holds no verl object, so it is tested on plain modules; the
engine mixin (:mod:`verl_commeff.workers.engine`) calls it at four points:

1. ``begin_tick()`` when a PPO mini-batch starts (``train_batch``): the clock advances and
   every anchor result that has finished is fetched (prefetch, below);
2. ``pass_scope("train" | "old_log_prob" | "ref")`` around the engine's forwards;
3. ``before_optimizer_step(grads)`` after backward and FSDP's reduction, before
   clipping: exchanges the gradient across HSDP replicas (``commeff.dp_codec``), takes
   the anchor result due at this tick, refreshes Q when due, merges;
4. ``at_step_boundary()`` before the next step's old-log-prob pass: a staged Q goes live.

Anchor results are prefetched: at the start of every tick and again before the optimizer
step, each pending result is polled without waiting (``get(timeout=0)``); a finished one is
fetched (Ray's transfer and deserialisation) and moved to the gradients' device
(``non_blocking``) into a ready slot, so at its fire tick it is already local. ``sync=strict``
waits only for a result not in its slot yet. A failure found early is kept in the slot and
surfaces when the fire is due, as it would have unprefetched. Times per step:
``commeff/anchor/wait_s`` (blocked on a result not yet finished), ``commeff/anchor/fetch_s``
(fetching and moving results, wherever it happened), ``commeff/anchor/snapshot_s``
(taking this rank's weight snapshot, see :meth:`CommEffActorState.record_snapshot_time`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, Sequence

import torch
import torch.distributed as dist
from torch import nn

from verl_commeff.clock import TickClock
from verl_commeff.ledger import ledger_totals, path_metrics
from verl_commeff.mergers import build_merger
from verl_commeff.mergers.base import HeldSignal
from verl_commeff.schedule import FireSchedule

if TYPE_CHECKING:
    from verl_commeff.config import CommEffConfig
    from verl_commeff.dp_codec import ReplicaGroups

logger = logging.getLogger(__name__)

__all__ = ["AnchorFailure", "AnchorResult", "CommEffActorState", "PendingResult", "ReadyResult", "buffer_bytes",
           "select_targets"]


class AnchorFailure(RuntimeError):
    """An anchor fire that will never deliver: its worker died or the fire raised.

    Args:
        fire_tick: the fire.
        anchor_rank: the anchor rank whose result failed (None: unknown).
        cause: what went wrong, in words.
    """

    def __init__(self, fire_tick: int, anchor_rank: Optional[int], cause: str):
        super().__init__(f"anchor fire {fire_tick} failed on anchor rank {anchor_rank}: {cause}")
        self.fire_tick, self.anchor_rank, self.cause = fire_tick, anchor_rank, cause

logger = logging.getLogger(__name__)


@dataclass
class AnchorResult:
    """What one anchor fire returns to the actor.

    Args:
        fire_tick: the tick the result is for.
        source_tick: the tick whose mini-batch was replayed.
        m_bar: M̄ after this fire, laid out like this rank's target gradients (or packed signs);
            None when the fire was rejected.
        sketch: the anchor's Q sketch (B, H, r), already summed over the anchor's ranks, or
            None when Q is not refreshed from the anchor.
        compute_s: seconds the anchor rank spent on the fire.
        backwards: backward passes the anchor rank ran for this fire (summed by the actor into
            ``commeff/anchor/backwards``: the proof that the anchor really ran).
        fingerprints: (actor world, 3) fp64 on the host, row r = (Σx, Σ|x|, Σx²) of what the
            anchor sent actor rank r (anchor rank r, or r's owner with a smaller anchor:
            :mod:`verl_commeff.anchor.reshard`; see :meth:`~verl_commeff.mergers.base.Merger.hold`);
            None = unchecked.
        rejected: the anchor rejected this fire (its M or sketch was not finite on some
            rank): its M̄ is unchanged, nothing is sent, the actor keeps the M̄ it holds.
        q_fingerprint: (B,) per-boundary sums of the Q the anchor sketched against (its live
            Q at the start of the fire), or None without a codec; the actor compares it with
            its newest Q (``commeff/anchor/q_gap``: 0 when anchor and actor agree on Q).
        ema_updates: fires folded into the anchor's M̄ so far (``commeff/anchor/ema_updates``).
        dose_evidence: the anchor's dose probe for this fire (host floats: λ*, cos(C, D), ...,
            :mod:`~verl_commeff.anchor.dose_probe`), or None when ``anchor.probe`` is off.
    """

    fire_tick: int
    source_tick: int
    m_bar: Optional[HeldSignal]
    sketch: Optional[torch.Tensor] = None
    compute_s: float = 0.0
    backwards: int = 0
    rejected: bool = False
    fingerprints: Optional[torch.Tensor] = None
    q_fingerprint: Optional[torch.Tensor] = None
    ema_updates: int = 0
    dose_evidence: Optional[dict] = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "AnchorResult":
        """This result with its tensors on ``device`` (a checkpoint holds host copies); the
        fingerprints stay on the host (they are compared there)."""
        from verl_commeff.mergers.sign_bits import PackedSigns

        if self.m_bar is None:  # a rejected fire sends nothing
            m_bar = None
        elif isinstance(self.m_bar, PackedSigns):
            m_bar = PackedSigns([b.to(device, non_blocking=non_blocking) for b in self.m_bar.bits], self.m_bar.shapes)
        else:
            m_bar = [m.to(device, non_blocking=non_blocking) for m in self.m_bar]

        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return dataclasses.replace(self, m_bar=m_bar, sketch=move(self.sketch), q_fingerprint=move(self.q_fingerprint))

    def m_bar_bytes(self) -> tuple[int, int]:
        """(sent, fp32-shard equivalent) bytes of the held M̄ this result carries to one actor rank.

        Sent: the tensors themselves (fp32 shards, or the packed sign bits). The second
        number is what the same M̄ costs as fp32 shards (equal to sent for shards transport).
        """
        from verl_commeff.ledger import payload_bytes
        from verl_commeff.mergers.sign_bits import PackedSigns

        sent = payload_bytes(self.m_bar)
        if isinstance(self.m_bar, PackedSigns):
            return sent, sum(shape.numel() for shape in self.m_bar.shapes) * 4
        return sent, sent

    def sketch_bytes(self) -> int:
        """Bytes of the Q sketch this result carries (0 without one)."""
        from verl_commeff.ledger import payload_bytes

        return payload_bytes(self.sketch)


def _result_tensors(result: AnchorResult) -> list[torch.Tensor]:
    """The device tensors an anchor result carries (M̄ or its bits, the sketch)."""
    from verl_commeff.mergers.sign_bits import PackedSigns

    tensors = [] if result.m_bar is None else list(
        result.m_bar.bits if isinstance(result.m_bar, PackedSigns) else result.m_bar)
    return tensors + ([] if result.sketch is None else [result.sketch])


def buffer_bytes(buffers: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Bytes of each named buffer list, each storage counted once (under the first name holding it).

    The Triton kernels read the held sign bits as they came, so ``merger/held_masks`` and
    ``merger/held_m_bar`` share storage there: counted once.
    """
    seen: set[tuple[torch.device, int]] = set()
    out = {}
    for name, tensors in buffers.items():
        total = 0
        for t in tensors:
            storage = t.untyped_storage()
            key = (t.device, storage.data_ptr())
            if key not in seen and storage.nbytes() > 0:
                seen.add(key)
                total += storage.nbytes()
        out[name] = total
    return out


class PendingResult(Protocol):
    """An anchor result that may still be computing (a Ray future, or a ready value).

    ``anchor_rank`` (optional attribute) names the anchor rank computing it, for messages.
    ``wait(timeout) -> bool`` (optional method) says whether it is there without fetching it;
    with it, ``sync=strict`` times waiting (``wait_s``) apart from fetching (``fetch_s``).
    """

    fire_tick: int

    def get(self, timeout: Optional[float]) -> Optional[AnchorResult]:
        """The result; ``None`` if it is not ready within ``timeout`` seconds (None = wait).

        Raises:
            AnchorFailure: the fire will never deliver (dead worker, exception in the fire).
        """


class ReadyResult:
    """A :class:`PendingResult` that is already there."""

    def __init__(self, result: AnchorResult):
        self.fire_tick = result.fire_tick
        self._result = result

    def get(self, timeout: Optional[float]) -> Optional[AnchorResult]:
        return self._result


def _strip_wrappers(name: str) -> str:
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def select_targets(model: nn.Module, suffixes: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """The anchor's target matrices: ``<...>.<suffix>.weight`` parameters, in model order.

    Raises:
        ValueError: no parameter matches (the model has other module names).
    """
    wanted = tuple(f".{s}.weight" for s in suffixes)
    targets = [(_strip_wrappers(n), p) for n, p in model.named_parameters() if _strip_wrappers(n).endswith(wanted)]
    if not targets:
        raise ValueError(
            f"commeff.anchor.targets={list(suffixes)} matches no parameter of {type(model).__name__}; "
            f"parameter names look like {[n for n, _ in list(model.named_parameters())[:3]]}"
        )
    return targets


class CommEffActorState:
    """Clock, codec, merger and anchor inbox of one actor rank.

    Args:
        cfg: the whole ``commeff`` config.
        ticks_per_step: optimizer steps per global step.
        model: the actor's (FSDP-wrapped) root module; the codec hooks its decoder layers.
        hidden_size, num_layers: of the model (for the codec).
        dp_group: the group the codec's sketch is summed over (all ranks holding distinct
            tokens); None = the world.
        merger_group: the shard group the merger's statistics are reduced over for plain
            local shards (FSDP1's process group); None for whole tensors or DTensors (their
            mesh decides).
        dp_groups: the replica and shard groups of the data-parallel codec
            (``commeff.dp_codec``); None = one replica, one shard (simulation).
    """

    def __init__(
        self,
        cfg: "CommEffConfig",
        ticks_per_step: int,
        model: nn.Module,
        hidden_size: int,
        num_layers: int,
        dp_group: Optional[dist.ProcessGroup] = None,
        merger_group: Optional[dist.ProcessGroup] = None,
        dp_groups: Optional["ReplicaGroups"] = None,
    ):
        from verl_commeff.codec import BoundaryCodec
        from verl_commeff.dp_codec import DPCodecState, ReplicaGroups

        self.cfg = cfg
        self.schedule = FireSchedule(cfg.anchor.delay_k, cfg.anchor.cadence, ticks_per_step, cfg.q_cadence)
        self.clock = TickClock(ticks_per_step)
        self.codec = None
        if cfg.codec.enable:
            self.codec = BoundaryCodec(cfg.codec, hidden_size, num_layers, process_group=dp_group).install(model)
        codec = self.codec
        self.merger = build_merger(cfg.merger, process_group=merger_group,
                                   replicated=(lambda: [codec.live_basis]) if codec is not None else None)
        self.targets = select_targets(model, cfg.anchor.targets)
        for dtype, device in {(p.dtype, p.device) for _, p in self.targets}:
            self.merger.kernels.warm_up(dtype, device)  # compile now: a missing compiler fails before training
        self.dp_codec = DPCodecState.from_config(cfg.dp_codec) if cfg.dp_codec.enable else None
        self.dp_groups = dp_groups if dp_groups is not None else ReplicaGroups()
        self._model = model
        target_ids = {id(p) for _, p in self.targets}
        self._dp_targets = {n for n, p in model.named_parameters() if id(p) in target_ids}
        self._dp_embeddings: set[str] = set()
        if self.dp_codec is not None:
            from verl_commeff.dp_codec.hsdp import embedding_names

            self._dp_embeddings = embedding_names(model)
        self._inbox: dict[int, PendingResult] = {}  # offered, not fetched yet
        self._ready: dict[int, AnchorResult | AnchorFailure] = {}  # fetched (on the gradients' device), not taken
        self._grad_device: Optional[torch.device] = None  # of the last gradients merged
        self._wait_s = 0.0  # actor blocked on anchor results not yet finished, this step
        self._fetch_s = 0.0  # actor fetching anchor results and moving them to the device, this step
        self._snapshot_s = 0.0  # actor taking weight snapshots, this step
        self._fires_used = 0
        self._age_sum = 0
        self._age_n = 0
        self._bytes = {"anchor_m_bar": 0, "anchor_sketch": 0, "anchor_snapshot": 0}  # this step, sent
        self._m_bar_shard_bytes = 0  # this step: what the M̄ results would cost as fp32 shards
        self._snapshot_fp32_bytes = 0  # this step: what the snapshots would cost as dense fp32 shards
        self._anchor_backwards = 0
        self._rejected_fires = 0
        self._failed_fires = 0  # fires that never delivered (sync=free continues without them)
        self._dropped_fires = 0  # sync=free: finished fires never held (superseded, or older than the held M̄)
        self._last_sketch_fire = 0  # the fire whose sketch last refreshed Q
        self._ema_updates = 0  # of the newest result taken
        self._q_gap: Optional[torch.Tensor] = None  # max |anchor Q − actor Q| fingerprint gap this step

    # ---- passes ------------------------------------------------------------------------
    @contextlib.contextmanager
    def pass_scope(self, name: str) -> Iterator[None]:
        """Run the enclosed forwards as codec pass ``name`` (no-op without a codec)."""
        if self.codec is None:
            yield
        else:
            with self.codec.pass_scope(name):
                yield

    # ---- the tick ----------------------------------------------------------------------
    def begin_tick(self) -> int:
        """Advance the clock by one optimizer step (starting the next global step if due); prefetch."""
        if self.clock.step_complete:
            self.clock.begin_step()
        tick = self.clock.advance()
        self.prefetch()
        return tick

    def at_step_boundary(self) -> bool:
        """Make a staged Q live (before the next old-log-prob pass); True if one went live."""
        return self.codec is not None and self.codec.activate_staged()

    def offer(self, pending: PendingResult) -> None:
        """Hand over an anchor result (or its future) for fire ``pending.fire_tick``."""
        if not self.schedule.fires_at(pending.fire_tick):
            raise ValueError(f"anchor result for tick {pending.fire_tick}, which is not a fire tick")
        self._ready.pop(pending.fire_tick, None)  # a resubmitted fire replaces what its first run left
        self._inbox[pending.fire_tick] = pending

    def unconsumed_fires(self) -> list[int]:
        """Fires offered to this rank that it has not taken, dropped or counted as failed yet
        (still computing, or finished and not due): the driver keeps them pending."""
        return sorted({*self._inbox, *self._ready})

    # ---- fetching anchor results -------------------------------------------------------
    def prefetch(self) -> None:
        """Fetch every anchor result that has finished into its ready slot; never waits."""
        for fire in sorted(self._inbox):
            self._fetch(fire, timeout=0)

    def _fetch(self, fire: int, timeout: Optional[float]) -> bool:
        """Fire ``fire``'s result into its ready slot if it is there within ``timeout``; whether it now is.

        Fetched: ``get`` (Ray's transfer and deserialisation), then the tensors moved to the
        gradients' device (``non_blocking``); that time is ``fetch_s``. A failure is kept in the
        slot as it is, to surface when the fire is due.
        """
        start = time.perf_counter()
        try:
            result = self._inbox[fire].get(timeout=timeout)
        except AnchorFailure as failure:
            self._ready[fire] = failure
        else:
            if result is None:
                return False
            self._ready[fire] = result.to(self._result_device(), non_blocking=True)
            self._fetch_s += time.perf_counter() - start
        del self._inbox[fire]
        return True

    def _result_device(self) -> torch.device:
        """The gradients' device: of the last gradients merged, else of the first target's local shard."""
        if self._grad_device is not None:
            return self._grad_device
        from verl_commeff.mergers.grad_layout import local_view

        return local_view(self.targets[0][1]).device

    def _take_result(self, tick: int) -> tuple[Optional[AnchorResult], Optional[AnchorResult]]:
        """(the anchor result to hold at ``tick``, the result whose sketch refreshes Q), per ``anchor.sync``.

        None: keep the held M̄ (resp. Q). Strict: fire ``tick`` for both. Free: the newest finished
        fire that is due and newer than the held one; the other finished fires (superseded, or late
        and older than the held M̄) are dropped and counted, and the newest sketch among all of them
        still refreshes Q if it is newer than the last one used (a dropped fire's sketch is not lost).
        """
        if self.cfg.anchor.sync == "strict":
            if not self.schedule.fires_at(tick):
                return None, None
            if tick not in self._inbox and tick not in self._ready:
                raise RuntimeError(
                    f"sync=strict: no anchor job was submitted for fire tick {tick} (inbox: "
                    f"{sorted({*self._inbox, *self._ready})}); the trainer must submit fires at the start of their "
                    "source step"
                )
            result = self._wait_strict(tick)
            return result, result
        finished = []
        for fire in sorted(t for t in self._ready if t <= tick):
            result = self._take_free(fire)
            if result is not None:
                finished.append(result)
        held = self.merger.produced_tick or 0
        usable = [r for r in finished if not r.rejected and r.fire_tick > held]
        newest = usable[-1] if usable else None
        for r in finished:
            if r.rejected:
                self._count_rejected(r)
            elif r is not newest:  # it ran and arrived, but a newer M̄ is held or taken: never go back
                self._dropped_fires += 1
                self._count_received(r)
        sketches = [r for r in finished if not r.rejected and r.sketch is not None
                    and r.fire_tick > self._last_sketch_fire]
        return newest, (sketches[-1] if sketches else None)

    def _count_received(self, result: AnchorResult) -> None:
        """A result that reached this rank (held or dropped): its bytes and the anchor's backward passes."""
        sent, as_shards = result.m_bar_bytes()
        self._bytes["anchor_m_bar"] += sent
        self._m_bar_shard_bytes += as_shards
        self._bytes["anchor_sketch"] += result.sketch_bytes()
        self._anchor_backwards += result.backwards

    def _count_rejected(self, result: AnchorResult) -> None:
        """A fire the anchor rejected (non-finite M or sketch): counted, logged once; the held M̄ and Q stay."""
        self._rejected_fires += 1
        self._anchor_backwards += result.backwards
        (logger.warning if self._rejected_fires == 1 else logger.debug)(
            "commeff: the anchor rejected fire %d (non-finite M or sketch); the actor keeps its held M̄ "
            "(counted in commeff/anchor/rejected_fires)", result.fire_tick)

    def _wait_strict(self, tick: int) -> AnchorResult:
        """sync=strict: fire ``tick``'s result, from its slot or waited for (logging every ``wait_log_s``,
        failing after ``wait_timeout_s``); only the wait for a result not yet there is ``wait_s``."""
        if tick not in self._ready:
            self._wait_for(tick)
        result = self._ready.pop(tick)
        if isinstance(result, AnchorFailure):
            raise RuntimeError(
                f"sync=strict cannot continue: {result}. Strict mode needs every fire; "
                "commeff.anchor.sync=free continues on the held M̄ (and restarts the anchor group)") from result
        return result

    def _wait_for(self, tick: int) -> None:
        """sync=strict: block until fire ``tick``'s result (or failure) is in its slot; the time is ``wait_s``."""
        anchor = self.cfg.anchor
        pending = self._inbox[tick]
        rank = getattr(pending, "anchor_rank", None)
        start, fetch_before = time.perf_counter(), self._fetch_s
        try:
            while tick not in self._ready:
                waited = time.perf_counter() - start
                remaining = anchor.wait_timeout_s - waited
                if remaining <= 0:
                    raise TimeoutError(
                        f"sync=strict: anchor fire {tick} from anchor rank {rank} is not ready after {waited:.0f}s "
                        f"(commeff.anchor.wait_timeout_s={anchor.wait_timeout_s:g}): the anchor is stalled or far "
                        "slower than the actor; raise the timeout, or use commeff.anchor.sync=free")
                timeout = min(anchor.wait_log_s, remaining)
                if hasattr(pending, "wait"):  # wait, then fetch: the two times apart
                    if pending.wait(timeout) and self._fetch(tick, timeout=0):
                        break
                elif self._fetch(tick, timeout=timeout):
                    break
                logger.warning("commeff: tick %d waiting for anchor fire %d from anchor rank %s: %.0fs of %gs "
                               "(sync=strict)", tick, tick, rank, time.perf_counter() - start, anchor.wait_timeout_s)
        except AnchorFailure as failure:  # from wait(): the fetch keeps failures in the slot itself
            self._ready[tick] = failure
            del self._inbox[tick]
        finally:
            self._wait_s += time.perf_counter() - start - (self._fetch_s - fetch_before)

    def _take_free(self, fire: int) -> Optional[AnchorResult]:
        """sync=free: fire ``fire``'s fetched result; a failed fire is dropped, counted, logged once."""
        result = self._ready.pop(fire)
        if isinstance(result, AnchorFailure):
            self._failed_fires += 1
            if self._failed_fires == 1:
                logger.warning("commeff: %s; sync=free: continuing on the held M̄ (its age grows); further failed "
                               "fires are counted in commeff/anchor/failed_fires", result)
            return None
        return result

    def before_optimizer_step(self, grads: Sequence[torch.Tensor]) -> None:
        """Take the due anchor result, refresh Q when due, and merge ``grads`` in place.

        Args:
            grads: this rank's gradients of :attr:`targets`, in order, after FSDP's reduction.
        """
        tick = self.clock.tick
        if grads:
            self._grad_device = grads[0].device
        # Step 0: across HSDP replicas, PowerSGD for the targets, dense for the rest (in place).
        if self.dp_codec is not None:
            from verl_commeff.dp_codec.hsdp import exchange_module_grads_

            exchange_module_grads_(self.dp_codec, self._model.named_parameters(), self._dp_targets, self.dp_groups,
                                   self._dp_embeddings)
        # Step 1: the anchor result due at this tick becomes the held M̄ (and maybe Q's sketch);
        # results that finished during the forward/backward are fetched first.
        if self.cfg.anchor.enable:
            self.prefetch()
        result, sketch_of = self._take_result(tick) if self.cfg.anchor.enable else (None, None)
        if result is not None and result.rejected:  # non-finite on the anchor (strict): keep the held M̄ and Q
            self._count_rejected(result)
            result = sketch_of = None
        if result is not None:
            self.merger.hold(result.m_bar, produced_tick=result.fire_tick, source_tick=result.source_tick,
                             fingerprints=result.fingerprints, evidence=result.dose_evidence)
            self._fires_used += 1
            self._age_sum += tick - result.source_tick
            self._age_n += 1
            self._count_received(result)
            self._ema_updates = result.ema_updates
            self._track_q_gap(result)
        # Step 2: stage a refreshed Q when due (live at the next step boundary).
        if self.codec is not None:
            if self.cfg.codec.q_source == "fast":
                if self.schedule.q_refresh_at(tick):
                    self.codec.refresh()
            elif sketch_of is not None and sketch_of.sketch is not None:  # strict: only at Q-refresh fires
                self.codec.refresh(sketch_of.sketch, reduce=False)
                self._last_sketch_fire = sketch_of.fire_tick
        # Step 3: merge.
        self.merger.apply_(grads, tick)

    def _track_q_gap(self, result: AnchorResult) -> None:
        """How far the Q the anchor sketched against is from this actor's newest Q (no host sync)."""
        if self.codec is None or result.q_fingerprint is None:
            return
        newest = self.codec.staged_basis if self.codec.staged_basis is not None else self.codec.live_basis
        gap = (newest.sum(dim=(1, 2)) - result.q_fingerprint.to(newest.device)).abs().max()  # ()
        self._q_gap = gap if self._q_gap is None else torch.maximum(self._q_gap, gap)

    # ---- memory ------------------------------------------------------------------------
    def buffers(self) -> dict[str, list[torch.Tensor]]:
        """Every comm-eff buffer this rank holds now, by ``component/name`` (the model, its
        gradients and the optimizer are verl's, not listed). Sizes: :func:`buffer_bytes`."""
        out = {f"merger/{k}": v for k, v in self.merger.buffers().items()}
        if self.codec is not None:
            out.update({f"codec/{k}": v for k, v in self.codec.buffers().items()})
        if self.dp_codec is not None:
            out["dp_codec/error_feedback"] = list(self.dp_codec.error_dict.values())
            out["dp_codec/q_memory"] = list(self.dp_codec.q_memory_dict.values())
        ready = [r for r in self._ready.values() if isinstance(r, AnchorResult)]
        out["anchor/ready_results"] = [t for r in ready for t in _result_tensors(r)]
        return out

    # ---- telemetry ---------------------------------------------------------------------
    def record_snapshot(self, snapshot: Any) -> int:
        """Count a generator-weight snapshot this rank handed to the anchor; returns its bytes.

        Args:
            snapshot: the :class:`~verl_commeff.anchor.snapshot_delta.EncodedSnapshot` sent (its
                tensors are counted; ``anchor_snapshot/as_dense_fp32`` adds what dense fp32
                shards would have cost), or plain shards (a list of tensors).
        """
        from verl_commeff.anchor.snapshot_delta import EncodedSnapshot
        from verl_commeff.ledger import payload_bytes

        num_bytes = payload_bytes(snapshot)
        self._bytes["anchor_snapshot"] += num_bytes
        if isinstance(snapshot, EncodedSnapshot):
            self._snapshot_fp32_bytes += snapshot.dense_fp32_bytes()
        else:
            self._snapshot_fp32_bytes += sum(t.numel() * 4 for t in snapshot)
        return num_bytes

    def record_snapshot_time(self, seconds: float) -> None:
        """Add the seconds this rank spent taking (copying and putting) a snapshot (``commeff/anchor/snapshot_s``)."""
        self._snapshot_s += seconds

    def metrics(self) -> dict[str, float]:
        """This step's ``commeff/*`` metrics (one host sync per step)."""
        out = dict(self.merger.metrics())
        if self.codec is not None:
            out.update(self.codec.metrics())
        out["commeff/tick"] = float(self.clock.tick)
        out["commeff/anchor/wait_s"] = self._wait_s
        out["commeff/anchor/fetch_s"] = self._fetch_s
        out["commeff/anchor/snapshot_s"] = self._snapshot_s
        out["commeff/anchor/fires_used"] = float(self._fires_used)
        out["commeff/anchor/backwards"] = float(self._anchor_backwards)
        out["commeff/anchor/rejected_fires"] = float(self._rejected_fires)
        if self.cfg.anchor.enable:  # the anchor's paths: dense training has none of them
            for path, sent in self._bytes.items():
                out.update(path_metrics(path, sent, 0))
            out["commeff/bytes/anchor_m_bar/as_shards"] = float(self._m_bar_shard_bytes)
            out["commeff/bytes/anchor_snapshot/as_dense_fp32"] = float(self._snapshot_fp32_bytes)
        if self.dp_codec is not None:
            out.update(self.dp_codec.metrics())  # resets the step's ledger
        out["commeff/anchor/failed_fires"] = float(self._failed_fires)
        out["commeff/anchor/dropped_fires"] = float(self._dropped_fires)
        if self._ema_updates:
            out["commeff/anchor/ema_updates"] = float(self._ema_updates)
        if self._q_gap is not None:
            out["commeff/anchor/q_gap"] = float(self._q_gap)
        if self._age_n:
            out["commeff/anchor/age"] = self._age_sum / self._age_n
        out.update(ledger_totals(out))  # this rank's paths; the trainer recomputes with the driver's
        self._wait_s, self._fetch_s, self._snapshot_s = 0.0, 0.0, 0.0
        self._age_sum, self._age_n, self._q_gap = 0, 0, None
        self._bytes = dict.fromkeys(self._bytes, 0)
        self._m_bar_shard_bytes = 0
        self._snapshot_fp32_bytes = 0
        return out

    # ---- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Clock, codec and merger state (pending anchor results are resubmitted from the ring)."""
        return {
            "clock": self.clock.state_dict(),
            "codec": None if self.codec is None else self.codec.state_dict(),
            "merger": self.merger.state_dict(),
            "fires_used": self._fires_used,
            "anchor_backwards": self._anchor_backwards,
            "dp_codec": None if self.dp_codec is None else self.dp_codec.state_dict(),
            "rejected_fires": self._rejected_fires,
            "failed_fires": self._failed_fires,
            "dropped_fires": self._dropped_fires,
            "last_sketch_fire": self._last_sketch_fire,
            "ema_updates": self._ema_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock.load_state_dict(state["clock"])
        if (state["codec"] is None) != (self.codec is None):
            raise ValueError("checkpoint and config disagree on commeff.codec.enable")
        if self.codec is not None:
            self.codec.load_state_dict(state["codec"])
        self.merger.load_state_dict(state["merger"])
        self._fires_used = state["fires_used"]
        self._anchor_backwards = state["anchor_backwards"]
        if (state.get("dp_codec") is None) != (self.dp_codec is None):
            raise ValueError("checkpoint and config disagree on commeff.dp_codec.enable")
        if self.dp_codec is not None:
            self.dp_codec.load_state_dict(state["dp_codec"])
        self._rejected_fires = state.get("rejected_fires", 0)
        self._failed_fires = state.get("failed_fires", 0)
        self._dropped_fires = state.get("dropped_fires", 0)
        self._last_sketch_fire = state.get("last_sketch_fire", 0)
        self._ema_updates = state.get("ema_updates", 0)
