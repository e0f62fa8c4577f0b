"""Specification of vqref, grouped by the function each test specifies.

Gradients are compared with central finite differences of the frozen surrogate
(README eq. 15) in float64; everything else with brute force, closed forms, or
the plain function that a fast path replaces. Run with ``python -m pytest -q``.
"""

import json
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import vqref

# One tolerance per kind of comparison.
GRAD_TOL = vqref.GRAD_TOL  # manual vs finite-difference gradients, max relative error
EXACT_TOL = 1e-12          # identities that hold to float64 rounding; fast path vs plain path
ROUNDING_RTOL = 1e-10      # one number by two formulas through long sums of rounded terms
REPORT_RTOL = 1e-9         # a reported number vs the explicit-residual formula
SHIFT_RTOL = 1e-8          # a model fitted on X + c (or c X) vs on X
NUMERICAL_RTOL = 1e-7      # training with finite-difference gradients vs manual ones
DIFFERENT = 1e-3           # two results that must differ differ by more than this (relative)
NOT_SMALL = 1e-3           # a gradient that must not vanish is larger than this somewhere
PRINTED_RTOL = 0.05        # a number printed with two significant digits vs its value
HERE = os.path.dirname(os.path.abspath(__file__))


def data_point(seed, *, B=64, D=12, m=3, K=7):
    """A random non-symmetric batch X with a check point (W, E) away from assignment kinks."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, D)) @ rng.standard_normal((D, D)) * 0.7 + 0.3
    W, E = vqref.check_point(X, m, K, seed=seed)
    return X, W, E


def loss_by_definition(X, W, E, beta, alpha):
    """README eq. 4 written out sample by sample, independent of vqref."""
    total = 0.0
    for x in X:
        z = x @ W
        e = E[np.argmin([np.sum((z - c) ** 2) for c in E])]
        total += np.sum((x - e @ W.T) ** 2) + (alpha + beta) * np.sum((z - e) ** 2)
    return total / len(X)


def brute_distortion(Z, E):
    return np.mean(np.min(((Z[:, None, :] - E[None]) ** 2).sum(-1), axis=1))


def test_make_data_curve_is_a_closed_curve_of_the_stated_variances():
    X = vqref.make_data(40000, 24, seed=1, curve=5, noise=0.01)
    variances = np.linalg.eigvalsh(np.cov(X.T))[::-1]
    expected = np.repeat(2.0 / np.arange(1, 6), 2) + 0.01               # scale / j, + noise
    np.testing.assert_allclose(variances[:10], expected, rtol=0.05)
    np.testing.assert_allclose(variances[10:], 0.01, rtol=0.1)
    with pytest.raises(ValueError, match="^curve must be"):
        vqref.make_data(10, 8, curve=5)


# ------------------------------------------------ loss_and_grads, backward (eqs. 4-14)

@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("seed,beta,alpha", [(0, 0.25, 1.0), (1, 0.0, 1.0), (2, 0.7, 2.5),
                                             (3, 0.0, 0.3), (4, 1.0, 0.0)])
def test_manual_gradients_match_finite_differences(estimator, seed, beta, alpha):
    X, W, E = data_point(seed)
    _, dW, dE = vqref.loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = vqref.numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    assert vqref.relative_error(dW, nW) < GRAD_TOL
    assert vqref.relative_error(dE, nE) < GRAD_TOL
    assert np.max(np.abs(dW)) > NOT_SMALL
    assert alpha == 0 or np.max(np.abs(dE)) > NOT_SMALL



def autograd_grads(torch, X, W, E, estimator, beta, alpha):
    """dW, dE of eq. 4 by PyTorch autograd, with sg(.) as detach() and the codes of eq. 2."""
    X, W, E = (torch.tensor(A, dtype=torch.float64) for A in (X, W, E))
    W.requires_grad_(True)
    E.requires_grad_(True)
    Z = X @ W
    k = torch.from_numpy(vqref.nearest_codeword(Z.detach().numpy(), E.detach().numpy()))
    Q = E[k]
    if estimator == "ste":
        q = Z + (Q - Z).detach()                                    # eq. 5
    else:
        with torch.no_grad():                                       # eq. 6: sg(lam R)
            u = Z / Z.norm(dim=1, keepdim=True)
            v = Q / Q.norm(dim=1, keepdim=True)
            w = (u + v) / (u + v).norm(dim=1, keepdim=True)
            lam = Q.norm(dim=1, keepdim=True) / Z.norm(dim=1, keepdim=True)
        Rz = Z - 2 * w * (w * Z).sum(1, keepdim=True) + 2 * v * (u * Z).sum(1, keepdim=True)
        q = lam * Rz
    rec = ((X - q @ W.T) ** 2).sum(1)
    codebook = ((Z.detach() - Q) ** 2).sum(1)
    commitment = ((Z - Q.detach()) ** 2).sum(1)
    (rec + alpha * codebook + beta * commitment).mean().backward()
    return W.grad.numpy(), E.grad.numpy()


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("seed,beta,alpha", [(0, 0.25, 1.0), (2, 0.7, 2.5)])
def test_manual_gradients_match_pytorch_autograd(estimator, seed, beta, alpha):
    torch = pytest.importorskip("torch")
    X, W, E = data_point(seed)
    _, dW, dE = vqref.loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    aW, aE = autograd_grads(torch, X, W, E, estimator, beta, alpha)
    assert vqref.relative_error(dW, aW) < ROUNDING_RTOL
    assert vqref.relative_error(dE, aE) < ROUNDING_RTOL


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_gradients_hold_for_a_non_orthonormal_W(estimator):
    X, W, E = data_point(17)
    W = W @ np.diag([2.0, 0.5, 1.3]) + 0.1                          # W^T W != I
    loss, dW, dE = vqref.loss_and_grads(X, W, E, estimator=estimator, beta=0.4, alpha=0.6)
    assert loss == pytest.approx(loss_by_definition(X, W, E, 0.4, 0.6), rel=EXACT_TOL)
    nW, nE = vqref.numerical_grads(X, W, E, estimator=estimator, beta=0.4, alpha=0.6)
    assert vqref.relative_error(dW, nW) < GRAD_TOL
    assert vqref.relative_error(dE, nE) < GRAD_TOL


def test_grad_check_catches_a_gradient_missing_a_path():
    X, W, E = data_point(5)
    nW, _ = vqref.numerical_grads(X, W, E)
    cache = vqref.forward(X, W, E)[2]
    dX_hat = (2.0 / len(X)) * (cache["X_hat"] - X)
    assert vqref.relative_error(dX_hat.T @ cache["Q"], nW) > DIFFERENT   # eq. 8 alone
    _, dW, _ = vqref.loss_and_grads(X, W, E)
    assert vqref.relative_error(dW * (1 + 1e-4), nW) > GRAD_TOL     # a 1e-4 error is caught


def test_each_term_of_the_backward_pass_is_needed():
    """Drop the commitment term (12) or the codebook weight (14): the check fails."""
    X, W, E = data_point(6)
    rec, dist, cache = vqref.forward(X, W, E)
    nW, nE = vqref.numerical_grads(X, W, E, beta=0.5, alpha=1.5)
    dW, dE = vqref.backward(cache, "ste", 0.5, 1.5)
    assert vqref.relative_error(dW, nW) < GRAD_TOL and vqref.relative_error(dE, nE) < GRAD_TOL
    dW_without_commitment, _ = vqref.backward(cache, "ste", 0.0, 1.5)
    _, dE_without_alpha = vqref.backward(cache, "ste", 0.5, 1.0)
    assert vqref.relative_error(dW_without_commitment, nW) > DIFFERENT
    assert vqref.relative_error(dE_without_alpha, nE) > DIFFERENT


def test_ste_and_rotation_differ_on_W_and_share_the_codebook_gradient():
    X, W, E = data_point(6)
    _, dW_s, dE_s = vqref.loss_and_grads(X, W, E, estimator="ste")
    _, dW_r, dE_r = vqref.loss_and_grads(X, W, E, estimator="rotation")
    assert vqref.relative_error(dW_s, dW_r) > DIFFERENT
    np.testing.assert_array_equal(dE_s, dE_r)


def test_loss_matches_its_definition_and_the_frozen_surrogate():
    X, W, E = data_point(7)
    loss, _, _ = vqref.loss_and_grads(X, W, E, beta=0.3, alpha=1.7)
    assert loss == pytest.approx(loss_by_definition(X, W, E, 0.3, 1.7), rel=EXACT_TOL)
    for est in ("ste", "rotation"):
        surrogate = vqref.frozen_surrogate(X, W, E, est, 0.3, 1.7)
        assert surrogate(W, E) == pytest.approx(loss, rel=ROUNDING_RTOL)


def test_loss_is_exact_far_from_the_origin():
    """At an offset of 1e8 the expanded form (4') loses every digit; eq. 4 must be computed."""
    X, W, E = data_point(8, D=6, m=2, K=4)
    c = 1e8 * W[:, 0]                                               # an offset the encoder sees
    X, E = X + c, E + c @ W
    loss, _, _ = vqref.loss_and_grads(X, W, E)
    assert loss < 1e3                                               # ||x||^2 ~ 1e16: (4') cancels
    assert loss == pytest.approx(loss_by_definition(X, W, E, 0.25, 1.0), rel=REPORT_RTOL)


def test_codebook_gradient_is_zero_for_unused_codes():
    X, W, E = data_point(8)
    _, _, dE = vqref.loss_and_grads(X, W, np.vstack([E, [[50.0, 50.0, 50.0]]]))
    np.testing.assert_array_equal(dE[-1], 0.0)


# --------------------------------------------- train_step, and the fused step that train uses

@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_train_step_is_forward_backward_stiefel_step_and_a_codebook_step(estimator):
    X, W, E = data_point(9, B=200)
    idx = np.arange(0, 200, 3)
    rec, dist, cache = vqref.forward(X[idx], W, E)
    dW, dE = vqref.backward(cache, estimator, 0.4, 1.2)
    W1, E1, loss1, rec1, k1 = vqref.train_step(X, idx, W, E, estimator, 0.05, 0.3, 0.4, 1.2)
    np.testing.assert_array_equal(W1, vqref.stiefel_step(W, dW, 0.05))
    np.testing.assert_array_equal(E1, E - 0.3 * dE)
    assert loss1 == rec + 1.6 * dist and rec1 == rec
    np.testing.assert_array_equal(k1, cache["k"])


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_fused_step_equals_train_step(estimator):
    X, W, E = data_point(9, B=200)
    idx = np.arange(0, 200, 3)
    plain = vqref.train_step(X, idx, W, E, estimator, 0.05, 0.3, 0.4, 1.2)
    fused = vqref._FusedStep(X, len(idx))(X, idx, W, E, estimator, 0.05, 0.3, 0.4, 1.2)
    np.testing.assert_allclose(fused[0], plain[0], rtol=0, atol=EXACT_TOL)     # W
    np.testing.assert_allclose(fused[1], plain[1], rtol=0, atol=EXACT_TOL)     # E
    assert fused[2] == pytest.approx(plain[2], rel=EXACT_TOL)                  # loss
    assert fused[3] == pytest.approx(plain[3], rel=EXACT_TOL)                  # rec
    np.testing.assert_array_equal(fused[4], plain[4])                         # codes


def test_fused_step_refuses_rows_it_was_not_made_for():
    X, W, E = data_point(9)
    step = vqref._FusedStep(X, 8)
    with pytest.raises(ValueError, match="other rows"):
        step(X.copy(), np.arange(8), W, E, "ste", 0.05, 0.3, 0.4, 1.2)


def test_fused_step_loss_stays_exact_when_the_reconstruction_is_nearly_perfect():
    """Where (4') would cancel (rec far below ||x||^2), the fast step uses explicit residuals."""
    rng = np.random.default_rng(19)
    W = vqref.qr_retraction(rng.standard_normal((8, 2)))
    E = rng.standard_normal((3, 2)) * 5
    X = E[rng.integers(0, 3, 64)] @ W.T + 1e-7 * rng.standard_normal((64, 8))
    step = vqref._FusedStep(X, 64)
    _, _, loss, rec, _ = step(X, np.arange(64), W, E, "ste", 0.01, 0.1, 0.0, 1.0)
    assert rec == pytest.approx(loss_by_definition(X, W, E, 0.0, 0.0), rel=REPORT_RTOL, abs=0)


# ------------------------------------------- why PCA + Lloyd is hard to beat (README eq. 18)

def test_reconstruction_error_splits_into_variance_lost_plus_latent_distortion():
    X, W, E = data_point(10)
    Q = E[vqref.nearest_codeword(X @ W, E)]
    lhs = np.sum((X - Q @ W.T) ** 2, axis=1)
    rhs = np.sum((X - X @ W @ W.T) ** 2, axis=1) + np.sum((X @ W - Q) ** 2, axis=1)
    np.testing.assert_allclose(lhs, rhs, rtol=ROUNDING_RTOL)


@pytest.mark.parametrize("seed", [11, 12])
def test_ste_reconstruction_gradient_on_the_manifold_is_the_pca_gradient_for_any_codebook(seed):
    X, W, E = data_point(seed)
    _, dW, _ = vqref.loss_and_grads(X, W, E, estimator="ste", beta=0.0)
    pca_grad = -(2.0 / len(X)) * (np.eye(len(W)) - W @ W.T) @ X.T @ X @ W
    atol = ROUNDING_RTOL * np.abs(pca_grad).max()
    np.testing.assert_allclose(vqref.stiefel_project(W, dW), pca_grad, rtol=0, atol=atol)
    _, dW2, _ = vqref.loss_and_grads(X, W, 3.0 * E + 1.0, estimator="ste", beta=0.0)
    np.testing.assert_allclose(vqref.stiefel_project(W, dW2), pca_grad, rtol=0, atol=atol)


def test_ste_at_beta_and_alpha_one_follows_the_true_quantized_mse():
    """Away from cell boundaries, with beta = alpha = 1 the STE's step is the gradient of the
    true MSE (1/B) sum ||x - e_k W^T||^2 (k frozen): on the manifold for W, exactly for E."""
    X, W, E = data_point(13)
    k = vqref.nearest_codeword(X @ W, E)
    mse = lambda W, E: np.sum((X - E[k] @ W.T) ** 2) / len(X)   # noqa: E731
    h, nW, nE = 1e-6, np.zeros_like(W), np.zeros_like(E)
    for P, G, f in ((W, nW, lambda P: mse(P, E)), (E, nE, lambda P: mse(W, P))):
        for i in np.ndindex(P.shape):
            Pp, Pm = P.copy(), P.copy()
            Pp[i] += h
            Pm[i] -= h
            G[i] = (f(Pp) - f(Pm)) / (2 * h)
    _, dW, dE = vqref.loss_and_grads(X, W, E, estimator="ste", beta=1.0, alpha=1.0)
    tangent = vqref.stiefel_project(W, dW)
    assert vqref.relative_error(tangent, vqref.stiefel_project(W, nW)) < GRAD_TOL
    assert vqref.relative_error(dE, nE) < GRAD_TOL
    _, dW_half, _ = vqref.loss_and_grads(X, W, E, estimator="ste", beta=0.5, alpha=1.0)
    tangent_half = vqref.stiefel_project(W, dW_half)
    assert vqref.relative_error(tangent_half, vqref.stiefel_project(W, nW)) > DIFFERENT


def test_a_codebook_step_of_one_over_twice_the_cell_share_is_lloyds_update():
    X, W, E = data_point(14)
    _, _, dE = vqref.loss_and_grads(X, W, E, alpha=1.0)
    k = vqref.nearest_codeword(X @ W, E)
    for j in np.unique(k):
        lr = len(X) / (2.0 * np.sum(k == j))
        np.testing.assert_allclose(E[j] - lr * dE[j], (X @ W)[k == j].mean(0), atol=EXACT_TOL)



# ------------------------------------------------------------ numerical_grads, grad_check

@pytest.mark.parametrize("h,what", [(1e-30, "below the rounding"), (1e300, "non-finite")])
def test_numerical_grads_refuses_a_useless_step(h, what):
    X, W, E = data_point(0)
    with pytest.raises(ValueError, match=re.escape(f"h={h:g}") + f".*{what}"):
        vqref.numerical_grads(X, W, E, h=h)


def test_grad_check_prints_a_row_per_parameter_with_its_verdict(capsys):
    X, W, E = data_point(1)
    err = vqref.grad_check(X, W, E, estimator="rotation", verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["rotation", "dW"], ["rotation", "dE"]]
    assert all(ln.endswith(" OK") for ln in lines) and err < GRAD_TOL
    assert max(float(ln.split()[3]) for ln in lines) == pytest.approx(err, rel=PRINTED_RTOL)


def test_check_point_is_away_from_assignment_changes():
    X = np.random.default_rng(3).standard_normal((100, 5))
    margin = 1e-3
    W, E = vqref.check_point(X, 2, 6, seed=1, margin=margin)
    np.testing.assert_allclose(W.T @ W, np.eye(2), atol=EXACT_TOL)
    d = np.sort((((X @ W)[:, None, :] - E[None]) ** 2).sum(-1), axis=1)
    assert np.min(d[:, 1] - d[:, 0]) > margin


# ----------------------------------------------------------- rotation_factors (eqs. 6, 11)

def rotation_matrix(z, e):
    """Dense lam R (m, m) of one pair, built column by column from apply_rotation."""
    lam, u, v, w = vqref.rotation_factors(z[None], e[None])
    m = z.size
    F = (np.full(m, lam[0]), np.repeat(u, m, 0), np.repeat(v, m, 0), np.repeat(w, m, 0))
    return vqref.apply_rotation(np.eye(m), F).T / lam[0], lam[0]


def test_rotation_maps_z_onto_its_codeword():
    rng = np.random.default_rng(9)
    Z, Q = rng.standard_normal((50, 5)), rng.standard_normal((50, 5)) * 3
    lam, u, v, w = F = vqref.rotation_factors(Z, Q)
    np.testing.assert_allclose(vqref.apply_rotation(Z, F), Q, rtol=0, atol=EXACT_TOL)
    u_rotated = vqref.apply_rotation(u, (np.ones(50), u, v, w))
    np.testing.assert_allclose(u_rotated, v, rtol=0, atol=EXACT_TOL)
    norm_ratio = np.linalg.norm(Q, axis=1) / np.linalg.norm(Z, axis=1)
    np.testing.assert_allclose(lam, norm_ratio, rtol=EXACT_TOL)


@pytest.mark.parametrize("seed", range(5))
def test_rotation_is_orthogonal_and_its_backward_map_is_the_transpose(seed):
    rng = np.random.default_rng(seed)
    z, e = rng.standard_normal(6), rng.standard_normal(6)
    R, lam = rotation_matrix(z, e)
    np.testing.assert_allclose(R.T @ R, np.eye(6), atol=EXACT_TOL)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=EXACT_TOL)
    np.testing.assert_allclose(lam * R @ z, e, atol=EXACT_TOL)
    g = rng.standard_normal(6)
    F = vqref.rotation_factors(z[None], e[None])
    np.testing.assert_allclose(vqref.apply_rotation(g[None], F, transpose=True)[0], lam * R.T @ g,
                               atol=EXACT_TOL)


