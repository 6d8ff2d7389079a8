"""Two gloo ranks, FSDP1 (use_orig_params): the anchor's M shards assemble to the dense gradient.

With ``use_orig_params`` FSDP1 leaves ``p.grad=None`` for a parameter that has no elements
in a rank's flat shard; the anchor must return an empty tensor there (as the actor does),
and the per-rank flat pieces, concatenated in rank order, are the full gradient.
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
    from verl_commeff.config import AnchorConfig, CodecConfig, CommEffConfig
    from verl_commeff.workers.weight_shards import export_local_shards

    anchor = AnchorWorker(_config(model_dir, "fsdp"))
    anchor.init_model()
    cfg = CommEffConfig(codec=CodecConfig(q_source="fast"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards"))
    anchor.anchor_setup(cfg, ticks_per_step=1)
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


def _full_state(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_fsdp1_two_ranks_anchor_returns_empty_shards_and_the_dense_gradient(tiny_model_dir):
    run_on_gloo(_body, world_size=2, args=(tiny_model_dir,))
