"""GSM8K-format arithmetic word problems, written in verl's GSM8K parquet layout.

Same columns as the real preprocessing (:mod:`verl_commeff.data.gsm8k`), so the same
trainer config reads either, and verl's GSM8K reward scores both.

A problem is a chain of ``ops`` additions/subtractions on one person's items, with
optional distractor sentences about somebody else; the worked solution writes one
equation per operation and ends in ``#### n``::

    Ann has 12 pens. Ben has 7 cards. Ann gets 9 more. Then Ann gives away 5.
    How many pens does Ann have? <instruction>
    ->  12 + 9 = 21. 21 - 5 = 16.
        #### 16

:class:`Difficulty` is the knob: the number range, the number of operations and the
share of distractors set how hard the arithmetic is for a tiny model, so that GRPO has
headroom after a short supervised warm start.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from verl_commeff.data.gsm8k import INSTRUCTION, gsm8k_row

__all__ = ["DIFFICULTIES", "Difficulty", "INSTRUCTION", "make_problem", "write_gsm8k_parquet"]

_NAMES = ["Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal"]
_ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs"]


@dataclass(frozen=True)
class Difficulty:
    """How hard the generated problems are.

    Args:
        max_number: operands are drawn from [1, max_number]; ≥ 1.
        min_ops: fewest operations per problem; ≥ 1.
        max_ops: most operations per problem; ≥ ``min_ops``.
        distractor_p: probability of each of up to two distractor sentences (numbers
            about another person that the solution must ignore); in [0, 1].
    """

    max_number: int = 9
    min_ops: int = 1
    max_ops: int = 1
    distractor_p: float = 0.0

    def __post_init__(self):
        if isinstance(self.max_number, bool) or not isinstance(self.max_number, int) or self.max_number < 1:
            raise ValueError(f"Difficulty.max_number={self.max_number!r}: must be an integer >= 1")
        if not (isinstance(self.min_ops, int) and 1 <= self.min_ops <= self.max_ops):
            raise ValueError(f"Difficulty.min_ops={self.min_ops!r}, max_ops={self.max_ops!r}: need 1 <= min_ops <= max_ops")
        if not 0.0 <= self.distractor_p <= 1.0:
            raise ValueError(f"Difficulty.distractor_p={self.distractor_p!r}: must be in [0, 1]")


# Named levels: ``easy`` is the original single-digit, one-operation set; ``tiny_rl`` is the
# learnable preset's (a warm-started tiny model gets part of it right, GRPO improves it).
DIFFICULTIES = {
    "easy": Difficulty(),
    "tiny_rl": Difficulty(max_number=9, min_ops=1, max_ops=1, distractor_p=0.3),
    "hard": Difficulty(max_number=50, min_ops=2, max_ops=3, distractor_p=0.5),
}


def make_problem(rng: random.Random, difficulty: Difficulty = DIFFICULTIES["easy"]) -> tuple[str, str, int]:
    """One word problem: (question, worked solution ending in ``#### n``, answer n ≥ 0)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    total = rng.randint(1, difficulty.max_number)
    sentences = [f"{name} has {total} {item}."]
    steps = []
    for _ in range(rng.randint(difficulty.min_ops, difficulty.max_ops)):
        if total > 1 and rng.random() < 0.5:
            b = rng.randint(1, min(total, difficulty.max_number))
            sentences.append(f"Then {name} gives away {b}.")
            steps.append(f"{total} - {b} = {total - b}.")
            total -= b
        else:
            b = rng.randint(1, difficulty.max_number)
            sentences.append(f"Then {name} gets {b} more.")
            steps.append(f"{total} + {b} = {total + b}.")
            total += b
    for _ in range(2):  # distractors: somebody else's items, inserted after the opening sentence
        if rng.random() < difficulty.distractor_p:
            other = rng.choice([n for n in _NAMES if n != name])
            distractor = f"{other} has {rng.randint(1, difficulty.max_number)} {rng.choice(_ITEMS)}."
            sentences.insert(rng.randint(1, len(sentences)), distractor)
    question = " ".join(sentences) + f" How many {item} does {name} have?"
    solution = " ".join(steps) + f"\n#### {total}"
    return question, solution, total


def write_gsm8k_parquet(
    out_dir: str, n_train: int = 256, n_test: int = 64, seed: int = 0, difficulty: Difficulty = DIFFICULTIES["easy"]
) -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` under ``out_dir``; returns their paths.

    The test split never repeats a training question.
    """
    import datasets

    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: both must be >= 1")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths, seen = {}, set()
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        while len(rows) < n:
            question, solution, _ = make_problem(rng, difficulty)
            if split == "test" and question in seen:
                continue
            seen.add(question)
            rows.append(gsm8k_row(split, len(rows), question, solution))
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(paths[split])
    return paths
