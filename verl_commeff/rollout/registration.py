"""Register the ``hf`` rollout in verl's two rollout registries (run in every process by the plugin).

* ``verl.workers.rollout.base._ROLLOUT_REGISTRY``: ``(name, mode) -> class path`` that
  ``get_rollout_class`` reads when an actor worker builds its rollout (worker process).
  verl 0.9.1 offers no function to add to it, so the entry is added to the dict itself.
* ``verl.workers.rollout.replica.RolloutReplicaRegistry``: ``name -> loader`` that
  ``get_rollout_replica_class`` reads when the trainer launches servers (trainer process).

Both are keyed by ``actor_rollout_ref.rollout.name``; verl's ``RolloutConfig`` accepts any
name, so ``rollout.name=hf`` needs nothing else. Only the registries are imported here;
the backend's modules load when verl asks for them.

It also adds the ``seeded_single_turn_agent`` agent loop (:mod:`verl_commeff.rollout.agent_loop`)
to verl's agent-loop registry, which the agent loop workers read.
"""

from __future__ import annotations

__all__ = ["HF_ROLLOUT_NAME", "register_hf_rollout"]

HF_ROLLOUT_NAME = "hf"
_ADAPTER_PATH = "verl_commeff.rollout.adapter.HFServerAdapter"


def _load_replica():
    from verl_commeff.rollout.replica import HFReplica

    return HFReplica


def register_hf_rollout() -> None:
    """Make ``actor_rollout_ref.rollout.name=hf`` resolvable by verl (idempotent)."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(HF_ROLLOUT_NAME, "async")] = _ADAPTER_PATH
    RolloutReplicaRegistry.register(HF_ROLLOUT_NAME, _load_replica)
    import verl_commeff.rollout.agent_loop  # noqa: F401  -- registers seeded_single_turn_agent


register_hf_rollout()
