"""Two gloo processes: cross-rank Q agreement, summed-sketch refresh, checksum, FSDP2 wrapping."""

import torch
import torch.distributed as dist

from tests.dist_harness import run_on_gloo


def _signed_qr(V):
    Q, R = torch.linalg.qr(V.double())
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def _body(rank, world_size):
    from torch.distributed.fsdp import fully_shard

    from tests.codec.tiny import HIDDEN, Capture, codec_config, tiny_qwen2, token_batch
    from verl_commeff.codec import BoundaryCodec

    cfg = codec_config(rank=8, pp_size=2, q_source="fast")

    # 1. The same seed gives the same bootstrap Q on every rank.
    reference = tiny_qwen2(num_layers=4)
    raw = Capture(reference.model.layers[1])  # before the codec: raw h
    ref_codec = BoundaryCodec(cfg, HIDDEN, 4).install(reference)
    assert bool(ref_codec.basis_checksum())
    gathered = [torch.empty_like(ref_codec.live_basis) for _ in range(world_size)]
    dist.all_gather(gathered, ref_codec.live_basis)
    assert torch.equal(gathered[0], gathered[1])

    # 2. FSDP2 + non-reentrant HF checkpointing: the codec hooks the fully_shard-ed layers and
    #    matches the unwrapped model; the parameter gradient is the rank mean.
    sharded = tiny_qwen2(num_layers=4)
    sharded.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sharded.train()
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    codec = BoundaryCodec(cfg, HIDDEN, 4).install(sharded)
    ids = token_batch(seed=10 + rank)  # different data on each rank
    outputs = {}
    for name, model, c in (("sharded", sharded, codec), ("reference", reference, ref_codec)):
        with c.pass_scope("train"):
            logits = model(input_ids=ids).logits
            logits.pow(2).mean().backward()
        outputs[name] = logits.detach()
    torch.testing.assert_close(outputs["sharded"], outputs["reference"], atol=1e-5, rtol=1e-5)
    for (name, param), ref_param in zip(sharded.named_parameters(), reference.parameters()):
        mean_grad = ref_param.grad.clone()
        dist.all_reduce(mean_grad)
        mean_grad /= world_size
        torch.testing.assert_close(param.grad.full_tensor(), mean_grad, atol=1e-6, rtol=1e-5, msg=name)
    assert codec.metrics() == ref_codec.metrics()

    # 3. Different observations → refresh stages orth of the SUMMED sketch on both ranks.
    A = raw.outputs[0].detach().reshape(-1, HIDDEN).double()  # (tokens, H), this rank's data
    local_V = A.T @ (A @ ref_codec.live_basis[0].double())  # (H, r)
    all_V = [torch.empty_like(local_V) for _ in range(world_size)]
    dist.all_gather(all_V, local_V)
    expected = _signed_qr(sum(all_V))  # (H, r)
    staged = codec.refresh()  # (1, H, r)
    torch.testing.assert_close(staged[0].double(), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(staged[0].double(), _signed_qr(local_V), atol=1e-2)  # the sum mattered
    assert bool(codec.basis_checksum())  # staged is not live yet: still the bootstrap
    assert codec.activate_staged()
    assert bool(codec.basis_checksum())

    # 4. A deliberately different Q on one rank makes the checksum false on every rank.
    if rank == 1:
        codec.stage_basis(codec.live_basis.flip(-1))  # same span, columns reordered
        codec.activate_staged()
    assert not bool(codec.basis_checksum())

    # 5. A shared, already-summed sketch (e.g. from the anchor) with reduce=False restores agreement.
    shared = torch.randn(1, HIDDEN, 8, generator=torch.Generator().manual_seed(4))
    codec.refresh(shared, reduce=False)
    codec.activate_staged()
    assert bool(codec.basis_checksum())
    torch.testing.assert_close(codec.live_basis.double(), _signed_qr(shared), atol=1e-5, rtol=1e-4)


def test_codec_across_two_gloo_ranks():
    run_on_gloo(_body, world_size=2)
