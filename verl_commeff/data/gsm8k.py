"""GSM8K in verl's parquet layout: the preprocessing step the recipes rely on.

Writes ``train.parquet`` and ``test.parquet`` with the columns verl's own
``examples/data_preprocess/gsm8k.py`` writes, so verl's ``RLHFDataset`` and its GSM8K
reward (``verl.utils.reward_score.gsm8k``, selected by ``data_source``) read them::

    data_source  "openai/gsm8k"
    prompt       [{"role": "user", "content": question + " " + INSTRUCTION}]
    ability      "math"
    reward_model {"style": "rule", "ground_truth": "<final answer>"}
    extra_info   {"split", "index", "answer" (the worked solution), "question"}

Usage (a GPU user with network access; the dataset comes from the Hugging Face hub or a
local copy)::

    python -m verl_commeff.data.gsm8k --local_dir ~/data/gsm8k
    python -m verl_commeff.data.gsm8k --local_dir ~/data/gsm8k --source /path/to/gsm8k   # load_dataset path
"""

from __future__ import annotations

import argparse
import os
import re

__all__ = ["INSTRUCTION", "extract_final_answer", "gsm8k_row", "preprocess"]

# verl's GSM8K preprocessing appends exactly this instruction to every question.
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
_FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_final_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, thousands separators removed.

    Raises:
        ValueError: the solution has no ``#### <number>`` line.
    """
    match = _FINAL.search(solution)
    if match is None:
        raise ValueError(f"GSM8K solution has no '#### <number>' final answer: {solution[-80:]!r}")
    return match.group(1).replace(",", "")


def gsm8k_row(split: str, index: int, question: str, solution: str) -> dict:
    """One example in verl's GSM8K parquet layout."""
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": extract_final_answer(solution)},
        "extra_info": {"split": split, "index": index, "answer": solution, "question": question},
    }


def preprocess(local_dir: str, source: str = "openai/gsm8k") -> dict[str, str]:
    """Load GSM8K (``datasets.load_dataset(source, "main")``) and write verl's parquet files.

    Args:
        local_dir: output directory (created).
        source: a hub name or a local dataset directory / loading script.

    Returns:
        ``{"train": path, "test": path}``.
    """
    import datasets

    raw = datasets.load_dataset(source, "main")
    os.makedirs(local_dir, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        if split not in raw:
            raise ValueError(f"GSM8K source {source!r} has no {split!r} split (has {list(raw)})")
        rows = raw[split].map(
            lambda ex, i: gsm8k_row(split, i, ex["question"], ex["answer"]),
            with_indices=True,
            remove_columns=raw[split].column_names,
        )
        paths[split] = os.path.join(local_dir, f"{split}.parquet")
        rows.to_parquet(paths[split])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local_dir", default=os.path.expanduser("~/data/gsm8k"), help="output directory")
    parser.add_argument("--source", default="openai/gsm8k", help="datasets.load_dataset path (hub name or local)")
    args = parser.parse_args(argv)
    for split, path in preprocess(os.path.expanduser(args.local_dir), args.source).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
