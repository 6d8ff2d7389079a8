"""Tiny in-process Qwen2 models and capture hooks shared by the codec tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from verl_commeff.config import CodecConfig

HIDDEN = 64
VOCAB = 128


def tiny_qwen2(num_layers: int = 4, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised fp32 Qwen2 (hidden 64, vocab 128) in eval mode (no dropout anyway)."""
    config = Qwen2Config(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).float()


def token_batch(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=gen)


def codec_config(rank: int = 8, pp_size: int = 2, q_source: str = "fast", seed: int = 0,
                 init: str = "random") -> CodecConfig:
    return CodecConfig(rank=rank, pp_size=pp_size, q_source=q_source, seed=seed, init=init)


class Capture:
    """Forward hooks recording a layer's output tensor on every call (``retain_grad`` optional).

    Running BEFORE the codec's hook (registered earlier, or ``first=True``) it sees the raw h;
    after, the projected ĥ.
    """

    def __init__(self, layer: torch.nn.Module, retain_grad: bool = False, first: bool = False):
        self.outputs: list[torch.Tensor] = []
        self.retain_grad = retain_grad
        self.handle = layer.register_forward_hook(self._hook, prepend=first)

    def _hook(self, module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        if self.retain_grad and hidden.requires_grad:
            hidden.retain_grad()
        self.outputs.append(hidden)

    def remove(self):
        self.handle.remove()
