"""The plugin's actor worker: verl's ``ActorRolloutRefWorker`` with the comm-eff engine.

verl builds the actor's ``TrainingWorker`` from the class attribute
``ActorRolloutRefWorker.actor_worker_cls``; the reference model is built from
``ref_worker_cls`` and stays stock. :class:`CommEffTrainingWorker` swaps the class of the
engine verl's ``EngineRegistry`` just built for the same class with
:class:`~verl_commeff.workers.engine.CommEffEngineMixin` in front. The swap happens in
``__init__``, before ``reset()`` builds the model, and adds no instance state, so verl's
engine code runs unchanged.

The trainer configures the actor after ``init_model`` with the ONE_TO_ALL call
:meth:`CommEffActorRolloutRefWorker.commeff_setup`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from verl_commeff.workers.engine import commeff_engine_class

__all__ = ["CommEffActorRolloutRefWorker", "CommEffTrainingWorker"]


class CommEffTrainingWorker(TrainingWorker):
    """verl's ``TrainingWorker`` whose engine carries the comm-eff circuit."""

    def __init__(self, config):
        super().__init__(config)
        # One class swap on a freshly constructed engine (model not built yet): see the module docstring.
        self.engine.__class__ = commeff_engine_class(type(self.engine))


class CommEffActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with the comm-eff actor."""

    actor_worker_cls = CommEffTrainingWorker

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def commeff_setup(self, commeff_config: Any, ticks_per_step: int) -> None:
        """Build the comm-eff state on every actor rank.

        Args:
            commeff_config: the ``commeff`` node (DictConfig/dict or a ``CommEffConfig``).
            ticks_per_step: optimizer steps per global step (see :mod:`verl_commeff.clock`).
        """
        from verl_commeff.config import CommEffConfig, to_commeff_config

        if self.actor is None:
            raise RuntimeError(f"commeff_setup on a worker with role={self.role!r}: it has no actor")
        cfg = commeff_config if isinstance(commeff_config, CommEffConfig) else to_commeff_config(commeff_config)
        self.actor.engine.commeff_setup(cfg, ticks_per_step)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def commeff_snapshot(self, keyframe: bool = False):
        """This rank's generator-weight shards, delta-encoded, put in Ray's object store once; returns that ObjectRef.

        Called by the trainer at the start of a step whose mini-batches the replay ring keeps
        (before ``update_actor``), so the snapshot is the weights the rollout sampled with.
        Non-blocking: the trainer gets at once, per rank, a ref to the ref returned here (Ray
        stores only that small ref; the payload is put once, here) and hands them on to the
        anchor, which resolves both levels. The rank runs its calls in order, so the snapshot
        is taken before the ``update_actor`` submitted after it.

        The payload is an :class:`~verl_commeff.anchor.snapshot_delta.EncodedSnapshot` in
        ``commeff.anchor.snapshot_dtype``: a delta against this rank's previous snapshot, or a
        dense keyframe (the first one, every ``snapshot_keyframe_every``, or ``keyframe=True``:
        the driver asks for one after an anchor restart or a resume). It is encoded where the
        weights live (on a GPU: on the device, no full host copy) and only the payload goes to
        the host (:meth:`~verl_commeff.anchor.snapshot_delta.EncodedSnapshot.to_host`).

        Its bytes are counted in this step's ``commeff/bytes/anchor_snapshot/sent``; the seconds
        this method takes (encode, copy and put) in ``commeff/anchor/snapshot_s``.
        """
        import time

        import ray
        import torch

        from verl_commeff.workers.weight_shards import live_shards

        start = time.perf_counter()
        commeff = self.actor.engine.commeff
        with torch.no_grad():
            payload = self._commeff_snapshot_encoder().encode(live_shards(self.actor.engine.module), keyframe=keyframe)
        payload = payload.to_host()
        commeff.record_snapshot(payload)
        ref = ray.put(payload)
        commeff.record_snapshot_time(time.perf_counter() - start)
        return ref

    def _commeff_snapshot_encoder(self):
        """This rank's snapshot encoder (made at the first snapshot; it keeps the deltas' base)."""
        encoder = getattr(self, "_snapshot_encoder", None)
        if encoder is None:
            from verl_commeff.anchor.snapshot_delta import SnapshotEncoder, resolve_snapshot_dtype

            knob = self.actor.engine.commeff.cfg.anchor.snapshot_dtype
            dtype = resolve_snapshot_dtype(knob, _param_dtype(self.actor.engine))
            encoder = self._snapshot_encoder = SnapshotEncoder(dtype)
        return encoder

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def commeff_newest_basis(self):
        """The codec's newest Q (staged if one waits, else live), (B, H, r) on the host; None without a codec."""
        codec = self.actor.engine.commeff.codec
        if codec is None:
            return None
        newest = codec.staged_basis if codec.staged_basis is not None else codec.live_basis
        return newest.detach().cpu().clone()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def commeff_unconsumed_fires(self) -> list[int]:
        """The fires offered to this rank that it has not consumed yet (taken, dropped or failed)."""
        return self.actor.engine.commeff.unconsumed_fires()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def commeff_offer(self, fire_tick: int, result_refs: list) -> None:
        """Hand fire ``fire_tick``'s anchor results (one ObjectRef per anchor rank) to this rank.

        An anchor of A <= N ranks: this rank's result comes from its owner anchor rank
        (:func:`~verl_commeff.anchor.reshard.owner_of`), which holds it for this rank alone.
        """
        from verl_commeff.anchor.reshard import owner_of

        owner = owner_of(self.rank, len(result_refs), self.world_size)  # ValueError unless 1 <= A <= N
        self.actor.engine.commeff.offer(RayPendingResult(fire_tick, result_refs[owner], anchor_rank=owner,
                                                         actor_rank=self.rank))


