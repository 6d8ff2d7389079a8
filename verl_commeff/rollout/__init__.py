"""``rollout.name=hf``: a verl 0.9.1 rollout backend that generates with Hugging Face ``transformers``.

It needs no vLLM or SGLang and runs wherever verl's platform puts it (the CPU platform of
:mod:`verl_commeff.cpu_platform`, or an accelerator). It plugs in like verl's own server
backends:

* :mod:`~verl_commeff.rollout.registration`: the ``hf`` entries in verl's rollout registries;
* :mod:`~verl_commeff.rollout.replica`: ``HFReplica`` (trainer side) launches one server per actor rank;
* :mod:`~verl_commeff.rollout.server`: ``HFRolloutServer``, the Ray actor the agent loop calls;
* :mod:`~verl_commeff.rollout.generation`: ``HFGenerator``, batched ``model.generate`` and weight loading;
* :mod:`~verl_commeff.rollout.adapter`: ``HFServerAdapter`` (worker side) receives the actor's
  weights after every update and forwards them to the server;
* :mod:`~verl_commeff.rollout.options`: what is supported, and the errors for what is not.

Select it with ``actor_rollout_ref.rollout.name=hf`` and
``actor_rollout_ref.rollout.tensor_model_parallel_size=1``.
"""

from verl_commeff.rollout.registration import HF_ROLLOUT_NAME, register_hf_rollout

__all__ = ["HF_ROLLOUT_NAME", "register_hf_rollout"]