def test_rotation_is_exactly_the_identity_when_the_codeword_equals_z():
    z = np.random.default_rng(1).standard_normal((200, 4)) * [1.0, 1e3, 1e-3, 7.0]
    F = vqref.rotation_factors(z, z.copy())
    g = np.random.default_rng(0).standard_normal((200, 4))
    np.testing.assert_array_equal(vqref.apply_rotation(g, F), g)
    np.testing.assert_array_equal(vqref.apply_rotation(g, F, transpose=True), g)


def test_rotation_uses_the_reflection_only_below_the_antiparallel_threshold():
    z = np.array([1.0, 2.0, -0.5])
    R, lam = rotation_matrix(z, -3.0 * z)                           # exactly antiparallel
    assert np.all(np.isfinite(R))
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=EXACT_TOL)
    np.testing.assert_allclose(lam * R @ z, -3.0 * z, atol=EXACT_TOL)
    # At ||u + v|| = 10 x the threshold the rotation itself maps z onto e; the reflection
    # (a threshold 1000 x larger) would miss e by about ||e|| ||u + v|| = 1e-4.
    perp = np.array([2.0, -1.0, 0.0]) / np.sqrt(5.0)
    e = 3.0 * np.linalg.norm(z) * (-z / np.linalg.norm(z) + 10 * vqref.ANTIPARALLEL_TOL * perp)
    lam, u, v, w = vqref.rotation_factors(z[None], e[None])
    assert 5 * vqref.ANTIPARALLEL_TOL < np.linalg.norm(u + v) < 20 * vqref.ANTIPARALLEL_TOL
    F = vqref.rotation_factors(z[None], e[None])
    rotated = vqref.apply_rotation(z[None], F)[0]
    np.testing.assert_allclose(rotated, e, rtol=0, atol=1e-3 * 1e-4)   # far below the 1e-4 miss


@pytest.mark.parametrize("case", ["regular", "antiparallel", "z = 0", "e = 0", "e = z"])
@pytest.mark.parametrize("m", [3, 32])                             # a short and a long latent
def test_fast_rotation_backward_equals_the_plain_map_including_degenerate_rows(case, m):
    rng = np.random.default_rng(18)
    Z = rng.standard_normal((40, m))
    Q = rng.standard_normal((40, m))
    G = rng.standard_normal((40, m))
    if case == "antiparallel":
        Q[3] = -2.0 * Z[3]
    elif case == "z = 0":
        Z[5] = 0.0
    elif case == "e = 0":
        Q[7] = 0.0
    elif case == "e = z":
        Q[9] = Z[9]
    plain = vqref.apply_rotation(G, vqref.rotation_factors(Z, Q), transpose=True)
    fast = vqref._rotation_backward(G.T, Z.T, Q.T).T                # a sample per column
    np.testing.assert_allclose(fast, plain, rtol=0, atol=EXACT_TOL)


