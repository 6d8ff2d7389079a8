"""verl's GSM8K parquet layout: real preprocessing path and the synthetic generator agree, verl scores both."""

import json

import pandas as pd
import pytest

from verl_commeff.data.gsm8k import INSTRUCTION, extract_final_answer, preprocess


def test_extract_final_answer_like_gsm8k():
    assert extract_final_answer("3 + 4 = 7\n#### 1,234") == "1234"
    assert extract_final_answer("#### -5") == "-5"
    with pytest.raises(ValueError, match="no '#### <number>'"):
        extract_final_answer("the answer is 7")


def test_preprocess_reads_raw_gsm8k_and_writes_verl_layout(tmp_path):
    """The real preprocessing path, on a local copy in GSM8K's raw format (question / answer)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    examples = {
        "train": [{"question": "Tom has 3 cats and 2 dogs. How many pets?", "answer": "3 + 2 = 5\n#### 5"}],
        "test": [{"question": "Sue buys 1,000 eggs and 200 more. How many?", "answer": "1,000 + 200\n#### 1,200"}],
    }
    for split, rows in examples.items():
        (raw / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import datasets

    loaded = datasets.load_dataset("json", data_files={s: str(raw / f"{s}.jsonl") for s in examples})
    from unittest import mock

    # load_dataset("openai/gsm8k", "main") would download: hand it the same DatasetDict read from local json
    with mock.patch("datasets.load_dataset", return_value=loaded) as load:
        paths = preprocess(str(tmp_path / "out"), source="openai/gsm8k")
    load.assert_called_once_with("openai/gsm8k", "main")
    test = pd.read_parquet(paths["test"]).iloc[0]
    assert test["data_source"] == "openai/gsm8k" and test["ability"] == "math"
    assert list(test["prompt"]) == [{"role": "user", "content": f"{examples['test'][0]['question']} {INSTRUCTION}"}]
    assert test["reward_model"] == {"style": "rule", "ground_truth": "1200"}
    assert test["extra_info"]["answer"] == examples["test"][0]["answer"] and test["extra_info"]["split"] == "test"


def test_synthetic_data_is_scored_by_verls_gsm8k_reward(gsm8k_dir):
    from verl.utils.reward_score import default_compute_score

    df = pd.read_parquet(f"{gsm8k_dir}/train.parquet")
    assert set(df.columns) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    for _, row in df.head(20).iterrows():
        truth = row["reward_model"]["ground_truth"]
        assert default_compute_score("openai/gsm8k", row["extra_info"]["answer"], truth) == 1.0
        assert default_compute_score("openai/gsm8k", f"#### {int(truth) + 1}", truth) == 0.0
