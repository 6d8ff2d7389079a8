"""The merger's per-tensor work of a tick as two kernels, fused by ``torch.compile`` or run eagerly.

Every warm tick the merger passes over each local target gradient G twice (SPEC §4):

1. statistics, before λ_t is known: ``tensor_stats(G, p) = [Σ G², Σ_{mismatch} G², #mismatch]``;
2. the merge, once λ_t is global: ``scale_mismatched_(G, p, coef)``: G ← G·(1 − coef·1[mismatch]).

``p`` is the held uint8 mask 1[M̄ ≥ 0] (one byte per coordinate, made once per hold,
:func:`~verl_commeff.mergers.stats.positive_masks`) and "mismatch" means sign(G) ≠ sign(M̄) with sign(x) = + for x ≥ 0. Both are
written through the mismatch indicator

    d = 1[G ≥ 0] − p ∈ {−1, 0, +1},   d² = 1[mismatch],

so each is a handful of elementwise ops and at most one reduction: ``torch.compile``
(inductor) fuses each into ONE pass over G and its mask, a vectorised C++/OpenMP loop on a
CPU and a Triton kernel on a GPU. The multiplier 1 − coef·d² is exactly 1 wherever the sign
agrees and everywhere when coef = 0 (the merger zeroes λ_t on an invalid tick), so those
coordinates, Inf and NaN included, come out bit-identical to G.

Two implementations of the same formulas, chosen by ``commeff.merger.kernels``:

- ``compiled`` (default): :func:`torch.compile` (``dynamic=True``, ``fullgraph=True``) of
  :func:`_tensor_stats` and :func:`_scale_mismatched_`. Needs inductor's backend: a C++
  compiler on a CPU, Triton on a GPU. :meth:`MergerKernels.warm_up` compiles them when the
  actor starts, on small tensors, and turns a failure into a clear error (no silent
  fallback to eager).
- ``eager``: the same formulas as in-place ops into reused :class:`Scratch` buffers (no
  gradient-sized allocation per tick); about 5 passes over memory per kernel instead of 1.

Measured (``benchmarks/bench_anchor_midsize.py``, issue 11): see ``docs/benchmarks.md``.

Statistics accumulate in fp32 within a tensor (the count too: exact while a tensor's
accumulators stay below 2²⁴, far above a row shard of a 1.5B model's matrices; it only
feeds the ``sign_agree`` telemetry) and in fp64 across tensors and ranks.
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import Callable, Sequence

import torch
import torch._dynamo

from verl_commeff.mergers.scratch import Scratch

__all__ = ["COMPILED_MIN_NUMEL", "KERNEL_MODES", "MergerKernels", "RECOMPILE_LIMIT"]

KERNEL_MODES = ("compiled", "eager")
# Tensors with fewer elements run the eager formulas: inductor specialises reductions of ≤ 4096
# elements (and sizes 0 and 1) into graphs of their own, and a fused kernel gains nothing there.
COMPILED_MIN_NUMEL = 4097
# Graphs dynamo may build per (kernel, dtype) while the merger runs (its default, 8, is per code
# object, process-wide; with fullgraph=True one more is an error). One graph per number of dims,
# dims of size 1, strides and device: a few in practice, more for unusual shard shapes.
RECOMPILE_LIMIT = 64


# ---------------------------------------------------------------------------- the formulas (compiled)
def _tensor_stats(g: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[Σ G², Σ_{mismatch} G², #mismatch] of one tensor, a (3,) fp32 tensor.

    Steps:
        1. d = 1[G ≥ 0] − p (fp32), so d² = 1[mismatch].
        2. The three sums, accumulated in fp32.

    Args:
        g: a gradient tensor (any float dtype and shape).
        positive: uint8, shaped like ``g``: 1 where sign(M̄) = +.
    """
    gf = g.float()  # (shape)
    # Step 1: the mismatch indicator.
    d = (gf >= 0).to(torch.float32) - positive.to(torch.float32)  # (shape) ∈ {−1, 0, 1}
    # Step 2: the sums.
    masked = gf * d  # (shape) ±G on mismatch, ±0 elsewhere
    return torch.stack([(gf * gf).sum(), (masked * masked).sum(), (d * d).sum()])  # (3,)