def test_rotation_with_zero_vectors_is_defined():
    Z = np.array([[0.0, 0.0], [1.0, 2.0]])
    Q = np.array([[3.0, 4.0], [0.0, 0.0]])
    g = np.array([[1.0, -2.0], [0.5, 0.25]])
    out = vqref.apply_rotation(g, vqref.rotation_factors(Z, Q), transpose=True)
    np.testing.assert_array_equal(out[0], g[0])                     # ||z|| = 0: identity (STE)
    np.testing.assert_array_equal(out[1], 0.0)                      # ||e|| = 0: lam = 0
    X = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    loss, dW, dE = vqref.loss_and_grads(X, np.eye(3)[:, :2], np.array([[3.0, 4.0], [5.0, 5.0]]),
                                        estimator="rotation")
    assert np.isfinite(loss) and np.all(np.isfinite(dW)) and np.all(np.isfinite(dE))


# ----------------------------------------------------------------- assign (eq. 2)

@pytest.mark.parametrize("K", [17, 100])                          # scores (K, rows), (rows, K)
def test_assign_equals_nearest_codeword_across_block_boundaries(monkeypatch, K):
    rng = np.random.default_rng(10)
    Z, E = rng.standard_normal((1000, 3)), rng.standard_normal((K, 3))
    monkeypatch.setattr(vqref, "ASSIGN_CHUNK_ELEMENTS", K * 33)     # blocks of 256 rows
    np.testing.assert_array_equal(vqref.assign(Z, E), vqref.nearest_codeword(Z, E))
    k = vqref._assign(Z, E, np.empty(1000))
    np.testing.assert_array_equal(k, vqref.nearest_codeword(Z, E))


@pytest.mark.parametrize("K", [17, 100])
def test_assign_decides_exact_and_near_ties_by_exact_distances_in_both_layouts(K):
    """Duplicated codewords (exact ties) and codewords 1e-13 apart (ties within rounding):
    the lowest index of the exact distances, as nearest_codeword, and a lower bound that
    still holds."""
    rng = np.random.default_rng(12)
    E = rng.standard_normal((K, 3)) + 7.0
    E[K - 1] = E[5]                                                 # an exact tie
    E[K - 2] = E[2] + 1e-13                                         # a tie within rounding
    E[3] = E[2]                                                     # an exact tie
    Z = np.vstack([E[[5, 2, K - 2]] + 1e-9 * rng.standard_normal((3, 3)), E[[5, 2, K - 2]],
                   rng.standard_normal((300, 3)) + 7.0])
    second = np.empty(len(Z))
    k = vqref._assign(Z, E, second)
    np.testing.assert_array_equal(k, vqref.nearest_codeword(Z, E))
    np.testing.assert_array_equal(vqref.assign(Z, E), k)
    np.testing.assert_array_equal(k[3:6], [5, 2, K - 2])            # exact ties: the lowest index
    D2 = ((Z[:, None, :] - E[None]) ** 2).sum(-1)
    D2[np.arange(len(Z)), k] = np.inf
    assert np.all(second <= D2.min(1))


def test_assign_sends_ties_to_the_lowest_index():
    E = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    Z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    np.testing.assert_array_equal(vqref.assign(Z, E), [0, 0, 0])
    np.testing.assert_array_equal(vqref.nearest_codeword(Z, E), [0, 0, 0])


def test_assign_is_exact_far_from_the_origin():
    rng = np.random.default_rng(11)
    E0, Z0 = rng.standard_normal((20, 4)), rng.standard_normal((500, 4))
    k = vqref.assign(Z0 + 1e8, E0 + 1e8)
    np.testing.assert_array_equal(k, vqref.nearest_codeword(Z0 + 1e8, E0 + 1e8))
    assert np.mean(k == vqref.nearest_codeword(Z0, E0)) > 0.98


