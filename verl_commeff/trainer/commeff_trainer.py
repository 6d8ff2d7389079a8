"""``trainer.v1.trainer_mode=commeff``: verl's v1 sync trainer with the comm-eff actor and the anchor.

:class:`CommEffTrainer` is registered in verl's trainer registry. It behaves as verl's
``sync`` trainer (same replay buffer, same weight sync after every update) and adds:

- the actor (and hybrid actor/rollout) worker is
  :class:`~verl_commeff.workers.actor_worker.CommEffActorRolloutRefWorker`, configured
  after ``init_model`` with the ``commeff`` node;
- an anchor worker group (:class:`~verl_commeff.anchor.worker.AnchorWorker`) on its own
  resource pool (``placement=separate``) or on the actor's (``colocated``);
- at every actor update, the :class:`~verl_commeff.trainer.anchor_driver.AnchorDriver`
  submits the fires whose mini-batch is in this step and hands their futures to the actor;
- ``actor/commeff/*`` worker metrics are logged as ``commeff/*``, with the driver's
  ``commeff/anchor/*`` and the byte ledger's totals over every path
  (:mod:`verl_commeff.ledger`);
- ``trainer.v1.sampler.sampler_kwargs.poll_interval`` sets the replay buffer's poll interval
  (verl's is a fixed 2 s per step);
- on a CPU-only Ray cluster the resource check counts CPUs (verl's counts GPUs only);
- reproducible batches (:class:`~verl_commeff.trainer.reproducible.ReproducibleBatchesMixin`):
  step-derived prompt uids, sampled batches in dataloader order, ``rollout.do_sample=False`` honoured.

With ``commeff.enable=false`` it is verl's sync trainer with the stock actor.
"""

from __future__ import annotations

import logging
import os

import ray
import torch
from verl.single_controller.ray import RayWorkerGroup
from verl.single_controller.ray.base import ResourcePoolManager
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_commeff.clock import ticks_per_step
# A module reference, not its names: ``import verl_commeff.config`` as a process's first import
# loads verl, whose plugin imports this module while the config module is still executing.
import verl_commeff.config as commeff_config
from verl_commeff.ledger import ledger_totals
from verl_commeff.schedule import FireSchedule
from verl_commeff.trainer.anchor_driver import AnchorDriver, tick_minibatches
from verl_commeff.trainer.reproducible import ReproducibleBatchesMixin
from verl_commeff.trainer.anchor_group import anchor_resource_pool, build_anchor_group, restart_anchor_group
from verl_commeff.workers.weight_shards import resolve

logger = logging.getLogger(__name__)

__all__ = ["CommEffTrainer", "HostResourcePoolManager"]

ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)
DRIVER_STATE = "commeff_driver.pt"


class HostResourcePoolManager(ResourcePoolManager):
    """verl's ``ResourcePoolManager`` whose availability check counts the platform's resource.

    verl's counts only ``GPU``/``NPU``; on the CPU platform the pools are CPU bundles.
    """

    def _check_resource_available(self):
        from verl.plugin.platform import get_platform

        resource = get_platform().ray_resource_name()
        available = sum(n.get(resource, 0) for n in ray._private.state.available_resources_per_node().values())
        required = sum(sum(p) for p in self.resource_pool_spec.values())
        if available < required:
            raise ValueError(f"Ray has {available:g} {resource} available, the resource pools need {required}")


