import pytest
import torch

from verl_commeff.codec import bootstrap_basis, conditioning, derive_seed, orthonormalize, power_step, sketch


def _assert_orthonormal(Q, atol=1e-5):
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand(*Q.shape[:-2], -1, -1)
    torch.testing.assert_close(Q.transpose(-2, -1) @ Q, eye, atol=atol, rtol=0)


def _projector(Q):
    return Q @ Q.transpose(-2, -1)


def test_bootstrap_is_orthonormal_deterministic_and_per_boundary():
    Q0 = bootstrap_basis(64, 8, seed=0, boundary_index=0)
    assert Q0.shape == (64, 8) and Q0.dtype == torch.float32
    _assert_orthonormal(Q0)
    assert torch.equal(Q0, bootstrap_basis(64, 8, seed=0, boundary_index=0))
    assert not torch.allclose(Q0, bootstrap_basis(64, 8, seed=0, boundary_index=1))
    assert not torch.allclose(Q0, bootstrap_basis(64, 8, seed=1, boundary_index=0))
    # Independent of the global RNG state.
    torch.manual_seed(123)
    assert torch.equal(Q0, bootstrap_basis(64, 8, seed=0, boundary_index=0))


def test_derive_seed_separates_seed_and_boundary():
    seeds = {derive_seed(s, b) for s in range(4) for b in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**63 for s in seeds)


def test_orthonormalize_matches_signed_qr_when_full_rank():
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(3, 32, 6, generator=gen)
    Q = orthonormalize(V)
    _assert_orthonormal(Q)
    # Same span as V and R = QᵀV upper triangular with a positive diagonal.
    R = Q.transpose(-2, -1) @ V
    torch.testing.assert_close(Q @ R, V, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tril(R, diagonal=-1), torch.zeros_like(R), atol=1e-5, rtol=0)
    assert (torch.diagonal(R, dim1=-2, dim2=-1) > 0).all()


def test_power_step_on_rank_deficient_sketch_is_orthonormal_and_keeps_the_span():
    gen = torch.Generator().manual_seed(1)
    H, r = 48, 8
    basis = torch.linalg.qr(torch.randn(H, 3, generator=gen)).Q  # (H, 3): the sketch has rank 3
    V = basis @ torch.randn(3, r, generator=gen)  # (H, r)
    V[:, 5] = 0.0  # and an exactly zero column
    Q = power_step(V)
    _assert_orthonormal(Q)
    # span(V) ⊆ span(Q): projecting V onto Q changes nothing.
    torch.testing.assert_close(_projector(Q) @ V, V, atol=1e-5, rtol=1e-5)
    # Deterministic repair: bit-identical on a repeat and in a batch next to a full-rank matrix.
    assert torch.equal(Q, power_step(V.clone()))
    batch = torch.stack([torch.randn(H, r, generator=gen), V])
    assert torch.equal(power_step(batch)[1], Q)
    # The repaired subspace does not depend on rounding-level noise in V, whereas plain QR's
    # spare columns are that noise (so this check can fail).
    noise = 1e-7 * torch.linalg.matrix_norm(V) * torch.randn(H, r, generator=gen) / (H * r) ** 0.5
    assert torch.linalg.matrix_norm(_projector(power_step(V + noise)) - _projector(Q), ord=2) < 1e-4
    plain, plain_noisy = torch.linalg.qr(V).Q, torch.linalg.qr(V + noise).Q
    assert torch.linalg.matrix_norm(_projector(plain_noisy) - _projector(plain), ord=2) > 0.1


def test_all_zero_sketch_gives_the_canonical_orthonormal_basis():
    Q = orthonormalize(torch.zeros(2, 16, 4))
    _assert_orthonormal(Q)
    assert torch.equal(Q[0], Q[1])


def test_orthonormalize_rejects_bad_shapes():
    with pytest.raises(ValueError, match="r <= H"):
        orthonormalize(torch.randn(4, 5))
    with pytest.raises(ValueError, match="rank=0"):
        bootstrap_basis(8, 0, 0, 0)


def test_sketch_is_at_a_q_in_fp32():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(20, 16, generator=gen, dtype=torch.float64)
    Q = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    out = sketch(A.to(torch.bfloat16), Q)
    assert out.dtype == torch.float32 and out.shape == (16, 4)
    expected = A.to(torch.bfloat16).double().T @ A.to(torch.bfloat16).double() @ Q.float().double()
    torch.testing.assert_close(out.double(), expected, atol=1e-3, rtol=1e-4)


