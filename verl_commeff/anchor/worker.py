"""The anchor worker: a verl actor worker that computes dense gradients at stale weights.

:class:`AnchorWorker` is verl's ``ActorRolloutRefWorker`` in role ``actor`` with the
stock engine (no codec projection, no optimizer step ever taken), built from the
actor's own config. With as many ranks as the actor, anchor rank r holds the shards actor
rank r holds; a smaller anchor group (A < N ranks, FSDP2) reshards by rows
(:mod:`verl_commeff.anchor.reshard`). One fire (:meth:`AnchorWorker.anchor_fire`), per rank:

1. load the generator-weight snapshot of the replayed mini-batch (this rank's shards,
   decoded from the actor's delta-encoded payloads: :mod:`verl_commeff.anchor.snapshot_delta`;
   with A < N assembled from the actor ranks' shards that cover its rows), after bringing
   the model back onto the device when ``placement=colocated`` (between fires a colocated
   anchor keeps its model offloaded to host memory);
2. take this rank's share of the global mini-batch and run verl's forward/backward with
   the anchor loss (the actor's ``ppo_loss`` at ratio 1, :mod:`verl_commeff.anchor.loss`),
   the forward observed by the anchor's codec when ``q_source=anchor``;
3. M = the target matrices' gradients, mean-reduced over the anchor's ranks by FSDP;
4. at Q-refresh ticks: the sketch summed over the anchor's ranks;
5. M̄ ← EMA(M) (:class:`~verl_commeff.mergers.anchor_ema.AnchorEMA`), kept here, unless M
   (on any rank) or the sketch is non-finite: then the fire is **rejected** (M̄ and Q keep
   their last state, counted, a warning logged once) and the result says so; otherwise the
   anchor's own Q moves to orth(sketch) so the next sketch starts from the actor's new basis;
   with ``anchor.probe=on``, the dose probe (:mod:`verl_commeff.anchor.dose_probe`): one more
   forward/backward through the codec with the actor's Q of the replayed tick, compared with
   M and the M̄ the actor held there; its evidence (host floats) rides with the result;
6. return M̄ (this rank's shards, or packed sign bits), every anchor rank's fingerprint of
   what it sends (one all-gather of 3 numbers per rank; the actor's cross-rank check
   compares its held shard against it) and the sketch (a colocated anchor offloads its
   model again first); a rejected fire returns neither. With A < N: M̄ in each owned actor
   rank's own layout, one ``ray.put`` per actor rank, fingerprints per actor rank
   (:class:`~verl_commeff.anchor.reshard.RoutedResults`).

The anchor's own state (M̄'s EMA and the codec's Q) is checkpointed by the trainer through
:meth:`AnchorWorker.anchor_state_dict` / :meth:`AnchorWorker.anchor_load_state_dict`, and backed
up after every fire with ``sync=free`` (:meth:`AnchorWorker.anchor_state_backup`) so a
restarted anchor group continues from it; without a backup it takes the actor's newest Q with
:meth:`AnchorWorker.anchor_adopt_basis` and an empty EMA.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Optional

import torch
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_commeff.anchor.fault_hook import maybe_inject_fault
from verl_commeff.collectives import all_reduce_, fingerprint, gather_rows
from verl_commeff.mergers.grad_layout import local_view
from verl_commeff.workers.actor_state import AnchorResult, select_targets
from verl_commeff.workers.weight_shards import load_local_shards, resolve

__all__ = ["AnchorWorker", "backs_up_state"]

_BACKUP_POLL_S = 0.01  # anchor_state_backup: how often it looks for its fire's state copy


class AnchorWorker(ActorRolloutRefWorker):
    """Holds θ_{t−K} snapshots on demand and returns M̄ per fire (see the module docstring)."""

    def __init__(self, config, role: str = "actor", **kwargs):
        if role != "actor":
            raise ValueError(f"AnchorWorker role={role!r} is not valid: the anchor is an actor without rollout ('actor')")
        super().__init__(config, role="actor", **kwargs)
        self._anchor = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def anchor_setup(self, commeff_config: Any, ticks_per_step: int, actor_world: Optional[int] = None) -> None:
        """Build the anchor's loss, codec observer and EMA (after ``init_model``).

        Args:
            commeff_config: the ``commeff`` node or a ``CommEffConfig``.
            ticks_per_step: optimizer steps per global step.
            actor_world: the actor's world size N (None: the anchor's own). With N larger
                than the anchor's world A, snapshots and results are resharded
                (:func:`_reshard_plan`; FSDP2 only).
        """
        from verl.utils.config import omega_conf_to_dataclass

        from verl_commeff.anchor.loss import anchor_loss_fn
        from verl_commeff.codec import BoundaryCodec
        from verl_commeff.config import CommEffConfig, to_commeff_config
        from verl_commeff.mergers.anchor_ema import AnchorEMA
        from verl_commeff.schedule import FireSchedule

        cfg = commeff_config if isinstance(commeff_config, CommEffConfig) else to_commeff_config(commeff_config)
        engine = self.actor.engine
        hf_config = engine.model_config.hf_config
        codec = None
        if cfg.codec.enable and cfg.codec.q_source == "anchor":
            codec = BoundaryCodec(cfg.codec, hf_config.hidden_size, hf_config.num_hidden_layers).install(engine.module)
        schedule = FireSchedule(cfg.anchor.delay_k, cfg.anchor.cadence, ticks_per_step, cfg.q_cadence)
        self._anchor = _AnchorState(
            cfg=cfg,
            schedule=schedule,
            loss_fn=anchor_loss_fn(omega_conf_to_dataclass(self.config.actor)),
            codec=codec,
            ema=AnchorEMA(cfg.anchor.beta),
            targets=select_targets(engine.module, cfg.anchor.targets),
        )
        if cfg.anchor.probe == "on":
            from verl_commeff.anchor.dose_probe import DoseProbe

            self._anchor.probe = DoseProbe(schedule, cfg.merger.alpha, cfg.merger.adaptive.cap)
            if codec is not None:
                self._anchor.probe.reset_basis(codec.live_basis)
        self._anchor.reshard = _reshard_plan(self, actor_world)
        if self._anchor.reshard is not None:  # the decoder keeps only this rank's rows of the actor ranks' shards
            from verl_commeff.anchor.reshard import snapshot_plan
            from verl_commeff.anchor.snapshot_delta import SnapshotDecoder

            reshard = self._anchor.reshard
            self._anchor.decoder = SnapshotDecoder(*snapshot_plan(reshard.shapes, reshard.actor, reshard.anchor,
                                                                  self.rank))
        if self._anchor.offload:
            engine.to("cpu", model=True, optimizer=True, grad=True)  # idle until the first fire

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def anchor_fire(self, fire_tick: int, source_tick: int, minibatch, snapshot: list) -> AnchorResult:
        """One fire on this rank (:meth:`_fire`); with state backups on, a host copy of the anchor's
        state right after it is kept for :meth:`anchor_state_backup` (or the fire's failure noted)."""
        state = self._require_setup()
        try:
            result = self._fire(fire_tick, source_tick, minibatch, snapshot)
        except BaseException:
            state.failed_fires.add(fire_tick)
            raise
        if backs_up_state(state.cfg.anchor):
            state.backups[fire_tick] = self.anchor_state_dict()
        return result

    def _fire(self, fire_tick: int, source_tick: int, minibatch, snapshot: list) -> AnchorResult:
        """One fire on this rank; see the module docstring for the steps.

        Args:
            fire_tick: the tick the actor needs the result at.
            source_tick: the replayed mini-batch's tick.
            minibatch: the whole global mini-batch (TensorDict in verl's no-padding layout,
                with the non-tensor keys the actor's ``update_actor`` got: ``global_batch_size``,
                ``temperature``, ...). Each rank takes its contiguous share.
            snapshot: per actor rank, that rank's encoded snapshot (an
                :class:`~verl_commeff.anchor.snapshot_delta.EncodedSnapshot`, a chain of them from a
                keyframe after a restart or resume, or plain shards), or a Ray ObjectRef to it.

        Returns:
            With as many anchor ranks as actor ranks, the AnchorResult for actor rank
            ``self.rank``; with fewer, a :class:`~verl_commeff.anchor.reshard.RoutedResults`
            over the actor ranks this rank owns.
        """
        state = self._anchor
        if state is None:
            raise RuntimeError("anchor_fire before anchor_setup")
        engine = self.actor.engine
        start = time.perf_counter()
        maybe_inject_fault(fire_tick)  # test-only; a no-op unless its environment variable is set

        # Step 1: the generator weights of the replayed mini-batch.
        if state.offload:
            from verl.utils.device import get_device_name

            engine.to(get_device_name(), model=True, optimizer=False, grad=True)
        load_local_shards(engine.module, _snapshot_shards(state, snapshot, self.rank))

        # Step 2: this rank's share of the mini-batch, through verl's forward/backward with the anchor loss.
        data = _share(resolve(minibatch), engine.get_data_parallel_rank(), engine.get_data_parallel_size())
        _inject_engine_keys(data, self.actor)
        loss_fn = _CountedLoss(state.loss_fn)
        with engine.train_mode(disable_auto_offload=False):  # leaving train mode releases the gradients
            engine.optimizer_zero_grad()
            scope = state.codec.pass_scope("anchor") if state.codec is not None else contextlib.nullcontext()
            with scope:
                engine.forward_backward_batch(data, loss_fn, forward_only=False)

            # Step 3: M = the target gradients (this rank's shards, DP-mean-reduced by FSDP).
            grads = [_local(p) for _, p in state.targets]

            # Step 4: the Q sketch at Q-refresh ticks (summed over the anchor's ranks).
            sketch, q_fingerprint = None, None
            if state.codec is not None:
                q_fingerprint = state.codec.live_basis.sum(dim=(1, 2))  # (B,) the Q this fire sketched against
            if state.codec is not None and state.schedule.q_refresh_at(fire_tick):
                sketch = state.codec.take_sketch()
                all_reduce_(sketch)

            # Step 5: M̄ ← EMA(M) unless M or the sketch is non-finite (AnchorEMA copies; the grads can go).
            sketch_ok = sketch is None or bool(torch.isfinite(sketch).all())  # replicated: same on every rank
            accepted = state.ema.try_update_(grads, finite=sketch_ok)
            m_bar = state.ema.m_bar
            evidence = None
            if accepted and state.probe is not None:  # Step 5b: what the merge did at the replayed tick
                state.probe.record_held(fire_tick, m_bar)
                dense = [g.detach().clone() for g in grads]  # D: the probe's pass overwrites the grads
                evidence = state.probe.evaluate(
                    source_tick, dense, lambda q: _through_codec(engine, data, loss_fn, state, q))
            engine.optimizer_zero_grad()
        if accepted and sketch is not None:  # the anchor's own Q follows the actor's
            state.codec.refresh(sketch, reduce=False)
            state.codec.activate_staged()
            if state.probe is not None:
                state.probe.record_basis(fire_tick, state.codec.live_basis)

        # Step 6: M̄ (or its signs) back to the actor; a colocated anchor gives the devices back.
        if state.offload:
            engine.to("cpu", model=True, optimizer=False, grad=True)
        if not accepted:
            rejected = AnchorResult(fire_tick, source_tick, None, None, compute_s=time.perf_counter() - start,
                                    backwards=loss_fn.backwards, rejected=True)
            return rejected if state.reshard is None else state.reshard.reject(rejected)
        if state.reshard is not None:  # A < N: each owned actor rank's M̄ in its own layout
            return state.reshard.results(m_bar, state.cfg.anchor.transport, AnchorResult(
                fire_tick, source_tick, None, sketch, compute_s=time.perf_counter() - start,
                backwards=loss_fn.backwards, q_fingerprint=q_fingerprint, ema_updates=state.ema.updates,
                dose_evidence=evidence))
        held, sent = _payload(m_bar, state.cfg.anchor.transport)
        # every anchor rank's fingerprint of what it sends (the actor's cross-rank check compares against it)
        fingerprints = gather_rows(fingerprint(sent)).cpu()  # (anchor world, 3)
        return AnchorResult(fire_tick, source_tick, held, sketch, compute_s=time.perf_counter() - start,
                            backwards=loss_fn.backwards, fingerprints=fingerprints, q_fingerprint=q_fingerprint,
                            ema_updates=state.ema.updates, dose_evidence=evidence)

    # ---- state: checkpoints and restarts -----------------------------------------------
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def anchor_state_dict(self) -> dict[str, Any]:
        """This rank's anchor state after every fire it has run: M̄'s EMA and the codec (host copies)."""
        from torch.utils._pytree import tree_map_only

        state = self._require_setup()
        out = {"ema": state.ema.state_dict(), "codec": None if state.codec is None else state.codec.state_dict(),
               "probe": None if state.probe is None else state.probe.state_dict()}
        # host copies: the trainer's process that saves them may have no device
        return tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), out)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    async def anchor_state_backup(self, fire_tick: int) -> dict[str, Any]:
        """This rank's :meth:`anchor_state_dict` right after fire ``fire_tick`` (``sync=free`` with restarts).

        The driver calls it after submitting the fire and keeps the futures: their values are owned
        by the driver's process, so they outlive this worker, and a restarted group continues from
        them. Ray does not keep an async actor's calls in submission order (this worker is one:
        verl's ``update_weights`` is async), so the state is copied by the fire itself and this
        waits for that copy (the event loop runs the fire meanwhile).

        Raises:
            RuntimeError: the fire failed on this rank (there is no state after it).
        """
        state = self._require_setup()
        while fire_tick not in state.backups:
            if fire_tick in state.failed_fires:
                state.failed_fires.discard(fire_tick)
                raise RuntimeError(f"anchor fire {fire_tick} failed on rank {self.rank}: no state to back up")
            await asyncio.sleep(_BACKUP_POLL_S)
        return state.backups.pop(fire_tick)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def anchor_result_to_host(self, results: list) -> AnchorResult:
        """Host copy of this rank's result of a fire (``results[r]``: a Ray ObjectRef), for a checkpoint.

        Queued after the fires submitted before it (the anchor runs its calls in order), so it
        also waits for that fire.
        """
        return resolve(results[self.rank]).to("cpu")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def anchor_load_state_dict(self, states: list) -> None:
        """Restore :meth:`anchor_state_dict` output; ``states[r]`` (or a Ray ObjectRef to it) is rank r's."""
        state = self._require_setup()
        mine = resolve(states[self.rank])
        if (mine["codec"] is None) != (state.codec is None):
            raise ValueError("anchor checkpoint and config disagree on whether the anchor runs a codec "
                             "(commeff.codec.enable / q_source)")
        ema = dict(mine["ema"])
        if ema["m_bar"] is not None:
            from verl.utils.device import get_device_name

            ema["m_bar"] = [t.to(get_device_name()) for t in ema["m_bar"]]  # where the fires' gradients are
        state.ema.load_state_dict(ema)
        if state.codec is not None:
            state.codec.load_state_dict(mine["codec"])
        if state.probe is not None and mine.get("probe") is not None:  # absent before issue 17
            from verl.utils.device import get_device_name

            state.probe.load_state_dict(mine["probe"], get_device_name())

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def anchor_adopt_basis(self, bases: torch.Tensor) -> None:
        """Make ``bases`` (B, H, r) the anchor codec's live Q (a restarted anchor takes the actor's newest Q)."""
        state = self._require_setup()
        if state.codec is not None:
            state.codec.stage_basis(bases)
            state.codec.activate_staged()
            if state.probe is not None:
                state.probe.reset_basis(state.codec.live_basis)

    def _require_setup(self) -> "_AnchorState":
        if self._anchor is None:
            raise RuntimeError("anchor state used before anchor_setup")
        return self._anchor