@register_trainer("commeff")
class CommEffTrainer(ReproducibleBatchesMixin, PPOTrainerSync):
    """verl's sync trainer with the comm-eff actor and the asynchronous anchor worker group."""

    def __init__(self, config):
        super().__init__(config)
        # A new trainer_mode name switches on verl's async code paths: this trainer is sync.
        self.trainer_mode = "sync"
        self.parameter_sync_step = 1
        self.replay_buffer = self._build_replay_buffer()
        # verl's replay buffer sleeps poll_interval (2 s) between checks for finished rollouts, which is
        # most of a tiny step; it is a constructor argument only, so honour sampler_kwargs.poll_interval.
        poll = config.trainer.v1.sampler.get("sampler_kwargs", {}).get("poll_interval")
        if poll is not None:
            if not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0:
                raise ValueError(f"trainer.v1.sampler.sampler_kwargs.poll_interval={poll!r}: must be a number > 0")
            self.replay_buffer.poll_interval = float(poll)

        self.commeff_cfg = commeff_config.to_commeff_config(config.get("commeff"))  # absent in the drop-in form: defaults
        actor = config.actor_rollout_ref.actor
        self.commeff_ticks_per_step = ticks_per_step(
            int(config.data.train_batch_size), int(actor.ppo_mini_batch_size), int(actor.ppo_epochs))
        self.commeff_schedule = FireSchedule(self.commeff_cfg.anchor.delay_k, self.commeff_cfg.anchor.cadence,
                                             self.commeff_ticks_per_step, self.commeff_cfg.q_cadence)
        self._anchor_on = self.commeff_cfg.enable and self.commeff_cfg.anchor.enable
        if self._anchor_on and actor.shuffle:
            raise commeff_config.CommEffConfigError(
                "commeff.anchor needs actor_rollout_ref.actor.shuffle=False: the driver reconstructs each tick's "
                "mini-batch for the anchor from verl's unshuffled mini-batch order")
        self.anchor_wg = None
        self.anchor_driver = None
        self._commeff_step = 0
        self._commeff_resume = None  # driver state read by _load_checkpoint, applied once the driver exists
        self._anchor_resume = None  # the anchor's state and drained results, likewise
        self._anchor_failed_seen = 0.0  # commeff/anchor/failed_fires as of the last restart check
        self._anchor_restarts = 0
        self._anchor_pool = None
        self._anchor_gave_up = False

    # ---- workers and pools -------------------------------------------------------------
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if self.commeff_cfg.enable:
            from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

            for role in ACTOR_ROLES:
                if role in self.role_worker_mapping:
                    self.role_worker_mapping[role] = ray.remote(CommEffActorRolloutRefWorker)
        from verl_commeff.cpu_platform import is_cpu_platform

        if is_cpu_platform():
            from verl_commeff.platform_probe import check_ray_has_no_accelerators

            check_ray_has_no_accelerators()  # an auto-selected CPU platform must not take over a GPU cluster
            mgr = self.resource_pool_manager
            self.resource_pool_manager = HostResourcePoolManager(
                resource_pool_spec=mgr.resource_pool_spec, mapping=mgr.mapping)

    def _setup(self):
        super()._setup()
        if not self.commeff_cfg.enable:
            return
        self.actor_rollout_wg.commeff_setup(self.commeff_cfg, self.commeff_ticks_per_step)
        if self._anchor_on:
            self.anchor_wg = self._build_anchor_group()
            self.anchor_driver = AnchorDriver(
                self.commeff_schedule,
                take_snapshot=self.actor_rollout_wg.commeff_snapshot,  # non-blocking: futures the anchor resolves
                submit=lambda *job: self.anchor_wg.anchor_fire(*job),  # the group of the moment (restarts)
                offer=self.actor_rollout_wg.commeff_offer,
                put=ray.put,  # each fire's mini-batch: one object the whole anchor group reads
                keyframe_every=self.commeff_cfg.anchor.snapshot_keyframe_every,
                # sync=free restarts a failed group: back up the anchor's state after each fire so the
                # new group continues its M̄ EMA (on the anchor's host, owned by this process)
                backup=(lambda fire: self.anchor_wg.anchor_state_backup(fire)) if self._anchor_restartable() else None,
            )
            if self._commeff_resume is not None:
                self.anchor_driver.load_state_dict(self._commeff_resume, put=ray.put)  # each payload put once
                self.anchor_driver.resubmit_pending(self._restore_anchor(self._anchor_resume))

    def _anchor_restartable(self) -> bool:
        from verl_commeff.anchor.worker import backs_up_state

        return backs_up_state(self.commeff_cfg.anchor)

    def _build_anchor_group(self, name_prefix: str = "commeff_anchor") -> RayWorkerGroup:
        if self._anchor_pool is None:  # a restarted group reuses the pool: its bundles are free again
            role = next(r for r in ACTOR_ROLES if r in self.role_worker_mapping)
            self._anchor_pool = anchor_resource_pool(
                self.commeff_cfg.anchor, self.resource_pool_manager.get_resource_pool(role),
                self.actor_rollout_wg.world_size, self.config.actor_rollout_ref.actor.strategy)
        return build_anchor_group(self._anchor_pool, self.config.actor_rollout_ref, self.commeff_cfg,
                                  self.commeff_ticks_per_step, self.config.trainer.device, name_prefix,
                                  actor_world=self.actor_rollout_wg.world_size)

    def _restore_anchor(self, saved) -> dict:
        """Load the anchor's checkpointed state; the drained results of its pending fires, as futures."""
        if not saved or saved.get("states") is None:
            return {}  # a checkpoint without the anchor's state: every pending fire runs again
        states = [ray.put(s) for s in saved["states"]]
        self.anchor_wg.anchor_load_state_dict(states)
        if self._anchor_restartable():  # the state after the last fire submitted: a restart's fallback
            self.anchor_driver.note_backup(self.anchor_driver.last_fire, states)
        return {fire: [ray.put(r) for r in results] for fire, results in saved["results"].items()}

    def _check_anchor(self, metrics: dict) -> None:
        """sync=free: rebuild the anchor group after a failed fire (up to ``anchor.max_restarts`` times)."""
        failed = metrics.get("commeff/anchor/failed_fires", 0.0)
        metrics["commeff/anchor/restarts"] = float(self._anchor_restarts)
        if failed <= self._anchor_failed_seen:
            return
        self._anchor_failed_seen = failed
        limit = self.commeff_cfg.anchor.max_restarts
        if self.commeff_cfg.anchor.sync != "free" or self._anchor_restarts >= limit:
            if not self._anchor_gave_up:  # once: afterwards commeff/anchor/failed_fires counts on
                logger.warning("commeff: anchor fires failed (%g so far); not restarting the anchor group "
                               "(%d of commeff.anchor.max_restarts=%d used): the actor continues on the held M̄",
                               failed, self._anchor_restarts, limit)
            self._anchor_gave_up = True
            return
        self._anchor_restarts += 1
        logger.warning("commeff: anchor fires failed (%g so far): restarting the anchor group (%d of %d)",
                       failed, self._anchor_restarts, limit)
        prefix = f"commeff_anchor_r{self._anchor_restarts}"
        try:
            self.anchor_wg, restored = restart_anchor_group(
                self.anchor_wg, lambda: self._build_anchor_group(prefix), self.actor_rollout_wg,
                self.anchor_driver.restore_points())
        except Exception:
            logger.exception("commeff: the anchor group could not be restarted; the actor continues on the held M̄")
            return
        if restored is None:
            logger.warning("commeff: the restarted anchor group starts with an empty M̄ EMA (no readable backup)")
        else:
            logger.warning("commeff: the restarted anchor group continues the M̄ EMA and Q of fire %d", restored)
        self.anchor_driver.resubmit_pending()
        metrics["commeff/anchor/restarts"] = float(self._anchor_restarts)

    # ---- the actor update --------------------------------------------------------------
    def _step_minibatches(self, batch) -> list:
        """This step's per-tick global mini-batches: the kept ones, None for the others (fetched only if one is kept)."""
        tps = self.commeff_ticks_per_step
        first = self._commeff_step * tps - tps + 1
        if not any(self.commeff_schedule.retains(t) for t in range(first, first + tps)):
            return [None] * tps
        import transfer_queue as tq
        from verl.utils import tensordict_utils as tu

        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id)
        tu.assign_non_tensor(data, **{k: v for k, v in batch.extra_info.items() if not isinstance(v, dict)})
        actor, n = self.config.actor_rollout_ref.actor, self.config.actor_rollout_ref.rollout.n
        return tick_minibatches(data, self.actor_rollout_wg.world_size, actor.ppo_mini_batch_size * n,
                                actor.ppo_epochs, keep=lambda i: self.commeff_schedule.retains(first + i))

    def _update_actor(self, batch, metrics):
        if not self.commeff_cfg.enable:
            return super()._update_actor(batch, metrics)
        self._commeff_step += 1
        if self.anchor_driver is not None:
            actor = self.config.actor_rollout_ref.actor
            batch.extra_info.update({  # what verl's _update_actor puts there, needed by the anchor's loss
                "global_batch_size": actor.ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n,
                "temperature": self.config.actor_rollout_ref.rollout.temperature,
                "calculate_entropy": actor.calculate_entropy or actor.entropy_coeff != 0.0,
            })
            codec = self.commeff_cfg.codec
            if self._commeff_step == 1 and codec.enable and codec.q_source == "anchor" and codec.init == "activations":
                # the actor's first Q came from its first old-log-prob batch: the anchor sketches against it too
                self.anchor_wg.anchor_adopt_basis(self.actor_rollout_wg.commeff_newest_basis()[0])
            self.anchor_driver.before_update(self._commeff_step, self._step_minibatches(batch))
        out = super()._update_actor(batch, metrics)
        for key in [k for k in metrics if k.startswith("actor/commeff/")]:
            metrics[key[len("actor/"):]] = metrics.pop(key)
        if self.anchor_driver is not None:
            unconsumed = set().union(*self.actor_rollout_wg.commeff_unconsumed_fires())  # late sync=free fires
            self.anchor_driver.after_update(self._commeff_step * self.commeff_ticks_per_step, unconsumed)
            metrics.update(self.anchor_driver.metrics())
            self._check_anchor(metrics)
        metrics.update(ledger_totals(metrics))  # the actor's paths (mean over ranks) and the driver's
        return out

    # ---- checkpointing -----------------------------------------------------------------
    def _save_checkpoint(self, *args, **kwargs):
        out = super()._save_checkpoint(*args, **kwargs)
        if self.commeff_cfg.enable:
            path = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            os.makedirs(path, exist_ok=True)
            state = {"step": self._commeff_step, "anchor_failed_seen": self._anchor_failed_seen,
                     "anchor_restarts": self._anchor_restarts}
            if self.anchor_driver is not None:
                # snapshots are chains of ObjectRefs of this run (a non-blocking call's ref to a ref) that
                # share their keyframe and earlier deltas: each payload is fetched and stored once
                state["driver"] = self.anchor_driver.state_dict(fetch=resolve)
                state["anchor"] = self._anchor_checkpoint()
            torch.save(state, os.path.join(path, DRIVER_STATE))
        return out

    def _anchor_checkpoint(self) -> dict:
        """Drain the pending fires, then the anchor's state after them (resume is exact on the anchor side).

        The anchor runs its fires in order, so after the pending fires' results are in, its
        M̄ EMA and codec Q are the state the next fire of an uninterrupted run would start
        from; the results themselves are saved so the resumed run consumes them as they are.
        If a pending fire failed or the anchor is dead, no anchor state is saved (a warning
        says so): a resume then reruns the pending fires on a fresh anchor.
        """
        results, states = {}, None
        try:
            for fire, futures in sorted(self.anchor_driver.pending_futures().items()):
                results[fire] = self.anchor_wg.anchor_result_to_host(list(futures))  # host copies, per rank
            states = self.anchor_wg.anchor_state_dict()
        except ray.exceptions.RayError as error:
            logger.warning("commeff: the anchor's state is not in this checkpoint (%s: %s); a resume reruns "
                           "its pending fires from a fresh anchor", type(error).__name__, error)
            results = {}
        return {"results": results, "states": states}

    def _load_checkpoint(self):
        # verl calls this inside _setup, before the anchor driver exists: keep the state for _setup.
        out = super()._load_checkpoint()
        if self.commeff_cfg.enable and self.global_steps > 0:
            path = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}",
                                DRIVER_STATE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"resuming a commeff run without its driver state {path}")
            state = torch.load(path, weights_only=False)
            self._commeff_step = state["step"]
            self._commeff_resume = state.get("driver")
            self._anchor_resume = state.get("anchor")
            self._anchor_failed_seen = state.get("anchor_failed_seen", 0.0)
            self._anchor_restarts = state.get("anchor_restarts", 0)
        return out
