"""Weight snapshots as local shards: the copy is exact, independent of the live weights, and on
CUDA goes asynchronously into reused pinned host buffers (that case needs a GPU)."""

import pytest
import torch
from torch import nn

from verl_commeff.workers.weight_shards import export_local_shards, load_local_shards


def _model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).to(device)


def test_cpu_snapshot_is_an_exact_copy_that_later_updates_do_not_touch():
    model = _model("cpu")
    want = [p.detach().clone() for p in model.parameters()]
    snap = export_local_shards(model, out=[torch.zeros(1)])  # out is ignored off CUDA
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(s, w) for s, w in zip(snap, want))
    load_local_shards(model, snap)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned asynchronous path needs CUDA")
def test_cuda_snapshot_lands_in_reused_pinned_buffers_after_the_queued_writes():
    model = _model("cuda")
    with torch.no_grad():  # queued on the compute stream right before the snapshot: the copy must see it
        for p in model.parameters():
            p.mul_(3.0).add_(0.5)
    want = [p.detach().cpu() for p in model.parameters()]
    first = export_local_shards(model)
    assert all(s.device.type == "cpu" and s.is_pinned() for s in first)
    assert all(torch.equal(s, w) for s, w in zip(first, want))
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(1.0)
    second = export_local_shards(model, out=first)
    assert all(a is b for a, b in zip(second, first))  # the same pinned buffers, refilled
    assert all(torch.equal(s, w - 1.0) for s, w in zip(second, want))
