"""The anchor worker group: where it is placed and how it is (re)built.

:func:`build_anchor_group` creates the :class:`~verl_commeff.anchor.worker.AnchorWorker`
group on its own resource pool (``placement=separate``) or on the actor's
(``colocated``), then runs ``init_model`` and ``anchor_setup`` on it. Anchor rank r is
created in the bundle of actor rank r (colocated) or in bundle r of its own pool. Its own
pool may be smaller than the actor's, down to one device (FSDP2): one slow anchor serving
N actor ranks, resharding snapshots and results by rows (:mod:`verl_commeff.anchor.reshard`).

:class:`AnchorWorkerGroup` is verl's ``RayWorkerGroup`` with one change: the task that
looks up the group's torch.distributed master address/port asks Ray for no CPU. verl
schedules it with Ray's default of one CPU inside bundle 0 of the pool. In the actor's
own pool that bundle is already held by the actor's worker; on the CPU platform a bundle
has exactly one CPU (verl sets the device resource, here ``CPU``, to 1) and the actor's
worker holds ``1/max_colocate_count`` of it, so the one-CPU lookup task can never be
placed and the colocated group waited forever (issue 10, item 1). The lookup only binds
a socket to find a free port, so it needs no reserved CPU on any platform.

:func:`restart_anchor_group` replaces a failed group (``sync=free``, ``anchor.max_restarts``),
continuing the old group's M̄ EMA and Q from the driver's backups.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.single_controller.ray.base import get_master_addr_port

import verl_commeff.config as commeff_config  # a module reference: the plugin may load this while config is mid-import

logger = logging.getLogger(__name__)

__all__ = ["AnchorWorkerGroup", "anchor_resource_pool", "build_anchor_group", "ensure_pool_fits", "restart_anchor_group"]


class AnchorWorkerGroup(RayWorkerGroup):
    """verl's ``RayWorkerGroup`` whose master address/port lookup reserves no CPU (module docstring)."""

    def _get_master_addr_port(self, pg, bundle_index=0, master_port_range=None):
        if self._master_addr is None and self._master_port is None:
            strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle_index)
            self._master_addr, self._master_port = ray.get(
                get_master_addr_port.options(num_cpus=0, scheduling_strategy=strategy).remote(
                    master_port_range=master_port_range))
        else:
            super()._get_master_addr_port(pg, bundle_index, master_port_range)


def anchor_resource_pool(anchor_cfg: Any, actor_pool: RayResourcePool, actor_world: int,
                         strategy: str = "fsdp2") -> RayResourcePool:
    """The pool the anchor group runs on: its own (``separate``) or the actor's (``colocated``).

    Args:
        anchor_cfg: ``commeff.anchor``.
        actor_pool: the actor's pool (``colocated``).
        actor_world: the actor's world size N.
        strategy: ``actor_rollout_ref.actor.strategy`` (the anchor's too).

    Raises:
        CommEffConfigError: a separate pool of more devices than the actor's world size, or
            of fewer with ``strategy=fsdp`` (FSDP1's flat-parameter shards do not reshard by rows).
    """
    if anchor_cfg.placement == "colocated":
        return actor_pool
    anchor_world = anchor_cfg.n_gpus_per_node * anchor_cfg.nnodes
    if not 1 <= anchor_world <= actor_world:
        raise commeff_config.CommEffConfigError(
            f"commeff.anchor.n_gpus_per_node × nnodes = {anchor_world} must be between 1 and the actor's world "
            f"size {actor_world}: the anchor reshards the actor's shards for a group of its size or smaller")
    if anchor_world != actor_world and strategy != "fsdp2":
        raise commeff_config.CommEffConfigError(
            f"commeff.anchor.n_gpus_per_node × nnodes = {anchor_world} differs from the actor's world size "
            f"{actor_world}, which needs actor_rollout_ref.actor.strategy=fsdp2 (got {strategy!r}): FSDP1's "
            "flat-parameter shards do not reshard by rows; give the anchor the actor's world size")
    from verl_commeff.cpu_platform import is_cpu_platform

    pool = RayResourcePool(process_on_nodes=[anchor_cfg.n_gpus_per_node] * anchor_cfg.nnodes,
                           use_gpu=not is_cpu_platform(), max_colocate_count=1, name_prefix="commeff_anchor")
    ensure_pool_fits(pool, anchor_cfg.placement_timeout_s)
    return pool


