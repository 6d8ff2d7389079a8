"""What the ``hf`` rollout accepts: rollout-config checks and per-request sampling parameters.

Everything the backend cannot honour raises :class:`UnsupportedRolloutOption` (a
``ValueError``) naming the option, its value and the override that fixes it. Nothing
is dropped silently.

Per-request sampling parameters arrive as the dict verl's agent loop builds
(``verl/experimental/agent_loop/agent_loop.py``, ``generate_sequences``):
``temperature``, ``top_p``, ``top_k``, ``repetition_penalty`` and ``logprobs`` (a bool,
from ``rollout.calculate_log_probs``). Greedy decoding is ``temperature=0`` (what verl
sends for validation with the default ``val_kwargs``) or ``do_sample=False``. There is no
``max_tokens``: the budget comes from ``rollout.response_length`` and
``rollout.prompt_length`` the same way verl's vLLM server computes it. ``seed`` is a
per-request sampling seed (vLLM's meaning); :mod:`verl_commeff.rollout.agent_loop` sends
one derived from the trajectory, and the server derives one when a request has none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = [
    "LOGPROBS_MODES",
    "SamplingSpec",
    "UnsupportedRolloutOption",
    "check_model_config",
    "check_rollout_config",
    "parse_sampling_params",
    "request_seed",
    "response_budget",
    "sampling_seed",
]

# vLLM's names (``rollout.logprobs_mode``): "processed" = after repetition penalty, temperature,
# top-k and top-p (the distribution the token was drawn from); "raw" = the model's logits.
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits")

_SAMPLING_KEYS = frozenset(
    {"temperature", "top_p", "top_k", "repetition_penalty", "logprobs", "do_sample", "ignore_eos",
     "max_tokens", "max_new_tokens", "seed"}
)


class UnsupportedRolloutOption(ValueError):
    """A rollout option or request that the ``hf`` backend does not implement."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dataclass, DictConfig or dict."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    getter = getattr(cfg, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(cfg, key, default)


def check_rollout_config(config: Any) -> None:
    """Reject rollout options that the ``hf`` backend cannot honour.

    Args:
        config: ``actor_rollout_ref.rollout`` (a verl ``RolloutConfig`` or DictConfig).

    Raises:
        UnsupportedRolloutOption: listing every unsupported option at once.
    """
    prefix = "actor_rollout_ref.rollout."
    problems = []
    for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
        value = _get(config, key, 1)
        if value != 1:
            problems.append(f"{prefix}{key}={value}: the hf backend runs one whole model per actor rank; set it to 1")
    ep = _get(config, "expert_parallel_size", 1)
    if ep not in (None, 1):
        problems.append(f"{prefix}expert_parallel_size={ep}: expert parallelism is not supported; set it to 1")
    if _get(config, "quantization") is not None:
        problems.append(f"{prefix}quantization={_get(config, 'quantization')!r}: not supported; set it to null")
    if _get(config, "enable_rollout_routing_replay", False):
        problems.append(f"{prefix}enable_rollout_routing_replay=True: router replay is not supported")
    mtp = _get(config, "mtp")
    if mtp is not None and _get(mtp, "enable", False) and _get(mtp, "enable_rollout", False):
        problems.append(f"{prefix}mtp.enable_rollout=True: speculative decoding is not supported")
    disaggregation = _get(config, "disaggregation")
    if disaggregation is not None and _get(disaggregation, "enabled", False):
        problems.append(f"{prefix}disaggregation.enabled=True: prefill/decode disaggregation is not supported")
    prometheus = _get(config, "prometheus")
    if prometheus is not None and _get(prometheus, "enable", False):
        problems.append(f"{prefix}prometheus.enable=True: the hf servers export no metrics endpoint")
    mode = _get(config, "logprobs_mode", "processed_logprobs")
    if mode not in LOGPROBS_MODES:
        problems.append(f"{prefix}logprobs_mode={mode!r}: must be one of {LOGPROBS_MODES}")
    if problems:
        raise UnsupportedRolloutOption("rollout.name=hf does not support: " + "; ".join(problems))


def check_model_config(model_config: Any) -> None:
    """Reject model options whose weights the ``hf`` backend cannot receive.

    Args:
        model_config: ``actor_rollout_ref.model`` (a verl ``HFModelConfig`` or DictConfig).

    Raises:
        UnsupportedRolloutOption: for LoRA without merging (verl would send adapter weights).
    """
    lora = _get(model_config, "lora") or {}
    if (_get(model_config, "lora_rank", 0) or 0) > 0 and not _get(lora, "merge", False):
        raise UnsupportedRolloutOption(
            "rollout.name=hf does not support: LoRA adapter weight sync "
            f"(actor_rollout_ref.model.lora_rank={_get(model_config, 'lora_rank')}); "
            "set actor_rollout_ref.model.lora.merge=True so verl sends merged full weights"
        )


@dataclass(frozen=True)
class SamplingSpec:
    """How one request is decoded; requests with equal specs can share a ``generate`` batch.

    Attributes:
        greedy: argmax decoding (``temperature == 0`` or ``do_sample=False``).
        temperature: softmax temperature (1.0 when greedy).
        top_k: keep the k most likely tokens; 0 disables (verl's ``-1``).
        top_p: nucleus threshold; 1.0 disables.
        repetition_penalty: Hugging Face/vLLM repetition penalty; 1.0 disables.
        logprobs: return one log-prob per generated token.
        ignore_eos: keep generating after end-of-sequence tokens.
    """

    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    logprobs: bool
    ignore_eos: bool

    def generation_kwargs(self) -> dict[str, Any]:
        """The ``transformers.GenerationConfig`` fields for this spec (sampling ones only when sampling)."""
        kwargs: dict[str, Any] = {"do_sample": not self.greedy, "repetition_penalty": self.repetition_penalty}
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs

    def greedy_generation_kwargs(self) -> dict[str, Any]:
        """The ``GenerationConfig`` fields of a greedy search that keeps this spec's repetition penalty.

        Seeded sampling runs ``generate`` greedily with :meth:`warpers` and a noise processor instead.
        """
        return {"do_sample": False, "repetition_penalty": self.repetition_penalty}

    def warpers(self) -> list:
        """Temperature, top-k and top-p as ``transformers`` logits processors, in ``generate``'s sampling order.

        Only the active ones, as ``generate`` does with ``do_sample=True`` (``min_tokens_to_keep=1``).
        """
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if self.greedy:
            return []
        warpers = []
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return warpers


def parse_sampling_params(params: Mapping[str, Any], ignore_eos: bool = False) -> tuple[SamplingSpec, Optional[int]]:
    """Turn verl's per-request sampling dict into a :class:`SamplingSpec`.

    Args:
        params: the ``sampling_params`` dict a server's ``generate`` receives.
        ignore_eos: ``rollout.ignore_eos``, used when the request does not say.

    Returns:
        The spec and the request's explicit token budget (``max_tokens``/``max_new_tokens``),
        or ``None`` when it has none.

    Raises:
        UnsupportedRolloutOption: for keys or values the backend does not implement.
    """
    unknown = sorted(set(params) - _SAMPLING_KEYS)
    if unknown:
        raise UnsupportedRolloutOption(
            f"rollout.name=hf does not support sampling params {unknown}; supported: {sorted(_SAMPLING_KEYS)}"
        )
    temperature = float(params.get("temperature", 1.0))
    if temperature < 0:
        raise UnsupportedRolloutOption(f"temperature={temperature} must be >= 0 (0 means greedy)")
    top_k = params.get("top_k", -1)
    top_k = 0 if top_k is None or int(top_k) <= 0 else int(top_k)
    top_p = float(params.get("top_p", 1.0))
    if not 0.0 < top_p <= 1.0:
        raise UnsupportedRolloutOption(f"top_p={top_p} must be in (0, 1]")
    greedy = temperature == 0.0 or not bool(params.get("do_sample", True))
    spec = SamplingSpec(
        greedy=greedy,
        temperature=1.0 if greedy else temperature,
        top_k=0 if greedy else top_k,
        top_p=1.0 if greedy else top_p,
        repetition_penalty=float(params.get("repetition_penalty", 1.0) or 1.0),
        logprobs=bool(params.get("logprobs", False)),
        ignore_eos=bool(params.get("ignore_eos", ignore_eos)),
    )
    budget = params.get("max_tokens", params.get("max_new_tokens"))
    return spec, None if budget is None else int(budget)


def sampling_seed(params: Mapping[str, Any]) -> Optional[int]:
    """The request's own sampling seed (``sampling_params["seed"]``), or None.

    Raises:
        UnsupportedRolloutOption: for a seed that is not a non-negative integer.
    """
    seed = params.get("seed")
    if seed is None:
        return None
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise UnsupportedRolloutOption(f"sampling param seed={seed!r} must be a non-negative integer")
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise UnsupportedRolloutOption(f"sampling param seed={seed} must be in [0, 2**63)")
    return seed


def request_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (their ``repr``), stable across processes and runs.

    Python's ``hash`` is salted per process (``PYTHONHASHSEED``), so SHA-256 is used instead.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def response_budget(
    prompt_len: int, prompt_length: int, response_length: int, max_model_len: int, requested: Optional[int] = None
) -> int:
    """Maximum new tokens for one request, computed like verl's vLLM server does.

    Args:
        prompt_len: tokens in this request's prompt.
        prompt_length: ``rollout.prompt_length``.
        response_length: ``rollout.response_length``.
        max_model_len: the context window (``rollout.max_model_len`` or the model's maximum).
        requested: an explicit ``max_tokens`` from the request, if any.

    Returns:
        A budget in ``[1, max_model_len - prompt_len]``.

    Raises:
        ValueError: when the prompt leaves no room to generate.
    """
    room = max_model_len - prompt_len
    if room < 1:
        raise ValueError(
            f"prompt of {prompt_len} tokens leaves no room to generate within max_model_len={max_model_len}"
        )
    budget = requested if requested is not None else min(response_length, prompt_length + response_length - prompt_len)
    return max(1, min(budget, room))
