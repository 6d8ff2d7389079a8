"""Zero device↔host transfers (either direction) per tick in the boundary codec.

The CPU check wraps the Python entry points that would transfer on an accelerator
(:mod:`tests.host_syncs`); ``test_no_host_reads_from_codec_code_outside_metrics`` in
``test_boundary_codec.py`` checks the device→host reads by call site, this one counts both
directions over whole ticks. On CUDA the real check is
``torch.cuda.set_sync_debug_mode("error")`` (note: ``torch.linalg.qr``/``svdvals`` in a Q
refresh may check their LAPACK info on the host there, which only that mode can see).
"""

import torch

from verl_commeff.codec import BoundaryCodec

from tests.codec.tiny import HIDDEN, codec_config, tiny_qwen2, token_batch
from tests.host_syncs import count_host_transfers


def test_codec_tick_makes_no_transfer_and_metrics_one_read():
    model = tiny_qwen2(num_layers=4)
    model.train()
    codec = BoundaryCodec(codec_config(rank=8, pp_size=4, q_source="fast"), HIDDEN, 4).install(model)
    batches = [token_batch(seed=s) for s in range(1, 4)]
    with count_host_transfers(within="verl_commeff/") as seen:  # not the model's own transfers
        for ids in batches:  # three ticks: old-log-prob forward, train forward + backward
            with torch.no_grad(), codec.pass_scope("old_log_prob"):
                model(input_ids=ids)
            with codec.pass_scope("train"):
                model(input_ids=ids).logits.float().pow(2).mean().backward()
            codec.refresh()  # q_cadence 1: a refresh every tick
            codec.activate_staged()
    assert len(seen) == 0, seen.describe()
    with count_host_transfers() as seen:
        metrics = codec.metrics()
    assert (seen.d2h, seen.h2d) == (1, 0), seen.describe()
    assert metrics["commeff/codec/q_updates"] == 3