class _CountedLoss:
    """The anchor's loss function, counting the backward passes that really run through it.

    Each call (one micro-batch) hooks the loss it returns; the hook fires when autograd's
    backward reaches that loss, so :attr:`backwards` is the number of backward passes run,
    not an assumed one per fire.
    """

    def __init__(self, fn):
        self.fn, self.backwards = fn, 0

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        loss = out[0] if isinstance(out, tuple) else out
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.register_hook(self._count)
        return out

    def _count(self, grad):
        self.backwards += 1


class _AnchorState:
    def __init__(self, cfg, schedule, loss_fn, codec, ema, targets):
        from verl_commeff.anchor.snapshot_delta import SnapshotDecoder
        from verl_commeff.cpu_platform import is_cpu_platform

        self.decoder = SnapshotDecoder()  # this rank's shards as last decoded (the deltas' base), kept once

        self.cfg, self.schedule, self.loss_fn, self.codec, self.ema, self.targets = (
            cfg, schedule, loss_fn, codec, ema, targets)
        # host memory is the device on the CPU platform: nothing to offload there
        self.offload = cfg.anchor.placement == "colocated" and not is_cpu_platform()
        self.reshard: Optional["_Reshard"] = None  # set when the actor has more ranks than the anchor
        self.backups: dict[int, dict] = {}  # fire tick -> host copy of the state after it, until backed up
        self.failed_fires: set[int] = set()  # fires that raised here, until their backup call is told
        self.probe = None  # the dose probe (anchor.probe=on)


