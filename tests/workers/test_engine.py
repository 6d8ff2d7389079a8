"""The comm-eff engine inside verl's real actor worker (CPU, one gloo rank, FSDP1 and FSDP2)."""

import pytest
import torch

from tests.verl_harness import GradsAtStep, compose_ppo_config, init_single_process_world, make_ppo_batch
from tests.verl_harness import log_probs as _log_probs
from tests.verl_harness import update as _update
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
from verl_commeff.workers.actor_state import AnchorResult, ReadyResult

STRATEGIES = ["fsdp", "fsdp2"]
HIDDEN = 64  # the tiny preset's hidden size


def _worker(cls, model_dir, strategy, role="actor", extra=()):
    init_single_process_world()
    if strategy == "fsdp":
        extra = (*extra, "actor_rollout_ref.actor.fsdp_config.use_orig_params=True")
    worker = cls(compose_ppo_config(model_dir, strategy, extra=extra).actor_rollout_ref, role=role)
    worker.init_model()
    return worker


def _stock(model_dir, strategy, role="actor", extra=()):
    from verl.workers.engine_workers import ActorRolloutRefWorker

    return _worker(ActorRolloutRefWorker, model_dir, strategy, role, extra)


def _commeff(model_dir, strategy, cfg=None, role="actor", extra=()):
    from verl_commeff.workers.actor_worker import CommEffActorRolloutRefWorker

    worker = _worker(CommEffActorRolloutRefWorker, model_dir, strategy, role, extra)
    if cfg is not None:
        worker.commeff_setup(cfg, ticks_per_step=1)
    return worker


def _params(worker):
    return [p.detach().clone() for p in worker.actor.engine.module.parameters()]


def _run_steps(worker, steps=2):
    """Old-log-prob pass then one update, per step; returns log-probs, metrics and final parameters."""
    log_probs, metrics = [], []
    for step in range(steps):
        batch = make_ppo_batch(seed=step)
        batch.batch["old_log_probs"] = _log_probs(worker, batch)
        log_probs.append(batch.batch["old_log_probs"])
        metrics.append(_update(worker, batch))
    return log_probs, metrics, _params(worker)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_disabled_plugin_is_bit_identical_to_stock(strategy, tiny_model_dir):
    stock = _run_steps(_stock(tiny_model_dir, strategy))
    for cfg in (None, CommEffConfig(enable=False)):
        lp, metrics, params = _run_steps(_commeff(tiny_model_dir, strategy, cfg))
        assert all(torch.equal(a, b) for a, b in zip(lp, stock[0]))
        for m, s in zip(metrics, stock[1]):
            assert m["grad_norm"] == s["grad_norm"] and m["loss"] == s["loss"]
            assert not any(k.startswith("commeff/") for k in m)
        assert all(torch.equal(a, b) for a, b in zip(params, stock[2]))


