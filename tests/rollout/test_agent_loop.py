"""The seeded single-turn agent loop: one stable, distinct sampling seed per trajectory (no Ray, no model)."""

import asyncio

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from verl_commeff.rollout.agent_loop import SEEDED_AGENT_LOOP, SeededSingleTurnAgentLoop, trajectory_seed

FIELDS = {"uid": "s00000001-p000003", "index": 17, "global_steps": 1, "session_id": 0}


def test_registered_in_verls_agent_loop_registry():
    assert _agent_loop_registry[SEEDED_AGENT_LOOP]["_target_"].endswith("SeededSingleTurnAgentLoop")


def test_seed_is_stable_and_differs_per_session_prompt_step_and_rollout_seed():
    seed = trajectory_seed(42, FIELDS)
    assert seed == trajectory_seed(42, {**FIELDS, "index": np.int64(17), "raw_prompt": ["ignored"]})
    others = [trajectory_seed(42, {**FIELDS, "session_id": 1}), trajectory_seed(42, {**FIELDS, "uid": "x"}),
              trajectory_seed(42, {**FIELDS, "global_steps": 2}), trajectory_seed(7, FIELDS)]
    assert len({seed, *others}) == 5 and all(0 <= s < 2**63 for s in (seed, *others))


@pytest.mark.parametrize("name,temperature,seeded", [("hf", 1.0, True), ("hf", 0.0, False), ("vllm", 1.0, False)])
def test_run_adds_the_seed_to_sampled_hf_requests_only(monkeypatch, name, temperature, seeded):
    sent = {}

    async def verl_run(self, sampling_params, **kwargs):
        sent.update(sampling_params)

    monkeypatch.setattr(SingleTurnAgentLoop, "run", verl_run)
    loop = object.__new__(SeededSingleTurnAgentLoop)
    loop.rollout_config = OmegaConf.create({"name": name, "seed": 42})
    params = {"temperature": temperature, "top_p": 1.0}
    asyncio.run(loop.run(params, **FIELDS))
    assert params == {"temperature": temperature, "top_p": 1.0}  # the caller's dict is not modified
    assert sent.get("seed") == (trajectory_seed(42, FIELDS) if seeded else None)
