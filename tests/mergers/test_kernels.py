"""The merger's kernels, every implementation, against a plain-torch reference.

Reference (written here from the kernels' contract, not from their code): mismatch =
(G ≥ 0) ≠ (M̄ ≥ 0); stats = [Σ G², Σ_{mismatch} G², #mismatch] in fp64; the merge is
G·m in fp32 stored in G's dtype, m = 1 − coef on mismatch and exactly 1 elsewhere.
``triton`` runs where CUDA is (on a CPU its kernels are checked in Triton's interpreter by
``test_triton_kernels.py`` when Triton is installed).
"""

import math

import pytest
import torch
from torch._dynamo.utils import counters

from verl_commeff.config import CommEffConfigError, MergerConfig
from verl_commeff.mergers.kernels import MergerKernels
from verl_commeff.mergers.sign_bits import pack_signs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ["compiled", "eager"] + (["triton"] if DEVICE == "cuda" else [])
# 1-D, 2-D square and not, 3-D, a dim of size 1, below (eager formulas) and above
# (compiled kernels) COMPILED_MIN_NUMEL.
SHAPES = [(7,), (4097,), (64, 64), (96, 80), (3, 5, 7), (300, 40), (3, 40, 50), (1, 5000), (5000, 1)]


def _pair(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=gen).to(dtype)
    m = torch.randn(shape, generator=gen)
    g.view(-1)[:3] = torch.tensor([0.0, -0.0, 1e-30]).to(dtype)  # zeros: sign +, mismatch iff M̄ < 0
    m.view(-1)[:2] = torch.tensor([-1.0, 0.0])
    return g.to(DEVICE), m.to(DEVICE)


def _masks(kernels, ms, packed=True):
    """The kernels' held form of sign(ms), made from packed bits (the anchor's wire) or dense M̄."""
    return kernels.hold_masks(pack_signs(ms) if packed else list(ms))


def _ref_stats(g, m):
    mismatch = (g >= 0) != (m >= 0)
    g64 = g.double()
    return [float((g64 * g64).sum()), float((g64[mismatch] ** 2).sum()), int(mismatch.sum())]


def _ref_stats_many(gs, ms):
    return [sum(col) for col in zip(*[_ref_stats(g, m) for g, m in zip(gs, ms)])]