def _param_dtype(engine):
    """The dtype the actor's FSDP forward casts its parameters to (verl's default: bf16)."""
    import torch
    from verl.utils.torch_dtypes import PrecisionType

    mixed = getattr(getattr(engine, "engine_config", None), "mixed_precision", None)
    return torch.bfloat16 if mixed is None else PrecisionType.to_dtype(mixed.get("param_dtype", "bf16"))


class RayPendingResult:
    """An anchor result still in Ray: ``wait(timeout)`` says whether it is there, ``get`` fetches it.

    ``get(timeout=0)`` polls (None when not ready), ``get(None)`` waits; fetching is
    ``ray.get`` (the transfer and deserialisation), resolving a ref to a ref as well. The
    actor state prefetches with ``get(0)`` at every tick and moves the result to the
    gradients' device itself. A dead anchor worker or an exception in its fire surfaces as
    :class:`~verl_commeff.workers.actor_state.AnchorFailure` (not Ray's own error types),
    so the actor state decides: ``sync=free`` continues, ``sync=strict`` stops.
    """

    def __init__(self, fire_tick: int, ref, anchor_rank: int, actor_rank: Optional[int] = None):
        self.fire_tick = fire_tick
        self.anchor_rank = anchor_rank
        self.actor_rank = anchor_rank if actor_rank is None else actor_rank
        self._ref = ref

    def wait(self, timeout: Optional[float]) -> bool:
        """Whether the result (or its failure) is there within ``timeout`` seconds, without fetching it."""
        import ray

        with self._as_anchor_failure():
            ready, _ = ray.wait([self._ref], timeout=timeout, fetch_local=False)
        return bool(ready)

    def get(self, timeout: Optional[float]):
        """The result, fetched (None if not there within ``timeout``; None = wait)."""
        import ray

        if timeout is not None and not self.wait(timeout):
            return None
        from verl_commeff.anchor.reshard import take_routed

        with self._as_anchor_failure():
            result = take_routed(ray.get(self._ref), self.actor_rank)  # only this rank's bytes (A < N)
        return result  # the actor state moves it to the gradients' device (a resumed run's are on the host)

    @contextlib.contextmanager
    def _as_anchor_failure(self):
        import ray

        from verl_commeff.workers.actor_state import AnchorFailure

        try:
            yield
        except ray.exceptions.RayError as error:
            cause = "its worker died" if isinstance(error, ray.exceptions.RayActorError) else "the fire raised"
            raise AnchorFailure(self.fire_tick, self.anchor_rank, f"{cause} ({type(error).__name__}: "
                                f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from error
