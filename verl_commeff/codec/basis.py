"""Stateless basis math of the boundary PowerSGD codec (SPEC §2).

A boundary basis Q is an (H, r) fp32 matrix with orthonormal columns; the codec keeps one
per boundary and stacks them as (B, H, r). Everything here is batched over any leading
dimensions, runs on the tensors' device and never reads a value on the host.

One refresh of Q is one warm-started block power-iteration step:

1. :func:`sketch`: while observing, accumulate V = Σ Aᵀ(A·Q) over the activations A
   (rows = tokens) of every real forward, in fp32.
2. (the caller sums V across data-parallel ranks.)
3. :func:`power_step`: Q ← orth(V).

``orth`` (:func:`orthonormalize`) is an fp32 reduced QR with the column signs fixed so
that diag(R) ≥ 0; columns whose R_ii is negligible (V rank-deficient) are replaced by a
fixed canonical vector and the QR is redone, so the result is a deterministic function of
V and always has orthonormal columns whose span contains span(V).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

__all__ = [
    "bootstrap_basis",
    "principal_basis",
    "canonical_fill",
    "conditioning",
    "derive_seed",
    "orthonormalize",
    "power_step",
    "sketch",
]

BASIS_DTYPE = torch.float32

# Seed of the canonical vectors that replace degenerate columns (any fixed value works;
# it only has to be the same everywhere).
_CANONICAL_FILL_SEED = 0x5EED_C0DEC

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, boundary_index: int) -> int:
    """A 63-bit generator seed from (seed, boundary index), the same in every process.

    SplitMix64 finaliser over ``seed`` and ``boundary_index`` (no Python ``hash``, which is
    salted per process).

    Args:
        seed: the codec seed (``commeff.codec.seed``), ≥ 0.
        boundary_index: the boundary's ordinal (0 for the first boundary), ≥ 0.
    """
    if seed < 0 or boundary_index < 0:
        raise ValueError(f"derive_seed needs seed >= 0 and boundary_index >= 0, got {seed}, {boundary_index}")
    z = (seed * 0x9E3779B97F4A7C15 + (boundary_index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z >> 1  # torch.Generator.manual_seed takes a non-negative int64


@functools.lru_cache(maxsize=8)
def canonical_fill(hidden: int, rank: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """The fixed (H, r) fp32 matrix with unit columns used to repair degenerate columns.

    Drawn from a CPU generator with a constant seed, so it is bit-identical everywhere;
    cached per (H, r, device), so do not modify the result in place.

    Args:
        hidden: H, rows.
        rank: r, columns.
        device: where to put the result (default: CPU).
    """
    gen = torch.Generator(device="cpu").manual_seed(_CANONICAL_FILL_SEED)
    fill = torch.randn(hidden, rank, generator=gen, dtype=BASIS_DTYPE)  # (H, r)
    fill = fill / torch.linalg.vector_norm(fill, dim=0, keepdim=True)
    if device is None or torch.device(device).type == "cpu":
        return fill if device is None else fill.to(device)
    # Through pinned memory, non-blocking: a blocking host→device copy waits for the device (a
    # host sync in the first Q refresh on a GPU); the allocator keeps the pinned block until it is copied.
    return fill.pin_memory().to(device, non_blocking=True)


def _signed_qr(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR with column signs fixed so that diag(R) ≥ 0; returns (Q, |diag(R)|)."""
    Q, R = torch.linalg.qr(V, mode="reduced")  # (..., H, r), (..., r, r)
    diag = torch.diagonal(R, dim1=-2, dim2=-1)  # (..., r)
    signs = torch.where(diag < 0, -1.0, 1.0).to(Q.dtype)  # (..., r)
    return Q * signs.unsqueeze(-2), diag.abs()


def orthonormalize(V: torch.Tensor, rtol: Optional[float] = None) -> torch.Tensor:
    """orth(V): orthonormal columns spanning V's columns, deterministically repaired.

    Algorithm:

    1. Reduced QR of V in fp32 with column signs fixed so that diag(R) ≥ 0.
    2. Column j is degenerate when |R_jj| ≤ rtol · max_i |R_ii| (all columns are when
       V = 0).
    3. Where a matrix has degenerate columns, those columns of V are replaced by the
       canonical unit vectors of :func:`canonical_fill` scaled to max_i |R_ii|, and the
       signed QR is redone; matrices without degenerate columns keep the result of step 1.

    Branch-free (no host sync); batched over leading dimensions.

    Args:
        V: (..., H, r) with r ≤ H; any floating dtype (computed in fp32).
        rtol: relative threshold of step 2; default max(H, r) · eps(fp32).

    Returns:
        (..., H, r) fp32 with orthonormal columns.
    """
    if V.dim() < 2:
        raise ValueError(f"orthonormalize needs V of shape (..., H, r), got shape {tuple(V.shape)}")
    hidden, rank = V.shape[-2], V.shape[-1]
    if rank > hidden:
        raise ValueError(f"orthonormalize needs r <= H, got V of shape {tuple(V.shape)} (r={rank} > H={hidden})")
    if rtol is None:
        rtol = max(hidden, rank) * torch.finfo(BASIS_DTYPE).eps
    V = V.to(BASIS_DTYPE)

    # Step 1: signed reduced QR.
    Q, diag = _signed_qr(V)  # (..., H, r), (..., r)

    # Step 2: degenerate columns, relative to the largest |R_ii| of the same matrix.
    scale = diag.amax(dim=-1, keepdim=True)  # (..., 1)
    degenerate = diag <= rtol * scale  # (..., r)

    # Step 3: replace them by canonical vectors (at V's scale) and redo the QR.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # (..., 1)
    fill = canonical_fill(hidden, rank, V.device) * scale.unsqueeze(-1)  # (..., H, r)
    repaired_V = torch.where(degenerate.unsqueeze(-2), fill, V)  # (..., H, r)
    repaired_Q, _ = _signed_qr(repaired_V)  # (..., H, r)
    needs_repair = degenerate.any(dim=-1)[..., None, None]  # (..., 1, 1)
    return torch.where(needs_repair, repaired_Q, Q)