def _ref_scale(g, m, coef):
    mismatch = (g >= 0) != (m >= 0)
    c = torch.tensor(coef, dtype=torch.float32)
    multiplier = torch.where(mismatch, 1.0 - c, torch.ones((), dtype=torch.float32)).to(g.device)
    return (g.float() * multiplier).to(g.dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_match_the_reference(mode, dtype):
    kernels = MergerKernels(mode)
    for i, shape in enumerate(SHAPES):  # one tensor at a time
        g, m = _pair(shape, i, dtype)
        got = kernels.stats([g], _masks(kernels, [m], packed=i % 2 == 0))
        want = _ref_stats(g, m)
        assert got.dtype == torch.float64 and got.shape == (3,)
        assert got[0].item() == pytest.approx(want[0], rel=1e-5)
        assert got[1].item() == pytest.approx(want[1], rel=1e-5)
        assert got[2].item() == want[2]  # the count is exact
    gs, ms = zip(*[_pair(shape, 30 + i, dtype) for i, shape in enumerate(SHAPES)])  # all at once
    got = kernels.stats(gs, _masks(kernels, ms)).tolist()
    want = _ref_stats_many(gs, ms)
    assert got[:2] == pytest.approx(want[:2], rel=1e-5) and got[2] == want[2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_mismatched_is_bit_identical_to_the_reference(mode, dtype):
    kernels = MergerKernels(mode)
    for i, shape in enumerate(SHAPES):
        g, m = _pair(shape, 10 + i, dtype)
        coef = 0.3 + 0.1 * i
        out = g.clone()
        kernels.scale_mismatched_([out], _masks(kernels, [m], packed=i % 2 == 1),
                                  torch.tensor(coef, dtype=torch.float32, device=DEVICE))
        assert out.dtype == dtype and torch.equal(out, _ref_scale(g, m, coef))
        mismatch = (g >= 0) != (m >= 0)
        assert torch.equal(out[~mismatch], g[~mismatch])  # agreeing signs: untouched
    gs, ms = zip(*[_pair(shape, 50 + i, dtype) for i, shape in enumerate(SHAPES)])  # all at once
    outs = [g.clone() for g in gs]
    kernels.scale_mismatched_(outs, _masks(kernels, ms), torch.tensor(0.55, dtype=torch.float32, device=DEVICE))
    for out, g, m in zip(outs, gs, ms):
        assert torch.equal(out, _ref_scale(g, m, 0.55))


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_gradient_is_merged_in_place(mode):
    kernels = MergerKernels(mode)
    g, m = _pair((80, 60), 3)
    g_t, m_t = g.t(), m.t()  # (60, 80) strided views
    assert not g_t.is_contiguous()
    want = _ref_scale(g_t, m_t, 0.7)
    masks = _masks(kernels, [m_t])
    kernels.scale_mismatched_([g_t], masks, torch.tensor(0.7, device=DEVICE))
    assert torch.equal(g_t, want) and torch.equal(g, want.t())  # the mutation reached the base tensor
    stats = kernels.stats([g_t], masks)
    assert stats[2].item() == _ref_stats(g_t, m_t)[2]


@pytest.mark.parametrize("mode", MODES)
def test_zero_coef_leaves_non_finite_values_exactly(mode):
    kernels = MergerKernels(mode)
    g, m = _pair((90, 50), 4)
    g[1, 1], g[2, 2], g[3, 3] = float("inf"), float("-inf"), float("nan")
    out = g.clone()
    kernels.scale_mismatched_([out], _masks(kernels, [m]), torch.zeros((), device=DEVICE))
    assert torch.equal(out.nan_to_num(nan=7.0), g.nan_to_num(nan=7.0)) and torch.equal(out.isnan(), g.isnan())


def test_compiled_kernels_do_not_recompile_after_warm_up():
    """One warm-up builds the graphs every later shape reuses (a recompile costs ~0.1-1 s on a tick)."""
    kernels = MergerKernels("compiled")
    kernels.warm_up(torch.float32, torch.device("cpu"))
    before = counters["stats"]["unique_graphs"]
    for i, shape in enumerate([(128, 128), (4864, 90), (12345,), (90, 4864), (7,), (3, 5)]):
        g, m = _pair(shape, 20 + i)
        g, m = g.cpu(), m.cpu()
        masks = _masks(kernels, [m])
        kernels.stats([g], masks)
        kernels.scale_mismatched_([g], masks, torch.tensor(0.5))
    assert counters["stats"]["unique_graphs"] == before


def test_odd_shard_shapes_compile_without_reaching_dynamo_s_limit():
    """Empty and one-row shards (FSDP2 on many ranks), dims of size 1, 3-D and 4-D tensors, strided views:
    each may need a graph of its own, far more than dynamo's default 8 per function; all merge right."""
    kernels = MergerKernels("compiled")
    shapes = [(0, 896), (1, 896), (0,), (1,), (2, 1), (1, 5000), (5000, 1), (2, 3000), (3, 40, 50), (1, 80, 60),
              (2, 3, 40, 30), (4, 2, 1, 700)]
    gs, ms = zip(*[_pair(s, 40 + i) if math.prod(s) >= 3 else (torch.randn(s), torch.randn(s))
                   for i, s in enumerate(shapes)])
    gs = [g.cpu() for g in gs] + [gs[5].cpu().t()]  # and a strided (5000, 1) → (1, 5000) view
    ms = [m.cpu() for m in ms] + [ms[5].cpu().t()]
    masks = _masks(kernels, ms, packed=False)
    for g, m in zip(gs, ms):  # one tensor at a time: each its own graph
        assert kernels.stats([g], _masks(kernels, [m])).tolist()[2] == _ref_stats(g, m)[2]
    assert kernels.stats(gs, masks).tolist()[2] == _ref_stats_many(gs, ms)[2]
    outs = [g.clone() for g in gs]
    kernels.scale_mismatched_(outs, masks, torch.tensor(0.4))
    for out, g, m in zip(outs, gs, ms):
        assert torch.equal(out, _ref_scale(g, m, 0.4))


def test_a_compiler_failure_is_a_clear_error_not_a_fallback(monkeypatch):
    import verl_commeff.mergers.kernels as kernels_module

    def broken(*args):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(kernels_module, "_compiled", lambda kernel, dtype: broken)
    kernels = MergerKernels("compiled")
    with pytest.raises(RuntimeError, match=r"commeff.merger.kernels=eager") as err:
        kernels.warm_up(torch.float32, torch.device("cpu"))
    assert "no C++ compiler found" in str(err.value)
    with pytest.raises(RuntimeError, match="could not build"):  # not marked warm: every later call says so too
        kernels.stats([torch.ones(5000)], kernels.hold_masks([torch.ones(5000)]))


def test_kernels_knob_is_validated_and_auto_resolves_per_device():
    with pytest.raises(CommEffConfigError,
                       match=r"commeff.merger.kernels='fused' is not valid.*auto.*triton.*compiled.*eager"):
        MergerConfig(kernels="fused")
    assert MergerConfig().kernels == "auto"
    with pytest.raises(ValueError, match="must be one of"):
        MergerKernels("fused")
    auto = MergerKernels("auto")
    assert [auto.resolve(d) for d in ("cpu", "cuda:0", "meta")] == ["compiled", "triton", "eager"]
    assert MergerKernels("eager").resolve("cuda") == "eager"
    with pytest.raises(ValueError, match="kernels=triton runs on CUDA devices, but the gradients are on cpu"):
        MergerKernels("triton").resolve("cpu")


def test_held_masks_are_packed_bits_for_triton_and_bytes_otherwise():
    """The held form's footprint: 1 bit per coordinate for the Triton kernels, 1 byte for the others."""
    ms = [torch.randn(300, 40), torch.randn(4101)]
    compiled = MergerKernels("compiled").hold_masks(pack_signs(ms))
    assert compiled.nbytes() == 300 * 40 + 4101
    assert all(torch.equal(compiled.uint8_mask(i), (m >= 0).to(torch.uint8)) for i, m in enumerate(ms))
    kernels = MergerKernels("auto")
    kernels.resolve = lambda device: "triton"  # the held form only: no kernel runs here
    packed = kernels.hold_masks(ms)  # dense M̄ packed once per hold
    assert packed.mode == "triton" and packed.nbytes() == 300 * 40 // 8 + (4101 + 7) // 8
    assert all(torch.equal(packed.uint8_mask(i), (m >= 0).to(torch.uint8)) for i, m in enumerate(ms))