def backs_up_state(anchor_cfg) -> bool:
    """Whether the anchor's state is backed up after every fire: a restartable group (``sync=free``
    with ``max_restarts`` >= 1) continues its M̄ EMA and Q from the backup."""
    return anchor_cfg.sync == "free" and anchor_cfg.max_restarts > 0


def _local(p: torch.nn.Parameter) -> torch.Tensor:
    """This rank's local gradient of target ``p``.

    FSDP1 with ``use_orig_params`` gives a parameter with no elements in this rank's flat
    shard an empty view and ``grad=None``: its local M is the empty tensor, as the actor's
    local G is (:meth:`CommEffEngineMixin.optimizer_step`).
    """
    if p.grad is None:
        if local_view(p).numel() == 0:
            return p.detach().new_zeros(0)  # (0,)
        raise RuntimeError("anchor: a target parameter got no gradient (is it used by the forward?)")
    return local_view(p.grad)


def _through_codec(engine, data, loss_fn, state: "_AnchorState", bases) -> list[torch.Tensor]:
    """The dose probe's C: this rank's target gradients of the same loss and data with the boundary
    projection live through ``bases`` (the actor's Q at the replayed tick); D without a codec."""
    engine.optimizer_zero_grad()
    if state.codec is None or bases is None:
        scope = contextlib.nullcontext()
    else:
        scope = contextlib.ExitStack()
        scope.enter_context(state.codec.pass_scope("train"))  # projected; observes nothing (q_source=anchor)
        scope.enter_context(state.codec.live_basis_override(bases))
    with scope:
        engine.forward_backward_batch(data, loss_fn, forward_only=False)
    return [_local(p) for _, p in state.targets]


