"""The merger state object: holds M̄, runs dose control and telemetry, merges in place.

Every tick, after FSDP has reduced the gradients and before clipping and
``optimizer.step``, the actor calls ``merger.apply_(grads, tick)`` (SPEC §4). The merger

- holds the latest M̄ between fires (:meth:`Merger.hold`), as dense tensors laid out like
  the gradients (whole tensors, local row/flat shards, or DTensors) or as
  :class:`~verl_commeff.mergers.sign_bits.PackedSigns` (``transport=sign``);
- is cold until the first M̄ is held: G′ = G, counted in ``cold_ticks``;
- computes its global statistics (norms, sign agreement, ⟨G, M̄⟩) from per-rank partial
  sums with ONE all-reduce of a small vector per tick, so λ_t is bit-identical on every
  rank; DTensor gradients reduce over their mesh's shard group, plain local shards over
  the ``process_group`` given at construction, whole tensors need no reduction;
- never reads a device value on the host in :meth:`Merger.apply_`: λ_t, c_t and the
  telemetry stay device tensors and :meth:`Merger.metrics` reads them once per step;
- skips a tick whose statistics or c_t are not finite (a non-finite G, which verl's own
  non-finite grad-norm check then skips too, or a non-finite dense M̄): decided on the
  device, that tick's G is left as it is, nothing of it reaches the dose window or the
  telemetry, and it is counted in ``skipped_ticks``.

Sign convention: sign(x) = +1 if x ≥ 0 else −1, for G and M̄ alike (see ``sign_bits``).
``sign_agree`` is the fraction of coordinates where sign(G) = sign(M̄).

Subclasses (registered with ``@register_merger``) define the correction through three
hooks: :meth:`Merger._delta_sq` (‖δ_t‖² from the global statistics),
:meth:`Merger._dose` (λ_t) and :meth:`Merger._merge_` (G ← G + λ_t·δ_t on the local
tensors, through the fused per-tensor kernels of :mod:`~verl_commeff.mergers.kernels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist

from verl_commeff.collectives import FP_ABS, FP_SQ, N_FP, fingerprint, gather_rows, tensor_checksum
from verl_commeff.mergers.dose import STAT_DTYPE, DoseControl, cos_signal, ratio_signal
from verl_commeff.mergers.grad_layout import check_held_layout, local_view, reduce_group
from verl_commeff.mergers.sign_bits import PackedSigns
from verl_commeff.mergers.stats import (
    G_SQ,
    GM_DOT,
    M_SQ,
    MISMATCH_COUNT,
    N_STATS,
    NUMEL,
    LocalHeld,
    global_stats,
    held_sq_norm,
)
from verl_commeff.mergers.kernels import HeldMasks, MergerKernels

if TYPE_CHECKING:
    from verl_commeff.config import MergerConfig

__all__ = ["Merger", "HeldSignal"]

HeldSignal = Union[Sequence[torch.Tensor], PackedSigns]

# Per-step telemetry: indices into the (N_TELEMETRY,) fp64 sum over the step's warm ticks.
# T_VALID counts the ticks that were not skipped (the denominator of the means).
T_LAMBDA, T_C, T_C_MEDIAN, T_SIGN_AGREE, T_DELTA_RATIO, T_COS, T_GRAD_NORM, T_VALID = range(8)
N_TELEMETRY = 8

PREFIX = "commeff/merger/"

# The cross-rank check's row: [tick, produced, source | held fingerprint | replicated checksum | inputs].
_R_TICKS, _R_FP, _R_REPL, _R_INPUTS = 0, 3, 3 + N_FP, 4 + N_FP
# Flags of the check, OR-ed over a step: ranks disagree on inputs, hold a wrong M̄, hold different replicated tensors.
F_INPUTS, F_HELD, F_REPLICATED = range(3)
FP_RTOL = 1e-9  # fp64 sums of identical fp32 values reduced in another order agree far closer than this


class Merger:
    """Base merger: held M̄, cold rule, dose control, telemetry, checkpointing.

    Knobs (from :class:`~verl_commeff.config.MergerConfig`):
        alpha: α, share of the fast gradient kept by the correction.
        age_decay, adaptive.*: dose control (see :mod:`verl_commeff.mergers.dose`).
        checksum_every: every this many ticks, fingerprint what each rank holds and compare
            (one all-gather of a ~20-number row per rank, :meth:`Merger._check_ranks`):
            the tick and held fire's ticks must agree; the held M̄ (this rank's shard or
            sign bits: Σx, Σ|x|, Σx²) must match the fingerprint the anchor took of the
            shard it sent that rank, or, for replicated tensors without one, agree across
            ranks; the ``replicated`` tensors (the live Q) must agree; with replicated
            gradients, the local statistics and λ_t, c_t too. 0 = never.

    State (all in :meth:`state_dict`, no process group inside): the held M̄ and its
    produced/source ticks, the last tick, cumulative cold/merged tick counts, the dose
    ring, and the current step's telemetry sums.

    Args:
        cfg: the merger config (duck-typed ``MergerConfig``).
        process_group: the shard group to reduce statistics over when the gradients are
            plain local shards (FSDP1 flat-param shards, hand-made row shards). It also
            overrides a DTensor mesh's group. None: DTensors use their mesh's shard group,
            plain tensors are whole (no reduction).
        checksum_group: group of the cross-rank check (None = the default group); the
            anchor's fingerprints are indexed by its ranks (row r: what the anchor sent rank r).
        replicated: called at each check, the tensors that must be identical on every rank
            of ``checksum_group`` (the actor passes its codec's live Q); None = none.
    """

    name = "base"
    merges = True  # False: G′ = G always (no second pass)
    signs_suffice = False  # True: only sign(M̄) is read, so anchor.transport=auto picks sign bits

    def __init__(
        self,
        cfg: "MergerConfig",
        process_group: Optional[dist.ProcessGroup] = None,
        checksum_group: Optional[dist.ProcessGroup] = None,
        replicated: Optional[Callable[[], Sequence[torch.Tensor]]] = None,
    ):
        self.cfg = cfg
        self.alpha = float(cfg.alpha)
        self.checksum_every = int(cfg.checksum_every)
        self.adaptive_mode = cfg.adaptive.mode
        self.dose_control = DoseControl(cfg.adaptive, cfg.age_decay)
        self.process_group = process_group
        self.checksum_group = checksum_group
        self.replicated = replicated
        # Held signal.
        self._held: Optional[HeldSignal] = None
        self._held_fp: Optional[torch.Tensor] = None  # (anchor world, N_FP) the anchor's per-rank fingerprints
        self.produced_tick: Optional[int] = None
        self.source_tick: Optional[int] = None
        self._held_checked = False  # layout checked against the grads since the last hold()
        self._masks: Optional[HeldMasks] = None  # sign(M̄) in the kernels' form (packed bits or uint8), once per hold
        self._held_sq: Optional[torch.Tensor] = None  # dense M̄: Σ‖M̄_i‖² of the local tensors, made once per hold
        self.kernels = MergerKernels(cfg.kernels)  # the per-tensor passes of a tick
        # Counters (host ints: known without reading the device).
        self.last_tick = 0
        self.cold_ticks = 0
        self.merged_ticks = 0
        self._skipped: Optional[torch.Tensor] = None  # 0-d int64 device count of skipped warm ticks
        self._reset_step()

    # ------------------------------------------------------------------ held signal
    @property
    def is_cold(self) -> bool:
        """True until the first M̄ is held."""
        return self._held is None

    @property
    def held_signs_only(self) -> bool:
        """True when the held signal is packed sign bits (no magnitudes: no cos)."""
        return isinstance(self._held, PackedSigns)

    def hold(self, m_bar: HeldSignal, produced_tick: int, source_tick: int,
             fingerprints: Optional[torch.Tensor] = None, evidence: Optional[dict[str, float]] = None) -> None:
        """Hold a new M̄ (replacing the previous one) until the next hold.

        The tensors are kept by reference (no copy): do not modify them afterwards.

        Args:
            m_bar: one tensor per gradient, with the gradients' local layout (whole
                tensors, local shards, or DTensors), or :class:`PackedSigns` of those
                local shards.
            produced_tick: the tick the fire was produced for (its age is counted from
                here; with ``sync=free`` pass the fire's scheduled tick, so the age at use
                is the realised age). ≥ 1.
            source_tick: the tick of the mini-batch and weights it was computed on
                (t − K, or the replayed warm-up tick); 1 ≤ source_tick ≤ produced_tick.
            fingerprints: (world, 3) fp64, row r = :func:`~verl_commeff.collectives.fingerprint`
                of what the anchor sent rank r (its shard, or its packed bits); the cross-rank
                check compares each rank's held M̄ with its row. None: not checked against
                the anchor.
            evidence: the fire's dose evidence (host floats, :mod:`~verl_commeff.mergers.evidence_dose`),
                handed to the dose control; None: the fire carried none.
        """
        for arg, value in (("produced_tick", produced_tick), ("source_tick", source_tick)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Merger.hold: {arg}={value!r} must be a host int")
        if produced_tick < 1:
            raise ValueError(f"Merger.hold: produced_tick={produced_tick} is out of range: must be >= 1")
        if not 1 <= source_tick <= produced_tick:
            raise ValueError(
                f"Merger.hold: source_tick={source_tick} is out of range: must be in [1, produced_tick={produced_tick}]"
            )
        if isinstance(m_bar, PackedSigns):
            if self.adaptive_mode == "cos":
                raise ValueError(
                    "Merger.hold: got packed sign bits but commeff.merger.adaptive.mode='cos' needs M̄'s "
                    "magnitudes (use transport=shards or mode=ratio)"
                )
            held: HeldSignal = m_bar
        else:
            held = list(m_bar)
            for i, m in enumerate(held):
                if not isinstance(m, torch.Tensor):
                    raise TypeError(f"Merger.hold: m_bar[{i}] is {type(m).__name__}, expected a tensor")
        if len(held) == 0:
            raise ValueError("Merger.hold: m_bar is empty (expected one entry per target gradient)")
        if fingerprints is not None and (fingerprints.dim() != 2 or fingerprints.shape[1] != N_FP):
            raise ValueError(f"Merger.hold: fingerprints has shape {tuple(fingerprints.shape)}, expected (world, {N_FP})")
        self._held = held
        self._held_fp = fingerprints
        self.produced_tick = produced_tick
        self.source_tick = source_tick
        self._held_checked = False
        self._masks = None
        self._held_sq = None
        self.dose_control.take_evidence(evidence)

    def _local_held(self) -> LocalHeld:
        """The held M̄ as local tensors (DTensor → ``to_local()``), or its packed signs."""
        if isinstance(self._held, PackedSigns):
            return self._held
        return [local_view(m) for m in self._held]

    # ------------------------------------------------------------------ subclass hooks
    def _delta_sq(self, stats: torch.Tensor) -> torch.Tensor:
        """‖δ_t‖² (0-d fp64) from the global statistics vector."""
        raise NotImplementedError

    def _dose(self, c_t: torch.Tensor, age: int, valid: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(λ_t, c̄) for a warm tick (default: :class:`DoseControl`); ``valid``: 0-d bool, finite inputs."""
        return self.dose_control.dose(c_t, age, valid)

    def _merge_(self, g_local: Sequence[torch.Tensor], masks: HeldMasks, lam: torch.Tensor) -> None:
        """G ← G + λ_t·δ_t in place on every local tensor (λ_t = 0 on an invalid tick: G must stay as it is).

        Args:
            g_local: the local gradient tensors.
            masks: sign(M̄) in the kernels' form (:meth:`MergerKernels.hold_masks`).
            lam: 0-d fp64 λ_t on the gradients' device.

        An implementation should use :attr:`kernels` (one fused pass over the tensors).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ the tick
    @torch.no_grad()
    def apply_(self, grads: Sequence[torch.Tensor], tick: int) -> None:
        """Merge the held M̄ into ``grads`` in place for optimizer step ``tick``.

        Steps:
            1. Check the tick (host int, ≥ 1, increasing).
            2. Cold (no M̄ held yet): G′ = G, count a cold tick, done.
            3. Take local views of the grads (DTensor → ``to_local()``); on the first tick
               after a hold, check M̄'s layout against them and make the per-target masks
               sign(M̄) = + (sign bits unpacked once per held M̄, not per tick) and, for a
               dense M̄, its ‖M̄‖².
            4. Per local tensor, partial sums: ‖G‖², Σ G² and count over sign-mismatched
               coordinates, numel, and with dense M̄ also ⟨G, M̄⟩ and ‖M̄‖². Stack them into
               one (6,) fp64 vector and all-reduce it ONCE over the shard group. One fused
               pass per tensor (``commeff.merger.kernels``; no gradient-sized allocation).
            5. c_t (``ratio``: ‖δ‖/‖G‖, ``cos``: cos(G, M̄)); valid = the statistics (and
               c_t when adaptive) are finite, a 0-d device bool; then λ_t (dose control,
               which pushes c_t only when valid); λ_t = 0 when not valid.
            6. G ← G + λ_t·δ_t on every local tensor (skipped by ``none``), one fused pass
               each; λ_t = 0 on an invalid tick leaves G exactly as it is.
            7. Accumulate the step's telemetry on the device (an invalid tick adds zeros and
               counts as skipped); every ``checksum_every`` ticks check the replicated
               inputs across ranks.

        Args:
            grads: the reduced gradients of the targets (tensors or DTensors), in the
                same order and layout as the held M̄.
            tick: the 1-based optimizer-step counter of this update.
        """
        # Step 1: the tick and the inputs (nothing changes state before they pass).
        if isinstance(tick, bool) or not isinstance(tick, int):
            raise TypeError(f"Merger.apply_: tick={tick!r} must be a host int")
        if tick < 1 or tick <= self.last_tick:
            raise ValueError(
                f"Merger.apply_: tick={tick} is out of range: must be >= 1 and > the last tick {self.last_tick}"
            )
        grads = list(grads)
        for i, g in enumerate(grads):
            if g is None:
                raise ValueError(f"Merger.apply_: grads[{i}] is None (every target needs a gradient)")
        if self._held is not None and self.produced_tick > tick:
            raise ValueError(
                f"Merger.apply_: the held M̄ was produced for tick {self.produced_tick}, after tick={tick}"
            )

        # Step 2: cold rule.
        if self._held is None:
            self.last_tick = tick
            self.cold_ticks += 1
            if self._checksum_due(tick):
                device = local_view(grads[0]).device if grads else torch.device("cpu")
                self._check_ranks(device, tick, None, sharded=False)
            return
        age = tick - self.produced_tick

        # Step 3: local views; the layout check once per hold.
        g_local = [local_view(g) for g in grads]
        held = self._local_held()
        if not self._held_checked:
            if isinstance(held, PackedSigns):
                check_held_layout(held.shapes, [b.device for b in held.bits], g_local)
            else:
                check_held_layout([m.shape for m in held], [m.device for m in held], g_local)
            self._held_checked = True
        dense = not isinstance(held, PackedSigns)
        if self._masks is None:
            self._masks = self.kernels.hold_masks(held)  # per target: packed bits or a (shape) uint8 mask
            self._held_sq = held_sq_norm(held) if dense else None  # 0-d fp64
        self.last_tick = tick
        zero = torch.zeros((), dtype=STAT_DTYPE, device=g_local[0].device)

        # Step 4: partial sums, one all-reduce.
        reduce, group = reduce_group(grads, self.process_group)
        stats = global_stats(g_local, self._masks, held if dense else None, reduce, group,
                             self.kernels, held_sq=self._held_sq)  # (N_STATS,)

        # Step 5: c_t and λ_t.
        delta_ratio = ratio_signal(self._delta_sq(stats), stats[G_SQ])
        cos = cos_signal(stats[GM_DOT], stats[G_SQ], stats[M_SQ])
        c_t = cos if self.adaptive_mode == "cos" else delta_ratio
        valid = torch.isfinite(stats).all()  # 0-d bool: G (and dense M̄) finite
        if self.dose_control.adaptive:
            valid = valid & torch.isfinite(c_t)
        lam, c_bar = self._dose(c_t, age, valid)
        lam = torch.where(valid, lam, 0.0)

        # Step 6: merge in place (λ_t = 0 on an invalid tick leaves G exactly as it is).
        if self.merges:
            self._merge_(g_local, self._masks, lam)

        # Step 7: telemetry and the cross-rank check.
        self.merged_ticks += 1
        self._step_warm += 1
        self._step_age_sum += age
        self._step_staleness_sum += tick - self.source_tick
        self._step_dense_ticks += int(dense)
        agree = 1.0 - stats[MISMATCH_COUNT] / stats[NUMEL].clamp(min=1.0)
        telemetry = torch.stack(
            [
                lam,
                c_t if self.dose_control.adaptive else zero,
                c_bar if c_bar is not None else zero,
                agree,
                delta_ratio,
                cos if dense else zero,
                stats[G_SQ].sqrt(),
                torch.ones((), dtype=STAT_DTYPE, device=zero.device),
            ]
        )  # (N_TELEMETRY,)
        telemetry = torch.where(valid, telemetry, 0.0)  # a skipped tick adds nothing (not even NaN)
        skipped = (~valid).to(torch.int64)
        self._skipped = skipped if self._skipped is None else self._skipped + skipped.to(self._skipped.device)
        self._step_sums = telemetry if self._step_sums is None else self._step_sums + telemetry
        if self._checksum_due(tick):
            inputs = None if reduce else torch.cat([stats, torch.stack([lam, c_t, c_bar if c_bar is not None else zero])])
            self._check_ranks(zero.device, tick, inputs, sharded=reduce)

    # ------------------------------------------------------------------ cross-rank check
    def _checksum_due(self, tick: int) -> bool:
        return self.checksum_every > 0 and tick % self.checksum_every == 0

    def checksum_due(self, tick: int) -> bool:
        """True when ``apply_`` at ``tick`` runs the cross-rank check."""
        return self._checksum_due(tick)

    def _held_tensors(self) -> list[torch.Tensor]:
        """What this rank holds: its local M̄ tensors, or its packed sign bytes ([] when cold)."""
        if self._held is None:
            return []
        held = self._local_held()
        return list(held.bits) if isinstance(held, PackedSigns) else list(held)

    def _check_ranks(self, device: torch.device, tick: int, inputs: Optional[torch.Tensor], sharded: bool) -> None:
        """Fingerprint what this rank holds and compare it across ranks and with the anchor's.

        Steps:
            1. This rank's row: the tick and the held fire's ticks; the fingerprint of its
               held M̄ (its local tensors, or its sign bytes); the checksum of the
               ``replicated`` tensors; ``inputs`` (local statistics and λ_t, c_t, c̄, given
               only when the gradients are replicated, so they must agree too).
            2. One all-gather of the rows over ``checksum_group``: (world, n), the same on
               every rank, so every rank reaches the same verdict.
            3. Flags on the device, OR-ed over the step (read by :meth:`metrics`): ticks or
               inputs differ; a rank's held M̄ differs from the anchor's fingerprint of the
               shard it sent that rank (or, with replicated M̄ and no anchor fingerprint,
               from rank 0's); the replicated tensors differ.

        Args:
            device: where the check's tensors live (the gradients' device).
            tick: this tick.
            inputs: (N_STATS + 3,) fp64, or None when the statistics were all-reduced
                (identical by construction: nothing to compare).
            sharded: the gradients (and M̄) are per-rank shards.
        """
        # Step 1: this rank's row.
        held_ticks = (self.produced_tick, self.source_tick) if self._held is not None else (-1, -1)
        ticks = torch.stack([torch.full((), float(x), dtype=STAT_DTYPE, device=device)
                             for x in (tick, *held_ticks)])  # (3,) filled on the device: no host→device copy
        held = self._held_tensors()
        fp = fingerprint(held).to(device) if held else torch.zeros(N_FP, dtype=STAT_DTYPE, device=device)  # (N_FP,)
        repl = self.replicated() if self.replicated is not None else []
        repl_sum = tensor_checksum(repl).to(device).reshape(1) if repl else torch.zeros(1, dtype=STAT_DTYPE,
                                                                                       device=device)  # (1,)
        if inputs is None:
            inputs = torch.zeros(N_STATS + 3, dtype=STAT_DTYPE, device=device)
        row = torch.cat([ticks, fp, repl_sum, inputs.to(STAT_DTYPE)])  # (n,)
        # Step 2: every rank's row.
        rows = gather_rows(row, self.checksum_group)  # (world, n)
        world = rows.shape[0]
        # Step 3: the flags.
        differs = rows != rows[:1]  # (world, n) vs rank 0
        bad_inputs = differs[:, _R_TICKS:_R_FP].any() | differs[:, _R_INPUTS:].any()
        bad_repl = differs[:, _R_REPL].any()
        held_rows = rows[:, _R_FP:_R_REPL]  # (world, N_FP)
        if self._held_fp is not None:
            # (anchor world, N_FP): a non-blocking copy (a blocking one waits for the device: a host sync)
            anchor = self._held_fp.to(dtype=STAT_DTYPE).to(device, non_blocking=True)
            if anchor.shape[0] != world:
                bad_ranks = torch.ones(world, dtype=torch.bool, device=device)
            else:
                scale = torch.stack([anchor[:, FP_ABS], anchor[:, FP_ABS], anchor[:, FP_SQ]], dim=1)  # (world, N_FP)
                bad_ranks = ((held_rows - anchor).abs() > FP_RTOL * scale).any(dim=1)  # (world,)
        elif self._held is not None and not sharded:
            bad_ranks = differs[:, _R_FP:_R_REPL].any(dim=1)  # replicated M̄: every rank holds the same
        else:
            bad_ranks = torch.zeros(world, dtype=torch.bool, device=device)
        flags = torch.stack([bad_inputs, bad_ranks.any(), bad_repl])  # (3,)
        self._check_flags = flags if self._check_flags is None else self._check_flags | flags
        self._bad_ranks = bad_ranks if self._bad_ranks is None else self._bad_ranks | bad_ranks
        self._check_rows = rows
        self._step_checks += 1

    # ------------------------------------------------------------------ memory
    def buffers(self) -> dict[str, list[torch.Tensor]]:
        """The device buffers this merger holds now, by name (for the memory table of
        ``benchmarks/bench_gpu_tick.py``; the same storage may appear under two names)."""
        held = [] if self._held is None else self._held_tensors()
        return {
            "held_m_bar": held,  # M̄'s local tensors, or its packed sign bits
            "held_masks": [] if self._masks is None else list(self._masks.tensors),
            "scratch": self.kernels.scratch_buffers(),
        }

    # ------------------------------------------------------------------ telemetry
    def _reset_step(self) -> None:
        self._step_sums: Optional[torch.Tensor] = None  # (N_TELEMETRY,) fp64 over warm ticks
        self._step_warm = 0
        self._step_age_sum = 0
        self._step_staleness_sum = 0
        self._step_dense_ticks = 0
        self._step_checks = 0
        self._check_flags: Optional[torch.Tensor] = None  # (3,) bool, OR over this step's checks (F_*)
        self._bad_ranks: Optional[torch.Tensor] = None  # (world,) bool: ranks whose held M̄ failed a check
        self._check_rows: Optional[torch.Tensor] = None  # (world, n) the last check's rows (for the error)

    def metrics(self) -> dict[str, float]:
        """This step's telemetry as a flat dict of floats, then reset the step accumulators.

        Call once per global step (one device→host copy). Keys (``commeff/merger/`` +):

        - ``cold_ticks``, ``merged_ticks``: cumulative counts of ticks without / with a held
          M̄ (for ``none`` a merged tick ran the identity rule); ``tick``: the last tick.
        - ``skipped_ticks``: cumulative count of warm ticks whose merge was skipped because
          G, M̄ or c_t was not finite (included in ``merged_ticks``).
        - Means over the step's warm ticks that were not skipped, left out when there were
          none: ``lambda``
          (λ_t applied, after age decay), ``sign_agree`` (fraction of coordinates with
          sign(G) = sign(M̄)), ``delta_ratio`` (‖δ_t‖/‖G_t‖), ``grad_norm`` (‖G_t‖ before
          the merge), ``age`` (tick − produced tick), ``staleness`` (tick − source tick);
          ``c`` and ``c_median`` (c_t, c̄) only with adaptive dose; ``cos`` (cos(G_t, M̄))
          only with dense M̄. ``produced_tick``: that of the held M̄.
        - ``inputs_identical``: 1.0 when this step ran cross-rank checks and all passed.

        Raises:
            RuntimeError: a cross-rank check of this step failed; the message says what
                differed (ticks/inputs, which ranks' held M̄, the replicated tensors).
        """
        out: dict[str, float] = {
            PREFIX + "cold_ticks": float(self.cold_ticks),
            PREFIX + "merged_ticks": float(self.merged_ticks),
            PREFIX + "tick": float(self.last_tick),
        }
        parts = [] if self._step_sums is None else [self._step_sums]  # (N_TELEMETRY,)
        if self._skipped is not None:
            parts.append(self._skipped.reshape(1).to(STAT_DTYPE))  # (1,)
        if self._check_flags is not None:
            parts.append(self._check_flags.to(STAT_DTYPE))  # (3,)
        values = torch.cat([p.to(parts[0].device) for p in parts]).tolist() if parts else []  # the one host read
        if self._skipped is not None:
            out[PREFIX + "skipped_ticks"] = values[N_TELEMETRY if self._step_sums is not None else 0]
        n_valid = values[T_VALID] if self._step_sums is not None else 0.0
        if n_valid > 0:
            n = n_valid
            means = [v / n for v in values[:N_TELEMETRY]]
            out[PREFIX + "lambda"] = means[T_LAMBDA]
            out[PREFIX + "sign_agree"] = means[T_SIGN_AGREE]
            out[PREFIX + "delta_ratio"] = means[T_DELTA_RATIO]
            out[PREFIX + "grad_norm"] = means[T_GRAD_NORM]
            if self.dose_control.adaptive:
                out[PREFIX + "c"] = means[T_C]
                out[PREFIX + "c_median"] = means[T_C_MEDIAN]
            if self._step_dense_ticks == self._step_warm:
                out[PREFIX + "cos"] = means[T_COS]
        if self._step_sums is not None:
            out[PREFIX + "age"] = self._step_age_sum / self._step_warm
            out[PREFIX + "staleness"] = self._step_staleness_sum / self._step_warm
            out[PREFIX + "produced_tick"] = float(self.produced_tick)
        if self._check_flags is not None:
            flags = values[-3:]
            if any(flags):
                message = self._check_failure(flags)
                self._reset_step()
                raise RuntimeError(message)
            out[PREFIX + "inputs_identical"] = 1.0
        out.update(self.dose_control.metrics())  # commeff/dose/*: host numbers
        self._reset_step()
        return out

    def _check_failure(self, flags: list[float]) -> str:
        """The error for a failed cross-rank check (reads the last rows: only on failure)."""
        rows = self._check_rows.cpu()
        what = []
        if flags[F_INPUTS]:
            ticks = [tuple(int(x) for x in r[_R_TICKS:_R_FP].tolist()) for r in rows]
            what.append(f"ranks disagree on (tick, held fire's produced tick, source tick) = {ticks} or, with "
                        "replicated gradients, on the local statistics / λ_t / c_t")
        if flags[F_HELD]:
            bad = [r for r, b in enumerate(self._bad_ranks.cpu().tolist()) if b]
            against = "the anchor's fingerprint of the shard it sent" if self._held_fp is not None else "rank 0's"
            what.append(f"rank(s) {bad} hold an M̄ (fire produced for tick {self.produced_tick}) whose fingerprint "
                        f"(Σx, Σ|x|, Σx²) differs from {against}: {[r[_R_FP:_R_REPL].tolist() for r in rows]}"
                        + (f" vs anchor {self._held_fp.tolist()}" if self._held_fp is not None else ""))
        if flags[F_REPLICATED]:
            what.append(f"the replicated tensors (the codec's live Q) differ across ranks: checksums "
                        f"{rows[:, _R_REPL].tolist()}")
        return (f"commeff cross-rank check failed during the step ending at tick {self.last_tick}: "
                + "; ".join(what) + ". A corrupted, stale or mis-routed M̄ shard or Q; training would diverge "
                "across ranks (checked every commeff.merger.checksum_every ticks)")

    # ------------------------------------------------------------------ checkpointing
    def _knobs(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "adaptive_mode": self.adaptive_mode}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (no process group; M̄ as this rank's local tensors).

        Tensors are returned by reference; ``torch.save`` copies them.
        """
        held = None
        if self._held is not None:
            if isinstance(self._held, PackedSigns):
                shapes = [tuple(s) for s in self._held.shapes]
                held = {"kind": "signs", "tensors": list(self._held.bits), "shapes": shapes}
            else:
                held = {"kind": "dense", "tensors": [local_view(m) for m in self._held]}
            held.update(produced_tick=self.produced_tick, source_tick=self.source_tick, fingerprints=self._held_fp)
        return {
            "knobs": self._knobs(),
            "held": held,
            "last_tick": self.last_tick,
            "cold_ticks": self.cold_ticks,
            "merged_ticks": self.merged_ticks,
            "skipped_ticks": self._skipped,
            "dose": self.dose_control.state_dict(),
            "step": {
                "sums": self._step_sums,
                "warm": self._step_warm,
                "age_sum": self._step_age_sum,
                "staleness_sum": self._step_staleness_sum,
                "dense_ticks": self._step_dense_ticks,
                "checks": self._step_checks,
                "check_flags": self._check_flags,
                "bad_ranks": self._bad_ranks,
                "check_rows": self._check_rows,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors are used as given: map them to the device first).

        Raises:
            ValueError: the checkpoint was written by a merger with other knobs (name, α, mode).
        """
        knobs = self._knobs()
        for key, value in state["knobs"].items():
            if knobs.get(key) != value:
                raise ValueError(
                    f"Merger.load_state_dict: checkpoint {key}={value!r} differs from "
                    f"this merger's {key}={knobs.get(key)!r}"
                )
        held = state["held"]
        if held is None:
            self._held, self.produced_tick, self.source_tick = None, None, None
        else:
            if held["kind"] == "signs":
                shapes = [torch.Size(s) for s in held["shapes"]]
                signal: HeldSignal = PackedSigns(bits=list(held["tensors"]), shapes=shapes)
            else:
                signal = list(held["tensors"])
            self.hold(signal, int(held["produced_tick"]), int(held["source_tick"]), held.get("fingerprints"))
        self.last_tick = int(state["last_tick"])
        self.cold_ticks = int(state["cold_ticks"])
        self.merged_ticks = int(state["merged_ticks"])
        self._skipped = state.get("skipped_ticks")  # absent in checkpoints from before the count
        self.dose_control.load_state_dict(state["dose"])
        step = state["step"]
        self._step_sums = step["sums"]
        self._step_warm = int(step["warm"])
        self._step_age_sum = int(step["age_sum"])
        self._step_staleness_sum = int(step["staleness_sum"])
        self._step_dense_ticks = int(step["dense_ticks"])
        self._step_checks = int(step["checks"])
        self._check_flags = step.get("check_flags")
        self._bad_ranks = step.get("bad_ranks")
        self._check_rows = step.get("check_rows")