def test_conditioning_is_the_singular_value_ratio():
    U = torch.linalg.qr(torch.randn(10, 3)).Q
    M = U * torch.tensor([4.0, 2.0, 0.5])
    torch.testing.assert_close(conditioning(M), torch.tensor(8.0), rtol=1e-5, atol=0)
    torch.testing.assert_close(conditioning(torch.stack([U, M])), torch.tensor([1.0, 8.0]), rtol=1e-5, atol=0)


def test_warm_started_power_step_converges_to_the_top_r_subspace_of_a_stream():
    gen = torch.Generator().manual_seed(3)
    H, r, tokens, steps = 64, 6, 1024, 10
    directions = torch.linalg.qr(torch.randn(H, 2 * r, generator=gen)).Q  # (H, 2r)
    signal, runner_up = directions[:, :r], directions[:, r:]  # (H, r) each
    strengths = torch.linspace(2.0, 1.5, r)  # (r,): σ of the signal; runner-up σ = 0.7
    stream = []
    for _ in range(steps):
        coeffs = torch.randn(tokens, r, generator=gen) * strengths  # (tokens, r)
        runner_coeffs = 0.7 * torch.randn(tokens, r, generator=gen)  # (tokens, r)
        noise = 0.05 * torch.randn(tokens, H, generator=gen)  # (tokens, H)
        stream.append(coeffs @ signal.T + runner_coeffs @ runner_up.T + noise)  # (tokens, H)
    top = torch.linalg.svd(torch.cat(stream), full_matrices=False).Vh[:r].T  # (H, r): top-r of the stream

    Q = bootstrap_basis(H, r, seed=0, boundary_index=0)
    distances = []
    for A in stream:
        Q = power_step(sketch(A, Q))
        _assert_orthonormal(Q)
        distances.append(torch.linalg.matrix_norm(_projector(Q) - _projector(top), ord=2).item())
    # One step from a random basis is far from converged; the iteration gets there.
    assert distances[0] > 0.5
    assert distances[2] < distances[1] < distances[0]
    assert max(distances[-3:]) < 0.1
    cosines = torch.linalg.svdvals(Q.T @ top)  # cosines of the principal angles
    assert cosines.min() > 0.99


def test_principal_basis_spans_the_top_right_singular_vectors_of_the_activations():
    """Independent reference: the top-r right singular vectors of A (float64 SVD) span the same subspace."""
    from verl_commeff.codec.basis import principal_basis

    gen = torch.Generator().manual_seed(3)
    scales = torch.linspace(3.0, 0.1, 16, dtype=torch.float64)  # distinct singular values
    A = torch.randn(200, 16, generator=gen, dtype=torch.float64) * scales  # (tokens, H)
    Q = principal_basis((A.T @ A).float().unsqueeze(0), 4)[0]  # (H, r)
    torch.testing.assert_close(Q.T @ Q, torch.eye(4), atol=1e-5, rtol=0)
    _, _, Vh = torch.linalg.svd(A, full_matrices=False)
    top = Vh[:4].T  # (H, r)
    torch.testing.assert_close((Q.double() @ Q.double().T), top @ top.T, atol=1e-4, rtol=0)
    # Eckart–Young: no rank-4 basis keeps more of Σ‖h‖² than this one; a random one keeps less
    kept = lambda basis: (A @ basis.double()).pow(2).sum()
    random = torch.linalg.qr(torch.randn(16, 4, generator=gen, dtype=torch.float64))[0]
    assert kept(Q) > kept(random)
    torch.testing.assert_close(kept(Q), (A @ top).pow(2).sum(), rtol=1e-5, atol=0)
    # deterministic, and a zero Gram still gives orthonormal columns
    torch.testing.assert_close(principal_basis((A.T @ A).float().unsqueeze(0), 4)[0], Q, atol=0, rtol=0)
    Z = principal_basis(torch.zeros(1, 16, 16), 4)[0]
    torch.testing.assert_close(Z.T @ Z, torch.eye(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rank=17"):
        principal_basis(torch.eye(16).unsqueeze(0), 17)