def _share(data, dp_rank: int, dp_size: int):
    """This DP rank's contiguous share of the global mini-batch (sizes must divide)."""
    n = data.shape[0]
    if n % dp_size != 0:
        raise ValueError(f"anchor mini-batch of {n} samples does not split over {dp_size} anchor ranks")
    per = n // dp_size
    return tu.index_select_tensor_dict(data, torch.arange(dp_rank * per, (dp_rank + 1) * per))


def _inject_engine_keys(data, training_worker) -> None:
    """The engine keys verl's ``TrainingWorker.train_batch`` injects before the engine runs."""
    engine = training_worker.engine
    defaults = dict(
        use_remove_padding=training_worker.model_config.get("use_remove_padding", False),
        use_dynamic_bsz=engine.engine_config.use_dynamic_bsz,
        max_token_len_per_gpu=engine.engine_config.max_token_len_per_gpu,
        micro_batch_size_per_gpu=engine.engine_config.micro_batch_size_per_gpu,
        use_fused_kernels=engine.engine_config.use_fused_kernels,
    )
    for key, value in defaults.items():
        if key not in data.keys():
            tu.assign_non_tensor(data, **{key: value})


# ---- an anchor smaller than the actor (A < N, FSDP2): Step 1 and Step 6 -----------------------
class _Reshard:
    """What an anchor rank needs to serve N > A actor ranks (see :mod:`verl_commeff.anchor.reshard`).

    Args:
        actor, anchor: the two groups' row layouts.
        shapes: every parameter's global shape, module order (for the snapshots).
        routing: the targets' result routing (for M̄).
    """

    def __init__(self, actor, anchor, shapes, routing):
        self.actor, self.anchor, self.shapes, self.routing = actor, anchor, shapes, routing

    def reject(self, rejected: AnchorResult):
        """A rejected fire: the same (M̄-less) result for every owned actor rank."""
        from verl_commeff.anchor.reshard import RoutedResults

        return RoutedResults({r: rejected for r in self.routing.owned})

    def results(self, m_bar, transport: str, template: AnchorResult):
        """Each owned actor rank's result: its M̄ shard (or signs), fingerprints per actor rank, put once.

        Steps:
            1. Split M̄ into the owned actor ranks' shards (collective when rows move).
            2. What each is sent: fp32 shards, or PackedSigns of exactly that shard.
            3. Fingerprints: row r filled by r's owner, summed over the anchor group: (N, 3).
            4. One ``ray.put`` per owned actor rank (by value when Ray is not running).
        """
        import dataclasses

        from verl_commeff.anchor.reshard import RoutedResults
        from verl_commeff.workers.weight_shards import publish

        # Step 1: the owned actor ranks' shards.
        split = self.routing.split([local_view(m) for m in m_bar])
        # Step 2: what each is sent.
        held, sent = {}, {}
        for r, shards in split.items():
            held[r], sent[r] = _payload(shards, transport)
        # Step 3: fingerprints, row = actor rank.
        device = m_bar[0].device
        table = torch.zeros(self.routing.actor_world, 3, dtype=torch.float64, device=device)  # (N, 3)
        for r in split:
            table[r] = fingerprint(sent[r]).to(device)
        fingerprints = all_reduce_(table).cpu()  # (N, 3): each row filled by exactly one owner
        # Step 4: one object per actor rank.
        return RoutedResults({r: publish(dataclasses.replace(template, m_bar=held[r], fingerprints=fingerprints))
                              for r in split})


