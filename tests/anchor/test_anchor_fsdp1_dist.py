"""Two gloo ranks, FSDP1 (use_orig_params): the anchor's M shards assemble to the dense gradient.

With ``use_orig_params`` FSDP1 leaves ``p.grad=None`` for a parameter that has no elements
in a rank's flat shard; the anchor must return an empty tensor there (as the actor does),
and the per-rank flat pieces, concatenated in rank order, are the full gradient. The dose
probe runs on the same shards (empty ones included): both ranks get the same evidence, equal
to the closed form on a single-process reference.
"""

import os

import torch
import torch.distributed as dist

from tests.dist_harness import run_on_gloo


def _body(rank, world_size, model_dir):
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    from tests.anchor.test_anchor_worker import _config, _dense_reference, _minibatch
    from tests.verl_harness import make_ppo_batch
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig
    from verl_commeff.workers.weight_shards import export_local_shards

    anchor = AnchorWorker(_config(model_dir, "fsdp"))
    anchor.init_model()
    cfg = CommEffConfig(codec=CodecConfig(rank=2, pp_size=2, q_source="anchor", init="random"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards", probe="on"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))
    anchor.anchor_setup(cfg, ticks_per_step=1)
    q = anchor._anchor.codec.live_basis[0].clone()  # (H, r): the actor's Q at tick 1
    snapshot = export_local_shards(anchor.actor.engine.module)  # the checkpoint's weights, this rank's shards
    snapshots = [None] * world_size
    dist.all_gather_object(snapshots, snapshot)
    batch = make_ppo_batch(seed=11)
    result = anchor.anchor_fire(fire_tick=1, source_tick=1, minibatch=_minibatch(batch), snapshot=snapshots)

    targets = anchor._anchor.targets
    assert not result.rejected and len(result.m_bar) == len(targets) == 28
    empty = [i for i, m in enumerate(result.m_bar) if m.numel() == 0]
    counts = [None] * world_size
    dist.all_gather_object(counts, len(empty))
    assert sum(counts) > 0  # the case under test: some targets have no elements on some rank
    for (_, p), m in zip(targets, result.m_bar):
        assert m.shape == p.shape  # laid out like this rank's parameter (and the actor's gradient)
    from verl_commeff.collectives import fingerprint

    mine = fingerprint(result.m_bar)  # the actor's cross-rank check compares its held shard with row `rank`
    assert result.fingerprints.shape == (world_size, 3) and torch.equal(result.fingerprints[rank], mine)
    pieces = [None] * world_size
    dist.all_gather_object(pieces, [m.reshape(-1) for m in result.m_bar])
    names = [n for n, _ in targets]
    expected = _dense_reference(model_dir, _full_state(model_dir), batch, names)
    for i, (name, want) in enumerate(zip(names, expected)):
        got = torch.cat([pieces[r][i] for r in range(world_size)])  # FSDP1 shards the flat param in rank order
        torch.testing.assert_close(got, want.reshape(-1), rtol=1e-4, atol=1e-6, msg=name)

    # the dose probe: one all-reduce, so every rank holds the same floats; they match the by-hand reference
    from verl_commeff.codec.stages import boundary_layers
    from verl_commeff.mergers.evidence_dose import evidence_from_sums, signed_ema_sums

    evidences = [None] * world_size
    dist.all_gather_object(evidences, result.dose_evidence)
    assert evidences[0] == evidences[1]
    layer = boundary_layers(anchor.actor.engine.model_config.hf_config.num_hidden_layers, 2)[0]
    projected = _dense_reference(model_dir, _full_state(model_dir), batch, names, project=(layer, q))
    want = evidence_from_sums(signed_ema_sums(projected, expected, [e >= 0 for e in expected], 0.25).tolist(), 1.0,
                              held=True)
    for key in ("cos_codec", "lambda_star", "cos_merged", "held_agree"):
        assert abs(result.dose_evidence[key] - want[key]) < 2e-4, (key, result.dose_evidence, want)


def _full_state(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_fsdp1_two_ranks_anchor_returns_empty_shards_and_the_dense_gradient(tiny_model_dir):
    run_on_gloo(_body, world_size=2, args=(tiny_model_dir,))
