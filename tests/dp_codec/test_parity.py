"""Parity of the data-parallel PowerSGD codec with torch's ``powerSGD_hook`` on DDP (gloo).

1. One shard per replica, 2 replicas: for the same local gradients, rank, seed and knobs,
   the decompressed gradients and the error-feedback memory equal torch's, every
   iteration (dense warm-up included), and the bytes handed across replicas are
   (Σ n·r + Σ m·r + dense numel) × 4.
2. Two shards per replica (4 ranks = 2 replicas × 2 shards, uneven row split): every
   rank's row shard of the result and of the error equals the one-shard exchange of the
   whole replica gradients (in float64, so the comparison is tight: in float32 the two
   summation orders drift apart by ~1e-6 per warm-started iteration).
"""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.dist_harness import run_on_gloo

ITERS = 7
START = 2


def _model():
    torch.manual_seed(0)
    # weights (40,24) (40,40) (24,40) (40,24) (6,40) + biases: two (40,24) share a shape group,
    # (6,40) fails the compression-rate test at r=4, biases are 1-D.
    return nn.Sequential(
        nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 24, bias=False),
        nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 6),
    )


def _ddp_body(rank, world_size, approx_rank, warm_start, use_ef):
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_

    model = _model()
    names = {id(p): n for n, p in model.named_parameters()}
    ddp = DDP(model)
    torch_state = PowerSGDState(
        process_group=None, matrix_approximation_rank=approx_rank, start_powerSGD_iter=START,
        min_compression_rate=2, use_error_feedback=use_ef, warm_start=warm_start, random_seed=0,
    )
    records = []

    def recording_hook(state, bucket):
        inputs = [g.detach().clone() for g in bucket.gradients()]  # before torch adds its error
        records.append((bucket.index(), [names[id(p)] for p in bucket.parameters()], inputs))
        return powerSGD_hook(state, bucket)

    ddp.register_comm_hook(torch_state, recording_hook)
    ours = DPCodecState(rank=approx_rank, start_iter=START, min_compression_rate=2.0,
                        use_error_feedback=use_ef, warm_start=warm_start, seed=0)
    params = dict(model.named_parameters())
    compressed_seen = set()
    for it in range(ITERS):
        records.clear()
        ddp.zero_grad()
        x = torch.randn(8, 24, generator=torch.Generator().manual_seed(100 * it + rank))
        ddp(x).pow(2).mean().backward()
        assert len(records) == 1, "the test needs one DDP bucket"
        bucket_index, order, inputs = records[0]

        shards = [GradShard(n, g.clone(), g.shape[0], compressible=g.dim() == 2) for n, g in zip(order, inputs)]
        ours.ledger.reset()
        dp_exchange_(ours, shards, ReplicaGroups(replica=dist.group.WORLD))

        offset = 0
        expected_bytes = 0
        for shard, local in zip(shards, inputs):
            torch.testing.assert_close(shard.grad, params[shard.name].grad, atol=2e-6, rtol=1e-4,
                                       msg=f"iter {it} {shard.name}")
            numel = local.numel()
            mean = local.clone()
            dist.all_reduce(mean)
            mean /= world_size
            r = min(*local.shape, approx_rank) if local.dim() == 2 else 0
            if it >= START and r and (local.shape[0] + local.shape[1]) * r * 2 < numel:  # torch's rule
                compressed_seen.add(shard.name)
                expected_bytes += 4 * (local.shape[0] + local.shape[1]) * r
                assert (shard.grad - mean).abs().max() > 1e-4, "a rank-r estimate cannot equal the dense mean"
                if use_ef:
                    torch_err = torch_state.error_dict[bucket_index][offset : offset + numel].view_as(local)
                    torch.testing.assert_close(ours.error_dict[shard.name], torch_err, atol=2e-6, rtol=1e-4,
                                               msg=f"error memory, iter {it} {shard.name}")
            else:
                torch.testing.assert_close(shard.grad, mean, atol=1e-6, rtol=1e-5)
                expected_bytes += 4 * numel
                assert shard.name not in ours.error_dict
            offset += numel
        assert ours.ledger.sent == expected_bytes, (it, ours.ledger.sent, expected_bytes)
        assert ours.ledger.dense_equiv == 4 * sum(t.numel() for t in inputs)
    if not warm_start:
        assert not ours.q_memory_dict
    expected = {"0.weight", "2.weight", "4.weight", "5.weight"} | ({"7.weight"} if approx_rank <= 2 else set())
    assert compressed_seen == expected
    assert ours.iter == ITERS