@pytest.mark.parametrize("K", [13, 90])
def test_assign_distance_outputs_are_exact_and_bound_the_second_nearest(K):
    rng = np.random.default_rng(16)
    Z, E = rng.standard_normal((700, 4)) + 50.0, rng.standard_normal((K, 4)) + 50.0
    second = np.empty(700)
    k = vqref._assign(Z, E, second)
    d2 = ((Z - E[k]) ** 2).sum(1)
    D2 = ((Z[:, None, :] - E[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, D2[np.arange(700), k], rtol=REPORT_RTOL)
    D2[np.arange(700), k] = np.inf
    assert np.all(second <= D2.min(1))
    np.testing.assert_allclose(second, D2.min(1), rtol=REPORT_RTOL)


@pytest.mark.parametrize("scale", [1e-300, 1e200])
def test_magnitudes_that_would_under_or_overflow_are_refused(scale):
    Z = np.random.default_rng(0).standard_normal((30, 2)) * scale
    for call in (lambda: vqref.assign(Z, Z[:3]), lambda: vqref.kmeans_pp(Z, 6, 0),
                 lambda: vqref.lloyd_max(Z, 6), lambda: vqref.pca(Z, 1)):
        with pytest.raises(ValueError, match=r"(Z|X) has entries of magnitude .* rescale"):
            call()


# ----------------------------------------------------------------------- kmeans_pp

def test_kmeans_pp_picks_distinct_rows_and_rejects_too_large_K():
    Z = np.repeat(np.random.default_rng(12).standard_normal((10, 2)), 5, axis=0)
    E = vqref.kmeans_pp(Z, 10, np.random.default_rng(0))
    assert len(np.unique(E, axis=0)) == 10
    assert all(any(np.array_equal(e, z) for z in Z) for e in E)
    with pytest.raises(ValueError, match="K=11"):
        vqref.kmeans_pp(Z, 11, np.random.default_rng(0))


# ------------------------------------------------------------------------ lloyd_max

def plain_lloyd(Z, init, max_iter):
    """Textbook Lloyd with brute-force distances and vqref's re-seeding rule (README)."""
    E = init.copy()
    labels = vqref.nearest_codeword(Z, E)
    history = []
    for it in range(1, max_iter + 1):
        history.append(np.mean(np.sum((Z - E[labels]) ** 2, 1)))
        empty = []
        for j in range(len(E)):
            if np.any(labels == j):
                E[j] = Z[labels == j].mean(0)
            else:
                empty.append(j)
        if empty:
            far = np.argsort(-np.sum((Z - E[labels]) ** 2, 1), kind="stable")[:len(empty)]
            E[empty] = Z[far]
        new = vqref.nearest_codeword(Z, E)
        if not empty and np.array_equal(new, labels):
            return E, new, it, history + [np.mean(np.sum((Z - E[new]) ** 2, 1))]
        labels = new
    return E, labels, max_iter, history + [np.mean(np.sum((Z - E[labels]) ** 2, 1))]


@pytest.mark.parametrize("K,seed", [(1, 0), (5, 1), (24, 2), (60, 3)])
def test_lloyd_with_distance_bounds_equals_plain_lloyd(K, seed):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((1500, 3)) * [3.0, 1.0, 0.3] + 5.0
    init = Z[rng.choice(len(Z), K, replace=False)].copy()
    if K >= 5:
        init[-2:] = 100.0 + np.arange(2)[:, None]                   # two cells start empty
    E_ref, labels_ref, it_ref, hist_ref = plain_lloyd(Z, init, 300)
    E, info = vqref.lloyd_max(Z, K, init=init, max_iter=300)
    np.testing.assert_array_equal(info["labels"], labels_ref)
    assert info["n_iter"] == it_ref and info["converged"]
    np.testing.assert_allclose(E, E_ref, rtol=0, atol=ROUNDING_RTOL)
    np.testing.assert_allclose(info["history"], hist_ref, rtol=ROUNDING_RTOL)
    assert info["reseeded"] >= (2 if K >= 5 else 0)


def test_lloyd_cells_keep_codes_counts_sums_and_bounds_of_the_plain_computation():
    """_LloydCells updates its statistics incrementally; after each move, the plain ones."""
    rng = np.random.default_rng(21)
    Z = rng.standard_normal((2000, 3)) * [3.0, 1.0, 0.5] + 1e4      # far from the origin
    E = Z[rng.choice(len(Z), 20, replace=False)].copy()
    cells = vqref._LloydCells(Z, E)
    for _ in range(15):
        E = E + 0.2 * rng.standard_normal(E.shape) * rng.random((20, 1))   # uneven moves
        cells.update(E)
        k = vqref.nearest_codeword(Z, E)
        np.testing.assert_array_equal(cells.labels, k)
        np.testing.assert_array_equal(cells.counts, np.bincount(k, minlength=20))
        sums = np.array([(Z[k == j] - E[j]).sum(0) for j in range(20)])
        np.testing.assert_allclose(cells.sums, sums, rtol=0, atol=REPORT_RTOL * len(Z))
        D = np.sqrt(((Z[:, None, :] - E[None]) ** 2).sum(-1))
        exact = D[np.arange(len(Z)), k]
        assert np.all(cells.upper >= exact * (1 - EXACT_TOL))
        D[np.arange(len(Z)), k] = np.inf
        assert np.all(cells.lower <= D.min(1) * (1 + EXACT_TOL))
        gaps = np.sqrt(((E[:, None] - E[None]) ** 2).sum(-1)) + np.diag(np.full(20, np.inf))
        certified = cells.upper < np.maximum(cells.lower, 0.5 * gaps.min(1)[k])
        tightened = np.isclose(cells.upper, exact, rtol=REPORT_RTOL, atol=0)
        assert np.all(certified | tightened)                       # else tightened: exact
        assert cells.distortion() == pytest.approx(brute_distortion(Z, E), rel=REPORT_RTOL)


@pytest.mark.parametrize("Z,init,E_fixed,distortion", [
    ([[-1.0], [1.0]], [[-1.0], [10.0]], [[-1.0], [1.0]], 0.0),
    ([[0.0], [1], [2], [3], [100]], [[0.0], [1000]], [[1.5], [100.0]], 1.0),
    ([[3.0], [-1], [2]], [[3.0], [1], [3]], None, 0.0),
])
def test_lloyd_ends_at_a_fixed_point_after_re_seeding(Z, init, E_fixed, distortion):
    """Re-seeding must not end the run early: each case has a fixed point with no empty cell."""
    Z = np.array(Z)
    E, info = vqref.lloyd_max(Z, len(init), init=np.array(init))
    assert info["converged"] and info["distortion"] == pytest.approx(distortion, abs=EXACT_TOL)
    if E_fixed is not None:                                         # the same codewords, any order
        np.testing.assert_allclose(np.sort(E, axis=0), E_fixed, atol=EXACT_TOL)
    assert np.all(np.bincount(info["labels"], minlength=len(init)) > 0)


def test_lloyd_converged_means_every_codeword_is_its_cell_mean():
    Z = vqref.make_data(3000, 8, seed=1)[:, :3]
    E, info = vqref.lloyd_max(Z, 16, seed=3)
    assert info["converged"] and np.all(np.diff(info["history"]) <= 0)
    k = vqref.nearest_codeword(Z, E)
    np.testing.assert_array_equal(k, info["labels"])
    for j in range(16):
        np.testing.assert_allclose(E[j], Z[k == j].mean(0), rtol=0, atol=EXACT_TOL)
    assert info["distortion"] == pytest.approx(brute_distortion(Z, E), rel=EXACT_TOL)


@pytest.mark.parametrize("offset", [1e6, 1e8])
def test_lloyd_distortion_is_exact_for_clusters_far_apart(offset):
    """Clusters at +-1e8: a distortion from cell statistics (an expanded form) would cancel."""
    rng = np.random.default_rng(4)
    Z = np.vstack([rng.standard_normal((300, 2)) - offset, rng.standard_normal((300, 2)) + offset])
    E, info = vqref.lloyd_max(Z, 4, seed=0)
    assert info["converged"]
    assert info["distortion"] == pytest.approx(brute_distortion(Z, E), rel=REPORT_RTOL)
    assert np.all(np.diff(info["history"]) <= 0) and info["history"][-1] > 0


def test_lloyd_refuses_K_above_the_distinct_rows_with_or_without_init():
    Z = np.array([[3.0], [3.0], [-4.0]])
    for init in (None, np.array([[1.0], [4.0], [0.0]])):
        message = r"K=3 is larger than the number of distinct rows of Z \(2\)"
        with pytest.raises(ValueError, match=message):
            vqref.lloyd_max(Z, 3, init=init)


def test_distinct_row_count_agrees_with_np_unique():
    """The projection shortcut of _check_distinct_rows decides as np.unique would."""
    Z = np.array([[1.0, 0.0], [0.0, 1.0]] * 5 + [[2.0, 2.0]])
    Zp = np.array([[np.cos(2.0), -np.cos(1.0)], [0.0, 0.0]])        # distinct, equal projections
    vqref._check_distinct_rows(Z, 3)
    vqref._check_distinct_rows(Zp, 2)
    with pytest.raises(ValueError, match=r"\(3\)"):
        vqref._check_distinct_rows(Z, 4)


def test_lloyd_equals_scikit_learn_from_the_same_start():
    KMeans = pytest.importorskip("sklearn.cluster").KMeans
    Z = vqref.make_data(4000, 16, seed=5)[:, :4] @ np.diag([1.0, 2.0, 0.5, 1.0])
    init = vqref.kmeans_pp(Z, 12, np.random.default_rng(2))
    E, info = vqref.lloyd_max(Z, 12, init=init)
    km = KMeans(12, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=1000).fit(Z)
    np.testing.assert_allclose(E, km.cluster_centers_, rtol=0, atol=ROUNDING_RTOL)
    assert info["distortion"] == pytest.approx(km.inertia_ / len(Z), rel=REPORT_RTOL)


def test_lloyd_reports_the_iteration_cap_and_tol_stops():
    Z = vqref.make_data(2000, 6, seed=2)[:, :2]
    with pytest.warns(UserWarning, match="max_iter=3"):
        _, capped = vqref.lloyd_max(Z, 8, max_iter=3)
    assert not capped["converged"] and capped["n_iter"] == 3 and len(capped["history"]) == 4
    _, full = vqref.lloyd_max(Z, 8)
    _, loose = vqref.lloyd_max(Z, 8, tol=1e-2)
    assert full["converged"] and not loose["converged"] and loose["n_iter"] < full["n_iter"]


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_lloyd_tol_stops_at_the_first_update_that_falls_by_at_most_tol(tol):
    Z = np.clip(np.random.default_rng(0).standard_normal((2000, 2)), -1.5, 1.5)
    _, full = vqref.lloyd_max(Z, 5)
    h = full["history"]
    falls = (h[:-1] - h[1:]) / h[:-1]                               # falls[j - 1]: update j's
    first = 1 + int(np.flatnonzero(falls <= tol)[0])
    assert first < full["n_iter"]                                   # the rule stops it early
    _, loose = vqref.lloyd_max(Z, 5, tol=tol)
    assert loose["n_iter"] == first and not loose["converged"]      # not one update later
    np.testing.assert_array_equal(loose["history"], h[:first + 1])


# --------------------------------------------------------------- pca, Stiefel (16-17)

def test_pca_recovers_the_signal_subspace_and_centres_its_input():
    X = vqref.make_data(5000, 16, seed=0, rank=3, noise=1e-4)
    W = vqref.pca(X, 3)
    np.testing.assert_allclose(W.T @ W, np.eye(3), atol=EXACT_TOL)
    assert np.mean(np.sum((X - X @ W @ W.T) ** 2, 1)) < 16 * 1e-4 * 1.2
    np.testing.assert_allclose(vqref.pca(X + 3.0, 3), W, atol=ROUNDING_RTOL)


def test_stiefel_gradient_is_tangent_and_the_retraction_orthonormal():
    rng = np.random.default_rng(14)
    W = vqref.qr_retraction(rng.standard_normal((10, 3)))
    G = vqref.stiefel_project(W, rng.standard_normal((10, 3)))
    S = W.T @ G
    np.testing.assert_allclose(S + S.T, 0.0, atol=EXACT_TOL)
    W2 = vqref.stiefel_step(W, rng.standard_normal((10, 3)), 0.5)
    np.testing.assert_allclose(W2.T @ W2, np.eye(3), atol=EXACT_TOL)
    lr = 1e-4                                                       # first order: error ~ lr^2
    np.testing.assert_allclose(vqref.stiefel_step(W, -G, lr), W + lr * G, atol=10 * lr ** 2)


@pytest.mark.parametrize("D,m", [(10, 3), (64, 4), (512, 64)])
def test_cholesky_qr_of_a_step_equals_the_qr_retraction(D, m):
    """The fast step's retraction against eq. 17, for learning rates from 1e-3 to 10."""
    rng = np.random.default_rng(D)
    W = vqref.qr_retraction(rng.standard_normal((D, m)))
    for lr in (1e-3, 0.1, 1.0, 10.0):
        Y = W - lr * vqref.stiefel_project(W, rng.standard_normal((D, m)))
        fast = vqref._cholesky_qr(Y)
        np.testing.assert_allclose(fast, vqref.qr_retraction(Y), rtol=0, atol=EXACT_TOL)
    assert np.all(np.isnan(vqref._cholesky_qr(np.full((D, m), np.nan))))   # NaN on to the check


@pytest.mark.parametrize("lr", [-0.1, np.nan, "0.1"])
def test_stiefel_step_refuses_a_bad_learning_rate(lr):
    W = np.eye(4)[:, :2]
    with pytest.raises(ValueError, match="^lr "):
        vqref.stiefel_step(W, W, lr)


# ---------------------------------------------- the nonlinear model (eqs. 19-35)

def mlp_point(seed, *, B=40, D=6, m=2, K=5, groups=1, hidden=7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, D)) @ rng.standard_normal((D, D)) * 0.5 + 0.2
    params, E = vqref.mlp_check_point(X, m, K, groups=groups, hidden=hidden, seed=seed)
    return X, params, E


def mlp_autograd(torch, X, params, E, estimator, beta, alpha):
    """Loss (24) and every gradient by PyTorch autograd: sg(.) as detach(), codes of eq. 21."""
    t = {name: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for name, v in dict(params, E=E).items()}
    X = torch.tensor(X, dtype=torch.float64)
    B, m = X.shape[0], E.shape[1]
    Z = (torch.tanh(X @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]).reshape(-1, m)
    k = torch.from_numpy(vqref.nearest_codeword(Z.detach().numpy(), E))
    Q = t["E"][k]
    if estimator == "ste":
        q = Z + (Q - Z).detach()                                    # eq. 5
    else:
        with torch.no_grad():                                       # eq. 6: sg(lam R)
            u = Z / Z.norm(dim=1, keepdim=True)
            v = Q / Q.norm(dim=1, keepdim=True)
            w = (u + v) / (u + v).norm(dim=1, keepdim=True)
            lam = Q.norm(dim=1, keepdim=True) / Z.norm(dim=1, keepdim=True)
        q = lam * (Z - 2 * w * (w * Z).sum(1, keepdim=True) + 2 * v * (u * Z).sum(1, keepdim=True))
    X_hat = torch.tanh(q.reshape(B, -1) @ t["V1"] + t["c1"]) @ t["V2"] + t["c2"]
    loss = (((X - X_hat) ** 2).sum() + alpha * ((Z.detach() - Q) ** 2).sum()
            + beta * ((Z - Q.detach()) ** 2).sum()) / B
    loss.backward()
    return float(loss.detach()), {name: v.grad.numpy() for name, v in t.items()}


MLP_CASES = [("ste", 1, 0.25, 1.0), ("rotation", 1, 0.25, 1.0), ("ste", 1, 0.0, 2.5),
             ("rotation", 1, 0.0, 2.5), ("ste", 2, 0.7, 0.3), ("rotation", 2, 0.7, 0.3)]


@pytest.mark.parametrize("estimator,groups,beta,alpha", MLP_CASES)
def test_mlp_gradients_match_finite_differences(estimator, groups, beta, alpha):
    X, params, E = mlp_point(groups, groups=groups)
    _, grads = vqref.mlp_loss_and_grads(X, params, E, estimator=estimator, beta=beta,
                                        alpha=alpha)
    numerical = vqref.mlp_numerical_grads(X, params, E, estimator=estimator, beta=beta,
                                          alpha=alpha)
    assert set(grads) == set(vqref.MLP_PARAMS) | {"E"}
    for name in grads:
        assert vqref.relative_error(grads[name], numerical[name]) < GRAD_TOL, name
        assert np.max(np.abs(grads[name])) > NOT_SMALL, name


@pytest.mark.parametrize("estimator,groups,beta,alpha", MLP_CASES)
def test_mlp_loss_and_gradients_match_pytorch_autograd(estimator, groups, beta, alpha):
    torch = pytest.importorskip("torch")
    X, params, E = mlp_point(groups + 10, groups=groups)
    loss, grads = vqref.mlp_loss_and_grads(X, params, E, estimator=estimator, beta=beta,
                                           alpha=alpha)
    a_loss, a_grads = mlp_autograd(torch, X, params, E, estimator, beta, alpha)
    assert loss == pytest.approx(a_loss, rel=ROUNDING_RTOL)
    for name in grads:
        assert vqref.relative_error(grads[name], a_grads[name]) < ROUNDING_RTOL, name


def test_mlp_grad_check_prints_a_row_per_parameter_and_catches_a_wrong_derivative(
        capsys, monkeypatch):
    X, params, E = mlp_point(3, groups=2)
    assert vqref.mlp_grad_check(X, params, E, estimator="rotation", verbose=True) < GRAD_TOL
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[1] for r in rows] == ["d" + n for n in vqref.MLP_PARAMS + ("E",)]
    assert all(r.endswith(" OK") for r in rows)
    real_tanh = np.tanh
    forward = vqref.mlp_forward

    def forward_with_a_wrong_tanh(X, params, E):                    # backward's 1 - H^2 breaks
        rec, dist, cache = forward(X, params, E)
        cache["H2"] = real_tanh(X[:, :0].sum(1, keepdims=True) + 0.5 * np.arctanh(cache["H2"]))
        return rec, dist, cache
    monkeypatch.setattr(vqref, "mlp_forward", forward_with_a_wrong_tanh)
    _, grads = vqref.mlp_loss_and_grads(X, params, E)
    numerical = vqref.mlp_numerical_grads(X, params, E)
    assert vqref.relative_error(grads["V1"], numerical["V1"]) > DIFFERENT


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("groups", [1, 3])
def test_train_mlp_steps_are_mlp_forward_backward_and_adam(mlp_data, estimator, groups):
    Xtr, _ = mlp_data
    kw = dict(estimator=estimator, K=6, m=2, groups=groups, hidden=9, batch=64, beta=0.4,
              alpha=1.3, lr=1e-3, lrE=2e-2, tol=None)
    start = vqref.train_mlp(Xtr, steps=0, **kw)
    fast = vqref.train_mlp(Xtr, steps=5, init_params=start.params, init_E=start.E, **kw)
    Xs = (Xtr - start.mean) / start.scale                          # the plain loop
    params, E = vqref._copy(start.params), start.E.copy()
    states = {}
    batches = vqref.minibatches(len(Xtr), 64, 0)
    for _ in range(5):
        _, grads = vqref.mlp_loss_and_grads(Xs[next(batches)], params, E, estimator=estimator,
                                            beta=0.4, alpha=1.3)
        for name in vqref.MLP_PARAMS:
            vqref.adam_step(params[name], grads[name], states.setdefault(name, {}), 1e-3)
        vqref.adam_step(E, grads["E"], states.setdefault("E", {}), 2e-2)
    np.testing.assert_allclose(fast.E, E, rtol=0, atol=EXACT_TOL)
    for name in vqref.MLP_PARAMS:
        np.testing.assert_allclose(fast.params[name], params[name], rtol=0, atol=EXACT_TOL)


