"""FSDP2 on a 2 × 2 gloo HSDP mesh (2 replicas × 2 shards): the plugin owns the replica exchange.

Counted with a wrapper around ``torch.distributed.all_reduce`` (independent of the codec's
own ledger):
1. stock HSDP all-reduces the gradient shards across replicas in the backward;
2. after :func:`own_replica_exchange` the backward runs no all-reduce at all and leaves the
   replica mean (shard group reduce-scatter only);
3. the dense tick then gives the global mean (= stock HSDP), the compressed ticks give the
   one-shard PowerSGD exchange of the replica means, and the bytes the counter saw on the
   replica group equal the ledger's ``sent``, below the dense bytes.
"""

import copy

import torch
import torch.distributed as dist
from torch import nn

from tests.dist_harness import run_on_gloo


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.q_proj = nn.Linear(16, 16, bias=False)
        self.up_proj = nn.Linear(16, 40, bias=False)
        self.down_proj = nn.Linear(40, 16, bias=False)

    def forward(self, x):
        return x + self.down_proj(torch.tanh(self.up_proj(torch.tanh(self.q_proj(self.norm(x))))))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class _Counter:
    """Counts all_reduce calls and bytes per group (by its ranks) while active."""

    def __init__(self):
        self.calls: dict[tuple, int] = {}
        self.bytes: dict[tuple, int] = {}
        self._orig = dist.all_reduce

    def __enter__(self):
        def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            key = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
            self.calls[key] = self.calls.get(key, 0) + 1
            self.bytes[key] = self.bytes.get(key, 0) + tensor.numel() * tensor.element_size()
            return self._orig(tensor, op=op, group=group, async_op=async_op)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._orig


def _mean_over(t, ranks_group, n):
    t = t.clone()
    dist.all_reduce(t, group=ranks_group)
    return t / n


def _body(rank, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from verl_commeff.dp_codec import DPCodecState, GradShard, ReplicaGroups, dp_exchange_
    from verl_commeff.dp_codec.hsdp import exchange_module_grads_, hsdp_groups, own_replica_exchange

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("ddp", "fsdp"))
    groups = hsdp_groups(mesh)
    replica_key = tuple(dist.get_process_group_ranks(groups.replica))
    assert replica_key == (rank % 2, rank % 2 + 2)
    torch.manual_seed(0)
    ref = _Net()
    model = copy.deepcopy(ref)
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    targets = {n for n, _ in model.named_parameters() if n.endswith(("q_proj.weight", "up_proj.weight", "down_proj.weight"))}
    assert len(targets) == 6

    def backward(net, tick):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(100 * tick + rank))
        net.zero_grad()
        net(x).pow(2).mean().backward()

    def local(p):
        return p.grad.to_local()

    def my_chunk(full):
        return torch.chunk(full, 2)[groups.shard_index]

    # 1. Stock HSDP: the backward all-reduces across replicas; grads are the global mean.
    with _Counter() as stock:
        backward(model, 0)
    assert stock.calls.get(replica_key, 0) >= 3 and stock.bytes[replica_key] > 0
    backward(ref, 0)
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    for n, p in model.named_parameters():
        torch.testing.assert_close(local(p), my_chunk(_mean_over(ref_grads[n], None, 4)), atol=1e-6, rtol=1e-5)

    # 2. Owned: no all-reduce in the backward; grads are the replica mean.
    assert own_replica_exchange(model) == 3
    knobs = dict(rank=2, start_iter=1, seed=4)
    state, ref_state = DPCodecState(**knobs), DPCodecState(**knobs)
    dense_bytes = sum(local(p).numel() * 4 for p in model.parameters())
    for tick in range(4):
        with _Counter() as owned:
            backward(model, tick)
        assert owned.calls == {}, f"tick {tick}: the backward still all-reduces: {owned.calls}"
        backward(ref, tick)
        replica_mean = {n: _mean_over(p.grad, groups.shard, 2) for n, p in ref.named_parameters()}
        for n, p in model.named_parameters():
            torch.testing.assert_close(local(p), my_chunk(replica_mean[n]), atol=1e-6, rtol=1e-5)

        # 3. The owned exchange vs the one-shard exchange of the replica means.
        state.ledger.reset()
        with _Counter() as exchange:
            exchange_module_grads_(state, model.named_parameters(), targets, groups)
        whole = [GradShard(n, g.clone(), g.shape[0] if g.dim() else 1, compressible=n in targets)
                 for n, g in replica_mean.items()]
        dp_exchange_(ref_state, whole, ReplicaGroups(replica=groups.replica))
        for s in whole:
            got = local(dict(model.named_parameters())[s.name])
            torch.testing.assert_close(got, my_chunk(s.grad), atol=1e-5, rtol=1e-4, msg=f"tick {tick} {s.name}")
        assert exchange.bytes[replica_key] == state.ledger.sent
        assert state.ledger.dense_equiv == dense_bytes
        if tick == 0:  # dense: the global mean, as stock HSDP
            assert state.ledger.sent == dense_bytes
            for n, p in model.named_parameters():
                torch.testing.assert_close(local(p), my_chunk(_mean_over(ref_grads[n], None, 4)), atol=1e-6, rtol=1e-5)
        else:
            assert state.ledger.compressed == 6 and state.ledger.sent < dense_bytes


def test_owned_replica_exchange_on_a_2x2_hsdp_mesh():
    run_on_gloo(_body, world_size=4)


def test_embedding_names_find_the_vocabulary_matrices_tied_or_not():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl_commeff.dp_codec.hsdp import embedding_names

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=64)
    with torch.device("meta"):
        tied = Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=True))
        untied = Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=False))
    assert embedding_names(tied) == {"model.embed_tokens.weight"}  # one parameter, one name
    assert embedding_names(untied) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert embedding_names(_Net()) == set()  # no nn.Embedding, no output embedding
