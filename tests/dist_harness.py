"""Run a test body on N CPU processes joined by a gloo process group.

Usage in a test::

    def _body(rank, world_size, tmp):   # module-level, so it can be pickled
        ...assert...

    def test_x(tmp_path):
        run_on_gloo(_body, world_size=2, args=(str(tmp_path),))

A failure on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


def run_on_gloo(fn, world_size: int = 2, args: tuple = ()) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; raise on any failure."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.start_processes(_entry, args=(world_size, _free_port(), fn, args, errors), nprocs=world_size,
                       join=True, start_method="spawn")
    if not errors.empty():
        rank, tb = errors.get()
        raise AssertionError(f"rank {rank} failed:\n{tb}")