def test_adam_step_is_the_papers_update():
    P = np.array([1.0, -2.0, 3.0])
    state = {}
    g1, g2 = np.array([0.5, -1.0, 0.0]), np.array([0.1, 0.2, -0.3])
    vqref.adam_step(P, g1, state, 0.01)
    np.testing.assert_allclose(P, [1.0 - 0.01 * 0.5 / (0.5 + 1e-8), -2.0 + 0.01 * 1 / (1 + 1e-8),
                                   3.0], rtol=0, atol=EXACT_TOL)
    before = P.copy()
    vqref.adam_step(P, g2, state, 0.01)
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    step = 0.01 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(P, before - step, rtol=0, atol=EXACT_TOL)


@pytest.fixture(scope="module")
def mlp_data():
    X = vqref.make_data(1200, 10, seed=4)
    return X[:1000], X[1000:]


@pytest.mark.parametrize("groups", [1, 2])
def test_mlp_model_encodes_decodes_evaluates_saves_and_loads(mlp_data, tmp_path, groups):
    Xtr, Xte = mlp_data
    model = vqref.train_mlp(Xtr * 3 + 1, K=8, m=2, groups=groups, hidden=16, steps=40,
                            batch=100)
    codes = vqref.encode(Xte * 3 + 1, model)
    assert codes.dtype == np.uint8
    assert codes.shape == ((200,) if groups == 1 else (200, groups))
    Xh = vqref.decode(codes, model)
    ev = vqref.evaluate(Xte * 3 + 1, model)
    assert ev["mse"] == pytest.approx(np.mean(np.sum((Xte * 3 + 1 - Xh) ** 2, 1)),
                                      rel=REPORT_RTOL)
    Z = vqref.mlp_forward((Xte * 3 + 1 - model.mean) / model.scale, model.params,
                          model.E)[2]["Zg"]
    np.testing.assert_array_equal(codes.reshape(-1), vqref.nearest_codeword(Z, model.E))
    vqref.save(model, tmp_path / "mlp.npz")
    back = vqref.load(tmp_path / "mlp.npz")
    assert isinstance(back, vqref.MLPModel) and back.groups == groups
    assert back.scale == model.scale and back.settings == model.settings
    for name in vqref.MLP_PARAMS:
        np.testing.assert_array_equal(back.params[name], model.params[name])
    np.testing.assert_array_equal(vqref.decode(codes, back), Xh)
    with pytest.raises(ValueError, match="codes"):
        vqref.decode(np.zeros((5, groups + 1), dtype=int), model)


def test_train_mlp_is_the_same_model_on_data_shifted_and_scaled(mlp_data):
    Xtr, Xte = mlp_data
    kw = dict(K=8, m=2, hidden=16, steps=30, batch=100)
    a = vqref.train_mlp(Xtr, **kw)
    b = vqref.train_mlp(Xtr * 100 + 7.0, **kw)
    for name in vqref.MLP_PARAMS:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=SHIFT_RTOL,
                                   atol=SHIFT_RTOL)
    assert b.scale == pytest.approx(100 * a.scale, rel=1e-12)
    assert vqref.evaluate(Xte * 100 + 7.0, b)["mse"] == pytest.approx(
        1e4 * vqref.evaluate(Xte, a)["mse"], rel=SHIFT_RTOL)
    c = vqref.train_mlp(Xtr, **kw)
    np.testing.assert_array_equal(c.E, a.E)                         # deterministic for a seed
    assert not np.array_equal(vqref.train_mlp(Xtr, **dict(kw, seed=1)).E, a.E)


def test_train_mlp_init_params_and_init_E_are_the_start(mlp_data):
    Xtr, _ = mlp_data
    kw = dict(K=4, m=2, hidden=8, batch=100)
    start = vqref.train_mlp(Xtr, steps=0, **kw)                    # mlp_init and k-means++
    again = vqref.train_mlp(Xtr, steps=10, init_params=start.params, init_E=start.E, **kw)
    plain = vqref.train_mlp(Xtr, steps=10, **kw)
    np.testing.assert_array_equal(again.E, plain.E)
    for name in vqref.MLP_PARAMS:
        np.testing.assert_array_equal(again.params[name], plain.params[name])
    with pytest.raises(ValueError, match="^init_E must have shape"):
        vqref.train_mlp(Xtr, steps=1, init_E=np.ones((3, 2)), **kw)
    with pytest.raises(ValueError, match="^init_params must have hidden=9"):
        vqref.train_mlp(Xtr, steps=1, init_params=start.params, **dict(kw, hidden=9))


def test_train_mlp_history_and_its_stop_on_the_reconstruction(mlp_data):
    Xtr, Xte = mlp_data
    res = vqref.train_mlp(Xtr, K=8, m=2, hidden=16, steps=3000, batch=100, window=100,
                          eval_X=Xte, eval_every=50)
    h, n = res.history, res.settings["steps_run"]
    assert 200 <= n < 3000 and n % 100 == 0
    assert set(h) == {"loss", "mse", "entropy", "dead_codes", "latent_norm", "eval_mse",
                      "eval_entropy"} and all(len(v) == n for v in h.values())
    assert h["mse"][n - 200:n - 100].mean() - h["mse"][n - 100:].mean() < \
        1e-3 * h["mse"][n - 200:n - 100].mean()
    assert np.isfinite(h["eval_mse"][[0, 50, n - 1]]).all() and np.isnan(h["eval_mse"][1])
    assert h["eval_mse"][n - 1] == pytest.approx(vqref.evaluate(Xte, res)["mse"], rel=EXACT_TOL)
    assert h["mse"][-100:].mean() < 0.9 * h["mse"][:100].mean()     # it learns


