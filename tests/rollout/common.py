"""Shared helpers for the ``hf`` rollout tests: configs and independent Hugging Face expectations."""

from __future__ import annotations

import json
import os
import shutil

import torch

from tests.verl_harness import compose_ppo_config

RESPONSE_LENGTH = 10
PROMPT_LENGTH = 48

# Prompts of different lengths (batched generation left-pads them).
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100, 7, 230, 31]]


def hf_rollout_overrides(*extra: str) -> tuple[str, ...]:
    """Hydra overrides that select the hf rollout for the tiny model on CPU in fp32."""
    return (
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.dtype=float32",
        f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
        f"actor_rollout_ref.rollout.prompt_length={PROMPT_LENGTH}",
        *extra,
    )


def compose(model_dir: str, *extra: str):
    """verl's ppo_trainer config with the hf rollout selected."""
    return compose_ppo_config(model_dir, extra=hf_rollout_overrides(*extra))


def load_hf(model_dir: str):
    """The checkpoint as a plain fp32 Hugging Face model (the independent reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos: list[int]) -> list[int]:
    """Direct batch-of-one greedy ``model.generate``, cut after the first end-of-sequence token."""
    ids = torch.tensor([prompt])  # (1, P)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=model.config.pad_token_id)
    tokens = out[0, len(prompt):].tolist()
    end = next((i for i, t in enumerate(tokens) if t in eos), None)
    return tokens if end is None else tokens[: end + 1]


@torch.no_grad()
def hf_token_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) of a plain forward over prompt+tokens, at each generated token: (len(tokens),)."""
    ids = torch.tensor([prompt + tokens])  # (1, P+R)
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # (R, V)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)  # (R,)


def perturbed_state_dict(model, seed: int = 1, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """The model's weights plus Gaussian noise (a stand-in for an actor update)."""
    g = torch.Generator().manual_seed(seed)
    return {name: t + scale * torch.randn(t.shape, generator=g) for name, t in model.state_dict().items()}


def with_extra_eos(model_dir: str, out_dir: str, extra_eos: int) -> str:
    """Copy a model directory and add ``extra_eos`` to its generation_config end-of-sequence ids."""
    shutil.copytree(model_dir, out_dir)
    path = os.path.join(out_dir, "generation_config.json")
    with open(path) as f:
        gen = json.load(f)
    eos = gen.get("eos_token_id")
    gen["eos_token_id"] = sorted({*([eos] if isinstance(eos, int) else eos or []), extra_eos})
    with open(path, "w") as f:
        json.dump(gen, f)
    return out_dir


def first_new_token(tokens: list[int], start: int = 2) -> tuple[int, int]:
    """(index, token) of the first token at or after ``start`` that did not occur before it."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return i, tokens[i]
    raise AssertionError(f"no fresh token in {tokens}")