def _payload(m_bar, transport: str) -> tuple[Any, list[torch.Tensor]]:
    """(what the actor holds, the tensors sent) for one actor rank's M̄ shards: packed sign
    bits (``transport=sign``) or copies of the fp32 shards."""
    if transport == "sign":
        from verl_commeff.mergers.sign_bits import pack_signs

        held = pack_signs(m_bar)
        return held, held.bits
    copies = [m.detach().clone() for m in m_bar]
    return copies, copies


def _reshard_plan(worker: AnchorWorker, actor_world: Optional[int]) -> Optional[_Reshard]:
    """The reshard plan when the actor has more ranks than the anchor, else None.

    Raises:
        ValueError: the anchor is bigger than the actor, the strategy is not FSDP2 (FSDP1's
            flat-parameter shards do not split by rows), or the anchor's own mesh is not 1-D.
    """
    from verl_commeff.anchor.reshard import ResultRouting, RowLayout, fsdp2_layout

    anchor_world = worker.world_size
    if actor_world is None or actor_world == anchor_world:
        return None
    if actor_world < anchor_world:
        raise ValueError(f"anchor_setup: {anchor_world} anchor ranks for {actor_world} actor ranks: the anchor "
                         "group must not be larger than the actor's (commeff.anchor.n_gpus_per_node × nnodes)")
    strategy = worker.config.actor.strategy
    if strategy != "fsdp2":
        raise ValueError(f"anchor_setup: an anchor of {anchor_world} ranks for {actor_world} actor ranks needs "
                         f"actor_rollout_ref.actor.strategy=fsdp2 (got {strategy!r}): FSDP1 flat-parameter shards do "
                         "not reshard by rows; give the anchor the actor's world size")
    module = worker.actor.engine.module
    params = list(module.parameters())
    anchor = RowLayout.of(params[0])
    if anchor.mesh_shape != (anchor_world,):
        raise ValueError(f"anchor_setup: the anchor's FSDP2 mesh is {anchor.mesh_shape}, a smaller anchor needs a 1-D "
                         f"mesh of its {anchor_world} ranks (actor_rollout_ref.actor.fsdp_config.fsdp_size: -1 or "
                         f">= {anchor_world})")
    fsdp_size = worker.config.actor.get("fsdp_config", {}).get("fsdp_size", -1)
    actor = fsdp2_layout(actor_world, fsdp_size)
    targets = worker._anchor.targets
    routing = ResultRouting([p.shape for _, p in targets], actor, anchor, worker.rank)
    return _Reshard(actor, anchor, [p.shape for p in params], routing)


def _snapshot_shards(state: "_AnchorState", snapshot, rank: int) -> list:
    """This anchor rank's weight shards from the per-actor-rank snapshot entries.

    The decoder keeps one copy of this rank's shards, the deltas' base. Each needed actor
    rank's entry (actor rank ``rank``'s with A = N; those covering its rows with A < N, always
    the same ones, so each stream stays in order) is applied to its rows, bit-exactly; the
    kept shards are returned (``load_local_shards`` copies from them).
    """
    from verl_commeff.anchor.snapshot_delta import decode_source

    shards = None
    for source in ([rank] if state.reshard is None else state.decoder.sources):
        shards = decode_source(state.decoder, snapshot[source], source, resolve)
    return shards