def ensure_pool_fits(pool: RayResourcePool, timeout_s: float) -> None:
    """Fail with a clear error if Ray cannot grant ``pool`` within ``timeout_s`` (issue 11, item 4).

    verl creates a pool's placement groups and waits for them without a limit, so a cluster
    without room for the anchor's own pool hung silently. This asks Ray for the same bundles
    (one placement group per node, STRICT_PACK, as verl does), waits at most ``timeout_s``
    and gives them back; verl then creates its own.

    Raises:
        CommEffConfigError: the bundles were not granted in time; the message names them and
            the cluster's free resources.
    """
    from ray.util.placement_group import placement_group, remove_placement_group
    from verl.utils.device import get_resource_name

    bundle = {"CPU": pool.max_colocate_count}
    if pool.use_gpu:
        bundle[get_resource_name()] = 1
    groups = [placement_group([dict(bundle) for _ in range(count)], strategy="STRICT_PACK") for count in pool._store]
    try:
        granted = all(group.wait(timeout_seconds=timeout_s) for group in groups)
    finally:
        for group in groups:
            remove_placement_group(group)
    if not granted:
        asked = " + ".join(f"{count} × {bundle}" for count in pool._store)
        free = {k: v for k, v in ray.available_resources().items() if k in bundle}
        raise commeff_config.CommEffConfigError(
            f"commeff.anchor.placement=separate: Ray could not grant the anchor's own pool ({asked}, one node each) "
            f"within commeff.anchor.placement_timeout_s={timeout_s:g}s; free now: {free}. Give the cluster more "
            "devices, lower commeff.anchor.n_gpus_per_node × nnodes (down to 1), or use "
            "commeff.anchor.placement=colocated")


def build_anchor_group(pool: RayResourcePool, actor_config: Any, commeff_cfg: Any, ticks_per_step: int,
                       device_name: str, name_prefix: str = "commeff_anchor",
                       actor_world: int | None = None) -> AnchorWorkerGroup:
    """Create the anchor workers on ``pool``, build their model and their anchor state.

    Args:
        pool: from :func:`anchor_resource_pool`.
        actor_config: the ``actor_rollout_ref`` node (the anchor is built like the actor).
        commeff_cfg: the whole ``CommEffConfig``.
        ticks_per_step: optimizer steps per global step.
        device_name: ``trainer.device``.
        name_prefix: Ray actor name prefix (a restarted group needs a new one).
        actor_world: the actor's world size (None: the anchor's own); a larger one makes the
            anchor reshard (``anchor_setup``).
    """
    from verl_commeff.anchor.worker import AnchorWorker

    wg = AnchorWorkerGroup(
        resource_pool=pool,
        ray_cls_with_init=RayClassWithInitArgs(cls=ray.remote(AnchorWorker), config=actor_config),
        device_name=device_name,
        name_prefix=name_prefix,
    )
    wg.init_model()
    wg.anchor_setup(commeff_cfg, ticks_per_step, actor_world)
    return wg


def restart_anchor_group(old: RayWorkerGroup, rebuild: Callable[[], RayWorkerGroup], actor_wg: Any,
                         restore_points: Sequence[tuple[int, Sequence[Any]]] = ()) -> tuple[RayWorkerGroup, Optional[int]]:
    """Replace a failed anchor group with a fresh one that continues the old one's M̄ EMA and Q.

    Steps:
        1. Kill the old group's workers (the dead ones are gone; live ones give their
           resources back).
        2. Build the new group (``rebuild``: :func:`build_anchor_group` with a new name prefix).
        3. Load the newest restore point whose backup every rank can read
           (:meth:`~verl_commeff.trainer.anchor_driver.AnchorDriver.restore_points`: the old
           anchor's state after a fire, Ray objects owned by the trainer, which outlive the old
           workers): M̄'s EMA and count and the codec's Q continue from there.
        4. Without one (no backup, or none readable), the actor's newest Q becomes the new
           anchor's live Q (``q_source=anchor``: the next sketch must start from the basis the
           actor holds, not the bootstrap one) and the EMA starts empty: the first fire after
           the restart sets M̄ = M.

    Returns:
        (the new group, the fire whose state it continues from or None); the caller resubmits
        the pending fires to it.
    """
    # Step 1: the old workers go.
    for worker in old.workers:
        ray.kill(worker, no_restart=True)
    # Step 2: a new group.
    new = rebuild()
    # Step 3: the old anchor's state after the newest fire it can continue from.
    for fire, futures in restore_points:
        try:
            new.anchor_load_state_dict(list(futures))  # each rank reads its own; a lost one raises before loading
        except ray.exceptions.RayError as error:
            logger.warning("commeff: the anchor's state backup after fire %d is unreadable (%s); trying an older one",
                           fire, type(error).__name__)
            continue
        return new, fire
    # Step 4: no backup: the actor's newest Q, an empty EMA.
    bases = actor_wg.commeff_newest_basis()[0]
    if bases is not None:
        new.anchor_adopt_basis(bases)
    return new, None