def _codec_only(rank):
    return CommEffConfig(
        codec=CodecConfig(rank=rank, pp_size=2, q_source="fast", q_cadence=1000),
        anchor=AnchorConfig(enable=False),
        merger=MergerConfig(name="none", adaptive=AdaptiveLambdaConfig(mode="off")),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lossless_codec_equals_stock(strategy, tiny_model_dir):
    stock = _run_steps(_stock(tiny_model_dir, strategy))
    lp, metrics, params = _run_steps(_commeff(tiny_model_dir, strategy, _codec_only(rank=HIDDEN)))
    for a, b in zip(lp, stock[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    for a, b in zip(params, stock[2]):
        # Adam (lr 1e-3) turns rounding-level gradient differences on near-zero gradients into
        # up to ~lr/30 steps; a lossy codec moves parameters by ~lr.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert metrics[-1]["commeff/tick"] == [2.0]  # worker metrics are per-rank lists
    assert metrics[-1]["commeff/codec/recon_err/layer_1"][0] < 1e-3  # r = H reconstructs h


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compressed_codec_projects_train_and_old_log_prob_not_ref(strategy, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    batch = make_ppo_batch(seed=0)
    b = batch.batch
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        logits = hf(b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
    r = b["responses"].shape[1]
    plain = torch.log_softmax(logits[:, -r - 1 : -1], -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    mask = b["response_mask"].bool()

    actor = _commeff(tiny_model_dir, strategy, _codec_only(rank=4))
    codec = actor.actor.engine.commeff.codec
    random_q = codec.live_basis.clone()
    assert codec.needs_bootstrap  # commeff.codec.init=activations (the default)
    old = _log_probs(actor, batch)
    assert (old - plain)[mask].abs().max() > 1e-3  # the old-log-prob pass is projected
    # the first old-log-prob pass set the first Q from its activations (once): a second pass changes nothing
    assert not codec.needs_bootstrap and not torch.equal(codec.live_basis, random_q)
    bootstrapped = codec.live_basis.clone()
    torch.testing.assert_close(_log_probs(actor, batch), old, rtol=0, atol=0)
    assert torch.equal(codec.live_basis, bootstrapped)
    metrics = _update(actor, batch.union(type(batch).from_single_dict({"old_log_probs": old})))
    assert metrics["commeff/bytes/codec/sent"][0] < metrics["commeff/bytes/codec/dense_equiv"][0]  # train pass projected

    ref = _commeff(tiny_model_dir, strategy, role="ref")
    torch.testing.assert_close(_log_probs(ref, batch, ref=True)[mask], plain[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_merged_gradient_is_the_library_merger_of_the_stock_gradient(strategy, tiny_model_dir):
    from verl_commeff.mergers import build_merger

    cfg = CommEffConfig(
        codec=CodecConfig(enable=False, q_source="fast"),
        anchor=AnchorConfig(delay_k=0, cadence=1),
        merger=MergerConfig(alpha=0.25, age_decay=0.9, adaptive=AdaptiveLambdaConfig(mode="off")),
    )
    # verl clips after the merger, by the merged gradient's norm: compare unclipped, check the norm separately
    no_clip = ("actor_rollout_ref.actor.optim.clip_grad=1e9",)
    stock = _stock(tiny_model_dir, strategy, extra=no_clip)
    actor = _commeff(tiny_model_dir, strategy, cfg, extra=no_clip)
    stock_grads, actor_grads = GradsAtStep(stock), GradsAtStep(actor)

    state = actor.actor.engine.commeff
    g = torch.Generator().manual_seed(3)
    m_bar = [torch.randn(p.shape, generator=g) for _, p in state.targets]
    if strategy == "fsdp2":
        from torch.distributed.tensor import distribute_tensor

        m_bar = [distribute_tensor(m, p.device_mesh, p.placements) for m, (_, p) in zip(m_bar, state.targets)]
    state.offer(ReadyResult(AnchorResult(fire_tick=1, source_tick=1, m_bar=m_bar)))

    batch = make_ppo_batch(seed=0)
    batch.batch["old_log_probs"] = _log_probs(stock, batch)
    _update(stock, batch)
    metrics = _update(actor, batch)

    # independent expectation: the library merger, applied by hand to the stock reduced gradients
    reference = build_merger(cfg.merger)
    reference.hold(m_bar, produced_tick=1, source_tick=1)
    stock_params = dict(stock.actor.engine.module.named_parameters())
    target_ids = {id(p) for _, p in state.targets}
    expected = [stock_grads.grads[0][id(stock_params[n])].clone() for n in _names(actor, state)]
    reference.apply_(expected, tick=1)
    actor_params = dict(actor.actor.engine.module.named_parameters())
    for name, want in zip(_names(actor, state), expected):
        torch.testing.assert_close(actor_grads.grads[0][id(actor_params[name])], want, rtol=1e-6, atol=1e-10)
    non_targets = [n for n, p in actor_params.items() if id(p) not in target_ids]
    for name in non_targets:  # everything else reaches the optimizer untouched
        assert torch.equal(actor_grads.grads[0][id(actor_params[name])], stock_grads.grads[0][id(stock_params[name])])
    assert metrics["commeff/merger/merged_ticks"][0] == 1 and metrics["commeff/merger/lambda"][0] == 1.0
    # verl's grad_norm metric (and its clipping) sees the merged gradient
    full = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in actor_grads.grads[0].values()]
    merged_norm = torch.sqrt(sum(g.double().pow(2).sum() for g in full)).item()
    assert abs(metrics["grad_norm"][0] - merged_norm) < 1e-6 * merged_norm


def _names(worker, state):
    """Raw module names of the target parameters, in target order."""
    by_id = {id(p): n for n, p in worker.actor.engine.module.named_parameters()}
    return [by_id[id(p)] for _, p in state.targets]


def test_dp_codec_simulation_reaches_the_optimizer(tiny_model_dir):
    """FSDP2, one replica (simulation): the optimizer sees the PowerSGD estimate of the stock
    gradient for every 2-D parameter (the default ``params=all_2d``, bf16 factors; the library
    exchange applied by hand), 1-D gradients untouched; the bytes reach verl's metrics. FSDP1
    is refused (its flat shards are not row shards)."""
    from verl_commeff.config import DPCodecConfig
    from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_
    from verl_commeff.dp_codec.hsdp import embedding_names

    cfg = CommEffConfig(
        codec=CodecConfig(enable=False, q_source="fast"),
        anchor=AnchorConfig(enable=False),
        merger=MergerConfig(name="none", adaptive=AdaptiveLambdaConfig(mode="off")),
        dp_codec=DPCodecConfig(enable=True, rank=2, start_iter=0, seed=1),
    )
    no_clip = ("actor_rollout_ref.actor.optim.clip_grad=1e9",)
    stock = _stock(tiny_model_dir, "fsdp2", extra=no_clip)
    actor = _commeff(tiny_model_dir, "fsdp2", cfg, extra=no_clip)
    stock_grads, actor_grads = GradsAtStep(stock), GradsAtStep(actor)
    batch = make_ppo_batch(seed=0)
    batch.batch["old_log_probs"] = _log_probs(stock, batch)
    _update(stock, batch)
    metrics = _update(actor, batch)

    state = actor.actor.engine.commeff
    target_names = set(_names(actor, state))
    stock_params = dict(stock.actor.engine.module.named_parameters())
    actor_params = dict(actor.actor.engine.module.named_parameters())
    embeddings = embedding_names(stock.actor.engine.module)
    assert embeddings
    expected = [GradShard(n, stock_grads.grads[0][id(p)].full_tensor().clone(), p.shape[0] if p.dim() else 1,
                          compressible=p.dim() == 2, embedding=n in embeddings) for n, p in stock_params.items()]
    reference = DPCodecState.from_config(cfg.dp_codec)
    dp_exchange_(reference, expected, ReplicaGroups())
    compressed = set(reference.error_dict)
    assert target_names < compressed and embeddings <= compressed
    for s in expected:
        got = actor_grads.grads[0][id(actor_params[s.name])].full_tensor()
        if s.name in compressed:
            torch.testing.assert_close(got, s.grad, rtol=1e-5, atol=1e-8, msg=s.name)
            assert torch.linalg.matrix_rank(got) <= 2
        else:
            assert torch.equal(got, stock_grads.grads[0][id(stock_params[s.name])].full_tensor()), s.name
    dense = metrics["commeff/bytes/dp_codec/dense_equiv"][0]
    assert dense == sum(p.numel() * 4 for p in actor_params.values())
    assert 0 < metrics["commeff/bytes/dp_codec/sent"][0] < dense
    assert metrics["commeff/dp_codec/compressed_matrices"][0] == len(compressed)

    with pytest.raises(ValueError, match="commeff.dp_codec needs row-sharded gradients"):
        _commeff(tiny_model_dir, "fsdp", cfg)
