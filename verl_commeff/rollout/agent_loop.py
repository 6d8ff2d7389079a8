"""``seeded_single_turn_agent``: verl's single-turn agent loop with one sampling seed per trajectory.

verl 0.9.1's agent loop sends the rollout server nothing that identifies a trajectory:
``request_id`` is a fresh uuid per call (or ``det-<priority>`` with ``rollout.full_determinism``,
and the v1 trainer sets no priority, so every request gets ``det-0``), and the ``rollout.n``
sessions of one prompt send identical requests. A server that derives seeds itself can only
count identical prompts in arrival order, and arrival order is not reproducible (tokenisation
runs in a thread pool).

This loop adds ``sampling_params["seed"]`` (vLLM's per-request seed) derived from
``rollout.seed`` and what the agent loop worker hands every trajectory: the prompt's ``uid``,
its dataset ``index``, the batch's ``global_steps`` and the ``session_id`` (``0..n-1``). With
:class:`verl_commeff.trainer.commeff_trainer.CommEffTrainer`, whose uids are a function of
(step, position), the seed is reproducible across reruns and resumes; with verl's random uids
it is still unique per trajectory. Greedy requests get no seed.

Select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=seeded_single_turn_agent``.
Only the ``hf`` backend reads the seed; for other backends the request is passed on unchanged.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from verl_commeff.rollout.options import request_seed

__all__ = ["SEEDED_AGENT_LOOP", "SeededSingleTurnAgentLoop", "trajectory_seed"]

SEEDED_AGENT_LOOP = "seeded_single_turn_agent"

# The per-trajectory fields verl's agent loop workers pass as keyword arguments (v1 TransferQueue path:
# uid, index, global_steps, session_id; DataProto path: uid, index, priority).
_KEY_FIELDS = ("uid", "index", "global_steps", "session_id", "priority")


def trajectory_seed(rollout_seed: int, fields: dict[str, Any]) -> int:
    """The sampling seed of one trajectory: a hash of ``rollout.seed`` and its identifying fields.

    Args:
        rollout_seed: ``actor_rollout_ref.rollout.seed``.
        fields: the agent loop's keyword arguments; the ones in ``_KEY_FIELDS`` that are present count.

    Returns:
        A seed in ``[0, 2**63)``.
    """
    parts = tuple((name, _plain(fields[name])) for name in _KEY_FIELDS if name in fields)
    return request_seed(int(rollout_seed), *parts)


def _plain(value: Any) -> Any:
    """numpy scalars and tensors as Python values, so that ``repr`` is stable."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", 0) == 0 else value


@register(SEEDED_AGENT_LOOP)
class SeededSingleTurnAgentLoop(SingleTurnAgentLoop):
    """verl's :class:`SingleTurnAgentLoop` that sends a per-trajectory ``seed`` to an ``hf`` server."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        """Add the trajectory's seed to sampling requests, then run verl's single-turn loop.

        Args:
            sampling_params: verl's sampling dict; not modified.
            **kwargs: the trajectory's fields (see :func:`trajectory_seed`) and the prompt.
        """
        params = dict(sampling_params)
        sampled = float(params.get("temperature", 1.0)) > 0
        if sampled and self.rollout_config.name == "hf" and "seed" not in params:
            params["seed"] = trajectory_seed(self.rollout_config.seed, kwargs)
        return await super().run(params, **kwargs)
