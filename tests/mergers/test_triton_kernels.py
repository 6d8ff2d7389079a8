"""The multi-tensor Triton kernels against a plain-torch reference.

On a CUDA machine they run natively; on a CPU they run in Triton's interpreter
(``TRITON_INTERPRET=1``, set here before the kernels are first imported, so only when no GPU
is there) when Triton is installed, and are skipped otherwise (CI's CPU image has no Triton:
the merger's ``triton`` mode only ever runs on CUDA).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from verl_commeff.mergers.sign_bits import pack_signs  # noqa: E402
from verl_commeff.mergers.triton_kernels import MultiTensorMerge  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Sizes around the chunk (64 here) and byte (8) boundaries, a 2-D one, a single coordinate.
SIZES = [(1,), (7,), (8,), (63,), (64,), (65,), (3, 50), (129,), (200, 3)]


def _tensors(seed, dtype=torch.float32, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    gs = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    ms = [torch.randn(s, generator=gen) for s in sizes]
    big = max(range(len(gs)), key=lambda i: gs[i].numel())
    gs[big].view(-1)[:2] = torch.tensor([0.0, -0.0]).to(dtype)  # zeros: sign +, mismatched against M̄ < 0
    ms[big].view(-1)[:2] = -1.0
    return [g.to(DEVICE) for g in gs], [m.to(DEVICE) for m in ms]


def _ref_stats(gs, ms):
    out = torch.zeros(3, dtype=torch.float64)
    for g, m in zip(gs, ms):
        g64, mismatch = g.double().cpu(), ((g >= 0) != (m >= 0)).cpu()
        out += torch.stack([(g64 * g64).sum(), (g64 * g64 * mismatch).sum(), mismatch.sum().double()])
    return out


def _ref_scale(g, m, coef):
    multiplier = torch.where((g >= 0) != (m >= 0), 1.0 - torch.tensor(coef, device=g.device),
                             torch.ones((), device=g.device))
    return (g.float() * multiplier).to(g.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stats_match_the_reference_across_chunks_and_bytes(dtype):
    merge = MultiTensorMerge(chunk=64, block=32)  # several programs per tensor, two iterations each
    gs, ms = _tensors(0, dtype)
    got = merge.stats(gs, pack_signs(ms).bits).cpu()
    want = _ref_stats(gs, ms)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got[:2], want[:2], rtol=1e-5, atol=0)
    assert got[2].item() == want[2].item()  # the count is exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_is_bit_identical_to_the_reference_and_zero_coef_touches_nothing(dtype):
    merge = MultiTensorMerge(chunk=64, block=32)
    gs, ms = _tensors(1, dtype)
    bits = pack_signs(ms).bits
    outs = [g.clone() for g in gs]
    merge.scale_mismatched_(outs, bits, torch.tensor(1.5, device=DEVICE))
    for out, g, m in zip(outs, gs, ms):
        assert torch.equal(out, _ref_scale(g, m, 1.5))
    gs[4].view(-1)[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")]).to(dtype)
    outs = [g.clone() for g in gs]
    merge.scale_mismatched_(outs, bits, torch.zeros((), device=DEVICE))
    for out, g in zip(outs, gs):  # coef 0: every bit as it was, NaN included
        assert torch.equal(out.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           g.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_unaligned_base_pointers_take_the_unhinted_kernel():
    """Views at odd offsets (an FSDP shard may start anywhere in its flat buffer): still exact."""
    merge = MultiTensorMerge(chunk=64, block=32)
    gs, ms = _tensors(6)
    bases = [torch.cat([torch.zeros(1, device=DEVICE), g.reshape(-1)]) for g in gs]
    views = [b[1:] for b in bases]  # 4 bytes past an aligned start
    bits = pack_signs(ms).bits
    torch.testing.assert_close(merge.stats(views, bits).cpu()[:2], _ref_stats(gs, ms)[:2], rtol=1e-5, atol=0)
    assert not merge._aligned
    merge.scale_mismatched_(views, bits, torch.tensor(0.5, device=DEVICE))
    assert all(torch.equal(v.view(g.shape), _ref_scale(g, m, 0.5)) for v, g, m in zip(views, gs, ms))
    assert all(b[0].item() == 0.0 for b in bases)  # nothing written before a view's start


def test_tables_follow_new_addresses_and_sizes():
    """The cached pointer and chunk tables are rebuilt when the tensors move or change size."""
    merge = MultiTensorMerge(chunk=64, block=32)
    for seed, sizes in ((2, SIZES), (3, SIZES), (4, SIZES[::-1]), (5, [(1000,), (5,)])):
        gs, ms = _tensors(seed, sizes=sizes)  # fresh tensors: new addresses, maybe new sizes
        bits = pack_signs(ms).bits
        torch.testing.assert_close(merge.stats(gs, bits).cpu()[:2], _ref_stats(gs, ms)[:2], rtol=1e-5, atol=0)
        outs = [g.clone() for g in gs]
        merge.scale_mismatched_(outs, bits, torch.tensor(0.25, device=DEVICE))
        assert all(torch.equal(o, _ref_scale(g, m, 0.25)) for o, g, m in zip(outs, gs, ms))


def test_bad_launch_sizes_are_refused():
    with pytest.raises(ValueError, match="block=48, a power of 2"):
        MultiTensorMerge(chunk=96, block=48)
    with pytest.raises(ValueError, match="chunk=100 must be a multiple of block=32"):
        MultiTensorMerge(chunk=100, block=32)