@pytest.mark.parametrize("kwargs,name", [
    (dict(estimator="numerical"), "estimator"), (dict(K=0), "K"), (dict(K=5000), "K"),
    (dict(m=0), "m"), (dict(groups=0), "groups"), (dict(hidden=1.5), "hidden"),
    (dict(lr=0.0), "lr"), (dict(lr=np.nan), "lr"), (dict(steps=-1), "steps"),
    (dict(batch=0), "batch"), (dict(beta=np.inf), "beta"), (dict(seed=-1), "seed"),
    (dict(window=0), "window"), (dict(eval_X=np.ones((3, 4))), "eval_X"),
])
def test_bad_train_mlp_arguments_raise_naming_the_argument(mlp_data, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        vqref.train_mlp(mlp_data[0], **dict(dict(steps=1), **kwargs))


def test_bad_mlp_inputs_raise_naming_the_argument(mlp_data):
    X, params, E = mlp_point(0)
    with pytest.raises(ValueError, match="^params must be a dict with keys"):
        vqref.mlp_loss_and_grads(X, {k: params[k] for k in ("W1", "b1")}, E)
    with pytest.raises(ValueError, match=r"^params\['b2'\] must have shape"):
        vqref.mlp_loss_and_grads(X, dict(params, b2=np.zeros(3)), E)
    with pytest.raises(ValueError, match=r"^params\['c1'\] contains NaN"):
        vqref.mlp_loss_and_grads(X, dict(params, c1=params["c1"] * np.nan), E)
    with pytest.raises(ValueError, match=r"^params\['W1'\] must have 5 rows"):
        vqref.mlp_loss_and_grads(X[:, 1:], params, E)
    with pytest.raises(ValueError, match="^E must have a number of columns"):
        vqref.mlp_loss_and_grads(X, params, np.ones((5, 3)))
    with pytest.raises(ValueError, match="^X contains NaN"):
        vqref.train_mlp(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="^X has no variance"):
        vqref.train_mlp(np.ones((50, 3)), K=2, m=1)
    with pytest.raises(FloatingPointError, match=r"rates \(lr=1e\+300, lrE=0\.01\)"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vqref.train_mlp(mlp_data[0], K=4, m=2, hidden=8, steps=5, batch=100, lr=1e300)


# ----------------------------------------------------------- the model: encode, decode

@pytest.fixture(scope="module")
def small_data():
    X = vqref.make_data(3000, 16, seed=0)
    return X[:2400], X[2400:]


def test_encode_decode_give_the_reconstruction_that_evaluate_scores(small_data):
    Xtr, Xte = small_data
    model = vqref.train(Xtr + 5.0, K=8, steps=20, batch=256)
    codes = vqref.encode(Xte + 5.0, model)
    Xh = vqref.decode(codes, model)
    Z = (Xte + 5.0 - model.mean) @ model.W
    np.testing.assert_array_equal(codes, vqref.nearest_codeword(Z, model.E))
    ev = vqref.evaluate(Xte + 5.0, model)
    assert ev["mse"] == pytest.approx(np.mean(np.sum((Xte + 5.0 - Xh) ** 2, 1)), rel=REPORT_RTOL)
    with pytest.raises(ValueError, match="codes"):
        vqref.decode([0, 8], model)


@pytest.mark.parametrize("K,dtype", [(2, np.uint8), (32, np.uint8), (256, np.uint8),
                                     (257, np.uint16), (300, np.uint16)])
def test_encode_returns_the_smallest_unsigned_type_that_holds_K_minus_1(K, dtype):
    rng = np.random.default_rng(0)
    E = rng.standard_normal((K, 2))
    model = vqref.TrainResult(np.zeros(3), np.eye(3)[:, :2], E)
    X = np.c_[E, np.zeros(K)][::-1]                                  # each row on a codeword
    codes = vqref.encode(X, model)
    assert codes.dtype == dtype
    np.testing.assert_array_equal(codes, np.arange(K)[::-1])        # K - 1 itself survives


@pytest.mark.parametrize("fit", ["train", "baseline"])
def test_save_and_load_round_trip_exactly(small_data, tmp_path, fit):
    Xtr, Xte = small_data
    model = vqref.train(Xtr + 5.0, K=8, steps=20, batch=256) if fit == "train" else \
        vqref.baseline(Xtr + 5.0, K=8)
    path = tmp_path / "model.vqref"                                 # no .npz is appended
    vqref.save(model, path)
    back = vqref.load(path)
    assert os.listdir(tmp_path) == ["model.vqref"]
    for name in ("mean", "W", "E"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
    assert back.history.keys() == model.history.keys() and back.settings == model.settings
    for key, values in model.history.items():
        np.testing.assert_array_equal(back.history[key], values)
        assert back.history[key].dtype == np.asarray(values).dtype
    np.testing.assert_array_equal(vqref.encode(Xte + 5.0, back), vqref.encode(Xte + 5.0, model))


def test_load_refuses_files_that_are_not_vqref_models(small_data, tmp_path):
    model = vqref.train(small_data[0], K=8, steps=5, batch=256)
    np.save(tmp_path / "a.npy", model.W)
    (tmp_path / "b.txt").write_text("1 2 3\n")
    np.savez(tmp_path / "c.npz", W=model.W, E=model.E)              # a foreign .npz
    vqref.save(model, tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as npz:
        arrays = dict(npz)
    np.savez(tmp_path / "e.npz", **dict(arrays, vqref_format=np.array("vqref-linear-0")))
    np.savez(tmp_path / "f.npz", **dict(arrays, E=arrays["E"][:, :3]))
    np.savez(tmp_path / "g.npz", **{k: v for k, v in arrays.items() if k != "settings"})
    for name in ("a.npy", "b.txt", "c.npz", "e.npz", "g.npz", "missing.npz"):
        with pytest.raises(ValueError, match="is not a vqref model file"):
            vqref.load(tmp_path / name)
    with pytest.raises(ValueError, match="E must have 4 columns"):
        vqref.load(tmp_path / "f.npz")


@pytest.mark.parametrize("fit", ["train", "baseline"])
def test_a_model_fitted_on_shifted_data_is_the_same_model_shifted(small_data, fit):
    Xtr, Xte = small_data
    c = np.linspace(-3.0, 3.0, 16)
    f = (lambda X: vqref.train(X, K=8, steps=30, batch=256)) if fit == "train" else \
        (lambda X: vqref.baseline(X, K=8))
    a, b = f(Xtr), f(Xtr + c)
    np.testing.assert_allclose(b.W, a.W, rtol=SHIFT_RTOL, atol=SHIFT_RTOL)
    np.testing.assert_allclose(b.E, a.E, rtol=SHIFT_RTOL, atol=SHIFT_RTOL)
    np.testing.assert_allclose(b.mean, a.mean + c, rtol=0, atol=EXACT_TOL)
    ea, eb = vqref.evaluate(Xte, a), vqref.evaluate(Xte + c, b)
    assert eb["mse"] == pytest.approx(ea["mse"], rel=SHIFT_RTOL)
    assert vqref.evaluate(Xte + 3.0, a)["mse"] > 2 * ea["mse"]      # the mean matters


def test_baseline_is_a_converged_lloyd_on_the_pca_latents(small_data):
    Xtr, _ = small_data
    model = vqref.baseline(Xtr, K=8, m=4)
    Z = (Xtr - model.mean) @ model.W
    history = model.history["distortion"]
    assert model.settings["converged"] and model.settings["n_iter"] == len(history) - 1
    assert history[-1] == pytest.approx(brute_distortion(Z, model.E), rel=REPORT_RTOL)


# ---------------------------------------------------------------------------- train

@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_training_keeps_W_orthonormal_and_lowers_the_loss(small_data, estimator):
    Xtr, Xte = small_data
    res = vqref.train(Xtr, estimator=estimator, K=8, steps=150, batch=256, lrE=1.0)
    assert np.max(res.history["orth_error"]) < ROUNDING_RTOL
    assert np.mean(res.history["loss"][-20:]) < 0.9 * np.mean(res.history["loss"][:5])
    init = vqref.train(Xtr, estimator=estimator, K=8, steps=0, batch=256)
    assert vqref.evaluate(Xte, res)["mse"] < vqref.evaluate(Xte, init)["mse"]


def test_training_history_is_exact_far_from_the_origin(small_data):
    """Data at an offset of 1e8: the loss history is eq. 4, not an expanded form that cancels."""
    Xtr, _ = small_data
    X = Xtr[:, :6] + 1e8
    init = vqref.train(X, K=4, m=2, steps=0, batch=64)
    res = vqref.train(X, K=4, m=2, steps=1, batch=64)
    idx = next(vqref.minibatches(len(X), 64, 0))
    Xb = X[idx] - init.mean
    expected = loss_by_definition(Xb, init.W, init.E, 0.25, 1.0)
    assert res.history["loss"][0] == pytest.approx(expected, rel=REPORT_RTOL)


def test_training_history_entropy_and_dead_codes_are_those_of_the_batch_codes(small_data):
    """Step 0's entropy and dead codes are those of the batch's codes."""
    Xtr, _ = small_data
    for K, batch in ((8, 128), (64, 100), (1, 32)):
        init = vqref.train(Xtr, K=K, steps=0, batch=batch)
        res = vqref.train(Xtr, K=K, steps=1, batch=batch)
        idx = next(vqref.minibatches(len(Xtr), batch, 0))
        counts = np.bincount(vqref.assign((Xtr[idx] - init.mean) @ init.W, init.E), minlength=K)
        assert res.history["entropy"][0] == vqref.usage_entropy(counts)
        assert res.history["dead_codes"][0] == np.sum(counts == 0)
        assert K < 64 or np.sum(counts == 0) > 0                    # some dead at K = 64
    H = res.history["entropy"][0]
    assert H == 0.0 and not np.signbit(H)                           # K = 1: +0.0


def test_numerical_estimator_tracks_manual_ste(small_data):
    Xtr, _ = small_data
    a = vqref.train(Xtr[:, :6], estimator="ste", K=4, m=2, steps=15, batch=64)
    b = vqref.train(Xtr[:, :6], estimator="numerical", K=4, m=2, steps=15, batch=64)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=NUMERICAL_RTOL)
    np.testing.assert_allclose(a.E, b.E, atol=NUMERICAL_RTOL)


def test_training_is_deterministic_for_a_seed(small_data):
    Xtr, _ = small_data
    a, b, c = (vqref.train(Xtr, K=8, steps=30, batch=128, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.E, b.E)
    assert not np.array_equal(a.E, c.E)


def test_minibatches_cover_each_epoch_without_replacement():
    it = vqref.minibatches(10, 3, seed=4)
    epoch = np.concatenate([next(it) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9
    assert not np.array_equal(epoch, np.concatenate([next(it) for _ in range(3)]))
    for N, batch in ((10, 11), (10, 0), (0, 1)):                    # an error, not a hang
        with pytest.raises(ValueError, match="^(batch|N) must be"):
            next(vqref.minibatches(N, batch))


def test_init_W_and_init_E_are_the_start(small_data):
    Xtr, _ = small_data
    W0 = vqref.qr_retraction(np.random.default_rng(0).standard_normal((16, 4)))
    E0 = np.random.default_rng(1).standard_normal((8, 4))
    res = vqref.train(Xtr, K=8, steps=0, init_W=W0, init_E=E0)
    np.testing.assert_allclose(res.W, W0, rtol=0, atol=EXACT_TOL)
    np.testing.assert_array_equal(res.E, E0)


def test_tol_stops_training_once_the_loss_levels_off(small_data):
    Xtr, _ = small_data
    tol = 1e-3
    res = vqref.train(Xtr, K=8, steps=5000, batch=256, lrE=1.0, tol=tol, window=100)
    n = res.settings["steps_run"]
    assert 200 <= n < 5000 and n % 100 == 0 and len(res.history["loss"]) == n
    before = res.history["loss"][n - 200:n - 100].mean()
    last = res.history["loss"][n - 100:].mean()
    assert before - last < tol * before


def test_eval_history_is_recorded_between_evaluations_as_nan(small_data):
    Xtr, Xte = small_data
    res = vqref.train(Xtr, K=8, steps=10, batch=128, eval_X=Xte, eval_every=5)
    ev = res.history["eval_mse"]
    assert np.isfinite(ev[[0, 5, 9]]).all() and np.isnan(ev[1])
    assert ev[9] == pytest.approx(vqref.evaluate(Xte, res)["mse"], rel=EXACT_TOL)
    assert res.history["dead_codes"].dtype == np.int64


def test_divergence_raises_naming_the_learning_rates():
    X = vqref.make_data(300, 8, seed=2)
    with pytest.raises(ValueError, match=r"^lrW=1e\+308 is too large"):
        vqref.train(X, K=4, m=2, batch=64, steps=4, lrW=1e308)
    for lrE, steps in ((1e300, 1), (1e6, 200)):
        message = re.escape(f"lrE={lrE:g}")
        with pytest.raises(FloatingPointError, match=message), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vqref.train(X, K=4, m=2, batch=64, steps=steps, lrE=lrE)


def test_learning_rate_is_refused_for_data_of_a_larger_scale_and_works_rescaled():
    X = vqref.make_data(3000, 16, seed=0)
    with pytest.raises(ValueError, match=r"lrW=0.08 is too large .* \(top variance") as info:
        vqref.train(X * 100, K=8, steps=10, batch=256, lrW=0.08)
    limit = float(re.search(r"pass lrW <= ([0-9.e+-]+),", str(info.value)).group(1))
    vqref.train(X * 100, K=8, steps=2, batch=256, lrW=limit)       # the printed limit: accepted
    with pytest.raises(ValueError, match="too large"):
        vqref.train(X * 100, K=8, steps=2, batch=256, lrW=limit * (1 + 2e-3))
    a = vqref.train(X, K=8, steps=50, batch=256, lrW=0.08)
    b = vqref.train(X * 100, K=8, steps=50, batch=256, lrW=0.08 / 100 ** 2)
    np.testing.assert_allclose(b.W, a.W, atol=SHIFT_RTOL)
    np.testing.assert_allclose(b.E, 100 * a.E, rtol=SHIFT_RTOL, atol=100 * SHIFT_RTOL)


def test_default_learning_rate_scales_with_the_data():
    X = vqref.make_data(3000, 16, seed=0)
    a = vqref.train(X, K=8, steps=50, batch=256)
    b = vqref.train(X * 100 + 7.0, K=8, steps=50, batch=256)
    top = vqref.pca(X, 1, variances=True)[1][0]
    assert a.settings["lrW"] == pytest.approx(vqref.LRW_PER_VARIANCE / top, rel=1e-12)
    assert b.settings["lrW"] == pytest.approx(a.settings["lrW"] / 100 ** 2, rel=1e-12)
    np.testing.assert_allclose(b.W, a.W, atol=SHIFT_RTOL)
    np.testing.assert_allclose(b.E, 100 * a.E, rtol=SHIFT_RTOL, atol=100 * SHIFT_RTOL)


def test_round_down_prints_a_limit_at_or_below_the_value():
    for x in (0.0055693, 0.4915, 1 / 180, 0.999999, 123456.0, 1e-7 * 7.0):
        shown = vqref._round_down(x)
        assert shown <= x and float(f"{shown:.3g}") == shown and shown > 0.98 * x


def test_train_defaults_are_the_converged_protocol():
    sig = inspect.signature(vqref.train).parameters
    for key, value in vqref.CONVERGED.items():
        assert sig[key].default == value, key
    assert sig["lrW"].default is None
    assert vqref.STUDY == dict(steps=300, lrW=0.08, lrE=0.2, tol=None)


def data_for_defaults(name):
    if name == "digits":                                            # raw pixels 0-16, uncentred
        X = pytest.importorskip("sklearn.datasets").load_digits().data
    else:
        X = vqref.make_data(20000) + 5.0                            # README's copy-paste example
    return vqref.split(X, 0.2, seed=0)


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("name", ["digits", "make_data + 5"])
def test_train_with_defaults_is_within_half_a_percent_of_the_baseline(name, estimator):
    Xtr, Xte = data_for_defaults(name)
    base = vqref.evaluate(Xte, vqref.baseline(Xtr))["mse"]
    model = vqref.train(Xtr, estimator=estimator)
    assert model.settings["steps_run"] < model.settings["steps"]   # stopped by itself
    assert vqref.evaluate(Xte, model)["mse"] <= 1.005 * base


def test_batch_larger_than_the_data_is_clamped_with_a_warning(small_data):
    Xtr, _ = small_data
    with pytest.warns(UserWarning, match="batch=5000"):
        res = vqref.train(Xtr[:300], K=4, steps=3, batch=5000)
    assert res.settings["batch"] == 300


def test_all_but_one_code_dead_warns_in_train_and_evaluate():
    X = vqref.make_data(200, 3, seed=0)
    message = "all but one of the K=2 codes are dead on the last training batch"
    with pytest.warns(UserWarning, match=message):
        res = vqref.train(X, K=2, m=1, steps=1, batch=200, lrE=30.0)
    with pytest.warns(UserWarning, match="all but one of the K=2 codes are dead on X"):
        ev = vqref.evaluate(X, res)
    assert ev["dead_codes"] == 1 and ev["entropy"] == 0.0 and ev["perplexity"] == 1.0


# ------------------------------------------------------------ usage_entropy, evaluate

def test_usage_entropy_is_log_K_for_uniform_usage():
    assert vqref.usage_entropy(np.full(16, 7)) == pytest.approx(np.log(16), abs=EXACT_TOL)
    assert vqref.usage_entropy([5, 0, 0]) == 0.0
    expected = -(0.5 * np.log(0.25) + 0.5 * np.log(0.5))
    assert vqref.usage_entropy([1, 1, 2]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="counts"):
        vqref.usage_entropy([-1, 2])


def test_evaluate_counts_dead_codes_and_scores_by_explicit_residuals():
    model = vqref.TrainResult(np.zeros(2), np.eye(2),
                              np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-50.0, -50.0]]))
    X = np.array([[0.1, 0.0], [9.9, 0.0], [0.0, 10.2], [0.0, 9.8]])
    ev = vqref.evaluate(X, model)
    assert ev["dead_codes"] == 1
    assert ev["entropy"] == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)))
    assert ev["mse"] == pytest.approx(0.025, rel=EXACT_TOL)
    assert ev["distortion"] == pytest.approx(0.025, rel=EXACT_TOL)


