"""A tiny Qwen2-architecture causal LM and a BPE tokenizer with a chat template, built locally.

The tokenizer is trained with ``tokenizers`` on generated GSM8K-format text, so prompts
and answers tokenize into short sequences; the model is a randomly initialised
``Qwen2ForCausalLM`` saved with ``save_pretrained``. Both load through the ordinary
``from_pretrained`` path verl uses for real checkpoints.
"""

from __future__ import annotations

import os
import random

__all__ = ["TINY_QWEN2", "build_tiny_model"]

# hidden 64, 4 decoder layers: small enough for a 2-core CPU, deep enough for 2+ pipeline stages.
TINY_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# Qwen's chat template shape (ChatML), which verl's chat-template path expects.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(n: int, seed: int, difficulty=None) -> list[str]:
    from verl_commeff.presets.gsm8k_synth import DIFFICULTIES, INSTRUCTION, make_problem

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, solution, _ = make_problem(rng, difficulty or DIFFICULTIES["easy"])
        out.append(f"{question} {INSTRUCTION}\n{solution}")
    return out


def build_tiny_model(out_dir: str, vocab_size: int = 512, seed: int = 0, difficulty=None, **overrides) -> str:
    """Write a tiny Qwen2 model + tokenizer to ``out_dir`` (a Hugging Face model directory).

    Args:
        out_dir: target directory (created).
        vocab_size: model vocabulary (≥ the tokenizer's size).
        seed: seeds the tokenizer corpus and the model initialisation.
        difficulty: the :class:`~verl_commeff.presets.gsm8k_synth.Difficulty` of the
            tokenizer's training text (default: ``easy``).
        **overrides: Qwen2Config fields replacing :data:`TINY_QWEN2`'s.

    Returns:
        ``out_dir``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 16,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(2000, seed, difficulty), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    hf_tok.chat_template = _CHAT_TEMPLATE
    hf_tok.padding_side = "left"
    if len(hf_tok) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({len(hf_tok)} tokens)")
    hf_tok.save_pretrained(out_dir)

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
        **{**TINY_QWEN2, **overrides},
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir
