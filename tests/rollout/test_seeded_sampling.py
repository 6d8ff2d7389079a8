"""Per-request seeded sampling: a request's tokens do not depend on its batch mates, their order or arrival.

Expectations are independent of the implementation: the same request generated alone,
in other batches and in another order; plain forwards of a separately loaded model for
the distribution (softmax of temperature-scaled, top-k-masked logits) and the log-probs.
"""

import asyncio

import pytest
import torch

from tests.rollout.common import PROMPTS, compose, hf_token_logprobs, load_hf
from verl_commeff.rollout.generation import HFGenerator
from verl_commeff.rollout.options import UnsupportedRolloutOption, parse_sampling_params, sampling_seed

EOS, PAD = 2, 3  # the tiny tokenizer's <|im_end|> and <|pad|>
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
OTHER = [[7, 7, 7], list(range(60, 80)), [300, 301]]  # batch mates of other lengths


def _generator(model_dir, mode="processed_logprobs"):
    return HFGenerator(load_hf(model_dir), torch.device("cpu"), [EOS], PAD, mode)


def _spec(**params):
    return parse_sampling_params({**SAMPLED, **params})[0]


def test_seeded_tokens_do_not_depend_on_batch_mates_or_their_order(tiny_model_dir):
    gen = _generator(tiny_model_dir)
    spec, seeds = _spec(temperature=0.9, top_k=50), [101, 202, 303, 404]
    together = gen.generate(PROMPTS, spec, [10] * 4, seeds=seeds)
    reversed_ = gen.generate(PROMPTS[::-1], spec, [10] * 4, seeds=seeds[::-1])[::-1]
    mixed = gen.generate(OTHER + PROMPTS, spec, [4, 10, 6] + [10] * 4, seeds=[9, 8, 7] + seeds)[3:]
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        alone = gen.generate([prompt], spec, [10], seeds=[seed])[0]
        assert together[i].token_ids == reversed_[i].token_ids == mixed[i].token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(together[i].log_probs), torch.tensor(alone.log_probs),
                                   rtol=0, atol=1e-5)  # the forward itself is batch-dependent in the last bits
    assert len({tuple(r.token_ids) for r in together}) == 4  # the seeds do differ
    again = gen.generate(PROMPTS[:1] * 2, spec, [10, 10], seeds=[101, 999])  # same prompt, another seed
    assert again[0].token_ids == together[0].token_ids and again[1].token_ids != again[0].token_ids


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 5)])
def test_seeded_first_tokens_follow_the_processed_distribution(tiny_model_dir, temperature, top_k):
    reference = load_hf(tiny_model_dir)
    prompt, draws = PROMPTS[1], 3000
    with torch.no_grad():
        logits = reference(torch.tensor([prompt])).logits[0, -1].float() / temperature  # (V,)
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    expected = torch.softmax(logits, -1)  # (V,)
    out = _generator(tiny_model_dir).generate([prompt] * draws, _spec(temperature=temperature, top_k=top_k,
                                                                      logprobs=False),
                                              [1] * draws, seeds=list(range(draws)))
    counts = torch.bincount(torch.tensor([r.token_ids[0] for r in out]), minlength=expected.numel()).double()
    assert counts[expected == 0].sum() == 0  # masked tokens are never drawn
    # every token's frequency within 5 binomial standard deviations (+1 draw) of its probability
    tolerance = 5 * (draws * expected * (1 - expected)).sqrt() + 1
    assert ((counts - draws * expected).abs() <= tolerance).all()


def test_seeded_log_probs_are_those_of_the_processed_distribution(tiny_model_dir):
    reference = load_hf(tiny_model_dir)
    out = _generator(tiny_model_dir).generate(PROMPTS, _spec(temperature=0.7), [10] * 4, seeds=[1, 2, 3, 4])
    for prompt, result in zip(PROMPTS, out):
        expected = hf_token_logprobs(reference, prompt, result.token_ids, 0.7)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=0, atol=1e-5)
    raw = _generator(tiny_model_dir, "raw_logits").generate(PROMPTS[:1], _spec(temperature=0.7), [6], seeds=[1])[0]
    with torch.no_grad():
        logits = reference(torch.tensor([PROMPTS[0] + raw.token_ids])).logits[0, len(PROMPTS[0]) - 1 : -1]  # (R, V)
    torch.testing.assert_close(torch.tensor(raw.log_probs),
                               logits.gather(-1, torch.tensor(raw.token_ids)[:, None]).squeeze(-1), rtol=0, atol=1e-5)
    assert raw.token_ids == out[0].token_ids[:6]  # same seed, same draws whatever the log-prob mode


def test_sampling_seed_param_is_validated():
    assert sampling_seed({**SAMPLED, "seed": 5}) == 5 and sampling_seed(SAMPLED) is None
    for bad in (-1, 2**63, "7", 1.5, True):
        with pytest.raises(UnsupportedRolloutOption, match="seed"):
            sampling_seed({**SAMPLED, "seed": bad})


def _serve(server, requests):
    """Send ``(prompt, params)`` requests to an in-process server concurrently; their token ids, in order."""
    async def run():
        outs = await asyncio.gather(*[server.generate(prompt_ids=p, sampling_params=params, request_id=f"r{i}")
                                      for i, (p, params) in enumerate(requests)])
        return [o.token_ids for o in outs]

    return asyncio.run(run())


def test_server_samples_a_request_the_same_alone_or_among_others_in_any_order(tiny_model_dir):
    """Two fresh servers (the same rollout.seed): one request alone vs the same request amid others."""
    from verl_commeff.rollout.server import HFRolloutServer

    config = compose(tiny_model_dir)
    rollout, model = config.actor_rollout_ref.rollout, config.actor_rollout_ref.model
    target = (PROMPTS[2], SAMPLED)
    alone = _serve(HFRolloutServer(rollout, model), [target])[0]
    crowd = [(p, SAMPLED) for p in OTHER] + [target] + [(p, SAMPLED) for p in PROMPTS[:2]]
    among = _serve(HFRolloutServer(rollout, model), crowd)[len(OTHER)]
    assert among == alone
    # identical requests get distinct draws (the server counts them), reproducibly
    twice = _serve(HFRolloutServer(rollout, model), [target, target])
    assert twice[0] == alone and twice[1] != alone
    # an explicit per-request seed decides the draw, wherever the request sits
    seeded = {**SAMPLED, "seed": 12345}
    first = _serve(HFRolloutServer(rollout, model), [(PROMPTS[2], seeded)] + crowd)[0]
    last = _serve(HFRolloutServer(rollout, model), crowd[::-1] + [(PROMPTS[2], seeded)])[-1]
    assert first == last != alone
