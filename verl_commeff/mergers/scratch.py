"""Reusable work buffers of the merger: no gradient-sized allocation per tick.

With ``commeff.merger.kernels=eager`` every tick needs, per target tensor, a sign-mismatch
mask (1 byte per coordinate) and a gradient-sized work tensor (G·1[mismatch] for the
statistics, the fp32 multiplier for the merge; :mod:`~verl_commeff.mergers.kernels`; the
compiled kernels need neither). Allocating them fresh for each of
the ~200 targets twice per tick costs more than the arithmetic on a CPU (each large
allocation is fresh pages to fault in) and churns the caching allocator on a GPU. The
tensors are processed one after another, so one flat buffer per (dtype, device), as large
as the largest target, serves them all: :meth:`Scratch.take` returns a view of its head
shaped like the tensor. A view is valid until the next :meth:`take` of the same dtype.

Memory: the largest target's numel × (1 byte for the mask + the element size of each
gradient dtype used, + 4 for the fp32 multiplier), independent of the number of targets.
Not checkpointed.
"""

from __future__ import annotations

import torch

__all__ = ["Scratch"]


class Scratch:
    """Flat work buffers keyed by (dtype, device), grown on demand, reused across tensors and ticks."""

    def __init__(self):
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A contiguous ``dtype`` tensor shaped like ``like`` on its device: uninitialised, a view into a shared buffer.

        Args:
            like: the tensor whose shape and device the view takes.
            dtype: the view's dtype.
        """
        key = (dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._buffers[key] = torch.empty(like.numel(), dtype=dtype, device=like.device)  # (numel,)
        return buf[: like.numel()].view(like.shape)

    def buffers(self) -> list[torch.Tensor]:
        """The flat buffers held now (for memory accounting)."""
        return list(self._buffers.values())

    def clear(self) -> None:
        """Drop every buffer (they are re-made on the next :meth:`take`)."""
        self._buffers.clear()
