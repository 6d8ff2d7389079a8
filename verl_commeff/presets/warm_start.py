"""Warm start for the learnable tiny preset: a short supervised fine-tune to a partial skill.

A randomly initialised tiny model scores 0 on every problem, so GRPO has no signal. This
module fine-tunes it with plain next-token loss on worked solutions of generated problems
(prompt tokens masked out) and stops as soon as its *sampled* accuracy (temperature 1,
the distribution GRPO trains on) on held-out problems reaches ``target_accuracy``: the
policy then solves part of the problems, and reinforcement learning has headroom.

Like an instruct model meeting GSM8K's format for the first time, the warm-started policy
only sometimes writes its answer the way the reward reads it: a share
(``1 − gsm8k_format_share``) of the supervised solutions state the result in prose
(``The answer is n.``), which verl's strict GSM8K reward scores 0, instead of the
``#### n`` line. GRPO can then learn two things the tiny model does not yet do reliably:
the answer format (one decision per response, learnable in tens of steps) and the
arithmetic itself (slow: a table of facts).

Everything is seeded (data order, model initialisation, evaluation sampling), so the same
arguments give the same checkpoint on the same machine. The result is written back with
``save_pretrained`` and summarised in ``warm_start.json`` beside it, which is also the
cache marker: :func:`warm_start` does nothing when it finds a summary with the same
settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass

__all__ = ["WarmStartConfig", "prose_answer", "sampled_accuracy", "warm_start"]

SUMMARY_FILE = "warm_start.json"


@dataclass(frozen=True)
class WarmStartConfig:
    """Knobs of the supervised warm start.

    Args:
        target_accuracy: stop once the sampled accuracy on the held-out problems reaches
            this; in (0, 1].
        max_steps: give up (with an error) after this many optimizer steps; ≥ 1.
        eval_every: evaluate every this many steps; ≥ 1.
        batch_size: problems per optimizer step; ≥ 1.
        lr: AdamW learning rate; > 0.
        n_eval: held-out problems per evaluation; ≥ 1.
        gsm8k_format_share: share of supervised solutions that end in GSM8K's ``#### n``
            line (the rest end in ``The answer is n.``); in [0, 1].
        seed: seeds the problems, the batches and the evaluation's sampling.
    """

    target_accuracy: float = 0.2
    max_steps: int = 3000
    eval_every: int = 25
    batch_size: int = 32
    lr: float = 3e-3
    n_eval: int = 64
    gsm8k_format_share: float = 0.35
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"WarmStartConfig.target_accuracy={self.target_accuracy!r}: must be in (0, 1]")
        for name in ("max_steps", "eval_every", "batch_size", "n_eval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WarmStartConfig.{name}={value!r}: must be an integer >= 1")
        if not 0.0 <= self.gsm8k_format_share <= 1.0:
            raise ValueError(f"WarmStartConfig.gsm8k_format_share={self.gsm8k_format_share!r}: must be in [0, 1]")
        if not self.lr > 0:
            raise ValueError(f"WarmStartConfig.lr={self.lr!r}: must be > 0")


def _encode(tokenizer, question: str, solution: str | None):
    """Chat-formatted prompt ids (as verl's dataset builds them) and, if given, solution ids + EOS."""
    from verl_commeff.data.gsm8k import INSTRUCTION

    messages = [{"role": "user", "content": f"{question} {INSTRUCTION}"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if solution is None:
        return prompt_ids, None
    answer_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, answer_ids


def prose_answer(solution: str) -> str:
    """The worked solution with its ``#### n`` line replaced by ``The answer is n.``."""
    from verl_commeff.data.gsm8k import extract_final_answer

    body = solution[: solution.rindex("####")].rstrip()
    return f"{body}\nThe answer is {extract_final_answer(solution)}."


def _sft_batch(tokenizer, problems):
    """Right-padded (input_ids, attention_mask, labels) with the prompt tokens masked (-100)."""
    import torch

    rows = [_encode(tokenizer, q, s) for q, s, _ in problems]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[i, : len(p) + len(a)] = 1
    return ids, mask, labels


def sampled_accuracy(model, tokenizer, problems, do_sample: bool = True, seed: int = 0, max_new_tokens: int = 48):
    """Share of ``problems`` whose generated answer verl's GSM8K reward scores 1 (strict format)."""
    import torch
    from verl.utils.reward_score.gsm8k import compute_score

    prompts = [_encode(tokenizer, q, None)[0] for q, _, _ in problems]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=1.0 if do_sample else None, top_k=0 if do_sample else None, top_p=1.0 if do_sample else None,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return sum(compute_score(t, str(ans)) for t, (_, _, ans) in zip(texts, problems)) / len(problems)


def warm_start(model_dir: str, difficulty, cfg: WarmStartConfig = WarmStartConfig(), progress: bool = True) -> dict:
    """Fine-tune the model in ``model_dir`` in place until it reaches ``cfg.target_accuracy``.

    Args:
        model_dir: a Hugging Face model directory (model + tokenizer), overwritten.
        difficulty: the :class:`~verl_commeff.presets.gsm8k_synth.Difficulty` of the
            training and held-out problems (the preset's data uses the same one).
        cfg: the warm start's knobs.
        progress: show a tqdm bar.

    Returns:
        The summary written to ``model_dir/warm_start.json`` (steps, seconds, the sampled
        and greedy held-out accuracies at the stop).

    Raises:
        RuntimeError: the target was not reached within ``cfg.max_steps``.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_commeff.presets.gsm8k_synth import make_problem

    settings = {"difficulty": dataclasses.asdict(difficulty), "config": dataclasses.asdict(cfg)}
    summary_path = os.path.join(model_dir, SUMMARY_FILE)
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("settings") == settings:
            return summary

    start = time.time()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    # Streams of their own (string seeds hash deterministically), apart from the preset's parquet data.
    eval_rng, train_rng = random.Random(f"warm-start-eval/{cfg.seed}"), random.Random(f"warm-start-train/{cfg.seed}")
    eval_problems = [make_problem(eval_rng, difficulty) for _ in range(cfg.n_eval)]
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    history = []
    bar = tqdm(total=cfg.max_steps, desc="warm start (SFT)", disable=not progress, unit="step")
    step, accuracy = 0, 0.0
    while step < cfg.max_steps:
        # Step 1: one supervised step on a fresh batch of generated problems.
        batch = []
        for _ in range(cfg.batch_size):
            question, solution, answer = make_problem(train_rng, difficulty)
            if train_rng.random() >= cfg.gsm8k_format_share:
                solution = prose_answer(solution)
            batch.append((question, solution, answer))
        ids, mask, labels = _sft_batch(tokenizer, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        step += 1
        bar.update(1)
        # Step 2: every eval_every steps, the sampled accuracy on the held-out problems; stop at the target.
        if step % cfg.eval_every == 0:
            accuracy = sampled_accuracy(model, tokenizer, eval_problems, seed=cfg.seed + step)
            history.append({"step": step, "loss": loss.item(), "sampled_accuracy": accuracy})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", sampled_acc=f"{accuracy:.3f}")
            if accuracy >= cfg.target_accuracy:
                break
    bar.close()
    if accuracy < cfg.target_accuracy:
        raise RuntimeError(
            f"warm start did not reach sampled accuracy {cfg.target_accuracy} within {cfg.max_steps} steps "
            f"(last {accuracy:.3f}): raise max_steps or lower the difficulty"
        )
    model.save_pretrained(model_dir)
    summary = {
        "settings": settings,
        "steps": step,
        "seconds": round(time.time() - start, 1),
        "sampled_accuracy": accuracy,
        "greedy_accuracy": sampled_accuracy(model, tokenizer, eval_problems, do_sample=False),
        "history": history,
    }
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    return summary