def _scale_mismatched_(g: torch.Tensor, positive: torch.Tensor, coef: torch.Tensor) -> None:
    """G ← G·(1 − coef·d²) in place: G·(1 − coef) where the signs differ, G untouched elsewhere.

    Steps:
        1. d = 1[G ≥ 0] − p (fp32).
        2. G ← G·(1 − coef·d²), computed in fp32 and stored in G's dtype.

    Args:
        g: a gradient tensor, modified in place.
        positive: uint8, shaped like ``g``: 1 where sign(M̄) = +.
        coef: 0-d fp32 on ``g``'s device.
    """
    gf = g.float()  # (shape)
    # Step 1: the mismatch indicator.
    d = (gf >= 0).to(torch.float32) - positive.to(torch.float32)  # (shape)
    # Step 2: the multiplier and the store.
    g.copy_(gf * (1.0 - coef * (d * d)))


# ---------------------------------------------------------------------------- the same formulas, eager
def _eager_mismatch(g: torch.Tensor, positive: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """1[mismatch] as uint8 in a scratch buffer: two in-place passes (G ≥ 0, then ≠ p).

    uint8, not bool: torch's CPU kernels for uint8 are vectorised, those for bool are not
    (measured ~40× on ``ne``, ~5× for ``mul`` against ``where``).
    """
    out = scratch.take(g, torch.bool)  # (shape)
    torch.ge(g, 0, out=out)
    return torch.ne(out.view(torch.uint8), positive, out=out.view(torch.uint8))  # (shape) uint8 0/1


def _eager_tensor_stats(g: torch.Tensor, positive: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """:func:`_tensor_stats` as in-place ops into ``scratch`` (no allocation the size of ``g``)."""
    mismatch = _eager_mismatch(g, positive, scratch)  # (shape) uint8
    masked = torch.mul(g, mismatch, out=scratch.take(g, g.dtype))  # (shape) G·1[mismatch]
    g_flat, m_flat = g.reshape(-1).float(), masked.reshape(-1).float()  # no copy when already fp32
    return torch.stack([torch.dot(g_flat, g_flat), torch.dot(m_flat, m_flat),
                        torch.count_nonzero(mismatch).to(torch.float32)])  # (3,)


def _eager_scale_mismatched_(g: torch.Tensor, positive: torch.Tensor, coef: torch.Tensor, scratch: Scratch) -> None:
    """:func:`_scale_mismatched_` as in-place ops into ``scratch``: G ← G·(1 − coef·1[mismatch])."""
    mismatch = _eager_mismatch(g, positive, scratch)  # (shape) uint8
    one = torch.ones((), dtype=torch.float32, device=g.device)
    multiplier = torch.addcmul(one, mismatch, coef, value=-1.0,
                               out=scratch.take(g, torch.float32))  # (shape) 1 − coef·1[mismatch]
    if g.dtype == torch.float32:
        g.mul_(multiplier)
    else:
        g.copy_(g.float().mul_(multiplier))


# ---------------------------------------------------------------------------- the selector
_KERNELS = {"stats": _tensor_stats, "scale": _scale_mismatched_}


@functools.lru_cache(maxsize=None)
def _compiled(kernel: str, dtype: torch.dtype) -> Callable:
    """``torch.compile`` of one kernel for one gradient dtype, shared by every merger of the process.

    Each (kernel, dtype) compiles a copy of the function with its own code object, because
    dynamo counts graphs per code object (``recompile_limit``: 8 by default, raised to
    :data:`RECOMPILE_LIMIT` while the merger's passes run; with ``fullgraph=True`` one more is
    an error), and the graphs of every dtype a process merges would otherwise share one count.
    """
    fn = _KERNELS[kernel]
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, dynamic=True, fullgraph=True)


class MergerKernels:
    """The two per-tensor kernels in the configured mode (``compiled`` or ``eager``).

    Args:
        mode: one of :data:`KERNEL_MODES`.

    Both methods take the local tensors of a tick as they are (any float dtype and shape).
    The compiled kernels have dynamic shapes: one graph per (dtype, device, number of dims)
    serves every size (:meth:`warm_up` builds those of 1-D and 2-D tensors); tensors under
    :data:`COMPILED_MIN_NUMEL` elements run the eager formulas (the same results).
    """

    def __init__(self, mode: str = "compiled"):
        if mode not in KERNEL_MODES:
            raise ValueError(f"MergerKernels: mode={mode!r} is not valid: must be one of {list(KERNEL_MODES)}")
        self.mode = mode
        self._scratch = Scratch()  # eager mode's work buffers
        self._warm: set[tuple[torch.dtype, torch.device]] = set()

    def warm_up(self, dtype: torch.dtype, device: torch.device) -> None:
        """Compile (once per dtype and device) on small tensors; a failure becomes a clear error.

        Raises:
            RuntimeError: inductor could not build the kernels here (no C++ compiler on a CPU,
                no Triton on a GPU); the message names ``commeff.merger.kernels=eager``.
        """
        key = (dtype, torch.device(device))
        if self.mode == "eager" or key in self._warm:
            return
        # Fresh (not view) 1-D and non-square 2-D inputs above inductor's small-reduction size (4096),
        # under no_grad like apply_: the real ticks then reuse these dynamic-shape graphs instead of
        # recompiling (a square first input would specialise on rows == cols, a view on its base).
        try:
            with self._compiling():
                for shape in ((5003,), (41, 127)):
                    g = (torch.arange(5003 if len(shape) == 1 else 41 * 127, device=device).reshape(shape)
                         .to(dtype) - 2000)  # (shape) both signs
                    positive = (torch.arange(g.numel(), device=device).reshape(shape) % 2).to(torch.uint8)
                    _compiled("stats", dtype)(g, positive)
                    _compiled("scale", dtype)(g, positive, torch.zeros((), dtype=torch.float32, device=device))
        except Exception as err:  # inductor raises many types (BackendCompilerFailed, CalledProcessError, ...)
            first_line = str(err).splitlines()[0] if str(err) else ""
            raise RuntimeError(
                f"commeff.merger.kernels=compiled: torch.compile could not build the merger's fused kernels for "
                f"{dtype} on {device} ({type(err).__name__}: {first_line}). Inductor needs a C++ compiler on a "
                "CPU and Triton on a GPU; install it, or set commeff.merger.kernels=eager (the same maths, "
                "about 4x slower per tick)"
            ) from err
        self._warm.add(key)

    def _use_compiled(self, g: torch.Tensor) -> bool:
        """Compiled for a tensor above inductor's small-reduction size; tiny ones run the eager formulas.

        A tiny tensor gains nothing from a fused kernel, and each size class (0, 1, ≤ 4096
        elements) would be one more compiled graph (see :data:`RECOMPILE_LIMIT`).
        """
        return self.mode == "compiled" and g.numel() >= COMPILED_MIN_NUMEL

    def tensor_stats(self, gs: Sequence[torch.Tensor], positives: Sequence[torch.Tensor]) -> torch.Tensor:
        """[Σ G², Σ_{mismatch} G², #mismatch] of each tensor, a (T, 3) fp32 tensor.

        Args:
            gs: the T local gradient tensors (any float dtype and shape).
            positives: per tensor, the uint8 mask 1[M̄ ≥ 0], shaped like it.
        """
        with self._compiling():
            rows = []
            for g, positive in zip(gs, positives):
                if self._use_compiled(g):
                    self.warm_up(g.dtype, g.device)
                    rows.append(_compiled("stats", g.dtype)(g, positive))
                else:
                    rows.append(_eager_tensor_stats(g, positive, self._scratch))
            return torch.stack(rows)  # (T, 3)

    def scale_mismatched_(self, gs: Sequence[torch.Tensor], positives: Sequence[torch.Tensor],
                          coef: torch.Tensor) -> None:
        """G ← G·(1 − coef·1[sign(G) ≠ sign(M̄)]) in place on each tensor; ``coef``: 0-d fp32 on their device."""
        with self._compiling():
            for g, positive in zip(gs, positives):
                if self._use_compiled(g):
                    self.warm_up(g.dtype, g.device)
                    _compiled("scale", g.dtype)(g, positive, coef)
                else:
                    _eager_scale_mismatched_(g, positive, coef, self._scratch)

    @contextlib.contextmanager
    def _compiling(self):
        """One grad mode for every call (dynamo guards on it) and this module's recompile limit, once per pass."""
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
