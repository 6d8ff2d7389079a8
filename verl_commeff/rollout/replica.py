"""The trainer-side half of the ``hf`` rollout: verl's ``RolloutReplica`` that launches the server actors.

verl's ``LLMServerManager`` (trainer process) builds one replica per
``tp*dp*pp`` actor ranks, i.e. one per rank here, and calls ``init_hybrid(worker_group)``,
which hands it its fused actor worker and awaits :meth:`HFReplica.launch_servers`. The
server actor is pinned to that worker's node and, on an accelerator, told the worker's
device id (it keeps the node's visible devices via ``RAY_EXPERIMENTAL_NOSET_*``, like
verl's vLLM and SGLang servers), so actor and rollout share the device and take turns
through sleep/wake-up.

Only that hybrid (colocated ``actor_rollout``) mode is implemented; the standalone and
separate-process colocated modes (fully async trainers, reward/teacher models) need a
non-naive checkpoint engine and raise ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Optional

import ray
from verl.workers.rollout.replica import RolloutMode, RolloutReplica

from verl_commeff.rollout.options import check_rollout_config
from verl_commeff.rollout.server import HFRolloutServer, server_actor_name

__all__ = ["HFReplica"]


def _worker_location(worker) -> tuple[str, str, Optional[str]]:
    """Run inside an actor worker: its node id, node IP and accelerator id (None on the host)."""
    from verl.utils.device import get_resource_name

    context = ray.get_runtime_context()
    ids = context.get_accelerator_ids().get(get_resource_name()) or []
    if len(ids) > 1:
        raise ValueError(f"an hf rollout server shares one device with its actor rank, which holds {ids}")
    return context.get_node_id(), ray.util.get_node_ip_address(), str(ids[0]) if ids else None


class HFReplica(RolloutReplica):
    """One ``hf`` rollout replica: a single :class:`HFRolloutServer` next to one actor rank.

    Args:
        replica_rank: rank of this replica.
        config: ``actor_rollout_ref.rollout``.
        model_config: ``actor_rollout_ref.model``.
        gpus_per_node: devices per node (verl's argument; unused with one rank per replica).
        is_reward_model: serving a generative reward model (not supported).
        is_teacher_model: serving a distillation teacher (not supported).
        name_suffix: appended to the server actor name.
    """

    def __init__(self, replica_rank: int, config, model_config, gpus_per_node: int = 8,
                 is_reward_model: bool = False, is_teacher_model: bool = False, name_suffix: str = ""):
        super().__init__(replica_rank, config, model_config, gpus_per_node, is_reward_model, is_teacher_model,
                         name_suffix)
        check_rollout_config(self.config)

    async def init_hybrid_colocated(self, worker_group, resource_pool) -> None:
        """Not implemented: raises before any resource is allocated."""
        raise NotImplementedError(self._only_hybrid("hybrid_colocated"))

    async def init_colocated(self, resource_pool) -> None:
        """Not implemented: raises before any resource is allocated."""
        raise NotImplementedError(self._only_hybrid("colocated"))

    async def init_standalone(self) -> None:
        """Not implemented: raises before any resource is allocated."""
        raise NotImplementedError(self._only_hybrid("standalone"))

    def _only_hybrid(self, mode: str) -> str:
        return (f"rollout.name=hf supports only the hybrid actor_rollout mode of the sync trainer "
                f"(init_hybrid), not {mode} (fully async trainers, reward or teacher models)")

    async def launch_servers(self) -> None:
        """Start this replica's server actor next to its actor worker and wait until the model is loaded."""
        if self.rollout_mode != RolloutMode.HYBRID or self.is_reward_model or self.is_teacher_model:
            raise NotImplementedError(self._only_hybrid(f"{self.rollout_mode} (reward_model={self.is_reward_model}, "
                                                        f"teacher_model={self.is_teacher_model})"))
        if len(self.workers) != 1:
            raise ValueError(f"an hf replica serves exactly one actor rank, got {len(self.workers)} workers")
        from verl.plugin.platform import get_platform

        node_id, node_ip, accelerator_id = await self.workers[0].__ray_call__.remote(_worker_location)
        platform = get_platform()
        env_vars = {**{name: "1" for name in platform.ray_noset_envvars()}, **platform.rollout_env_vars()}
        server = ray.remote(HFRolloutServer).options(
            name=server_actor_name(self.replica_rank, self.name_suffix),
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id,
                                                                                             soft=False),
            runtime_env={"env_vars": env_vars},
            max_concurrency=self.max_concurrency,
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank,
                 accelerator_id=accelerator_id)
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        # A unique routing key, not an HTTP endpoint: the hf server speaks only token-in/token-out.
        self._server_address = f"hf-replica-{self.replica_rank}{self.name_suffix}@{node_ip}"
