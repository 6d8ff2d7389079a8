"""The tiny preset loads through the ordinary from_pretrained path and fits verl's prompts."""

import torch


def test_tiny_model_and_tokenizer_load_and_generate(tiny_model_dir, gsm8k_dir):
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 4
    assert len(tok) <= model.config.vocab_size
    prompt = list(pd.read_parquet(f"{gsm8k_dir}/test.parquet").iloc[0]["prompt"])
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    assert ids["input_ids"].shape[1] < 80  # the trained BPE keeps GSM8K-style prompts short
    assert tok.decode(ids["input_ids"][0]) == text  # lossless round trip
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert torch.isfinite(model(**ids).logits).all()
