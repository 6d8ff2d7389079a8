"""Zero device↔host transfers per tick in the merger; one per step in ``metrics()``.

The CPU check wraps the Python entry points that would transfer on an accelerator
(:mod:`tests.host_syncs`). On CUDA the real check is ``torch.cuda.set_sync_debug_mode("error")``,
under which any synchronising call raises: :func:`test_cuda_sync_debug_mode_per_tick` runs the
same tick that way when a GPU is present (it is not the check on a CPU-only machine).
"""

import pytest
import torch

from verl_commeff.config import AdaptiveLambdaConfig, MergerConfig
from verl_commeff.mergers import build_merger, pack_signs

from tests.host_syncs import count_host_transfers

SHAPES = [(16, 8), (8, 16), (33,), (4, 4, 3)]


def _tensors(seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device) for s in SHAPES]


def test_counter_sees_each_kind_of_transfer():
    """The counter can fail: each wrapped entry point counts once, on-device work not at all."""
    t = torch.ones(3)
    with count_host_transfers() as seen:
        (t * 2).sum()  # device work: nothing
        t.to(torch.float64)  # a dtype change stays on the device
        t.item() if t.numel() == 1 else t[0].item()
        t.tolist()
        float(t[0])
        bool(t[0] > 0)
        torch.tensor([1.0, 2.0])
        torch.equal(t, t)
    assert (seen.d2h, seen.h2d) == (5, 1), seen.describe()
    with count_host_transfers(within="verl_commeff/") as seen:
        t.tolist()  # from this test file: not on behalf of verl_commeff
    assert len(seen) == 0, seen.describe()


def _merger(mode, checksum_every=0, age_decay=1.0):
    cfg = MergerConfig(alpha=0.25, age_decay=age_decay, checksum_every=checksum_every,
                       adaptive=AdaptiveLambdaConfig(mode=mode, lambda0=1.0, kappa=0.5, cap=1.5, window=4))
    return build_merger(cfg)


@pytest.mark.parametrize("transport,mode", [("sign", "off"), ("sign", "ratio"), ("shards", "cos"), ("sign", "evidence")])
def test_merger_ticks_make_no_transfer_and_metrics_one_read(transport, mode):
    """Hold + several apply_ (adaptive or evidence dose, age decay, a cross-rank check tick): 0 transfers;
    metrics(): 1."""
    merger = _merger(mode, checksum_every=3, age_decay=0.9)
    m_bar = _tensors(100)
    held = pack_signs(m_bar) if transport == "sign" else m_bar
    grads = [_tensors(seed) for seed in range(1, 6)]
    merger.apply_(grads[0], tick=1)  # cold tick
    evidence = {"lambda_star": 0.8, "cos_codec": 0.3} if mode == "evidence" else None  # host floats from the anchor
    with count_host_transfers() as seen:
        merger.hold(held, produced_tick=2, source_tick=1, evidence=evidence)
        for tick, g in enumerate(grads[1:], start=2):  # ticks 2..5: tick 3 runs the cross-rank check
            merger.apply_(g, tick)
    assert len(seen) == 0, seen.describe()
    with count_host_transfers() as seen:
        metrics = merger.metrics()
    assert (seen.d2h, seen.h2d) == (1, 0), seen.describe()
    assert metrics["commeff/merger/merged_ticks"] == 4.0 and metrics["commeff/merger/inputs_identical"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the CPU check is the counter above")
def test_cuda_sync_debug_mode_per_tick():
    merger = _merger("ratio", checksum_every=2, age_decay=0.9)
    merger.hold(pack_signs(_tensors(100, "cuda")), produced_tick=1, source_tick=1)
    grads = [_tensors(seed, "cuda") for seed in range(1, 4)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for tick, g in enumerate(grads, start=1):
            merger.apply_(g, tick)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert merger.metrics()["commeff/merger/merged_ticks"] == 3.0