def test_evaluate_distortion_is_exact_with_a_far_codeword():
    """A codeword at 1e17 moves the codebook mean far away; the distortion does not change."""
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((400, 3)) * 3
    E = np.vstack([rng.standard_normal((5, 3)), [[1e17, 0.0, 0.0]]])
    ev = vqref.evaluate(Z, vqref.TrainResult(np.zeros(3), np.eye(3), E))
    assert ev["distortion"] == pytest.approx(brute_distortion(Z, E), rel=REPORT_RTOL)


def test_mse_splits_into_projection_residual_plus_distortion(small_data):
    Xtr, _ = small_data
    model = vqref.baseline(Xtr, K=8, m=4)
    ev = vqref.evaluate(Xtr, model)
    Xc = Xtr - model.mean
    resid = np.mean(np.sum((Xc - Xc @ model.W @ model.W.T) ** 2, 1))
    assert ev["mse"] == pytest.approx(resid + ev["distortion"], rel=ROUNDING_RTOL)


# ------------------------------------------------------------------------- bad input

def test_integer_and_float32_input_are_computed_in_float64():
    Xi = np.random.default_rng(15).integers(-5, 5, size=(200, 6))
    W = vqref.pca(Xi, 2)
    assert W.dtype == np.float64
    loss32, dW32, _ = vqref.loss_and_grads(Xi.astype(np.float32), W, np.ones((3, 2)))
    loss64, _, _ = vqref.loss_and_grads(Xi.astype(np.float64), W, np.ones((3, 2)))
    assert dW32.dtype == np.float64 and loss32 == loss64


@pytest.mark.parametrize("X,msg", [
    (np.ones(5), "X must be 2-D"),
    (np.ones((0, 3)), "X must be 2-D and non-empty"),
    (np.array([[1.0, np.nan]]), "X contains NaN"),
    (np.array([[1.0, np.inf]]), "X contains NaN or inf"),
    (np.array([["a", "b"]]), "X must be a real numeric"),
    (np.ones((2, 2)) * 1j, "X must be a real"),
    ([[1.0, 2.0], [3.0]], "X must be a rectangular"),
])
def test_bad_X_raises_naming_X(X, msg):
    with pytest.raises(ValueError, match=msg):
        vqref.pca(X, 1)
    with pytest.raises(ValueError, match="^X "):
        vqref.train(X)


