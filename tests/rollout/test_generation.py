"""HFGenerator (batched model.generate, log-probs, weight loading) against plain Hugging Face calls; no Ray."""

import threading

import pytest
import torch

from tests.rollout.common import PROMPTS, first_new_token, hf_greedy, hf_token_logprobs, load_hf, perturbed_state_dict
from verl_commeff.rollout.generation import HFGenerator
from verl_commeff.rollout.options import parse_sampling_params

EOS, PAD = 2, 3  # the tiny tokenizer's <|im_end|> and <|pad|>


def _generator(model_dir, eos=(EOS,), mode="processed_logprobs"):
    return HFGenerator(load_hf(model_dir), torch.device("cpu"), list(eos), PAD, mode)


def _spec(**params):
    return parse_sampling_params({"top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, **params})[0]


def test_batched_greedy_equals_one_by_one_hf_generate(tiny_model_dir):
    reference = load_hf(tiny_model_dir)
    out = _generator(tiny_model_dir).generate(PROMPTS, _spec(temperature=0, logprobs=False), [8, 8, 3, 8])
    for prompt, budget, got in zip(PROMPTS, [8, 8, 3, 8], out):
        assert got.token_ids == hf_greedy(reference, prompt, budget, [EOS])
        assert len(got.token_ids) == budget and got.log_probs is None and not got.aborted


def test_stops_at_end_of_sequence_and_keeps_it(tiny_model_dir):
    reference = load_hf(tiny_model_dir)
    free = hf_greedy(reference, PROMPTS[0], 10, [EOS])
    index, stop_token = first_new_token(free)
    got = _generator(tiny_model_dir, eos=(EOS, stop_token)).generate(PROMPTS, _spec(temperature=0), [10] * 4)
    assert got[0].token_ids == free[: index + 1]
    for prompt, result in zip(PROMPTS, got):
        assert result.token_ids == hf_greedy(reference, prompt, 10, [EOS, stop_token])
    ignoring = _generator(tiny_model_dir, eos=(EOS, stop_token)).generate(
        PROMPTS[:1], _spec(temperature=0, ignore_eos=True), [10])
    assert ignoring[0].token_ids == free


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_log_probs_equal_log_softmax_of_a_plain_forward(tiny_model_dir, temperature):
    reference = load_hf(tiny_model_dir)
    torch.manual_seed(0)
    out = _generator(tiny_model_dir).generate(PROMPTS, _spec(temperature=temperature, logprobs=True), [10] * 4)
    for prompt, result in zip(PROMPTS, out):
        expected = hf_token_logprobs(reference, prompt, result.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=0, atol=1e-5)


def test_greedy_log_probs_and_raw_logits_modes(tiny_model_dir):
    reference = load_hf(tiny_model_dir)
    greedy = _generator(tiny_model_dir).generate(PROMPTS[:2], _spec(temperature=0, logprobs=True), [6, 6])
    raw = _generator(tiny_model_dir, mode="raw_logits").generate(PROMPTS[:2], _spec(temperature=0.5, logprobs=True),
                                                                 [6, 6])
    for prompt, g, r in zip(PROMPTS, greedy, raw):
        torch.testing.assert_close(torch.tensor(g.log_probs), hf_token_logprobs(reference, prompt, g.token_ids),
                                   rtol=0, atol=1e-5)
        with torch.no_grad():
            logits = reference(torch.tensor([prompt + r.token_ids])).logits[0, len(prompt) - 1 : -1]  # (R, V)
        expected = logits.gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)  # unscaled by temperature
        torch.testing.assert_close(torch.tensor(r.log_probs), expected, rtol=0, atol=1e-5)


def test_top_k_one_sampling_is_greedy(tiny_model_dir):
    reference = load_hf(tiny_model_dir)
    out = _generator(tiny_model_dir).generate(PROMPTS[:2], _spec(temperature=1.0, top_k=1, logprobs=True), [6, 6])
    for prompt, result in zip(PROMPTS, out):
        assert result.token_ids == hf_greedy(reference, prompt, 6, [EOS])
        assert result.log_probs == [0.0] * 6  # processed: all mass on the kept token


def test_load_weights_in_buckets_then_generate_like_the_perturbed_model(tiny_model_dir):
    gen = _generator(tiny_model_dir)
    reference = load_hf(tiny_model_dir)
    items = list(perturbed_state_dict(reference).items())
    reference.load_state_dict(dict(items))
    half = len(items) // 2
    gen.load_weights(items[:half], first=True, last=False)
    gen.load_weights(items[half:], first=False, last=True)
    out = gen.generate(PROMPTS, _spec(temperature=0, logprobs=True), [8] * 4)
    for prompt, result in zip(PROMPTS, out):
        assert result.token_ids == hf_greedy(reference, prompt, 8, [EOS])
        torch.testing.assert_close(torch.tensor(result.log_probs),
                                   hf_token_logprobs(reference, prompt, result.token_ids), rtol=0, atol=1e-5)


def test_load_weights_rejects_unknown_names_bad_shapes_and_incomplete_rounds(tiny_model_dir):
    gen = _generator(tiny_model_dir)
    state = gen.model.state_dict()
    with pytest.raises(KeyError, match="does not have"):
        gen.load_weights([("model.nope.weight", torch.zeros(1))], first=True, last=True)
    with pytest.raises(ValueError, match="shape"):
        gen.load_weights([("lm_head.weight", torch.zeros(3, 3))], first=True, last=True)
    with pytest.raises(ValueError, match="ended without"):
        gen.load_weights([("lm_head.weight", state["lm_head.weight"])], first=True, last=True)


def test_a_set_stop_event_aborts_the_batch(tiny_model_dir):
    stop = threading.Event()
    stop.set()
    out = _generator(tiny_model_dir).generate(PROMPTS[:2], _spec(temperature=0), [10, 10], stop=stop)
    assert all(r.aborted and len(r.token_ids) <= 1 for r in out)
