"""GSM8K-format arithmetic word problems, written in verl's GSM8K parquet layout.

Same columns as the real preprocessing (:mod:`verl_commeff.data.gsm8k`), so the same
trainer config reads either, and verl's GSM8K reward scores both.
"""

from __future__ import annotations

import os
import random

from verl_commeff.data.gsm8k import INSTRUCTION, gsm8k_row

__all__ = ["INSTRUCTION", "make_problem", "write_gsm8k_parquet"]

_NAMES = ["Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal"]
_ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs"]


def make_problem(rng: random.Random) -> tuple[str, str, int]:
    """One word problem: (question, worked solution ending in ``#### n``, answer n)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?"
        answer = a + b
        solution = f"{name} has {a} + {b} = {answer} {item}.\n#### {answer}"
    else:
        a, b = max(a, b), min(a, b)
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        answer = a - b
        solution = f"{name} has {a} - {b} = {answer} {item} left.\n#### {answer}"
    return question, solution, answer


def write_gsm8k_parquet(out_dir: str, n_train: int = 256, n_test: int = 64, seed: int = 0) -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` under ``out_dir``; returns their paths."""
    import datasets

    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: both must be >= 1")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [gsm8k_row(split, i, *make_problem(rng)[:2]) for i in range(n)]
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(paths[split])
    return paths