@pytest.mark.parametrize("kwargs,name", [
    (dict(K=0), "K"), (dict(K=10**6), "K"), (dict(m=0), "m"), (dict(m=17), "m"),
    (dict(steps=-1), "steps"), (dict(steps=10**12), "steps"), (dict(batch=0), "batch"),
    (dict(lrW=0.0), "lrW"), (dict(lrE=-1.0), "lrE"), (dict(estimator="adam"), "estimator"),
    (dict(beta=-1.0), "beta"), (dict(alpha=np.nan), "alpha"), (dict(K=2.5), "K"),
    (dict(steps=True), "steps"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
    (dict(seed="x"), "seed"), (dict(init_W=np.ones((16, 3))), "init_W"),
    (dict(init_E=np.ones((5, 4))), "init_E"),
])
def test_bad_train_arguments_raise_naming_the_argument(small_data, kwargs, name):
    Xtr, _ = small_data
    with pytest.raises(ValueError, match=rf"^{name} "):
        vqref.train(Xtr, **kwargs)


SEEDED = {                                                          # name: seed -> result
    "make_data": lambda seed: vqref.make_data(50, 6, seed=seed),
    "split": lambda seed: vqref.split(np.arange(40.0).reshape(20, 2), seed=seed)[1],
    "kmeans_pp": lambda seed: vqref.kmeans_pp(vqref.make_data(200, 3, seed=1), 5, seed),
    "check_point": lambda seed: vqref.check_point(vqref.make_data(64, 6, seed=1), 2, 4,
                                                  seed=seed)[1],
    "minibatches": lambda seed: next(vqref.minibatches(30, 10, seed=seed)),
    "lloyd_max": lambda seed: vqref.lloyd_max(vqref.make_data(300, 3, seed=1), 6, seed=seed)[0],
    "baseline": lambda seed: vqref.baseline(vqref.make_data(300, 6, seed=1), 6, 2,
                                            seed=seed).E,
    "train": lambda seed: vqref.train(vqref.make_data(300, 6, seed=1), K=6, m=2, steps=5,
                                      batch=64, seed=seed).E,
}


@pytest.mark.parametrize("name", SEEDED)
def test_every_seed_takes_an_int_or_a_generator_and_the_same_one_gives_the_same_result(name):
    f = SEEDED[name]
    np.testing.assert_array_equal(f(3), f(3))
    a = f(np.random.default_rng(3))
    np.testing.assert_array_equal(f(np.random.default_rng(3)), a)   # same state, same result
    assert not np.array_equal(f(np.random.default_rng(4)), a)       # the Generator is used
    rng = np.random.default_rng(3)
    f(rng)
    assert not np.array_equal(f(rng), a)                            # and advanced


@pytest.mark.parametrize("seed", [-1, 1.5, "x"])
def test_bad_seeds_raise_naming_the_seed(seed):
    with pytest.raises(ValueError, match="^seed must be"):
        vqref.make_data(10, seed=seed)
    with pytest.raises(ValueError, match="^seed "):
        vqref.lloyd_max(np.eye(3), 2, seed=seed)
    with pytest.raises(ValueError, match="^rng "):
        vqref.kmeans_pp(np.eye(3), 2, seed)


def test_wrong_shapes_raise_naming_the_argument():
    X = np.ones((5, 4))
    with pytest.raises(ValueError, match="W must have shape"):
        vqref.loss_and_grads(X, np.eye(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match="E must have 2 columns"):
        vqref.loss_and_grads(X, np.eye(4)[:, :2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="init must have shape"):
        vqref.lloyd_max(np.random.default_rng(0).standard_normal((20, 2)), 3, init=np.ones((4, 2)))
    with pytest.raises(ValueError, match="estimator"):
        vqref.loss_and_grads(X, np.eye(4)[:, :2], np.ones((2, 2)), estimator="numerical")
    with pytest.raises(ValueError, match="model must have mean, W and E"):
        vqref.evaluate(X, (np.eye(4), np.ones((2, 4))))


# ----------------------------------------------------------------------------- demo

def test_demo_prints_both_protocols_and_the_gradient_check_table(capsys):
    rows, errs = vqref.main(["--n", "1500", "--D", "12", "--K", "8", "--steps", "40",
                             "--batch", "200", "--seed", "0"])
    out = capsys.readouterr().out
    assert [r[0] for r in rows] == ["PCA + Lloyd-Max", "STE, study", "rotation, study",
                                    "STE, converged", "rotation, converged"]
    assert out.count(" OK\n") + out.endswith(" OK\n") >= 4 and "NOT OK" not in out
    assert all(e < GRAD_TOL for e in errs) and all(np.isfinite(r[1]["mse"]) for r in rows)


@pytest.mark.parametrize("args,flag", [(["--lrE", "1e100"], "lrE"),
                                       (["--steps", "1000000000000"], "--steps"),
                                       (["--seed", "-1"], "--seed"),
                                       (["--K", "0"], "--K")])
def test_demo_bad_flags_end_in_one_line_and_status_2(capsys, args, flag):
    with pytest.raises(SystemExit) as exit_info:
        vqref.main(["--n", "600", "--D", "8", "--batch", "64"] + args)
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("vqref: error: ") and flag in err[0]


@pytest.fixture
def demo_files(tmp_path):
    X = vqref.make_data(800, 8, seed=3) * 10 + 3                     # not make_data's scale
    np.save(tmp_path / "rows.npy", X)
    np.savetxt(tmp_path / "rows.csv", X, delimiter=",")
    np.savetxt(tmp_path / "rows.txt", X)
    return X, tmp_path


def test_demo_reads_npy_csv_and_txt_files_alike(demo_files):
    X, folder = demo_files
    for name in ("rows.npy", "rows.csv", "rows.txt"):
        np.testing.assert_allclose(vqref._read_rows(str(folder / name)), X, rtol=1e-15)


def test_demo_on_a_file_runs_the_baseline_and_the_converged_rows(capsys, demo_files):
    X, folder = demo_files
    name = "rows.csv"
    rows, errs = vqref.main(["--data", str(folder / name), "--K", "8", "--m", "2",
                             "--batch", "128"])
    out = capsys.readouterr().out
    assert [r[0] for r in rows] == ["PCA + Lloyd-Max", "STE, converged", "rotation, converged"]
    assert f"vqref demo on {folder / name}: D=8 m=2 K=8, 640 training rows, 160 held out" in out
    Xtr, Xte = vqref.split(X, 0.2, seed=0)
    base = vqref.baseline(Xtr, 8, 2)
    assert rows[0][1]["mse"] == pytest.approx(vqref.evaluate(Xte, base)["mse"], rel=1e-6)
    assert all(r[1]["mse"] < 1.05 * rows[0][1]["mse"] for r in rows[1:])   # trained, unscaled
    assert all(e < GRAD_TOL for e in errs)


@pytest.mark.parametrize("name,content,reason", [
    ("missing.csv", None, ": no such file$"),
    ("rows.json", "[[1, 2]]", "expected a .npy, .csv or .txt file"),
    ("words.csv", "1,2\n3,x\n", "could not convert"),
    ("ragged.csv", "1,2,3\n4,5\n", "columns"),
    ("nan.csv", "1,2\nnan,4\n", "contains NaN or inf"),
    ("empty.txt", "", "no data"),
    ("text.npy", "not an array", "pickled|magic|format"),
])
def test_demo_on_a_bad_file_ends_in_one_line_and_status_2(capsys, tmp_path, name, content,
                                                          reason):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        vqref.main(["--data", str(path), "--K", "2", "--m", "1"])
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"vqref: error: --data {path}") and re.search(reason, err[0])


def test_demo_names_the_flag_at_fault_and_shows_no_python_warning(capsys):
    base = ["--D", "8", "--batch", "64"]
    for args, message in ((["--n", "10"], "^vqref: error: --n=10 leaves 8 training rows, "
                                          "fewer than --K=32: raise --n or lower --K$"),
                          (["--n", "600", "--lrE", "1e9"], "^vqref: error: training diverged "
                                                         "at step .*lrE=1e\\+09"),
                          (["--n", "600", "--steps", "0"], "^vqref: error: --steps must be")):
        with pytest.raises(SystemExit) as exit_info:
            vqref.main(base + args)
        err = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and re.search(message, err[0]), err


@pytest.mark.parametrize("args,messages", [
    (["--alpha", "0"], ["alpha=0: the codebook gets no gradient and never moves"]),
    (["--lrE", "1e9"], ["codes are dead on the last training batch", "codes are dead on X"]),
])
def test_demo_warnings_are_one_line_each_and_no_python_warning(capsys, args, messages):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # one escaping main: fails
        vqref.main(["--n", "600", "--D", "8", "--K", "8", "--batch", "64", "--steps", "5"]
                   + args)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(messages) and all(line.startswith("vqref: warning: ") for line in err)
    assert all(message in line for message, line in zip(messages, err)), err


# -------------------------------------------------------------------------- figures

def test_figures_verdicts_are_two_sided_on_hand_made_numbers():
    figures = pytest.importorskip("figures")
    assert figures.verdict(-1.5, -2.0, -1.0) == "**reproduced**"
    assert figures.verdict(-0.5, -2.0, -1.0) == "**not reproduced**"
    assert figures.verdict(-2.5, -2.0, -1.0) == "**not reproduced**"
    assert figures.verdict(0.15, 0.1, 0.4) == "**reproduced**"
    assert figures.verdict(0.03, 0.1, 0.4) == "**not reproduced**"   # 0.2% measured as 0.03%
    same = "same within the seeds' spread"
    assert figures.two_sided(dict(mean=-0.5, std=0.6)) == same
    assert figures.two_sided(dict(mean=-0.5, std=0.4)) == "**rotation better**"
    assert figures.two_sided(dict(mean=0.5, std=0.4)) == "**rotation worse**"
    assert figures.two_sided(dict(mean=2.0, std=1.0), lower_is_better=False) == \
        "**rotation better**"                                       # perplexity: higher is better


def committed_figures():
    folder = os.path.join(HERE, "figures")
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def test_figures_quick_writes_the_plots_and_every_number_the_readme_reads():
    pytest.importorskip("matplotlib")
    before = committed_figures()
    out = subprocess.run([sys.executable, os.path.join(HERE, "figures.py"), "--quick"],
                         capture_output=True, text=True, cwd=HERE)
    assert out.returncode == 0, out.stderr
    assert committed_figures() == before                            # a temporary folder instead
    tmp_path = pathlib.Path(re.search(r" and (\S+)/results\.json in ", out.stdout).group(1))
    assert tmp_path.name.startswith("vqref-figures-") and tmp_path != pathlib.Path(HERE)
    for name in ("gradient_check", "convergence", "codebook_scaling", "commitment_ablation",
                 "where_learning_wins", "nonlinear"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    R = json.loads((tmp_path / "results.json").read_text())
    assert {"numpy", "date", "seeds", "config"} <= set(R["meta"])
    sys.path.insert(0, HERE)
    import figures
    section = figures.readme_section(R)
    assert "Ranking at K = 32" in section and "Where learning wins" in section
    S = R["results"]
    for proto in ("study", "converged"):
        t = S[proto]["scaling"]["32"]
        pairs = zip(t["ste"]["mse"]["per_seed"], t["baseline"]["mse"]["per_seed"])
        expected = [100 * (a / b - 1) for a, b in pairs]
        assert t["ste"]["change_pct"]["per_seed"] == pytest.approx(expected)
    N = S["nonlinear"]
    assert "Does the rotation trick beat the STE for a nonlinear encoder?" in section
    assert set(N["datasets"]) == {"digits", "curve"}                # scikit-learn is installed
    for key, row in N["table"].items():
        rot, ste = row["mlp/rotation"]["mse"]["per_seed"], row["mlp/ste"]["mse"]["per_seed"]
        expected = [100 * (a / b - 1) for a, b in zip(rot, ste)]
        assert row["rotation_vs_ste_pct"]["per_seed"] == pytest.approx(expected), key
        assert figures.two_sided(row["rotation_vs_ste_pct"]) in section
    shutil.rmtree(tmp_path)


def test_figures_nonlinear_runs_are_train_mlps_default_call():
    sys.path.insert(0, HERE)
    import figures
    defaults = vqref.train_mlp.__kwdefaults__
    assert figures.nl_lr(0) == {}                                   # the table's runs
    assert figures.nl_lr(-1) == pytest.approx(dict(lr=defaults["lr"] / 3,
                                                   lrE=defaults["lrE"] / 3))
    n = figures.nl_config(quick=False)
    assert n["mlp"] == {} and n["hidden"] == defaults["hidden"] and 0 in n["lr_steps"]


def test_figures_refuses_quick_into_the_committed_folder_and_needs_matplotlib(monkeypatch,
                                                                            capsys):
    sys.path.insert(0, HERE)
    import figures
    with pytest.raises(SystemExit) as info:
        figures.main(["--quick", "--out", os.path.join(HERE, "figures")])
    assert info.value.code == 2 and "does not write into the committed" in capsys.readouterr().err
    find_spec = figures.importlib.util.find_spec
    monkeypatch.setattr(figures.importlib.util, "find_spec",
                        lambda name: None if name == "matplotlib" else find_spec(name))
    with pytest.raises(SystemExit) as info:
        figures.main(["--quick"])                                   # stops before computing
    assert info.value.code == 2 and "pip install matplotlib" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bench

BENCH_MARKERS = re.compile(r"(.*<!-- bench:begin[^>]*-->\n)(.*?)(\n<!-- bench:end -->.*)", re.S)


def run_bench(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), *args],
                          capture_output=True, text=True, cwd=HERE)


def test_bench_markdown_writes_its_tables_between_the_markers_only(tmp_path):
    pytest.importorskip("sklearn")
    pieces = {}
    for name in ("README.md", "BENCHMARKS.md"):
        text = open(os.path.join(HERE, name)).read()
        match = BENCH_MARKERS.match(text)
        assert match, f"{name} has no bench markers"
        pieces[name] = match.groups()
        (tmp_path / name).write_text(text)
    saved = tmp_path / "quick.json"
    out = run_bench("--quick", "--threads", "1", "--repeats", "1", "--only", "lloyd",
                    "--json", str(saved), "--markdown", "--benchmarks",
                    str(tmp_path / "BENCHMARKS.md"), "--readme", str(tmp_path / "README.md"))
    assert out.returncode == 0, out.stderr
    (run,) = json.loads(saved.read_text())
    assert run["quick"] and run["sections"] == ["lloyd"] and len(run["lloyd"]) == 2
    for name in ("README.md", "BENCHMARKS.md"):
        before, old, after = pieces[name]
        new = BENCH_MARKERS.match((tmp_path / name).read_text()).groups()
        assert (new[0], new[2]) == (before, after)       # nothing outside the markers moves
        assert new[1] != old and "(--quick sizes)" in new[1]
        for row in run["lloyd"]:                          # every race, from the saved figures
            assert f"{row['vqref_s']:.3f} s" in new[1]
            assert f"{row['sklearn_s'] / row['vqref_s']:.2f}" in new[1]
    assert "Training" not in BENCH_MARKERS.match((tmp_path / "BENCHMARKS.md").read_text())[2]
    first = (tmp_path / "BENCHMARKS.md").read_text()
    out = run_bench("--from", str(saved), "--markdown", "--benchmarks",
                    str(tmp_path / "BENCHMARKS.md"), "--readme", str(tmp_path / "README.md"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "BENCHMARKS.md").read_text() == first   # a function of the JSON alone


def test_bench_trains_the_same_model_as_its_pytorch_loop():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, HERE)
    import bench                                                    # its race, in this process
    X, Xc, W, E, batches = bench.train_setup(64, 4, 32, 256, 3, 2000)
    for estimator in ("ste", "rotation"):
        res = bench.vqref_train(X, W, E, estimator, 3, 256)
        Wt, Et = bench.torch_loop(torch, Xc, W, E, batches, estimator)
        assert max(np.abs(res.W - Wt).max(), np.abs(res.E - Et).max()) <= 1e-8


def test_bench_trains_the_same_nonlinear_model_as_its_pytorch_loop():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, HERE)
    import bench
    X, Xs, init, batches = bench.mlp_setup(64, 32, 4, 16, 128, 3, 600)
    for estimator in ("ste", "rotation"):
        res = bench.vqref_mlp(X, init, estimator, 3, 128)
        P, E = bench.torch_mlp_loop(torch, Xs, init, batches, estimator)
        assert np.abs(res.E - E).max() <= 1e-8
        assert max(np.abs(res.params[k] - P[k]).max() for k in P) <= 1e-8
        assert np.abs(res.E - init.E).max() > 1e-4                  # and they moved


def test_bench_refuses_to_write_quick_figures_into_the_project():
    readme = open(os.path.join(HERE, "README.md")).read()
    out = run_bench("--quick", "--markdown")
    assert out.returncode == 2 and "--benchmarks FILE" in out.stderr
    assert open(os.path.join(HERE, "README.md")).read() == readme