@pytest.mark.parametrize(
    "approx_rank, warm_start, use_ef",
    [(4, True, True), (4, False, True), (3, True, False), (2, True, True)],
)
def test_one_shard_per_replica_equals_torch_powerSGD_hook(approx_rank, warm_start, use_ef):
    run_on_gloo(_ddp_body, world_size=2, args=(approx_rank, warm_start, use_ef))


SHAPES = {"a": (41, 24), "b": (40, 40), "c": (24, 40), "d": (41, 24), "e": (6, 40), "bias": (41,), "f": (13, 60)}


def _replica_grad(name, it, replica):
    g = torch.Generator().manual_seed(1000 * it + 10 * replica + sorted(SHAPES).index(name))
    base = torch.randn(*SHAPES[name], generator=g, dtype=torch.float64)
    if base.dim() == 2:  # a dominant low-rank part, as real gradients have
        u = torch.randn(SHAPES[name][0], 2, generator=g, dtype=torch.float64)
        base = base * 0.1 + u @ torch.randn(2, SHAPES[name][1], generator=g, dtype=torch.float64)
    return base


def _hsdp_body(rank, world_size):
    from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_

    shards_n = 2
    replica, index = rank // shards_n, rank % shards_n
    shard_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    replica_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    sharded = ReplicaGroups(replica=replica_groups[index], shard=shard_groups[replica])
    whole = ReplicaGroups(replica=replica_groups[index])  # 2 replicas × 1 shard (the torch-parity path)
    knobs = dict(rank=4, start_iter=START, min_compression_rate=2.0, seed=3)
    state_sharded, state_whole = DPCodecState(**knobs), DPCodecState(**knobs)
    for it in range(ITERS):
        full = {n: _replica_grad(n, it, replica) for n in SHAPES}
        ours = [GradShard(n, torch.chunk(g, shards_n)[index].clone(), g.shape[0], compressible=g.dim() == 2)
                for n, g in full.items()]
        ref = [GradShard(n, g.clone(), g.shape[0], compressible=g.dim() == 2) for n, g in full.items()]
        state_sharded.ledger.reset()
        dp_exchange_(state_sharded, ours, sharded)
        dp_exchange_(state_whole, ref, whole)
        for s, w in zip(ours, ref):
            torch.testing.assert_close(s.grad, torch.chunk(w.grad, shards_n)[index], atol=1e-11, rtol=1e-9,
                                       msg=f"iter {it} {s.name}")
        assert set(state_sharded.error_dict) == set(state_whole.error_dict)
        for name, err in state_sharded.error_dict.items():
            torch.testing.assert_close(err, torch.chunk(state_whole.error_dict[name], shards_n)[index],
                                       atol=1e-11, rtol=1e-9)
        if it >= START:
            # across replicas: this shard's padded P blocks, half of the flat Q, the dense shards
            comp = [n for n in SHAPES if n in state_sharded.q_memory_dict]
            assert sorted(comp) == ["a", "b", "c", "d", "f"]
            p = sum(-(-SHAPES[n][0] // shards_n) * 4 for n in comp)
            q = -(-sum(SHAPES[n][1] * 4 for n in comp) // shards_n)
            dense = sum(torch.chunk(full[n], shards_n)[index].numel() for n in SHAPES if n not in comp)
            assert state_sharded.ledger.sent == 8 * (p + q + dense)  # float64
            assert state_sharded.ledger.intra > 0
        else:
            assert state_sharded.ledger.sent == state_sharded.ledger.dense_equiv


def test_two_shards_per_replica_equal_one_shard():
    run_on_gloo(_hsdp_body, world_size=4)
