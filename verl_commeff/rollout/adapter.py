"""The in-worker half of the ``hf`` rollout: verl's ``BaseRollout`` that pushes actor weights to the server.

verl builds it inside every ``ActorRolloutRefWorker`` with a rollout role
(``engine_workers.py``, ``init_model``: ``get_rollout_class(name, mode)(config=...,
model_config=..., device_mesh=...)``). After each actor update the sync trainer's
``CheckpointEngineManager`` (backend ``naive``) calls ``ActorRolloutRefWorker.update_weights``,
which does ``resume(["weights"])``, then ``update_weights(engine.get_per_tensor_param(), ...)``,
then ``resume(["kv_cache"])``. This class is that ``rollout`` object.

Weight path: the generator yields full ``(hf_name, tensor)`` pairs (an FSDP collective, so
every rank consumes it). Each rank leads its own replica (TP=1), stages the tensors in host
memory in buckets of ``rollout.checkpoint_engine.update_weights_bucket_megabytes`` and
sends each bucket to its server actor through Ray's object store. That is a shared-memory
transfer on one node, the same kind of path verl's vLLM adapter falls back to when
``is_ipc_supported()`` is False (as on the CPU platform); it does not use CUDA IPC.
"""

from __future__ import annotations

import os
from typing import Any, Generator, Optional

import torch
from verl.workers.rollout.base import BaseRollout

from verl_commeff.rollout.options import UnsupportedRolloutOption, check_model_config, check_rollout_config
from verl_commeff.rollout.server import server_actor_name

__all__ = ["HFServerAdapter"]


class HFServerAdapter(BaseRollout):
    """Drives this rank's :class:`verl_commeff.rollout.server.HFRolloutServer` from the actor worker.

    Args:
        config: ``actor_rollout_ref.rollout``.
        model_config: ``actor_rollout_ref.model``.
        device_mesh: verl's rollout device mesh (unused: no tensor parallelism).
        replica_rank: the replica this rank serves; by default its global rank (one rank per replica).
    """

    def __init__(self, config: Any, model_config: Any, device_mesh: Any = None, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        check_rollout_config(self.config)
        check_model_config(self.model_config)
        if replica_rank < 0:
            replica_rank = (
                torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))
            )
        self.replica_rank = replica_rank
        self.is_leader_rank = True  # every rank is the single rank of its replica
        self.bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20
        self._server = None

    @property
    def server(self):
        """This replica's server actor (looked up lazily: servers start after the workers)."""
        if self._server is None:
            import ray

            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        """Bring back ``weights`` and/or ``kv_cache`` on the server (with ``free_cache_engine``).

        Args:
            tags: subset of ``["weights", "kv_cache"]``.
        """
        if self.config.free_cache_engine:
            await self.server.wake_up.remote(tags=tags)

    async def release(self):
        """Put the server to sleep (with ``free_cache_engine``)."""
        if self.config.free_cache_engine:
            await self.server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        *,
        peft_config: Optional[dict] = None,
        base_sync_done: bool = True,
        global_steps: Optional[int] = None,
    ):
        """Send the actor's full weights to the server, in host-memory buckets.

        Args:
            weights: ``(hf_name, tensor)`` pairs (sync or async iterable), e.g. from
                ``engine.get_per_tensor_param()``; consumed completely.
            wire_format: must be ``"named_tensors"``.
            peft_config: must be None (LoRA adapters are not supported unless merged).
            base_sync_done: verl's LoRA flag; irrelevant for full weights.
            global_steps: trainer step of these weights, reported with later responses.

        Raises:
            UnsupportedRolloutOption: for delta wire formats or LoRA adapter payloads.
        """
        from verl.workers.rollout.utils import ensure_async_iterator

        if wire_format != "named_tensors":
            raise UnsupportedRolloutOption(
                f"rollout.name=hf receives full weights only (wire_format={wire_format!r}); "
                "use actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise UnsupportedRolloutOption(
                "rollout.name=hf cannot load LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        server, bucket, size, first = self.server, [], 0, True
        async for name, tensor in ensure_async_iterator(weights):
            host = tensor.detach().to("cpu", copy=True)  # staging copy: the source may be reused or freed
            if bucket and size + host.nbytes > self.bucket_bytes:
                await server.update_weights.remote(bucket, first=first, last=False)
                bucket, size, first = [], 0, False
            bucket.append((name, host))
            size += host.nbytes
        await server.update_weights.remote(bucket, first=first, last=True, global_steps=global_steps)
