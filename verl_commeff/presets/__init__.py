"""Tiny, locally built stand-ins for the real model and data (no downloads).

They go through exactly the loading paths a GPU user's real ones take: the model and
tokenizer are a Hugging Face directory read with ``from_pretrained``; the data is parquet
in verl's GSM8K layout, scored by verl's GSM8K reward.
"""
