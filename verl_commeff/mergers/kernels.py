"""The merger's per-tick work as two passes over the targets, in one of three implementations.

Every warm tick the merger passes over each local target gradient G twice (SPEC §4):

1. statistics, before λ_t is known: ``stats(Gs) = [Σ G², Σ_{mismatch} G², #mismatch]`` over
   all targets (a (3,) fp64 tensor);
2. the merge, once λ_t is global: ``scale_mismatched_(Gs, coef)``: G ← G·(1 − coef·1[mismatch]).

"mismatch" means sign(G) ≠ sign(M̄) with sign(x) = + for x ≥ 0. Both passes are written
through the mismatch indicator

    d = 1[G ≥ 0] − p ∈ {−1, 0, +1},   d² = 1[mismatch],   p = 1[M̄ ≥ 0],

so each is a handful of elementwise ops and at most one reduction. The multiplier
1 − coef·d² is exactly 1 wherever the signs agree and everywhere when coef = 0 (the merger
zeroes λ_t on an invalid tick), so those coordinates, Inf and NaN included, come out
bit-identical to G; the merged values are G·(1 − coef) in fp32, stored in G's dtype, in
every implementation (bit-identical across them).

Implementations, chosen by ``commeff.merger.kernels`` (:class:`MergerKernels`):

- ``triton`` (CUDA): :mod:`~verl_commeff.mergers.triton_kernels`, one multi-tensor launch
  per pass over every target, reading the held sign(M̄) as packed bits (1 bit per
  coordinate while held);
- ``compiled``: :func:`torch.compile` (``dynamic=True``, ``fullgraph=True``) of
  :func:`_tensor_stats` and :func:`_scale_mismatched_`, one fused kernel per tensor and pass
  (a vectorised C++/OpenMP loop on a CPU), against a uint8 mask p per target made once per
  hold (1 byte per coordinate while held);
- ``eager``: the same formulas as in-place torch ops into reused :class:`Scratch` buffers
  (about 5 passes over memory per kernel), against the same uint8 masks;
- ``auto`` (default): the fastest measured on the device type the gradients live on,
  :data:`AUTO_BY_DEVICE` (``docs/benchmarks.md``: on a CPU ``compiled``, on an H200 ``triton``).

A backend that cannot be built (no C++ compiler on a CPU, no Triton) is a clear error at
:meth:`MergerKernels.warm_up`, which the actor runs at start-up; nothing falls back silently.

Statistics accumulate in fp32 within a tensor (``triton``: within a chunk of
:data:`~verl_commeff.mergers.triton_kernels.CHUNK` coordinates; the count too: exact below
2²⁴) and in fp64 across tensors (chunks) and ranks.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch._dynamo

from verl_commeff.mergers.scratch import Scratch
from verl_commeff.mergers.sign_bits import PackedSigns, pack_signs, sign_mask

__all__ = ["AUTO_BY_DEVICE", "COMPILED_MIN_NUMEL", "HeldMasks", "KERNEL_MODES", "MergerKernels", "RECOMPILE_LIMIT"]

KERNEL_MODES = ("auto", "triton", "compiled", "eager")
# What ``auto`` means per device type: the fastest measured there (docs/benchmarks.md, the merger rows).
AUTO_BY_DEVICE = {"cpu": "compiled", "cuda": "triton"}
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


# ---------------------------------------------------------------------------- the held masks
@dataclass
class HeldMasks:
    """The held sign(M̄) in the form the resolved implementation reads; made once per hold.

    Args:
        mode: the resolved implementation (``triton``, ``compiled`` or ``eager``).
        tensors: ``triton``: per target its packed bits, (ceil(numel / 8),) uint8 (the
            :mod:`~verl_commeff.mergers.sign_bits` layout); otherwise per target the uint8 mask
            p = 1[M̄ ≥ 0] shaped like it (fresh tensors, not views: the compiled kernels' guards
            then see no base tensor).
        shapes: the targets' local shapes.
    """

    mode: str
    tensors: list[torch.Tensor]
    shapes: list[torch.Size]

    def nbytes(self) -> int:
        """Bytes held on the device (1 bit per coordinate for ``triton``, 1 byte otherwise)."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def uint8_mask(self, i: int) -> torch.Tensor:
        """Target ``i``'s mask p as uint8 shaped like it (unpacked on demand from packed bits)."""
        if self.mode == "triton":
            return sign_mask(self.tensors[i], self.shapes[i]).to(torch.uint8)
        return self.tensors[i]


def _triton_eligible(g: torch.Tensor) -> bool:
    """Whether the multi-tensor Triton kernels take ``g`` (others run the eager formulas)."""
    return g.is_cuda and g.is_contiguous() and g.numel() > 0 and g.dtype in TRITON_DTYPES


TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    """The merger's two passes in the configured implementation (see the module doc).

    Args:
        mode: one of :data:`KERNEL_MODES`; ``auto`` resolves per device type
            (:data:`AUTO_BY_DEVICE`; ``eager`` on device types not measured yet).

    Usage per hold and tick: :meth:`hold_masks` once per held M̄, then :meth:`stats` and
    :meth:`scale_mismatched_` on the tick's local gradient tensors (any float dtype and shape).
    The compiled kernels have dynamic shapes: one graph per (dtype, device, number of dims)
    serves every size (:meth:`warm_up` builds those of 1-D and 2-D tensors); tensors under
    :data:`COMPILED_MIN_NUMEL` elements run the eager formulas (the same results). The
    Triton kernels take every contiguous fp32/bf16/fp16 CUDA tensor of a tick in one launch
    per pass; any other tensor runs the eager formulas.
    """

    def __init__(self, mode: str = "auto"):
        if mode not in KERNEL_MODES:
            raise ValueError(f"MergerKernels: mode={mode!r} is not valid: must be one of {list(KERNEL_MODES)}")
        self.mode = mode
        self._scratch = Scratch()  # eager mode's work buffers
        self._warm: set[tuple[str, torch.dtype, torch.device]] = set()
        self._multi: dict[torch.dtype, object] = {}  # triton: one MultiTensorMerge per gradient dtype

    def resolve(self, device: torch.device | str) -> str:
        """The implementation used for tensors on ``device`` (``auto`` resolved).

        Raises:
            ValueError: ``triton`` for tensors that are not on a CUDA device.
        """
        device = torch.device(device)
        if self.mode == "auto":
            return AUTO_BY_DEVICE.get(device.type, "eager")
        if self.mode == "triton" and device.type != "cuda":
            raise ValueError(f"commeff.merger.kernels=triton runs on CUDA devices, but the gradients are on {device}: "
                             "use auto, compiled or eager")
        return self.mode

    def warm_up(self, dtype: torch.dtype, device: torch.device | str) -> None:
        """Build the kernels (once per implementation, dtype and device) on small tensors; a failure is a clear error.

        Raises:
            RuntimeError: the kernels could not be built here (``compiled``: no C++ compiler on
                a CPU, no Triton on a GPU; ``triton``: no Triton); the message names
                ``commeff.merger.kernels=eager``.
        """
        device = torch.device(device)
        mode = self.resolve(device)
        key = (mode, dtype, device)
        if mode == "eager" or key in self._warm:
            return
        try:
            with self._compiling():
                if mode == "compiled":
                    # Fresh (not view) 1-D and non-square 2-D inputs above inductor's small-reduction size
                    # (4096), under no_grad like apply_: the real ticks then reuse these dynamic-shape graphs
                    # instead of recompiling (a square first input would specialise on rows == cols, a view
                    # on its base).
                    for shape in ((5003,), (41, 127)):
                        numel = math.prod(shape)
                        g = (torch.arange(numel, device=device).reshape(shape).to(dtype) - 2000)  # (shape) both signs
                        positive = (torch.arange(numel, device=device).reshape(shape) % 2).to(torch.uint8)
                        _compiled("stats", dtype)(g, positive)
                        _compiled("scale", dtype)(g, positive, torch.zeros((), dtype=torch.float32, device=device))
                else:
                    multi = self._multi_for(dtype)
                    gs = [torch.linspace(-1, 1, n, device=device).to(dtype) for n in (5003, 17)]  # (n,) both signs
                    bits = [torch.full(((n + 7) // 8,), 0b01010101, dtype=torch.uint8, device=device)
                            for n in (5003, 17)]
                    multi.stats(gs, bits)
                    multi.scale_mismatched_(gs, bits, torch.zeros((), dtype=torch.float32, device=device))
        except Exception as err:  # inductor and triton raise many types (BackendCompilerFailed, CompilationError, ...)
            first_line = str(err).splitlines()[0] if str(err) else ""
            needs = ("a C++ compiler on a CPU and Triton on a GPU" if mode == "compiled" else "Triton and a CUDA GPU")
            raise RuntimeError(
                f"commeff.merger.kernels={self.mode}: could not build the merger's {mode} kernels for {dtype} on "
                f"{device} ({type(err).__name__}: {first_line}). They need {needs}; install it, or set "
                "commeff.merger.kernels=eager (the same maths, slower per tick)"
            ) from err
        self._warm.add(key)

    def scratch_buffers(self) -> list[torch.Tensor]:
        """The eager formulas' work buffers held now (empty until they run)."""
        return self._scratch.buffers()

    def _multi_for(self, dtype: torch.dtype):
        from verl_commeff.mergers.triton_kernels import MultiTensorMerge

        if dtype not in self._multi:
            self._multi[dtype] = MultiTensorMerge()
        return self._multi[dtype]

    # ---- per hold ------------------------------------------------------------------------
    def hold_masks(self, held: Sequence[torch.Tensor] | PackedSigns) -> HeldMasks:
        """sign(M̄) of a new hold in this implementation's form: packed bits for ``triton``
        (the anchor's bits as they came, or dense M̄ packed once), uint8 masks otherwise.

        Args:
            held: the local M̄ tensors, or their :class:`PackedSigns`.
        """
        if isinstance(held, PackedSigns):
            shapes = list(held.shapes)
            device = held.bits[0].device
        else:
            shapes = [m.shape for m in held]
            device = held[0].device
        mode = self.resolve(device)
        if mode == "triton":
            bits = list(held.bits) if isinstance(held, PackedSigns) else pack_signs(held).bits
            return HeldMasks(mode, [b.contiguous() for b in bits], shapes)
        if isinstance(held, PackedSigns):
            masks = [sign_mask(b, shape).to(torch.uint8) for b, shape in zip(held.bits, held.shapes)]
        else:
            masks = [(m >= 0).to(torch.uint8) for m in held]
        return HeldMasks(mode, masks, shapes)

    # ---- per tick ------------------------------------------------------------------------
    def stats(self, gs: Sequence[torch.Tensor], masks: HeldMasks) -> torch.Tensor:
        """[Σ G², Σ_{mismatch} G², #mismatch] summed over the tensors ``gs``: a (3,) fp64 tensor.

        Args:
            gs: the T local gradient tensors (any float dtype and shape).
            masks: :meth:`hold_masks` of the held M̄ (one entry per tensor).
        """
        device = gs[0].device
        rows = []  # (3,) fp64 partial sums
        with self._compiling():
            if masks.mode == "triton":
                fast, slow = self._split(gs)
                for dtype, idx in fast.items():
                    self.warm_up(dtype, device)
                    rows.append(self._multi_for(dtype).stats([gs[i] for i in idx], [masks.tensors[i] for i in idx]))
                per_tensor = [_eager_tensor_stats(gs[i], masks.uint8_mask(i), self._scratch) for i in slow]
            else:
                per_tensor = []
                for g, positive in zip(gs, masks.tensors):
                    if self._use_compiled(masks.mode, g):
                        self.warm_up(g.dtype, g.device)
                        per_tensor.append(_compiled("stats", g.dtype)(g, positive))
                    else:
                        per_tensor.append(_eager_tensor_stats(g, positive, self._scratch))
            if per_tensor:
                rows.append(torch.stack(per_tensor).to(torch.float64).sum(dim=0))  # (3,)
        if not rows:
            return torch.zeros(3, dtype=torch.float64, device=device)
        return rows[0] if len(rows) == 1 else torch.stack(rows).sum(dim=0)  # (3,)

    def scale_mismatched_(self, gs: Sequence[torch.Tensor], masks: HeldMasks, coef: torch.Tensor) -> None:
        """G ← G·(1 − coef·1[sign(G) ≠ sign(M̄)]) in place on each tensor; ``coef``: 0-d fp32 on their device."""
        with self._compiling():
            if masks.mode == "triton":
                fast, slow = self._split(gs)
                for dtype, idx in fast.items():
                    self.warm_up(dtype, gs[0].device)
                    self._multi_for(dtype).scale_mismatched_([gs[i] for i in idx], [masks.tensors[i] for i in idx],
                                                             coef)
                for i in slow:
                    _eager_scale_mismatched_(gs[i], masks.uint8_mask(i), coef, self._scratch)
                return
            for g, positive in zip(gs, masks.tensors):
                if self._use_compiled(masks.mode, g):
                    self.warm_up(g.dtype, g.device)
                    _compiled("scale", g.dtype)(g, positive, coef)
                else:
                    _eager_scale_mismatched_(g, positive, coef, self._scratch)

    @staticmethod
    def _split(gs: Sequence[torch.Tensor]) -> tuple[dict[torch.dtype, list[int]], list[int]]:
        """Triton mode: (indices of the tensors the Triton kernels take, by dtype; the others' indices)."""
        fast: dict[torch.dtype, list[int]] = {}
        slow = []
        for i, g in enumerate(gs):
            if _triton_eligible(g):
                fast.setdefault(g.dtype, []).append(i)
            elif g.numel() > 0:
                slow.append(i)
        return fast, slow

    @staticmethod
    def _use_compiled(mode: str, g: torch.Tensor) -> bool:
        """Compiled for a tensor above inductor's small-reduction size; tiny ones run the eager formulas.

        A tiny tensor gains nothing from a fused kernel, and each size class (0, 1, ≤ 4096
        elements) would be one more compiled graph (see :data:`RECOMPILE_LIMIT`).
        """
        return mode == "compiled" and g.numel() >= COMPILED_MIN_NUMEL

    @contextlib.contextmanager
    def _compiling(self):
        """One grad mode for every call (dynamo guards on it) and this module's recompile limit, once per pass."""
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