def power_step(V: torch.Tensor) -> torch.Tensor:
    """One warm-started block power-iteration step: Q_new = orth(V).

    V = Σ Aᵀ(A·Q_old) is the sketch accumulated against the current basis (see
    :func:`sketch`), already summed across ranks.

    Args:
        V: (..., H, r) sketch.

    Returns:
        (..., H, r) fp32 orthonormal basis.
    """
    return orthonormalize(V)


def sketch(A: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The power-iteration sketch Aᵀ(A·Q) of one batch of activations, in fp32.

    Args:
        A: (tokens, H) activations (rows = tokens); any floating dtype.
        Q: (H, r) current basis.

    Returns:
        (H, r) fp32.
    """
    A32 = A.to(BASIS_DTYPE)  # (tokens, H)
    return A32.transpose(0, 1) @ (A32 @ Q.to(BASIS_DTYPE))  # (H, r)


def conditioning(Q: torch.Tensor) -> torch.Tensor:
    """σ_max/σ_min of Q (1 for orthonormal columns; inf if rank-deficient).

    Args:
        Q: (..., H, r).

    Returns:
        (...,) fp32 on Q's device.
    """
    sv = torch.linalg.svdvals(Q.to(BASIS_DTYPE))  # (..., r), descending
    return sv[..., 0] / sv[..., -1]


def bootstrap_basis(hidden: int, rank: int, seed: int, boundary_index: int) -> torch.Tensor:
    """The initial basis of one boundary: orth(randn(H, r)), identical in every process.

    The Gaussian is drawn on the CPU from a generator seeded with
    :func:`derive_seed` ``(seed, boundary_index)``; move the result to the device after.

    Args:
        hidden: H, the model's hidden size.
        rank: r, 1 ≤ r ≤ H.
        seed: the codec seed.
        boundary_index: the boundary's ordinal.

    Returns:
        (H, r) fp32 CPU tensor with orthonormal columns.
    """
    if not 1 <= rank <= hidden:
        raise ValueError(f"bootstrap_basis rank={rank} is out of range: must be an integer in [1, {hidden}]")
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, boundary_index))
    return orthonormalize(torch.randn(hidden, rank, generator=gen, dtype=BASIS_DTYPE))


def principal_basis(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` eigenvectors of a Gram matrix AᵀA: the activations' principal subspace.

    The projection h ↦ h·Q·Qᵀ onto these columns keeps the most of Σ‖h‖² any rank-r basis
    can (Eckart–Young), so a codec bootstrapped with them starts with the smallest
    reconstruction error on the activations the Gram was summed over.

    Algorithm:

    1. ``torch.linalg.eigh`` of the symmetrised Gram (fp32, eigenvalues ascending).
    2. The last ``rank`` eigenvectors, largest eigenvalue first.
    3. :func:`orthonormalize`, which fixes the column signs (diag(R) ≥ 0) so the result is a
       deterministic function of the Gram, and repairs a degenerate (all-zero) Gram.

    Args:
        gram: (..., H, H) Σ AᵀA over the observed activations.
        rank: r, 1 ≤ r ≤ H.

    Returns:
        (..., H, r) fp32 with orthonormal columns.
    """
    hidden = gram.shape[-1]
    if gram.dim() < 2 or gram.shape[-2] != hidden:
        raise ValueError(f"principal_basis needs a Gram of shape (..., H, H), got shape {tuple(gram.shape)}")
    if not 1 <= rank <= hidden:
        raise ValueError(f"principal_basis rank={rank} is out of range: must be an integer in [1, {hidden}]")
    # Step 1: the eigendecomposition.
    sym = gram.to(BASIS_DTYPE)
    sym = (sym + sym.transpose(-2, -1)) / 2  # (..., H, H)
    _, vectors = torch.linalg.eigh(sym)  # (..., H, H), columns by ascending eigenvalue
    # Step 2: the top r, largest first.
    top = vectors[..., -rank:].flip(-1)  # (..., H, r)
    # Step 3: deterministic signs.
    return orthonormalize(top)
