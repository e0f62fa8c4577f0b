"""Tests for vqref. Gradients are compared with central finite differences of
the frozen surrogate (float64); everything else with brute force or closed forms.
Run with ``python -m pytest -q``."""

import warnings

import numpy as np
import pytest

import vqref

GRAD_TOL = 1e-6       # relative error of manual vs finite-difference gradients
EXACT_TOL = 1e-12     # for identities that hold up to float64 rounding


def random_point(seed, *, B=64, D=12, m=3, K=7):
    """A random, non-symmetric (X, W, E) with no sample near an assignment kink."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, D)) @ rng.standard_normal((D, D)) * 0.7 + 0.3
    W = vqref.qr_retraction(rng.standard_normal((D, m)))
    E = rng.standard_normal((K, m)) * 1.5
    Z = X @ W
    d = np.sort(((Z[:, None, :] - E[None]) ** 2).sum(-1), axis=1)
    assert np.min(d[:, 1] - d[:, 0]) > 1e-4, "point too close to an assignment change"
    return X, W, E


def brute_assign(Z, E):
    return np.argmin(((Z[:, None, :] - E[None]) ** 2).sum(-1), axis=1)


def loss_by_definition(X, W, E, beta, alpha):
    """README eq. 4 written out sample by sample, independent of vqref."""
    total = 0.0
    for x in X:
        z = x @ W
        e = E[np.argmin([np.sum((z - c) ** 2) for c in E])]
        total += np.sum((x - e @ W.T) ** 2) + (alpha + beta) * np.sum((z - e) ** 2)
    return total / len(X)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("seed,beta,alpha", [(0, 0.25, 1.0), (1, 0.0, 1.0), (2, 0.7, 2.5),
                                             (3, 0.0, 0.3), (4, 1.0, 0.0)])
def test_manual_gradients_match_finite_differences(estimator, seed, beta, alpha):
    X, W, E = random_point(seed)
    _, dW, dE = vqref.loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = vqref.numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    assert vqref.relative_error(dW, nW) < GRAD_TOL
    assert vqref.relative_error(dE, nE) < GRAD_TOL
    assert np.max(np.abs(dW)) > 1e-3  # not trivially zero
    if alpha > 0:
        assert np.max(np.abs(dE)) > 1e-3


def test_grad_check_detects_a_gradient_missing_the_encoder_path():
    X, W, E = random_point(5)
    nW, _ = vqref.numerical_grads(X, W, E, estimator="ste")
    Q = E[brute_assign(X @ W, E)]
    dW_decoder_only = ((2.0 / len(X)) * (Q @ W.T - X)).T @ Q          # eq. 8 alone
    assert vqref.relative_error(dW_decoder_only, nW) > 1e-2
    _, dW, _ = vqref.loss_and_grads(X, W, E, estimator="ste")
    assert vqref.relative_error(dW * (1 + 1e-4), nW) > 1e-5


def test_ste_and_rotation_gradients_differ_but_share_the_codebook_gradient():
    X, W, E = random_point(6)
    _, dW_s, dE_s = vqref.loss_and_grads(X, W, E, estimator="ste")
    _, dW_r, dE_r = vqref.loss_and_grads(X, W, E, estimator="rotation")
    assert vqref.relative_error(dW_s, dW_r) > 1e-3
    np.testing.assert_array_equal(dE_s, dE_r)


def test_loss_matches_its_definition_and_the_frozen_surrogate():
    X, W, E = random_point(7)
    loss, _, _ = vqref.loss_and_grads(X, W, E, beta=0.3, alpha=1.7)
    assert abs(loss - loss_by_definition(X, W, E, 0.3, 1.7)) < EXACT_TOL * loss
    for est in ("ste", "rotation"):
        f = vqref._frozen_surrogate(X, W, E, est, 0.3, 1.7)
        assert abs(f(W, E) - loss) < 1e-10 * loss


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_loss_and_gradients_hold_for_a_non_orthonormal_W(estimator):
    X, W, E = random_point(17)
    W = W @ np.diag([2.0, 0.5, 1.3]) + 0.1                         # W^T W != I
    loss, dW, dE = vqref.loss_and_grads(X, W, E, estimator=estimator, beta=0.4, alpha=0.6)
    assert abs(loss - loss_by_definition(X, W, E, 0.4, 0.6)) < 1e-11 * loss
    nW, nE = vqref.numerical_grads(X, W, E, estimator=estimator, beta=0.4, alpha=0.6)
    assert vqref.relative_error(dW, nW) < GRAD_TOL
    assert vqref.relative_error(dE, nE) < GRAD_TOL


def test_codebook_gradient_is_zero_for_unused_codes():
    X, W, E = random_point(8)
    E = np.vstack([E, [[50.0, 50.0, 50.0]]])
    _, _, dE = vqref.loss_and_grads(X, W, E)
    np.testing.assert_array_equal(dE[-1], 0.0)


# ------------------------------------------------------------------ rotation

def test_rotation_maps_z_direction_onto_codeword():
    rng = np.random.default_rng(9)
    Z, Q = rng.standard_normal((50, 5)), rng.standard_normal((50, 5)) * 3
    lam, u, v, w = F = vqref.rotation_factors(Z, Q)
    np.testing.assert_allclose(vqref.apply_rotation(Z, F), Q, rtol=0, atol=1e-12)
    ones = (np.ones(50), u, v, w)
    np.testing.assert_allclose(vqref.apply_rotation(u, ones), v, rtol=0, atol=EXACT_TOL)
    np.testing.assert_allclose(lam, np.linalg.norm(Q, axis=1) / np.linalg.norm(Z, axis=1))


def rotation_matrix(z, e):
    """Dense R (m, m) of one pair, built column by column from apply_rotation."""
    lam, u, v, w = vqref.rotation_factors(z[None], e[None])
    m = z.size
    F = (np.ones(m), np.repeat(u, m, 0), np.repeat(v, m, 0), np.repeat(w, m, 0))
    return vqref.apply_rotation(np.eye(m), F).T, lam[0]


@pytest.mark.parametrize("seed", range(5))
def test_rotation_is_orthogonal_and_backward_map_is_its_transpose(seed):
    rng = np.random.default_rng(seed)
    z, e = rng.standard_normal(6), rng.standard_normal(6)
    R, lam = rotation_matrix(z, e)
    np.testing.assert_allclose(R.T @ R, np.eye(6), atol=EXACT_TOL)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(lam * R @ z, e, atol=EXACT_TOL)
    g = rng.standard_normal(6)
    F = vqref.rotation_factors(z[None], e[None])
    np.testing.assert_allclose(vqref.apply_rotation(g[None], F, transpose=True)[0],
                               lam * R.T @ g, atol=EXACT_TOL)


def test_rotation_is_exactly_identity_when_codeword_equals_z():
    z = np.array([[0.3, -1.7, 2.9, 1e-3]])
    F = vqref.rotation_factors(z, z.copy())
    g = np.random.default_rng(0).standard_normal((1, 4))
    np.testing.assert_array_equal(vqref.apply_rotation(g, F), g)
    np.testing.assert_array_equal(vqref.apply_rotation(g, F, transpose=True), g)


def test_rotation_antiparallel_falls_back_to_a_reflection():
    z = np.array([[1.0, 2.0, -0.5]])
    e = -3.0 * z
    lam, u, v, w = F = vqref.rotation_factors(z, e)
    R, _ = rotation_matrix(z[0], e[0])
    assert np.all(np.isfinite(R))
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=EXACT_TOL)
    np.testing.assert_allclose(lam[0] * R @ z[0], e[0], atol=EXACT_TOL)
    # Just outside the fallback threshold the regular formula is still orthogonal.
    rng = np.random.default_rng(1)
    ez = e[0] + 3 * np.linalg.norm(z) * 10 * vqref.ANTIPARALLEL_TOL * rng.standard_normal(3)
    R2, lam2 = rotation_matrix(z[0], ez)
    np.testing.assert_allclose(R2.T @ R2, np.eye(3), atol=1e-8)


def test_rotation_with_zero_vectors_is_defined():
    Z = np.array([[0.0, 0.0], [1.0, 2.0]])
    Q = np.array([[3.0, 4.0], [0.0, 0.0]])
    F = vqref.rotation_factors(Z, Q)
    g = np.array([[1.0, -2.0], [0.5, 0.25]])
    out = vqref.apply_rotation(g, F, transpose=True)
    np.testing.assert_array_equal(out[0], g[0])   # ||z|| = 0: identity (STE)
    np.testing.assert_array_equal(out[1], 0.0)    # ||e|| = 0: lam = 0
    X = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    W = np.eye(3)[:, :2]
    E = np.array([[3.0, 4.0], [5.0, 5.0]])
    loss, dW, dE = vqref.loss_and_grads(X, W, E, estimator="rotation")
    assert np.isfinite(loss) and np.all(np.isfinite(dW)) and np.all(np.isfinite(dE))


# ----------------------------------------------------------------- quantizer

def test_assign_equals_brute_force_including_chunk_boundaries(monkeypatch):
    rng = np.random.default_rng(10)
    Z, E = rng.standard_normal((1000, 3)), rng.standard_normal((17, 3))
    monkeypatch.setattr(vqref, "ASSIGN_CHUNK_ELEMENTS", 17 * 33)   # 33 rows a chunk
    np.testing.assert_array_equal(vqref.assign(Z, E), brute_assign(Z, E))


def test_assign_ties_go_to_the_lowest_index():
    E = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    Z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    np.testing.assert_array_equal(vqref.assign(Z, E), [0, 0, 0])


def test_assign_is_exact_far_from_the_origin():
    rng = np.random.default_rng(11)
    E0, Z0 = rng.standard_normal((20, 4)), rng.standard_normal((500, 4))
    offset = 1e8
    k = vqref.assign(Z0 + offset, E0 + offset)
    # The shift by the codebook mean is exact up to rounding of the offset itself.
    Zs, Es = (Z0 + offset) - offset, (E0 + offset) - offset
    np.testing.assert_array_equal(k, brute_assign(Zs, Es))
    assert np.mean(k == brute_assign(Z0, E0)) > 0.98


def test_kmeans_pp_picks_distinct_rows_and_rejects_too_large_K():
    rng = np.random.default_rng(12)
    Z = np.repeat(rng.standard_normal((10, 2)), 5, axis=0)
    E = vqref.kmeans_pp(Z, 10, np.random.default_rng(0))
    assert len(np.unique(E, axis=0)) == 10
    assert all(any(np.array_equal(e, z) for z in Z) for e in E)
    with pytest.raises(ValueError, match="K=11"):
        vqref.kmeans_pp(Z, 11, np.random.default_rng(0))


def test_lloyd_distortion_never_increases_and_is_a_fixed_point():
    Z = vqref.make_data(3000, 8, seed=1)[:, :3]
    E, info = vqref.lloyd_max(Z, 16, seed=3)
    assert np.all(np.diff(info["history"]) <= 0)
    assert info["converged"]
    # At convergence every codeword is the mean of its cell, and distortion matches.
    k = brute_assign(Z, E)
    for j in range(16):
        np.testing.assert_allclose(E[j], Z[k == j].mean(0), atol=1e-12)
    assert info["distortion"] == pytest.approx(np.mean(np.sum((Z - E[k]) ** 2, 1)), rel=1e-12)


def test_lloyd_reseeds_empty_cells_deterministically():
    rng = np.random.default_rng(13)
    Z = rng.standard_normal((200, 2))
    init = np.vstack([Z[:3], [[100.0, 100.0], [100.0, 100.0]]])   # two cells start empty
    E1, info1 = vqref.lloyd_max(Z, 5, init=init)
    E2, _ = vqref.lloyd_max(Z, 5, init=init)
    np.testing.assert_array_equal(E1, E2)
    assert info1["reseeded"] >= 2
    assert np.all(np.bincount(info1["labels"], minlength=5) > 0)
    assert np.all(np.diff(info1["history"]) <= 0)


def test_lloyd_tol_stops_early():
    Z = vqref.make_data(2000, 6, seed=2)[:, :2]
    _, strict = vqref.lloyd_max(Z, 8, seed=0)
    _, loose = vqref.lloyd_max(Z, 8, seed=0, tol=1e-2)
    assert loose["n_iter"] < strict["n_iter"]


def plain_lloyd(Z, init, max_iter):
    """Textbook Lloyd with brute-force exact distances and vqref's re-seeding rule."""
    E = init.copy()
    d2 = ((Z[:, None, :] - E[None]) ** 2).sum(-1)
    labels = np.argmin(d2, axis=1)
    history = [d2[np.arange(len(Z)), labels].mean()]
    for it in range(1, max_iter + 1):
        old = E.copy()
        for j in range(len(E)):
            if np.any(labels == j):
                E[j] = Z[labels == j].mean(0)
        empty = [j for j in range(len(E)) if not np.any(labels == j)]
        if empty:
            far = np.argsort(-((Z - old[labels]) ** 2).sum(1), kind="stable")[:len(empty)]
            E[empty] = Z[far]
        d2 = ((Z[:, None, :] - E[None]) ** 2).sum(-1)
        new = np.argmin(d2, axis=1)
        history.append(d2[np.arange(len(Z)), new].mean())
        if np.array_equal(new, labels):
            return E, new, it, history
        labels = new
    return E, labels, max_iter, history


@pytest.mark.parametrize("K,seed", [(1, 0), (5, 1), (24, 2), (60, 3)])
def test_lloyd_with_bounds_equals_plain_lloyd(K, seed):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((1500, 3)) * [3.0, 1.0, 0.3] + 5.0
    init = Z[rng.choice(len(Z), K, replace=False)].copy()
    if K >= 5:
        init[-2:] = 100.0                                            # two cells start empty
    E_ref, labels_ref, it_ref, hist_ref = plain_lloyd(Z, init, 300)
    E, info = vqref.lloyd_max(Z, K, init=init, max_iter=300)
    np.testing.assert_array_equal(info["labels"], labels_ref)
    assert info["n_iter"] == it_ref
    np.testing.assert_allclose(E, E_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(info["history"], hist_ref, rtol=1e-10)


def test_assign_distance_outputs_are_exact_and_bound_the_second_nearest():
    rng = np.random.default_rng(16)
    Z, E = rng.standard_normal((700, 4)) + 50.0, rng.standard_normal((13, 4)) + 50.0
    d2, second = np.empty(700), np.empty(700)
    k = vqref._assign(Z, E, d2, second)
    D2 = ((Z[:, None, :] - E[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, D2[np.arange(700), k], rtol=1e-9)
    D2[np.arange(700), k] = np.inf
    assert np.all(second <= D2.min(1))                              # a lower bound ...
    np.testing.assert_allclose(second, D2.min(1), rtol=1e-9)       # ... and a tight one


# -------------------------------------------------------------- PCA, Stiefel

def test_pca_recovers_the_signal_subspace():
    X = vqref.make_data(5000, 16, seed=0, rank=3, noise=1e-4)
    W = vqref.pca(X, 3)
    np.testing.assert_allclose(W.T @ W, np.eye(3), atol=EXACT_TOL)
    resid = X - X @ W @ W.T
    assert np.mean(np.sum(resid ** 2, 1)) < 16 * 1e-4 * 1.2


def test_stiefel_gradient_is_tangent_and_retraction_is_orthonormal():
    rng = np.random.default_rng(14)
    W = vqref.qr_retraction(rng.standard_normal((10, 3)))
    G = vqref.stiefel_project(W, rng.standard_normal((10, 3)))
    S = W.T @ G
    np.testing.assert_allclose(S + S.T, 0.0, atol=EXACT_TOL)
    W2 = vqref.stiefel_step(W, rng.standard_normal((10, 3)), 0.5)
    np.testing.assert_allclose(W2.T @ W2, np.eye(3), atol=EXACT_TOL)
    # The retraction is first-order: W2 ~ W - lr * G for a small step.
    W3 = vqref.stiefel_step(W, -G, 1e-4)
    np.testing.assert_allclose(W3, W + 1e-4 * G, atol=1e-7)


# ------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def small_data():
    X = vqref.make_data(3000, 16, seed=0)
    return X[:2400], X[2400:]


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_training_keeps_W_orthonormal_and_lowers_the_loss(small_data, estimator):
    Xtr, Xte = small_data
    res = vqref.train(Xtr, estimator=estimator, K=8, steps=150, batch=256, lrE=1.0)
    h = res.history
    assert np.max(h["orth_error"]) < 1e-10
    np.testing.assert_allclose(res.W.T @ res.W, np.eye(4), atol=1e-10)
    assert np.mean(h["loss"][-20:]) < 0.9 * np.mean(h["loss"][:5])
    init = vqref.train(Xtr, estimator=estimator, K=8, steps=0, batch=256)
    assert vqref.evaluate(Xte, res.W, res.E)["mse"] < vqref.evaluate(Xte, init.W, init.E)["mse"]


def test_numerical_estimator_tracks_manual_ste(small_data):
    Xtr, _ = small_data
    a = vqref.train(Xtr[:, :6], estimator="ste", K=4, m=2, steps=15, batch=64)
    b = vqref.train(Xtr[:, :6], estimator="numerical", K=4, m=2, steps=15, batch=64)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-7)
    np.testing.assert_allclose(a.E, b.E, atol=1e-7)


def test_training_is_deterministic_for_a_seed(small_data):
    Xtr, _ = small_data
    a = vqref.train(Xtr, K=8, steps=30, batch=128, seed=0)
    b = vqref.train(Xtr, K=8, steps=30, batch=128, seed=0)
    c = vqref.train(Xtr, K=8, steps=30, batch=128, seed=1)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.E, b.E)
    assert not np.array_equal(a.E, c.E)
    np.testing.assert_array_equal(vqref.make_data(50, seed=0), vqref.make_data(50, seed=0))
    assert not np.array_equal(vqref.make_data(50, seed=0), vqref.make_data(50, seed=1))


def test_eval_history_is_recorded(small_data):
    Xtr, Xte = small_data
    res = vqref.train(Xtr, K=8, steps=10, batch=128, eval_X=Xte, eval_every=5)
    ev = res.history["eval_mse"]
    assert np.isfinite(ev[[0, 5, 9]]).all() and np.isnan(ev[1])
    assert ev[9] == pytest.approx(vqref.evaluate(Xte, res.W, res.E)["mse"], rel=1e-12)


def test_divergence_raises_naming_the_learning_rates(small_data):
    Xtr, _ = small_data
    with pytest.raises(FloatingPointError, match=r"lrE=1000000\.0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vqref.train(Xtr, K=8, steps=200, batch=256, lrE=1e6)


def test_batch_larger_than_data_is_clamped_with_a_warning(small_data):
    Xtr, _ = small_data
    with pytest.warns(UserWarning, match="batch=5000"):
        res = vqref.train(Xtr[:300], K=4, steps=3, batch=5000)
    assert res.settings["batch"] == 300


def test_all_but_one_code_dead_warns_in_train_and_evaluate():
    X = vqref.make_data(200, 3, seed=0)
    with pytest.warns(UserWarning, match="all but one of the K=2 codes are dead on the training"):
        res = vqref.train(X, K=2, m=1, steps=1, batch=200, lrE=30.0)   # overshoots one code
    with pytest.warns(UserWarning, match="all but one of the K=2 codes are dead on X"):
        ev = vqref.evaluate(X, res.W, res.E)
    assert ev["dead_codes"] == 1 and ev["entropy"] == 0.0 and ev["perplexity"] == 1.0


# ------------------------------------------------------------------- metrics

def test_usage_entropy_is_log_K_for_uniform_usage_and_dead_codes_are_counted():
    assert vqref.usage_entropy(np.full(16, 7)) == pytest.approx(np.log(16), abs=EXACT_TOL)
    assert vqref.usage_entropy([5, 0, 0]) == 0.0
    assert vqref.usage_entropy([1, 1, 2]) == pytest.approx(-(0.5 * np.log(0.25) + 0.5 * np.log(0.5)))
    W = np.eye(2)
    E = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-50.0, -50.0]])
    X = np.array([[0.1, 0.0], [9.9, 0.0], [0.0, 10.2], [0.0, 9.8]])
    ev = vqref.evaluate(X, W, E)
    assert ev["dead_codes"] == 1
    assert ev["entropy"] == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)))
    assert ev["mse"] == pytest.approx((0.01 + 0.01 + 0.04 + 0.04) / 4)
    assert ev["distortion"] == pytest.approx(ev["mse"])          # W is square: no residual


def test_mse_splits_into_residual_plus_distortion(small_data):
    Xtr, _ = small_data
    W, E = vqref.baseline(Xtr, K=8, m=4)
    ev = vqref.evaluate(Xtr, W, E)
    resid = np.mean(np.sum((Xtr - Xtr @ W @ W.T) ** 2, 1))
    assert ev["mse"] == pytest.approx(resid + ev["distortion"], rel=1e-10)


# ---------------------------------------------------------------- bad input

def test_integer_and_float32_input_are_computed_in_float64():
    rng = np.random.default_rng(15)
    Xi = rng.integers(-5, 5, size=(200, 6))
    W = vqref.pca(Xi, 2)
    assert W.dtype == np.float64
    loss32, dW32, _ = vqref.loss_and_grads(Xi.astype(np.float32), W, np.ones((3, 2)))
    loss64, dW64, _ = vqref.loss_and_grads(Xi.astype(np.float64), W, np.ones((3, 2)))
    assert dW32.dtype == np.float64 and loss32 == loss64


@pytest.mark.parametrize("X,msg", [
    (np.ones(5), "X must be 2-D"),
    (np.ones((0, 3)), "X must be non-empty"),
    (np.array([[1.0, np.nan]]), "X contains NaN"),
    (np.array([[1.0, np.inf]]), "X contains NaN or inf"),
    (np.array([["a", "b"]]), "X must be a numeric"),
])
def test_bad_X_raises(X, msg):
    with pytest.raises(ValueError, match=msg):
        vqref.pca(X, 1)
    with pytest.raises(ValueError, match="X"):
        vqref.train(X)


@pytest.mark.parametrize("kwargs,name", [
    (dict(K=0), "K"), (dict(K=10**6), "K"), (dict(m=0), "m"), (dict(m=17), "m"),
    (dict(steps=-1), "steps"), (dict(batch=0), "batch"), (dict(lrW=0.0), "lrW"),
    (dict(lrE=-1.0), "lrE"), (dict(estimator="adam"), "estimator"), (dict(beta=-1.0), "beta"),
    (dict(alpha=np.nan), "alpha"), (dict(K=2.5), "K"), (dict(steps=True), "steps"),
])
def test_bad_train_arguments_raise_naming_the_argument(small_data, kwargs, name):
    Xtr, _ = small_data
    with pytest.raises(ValueError, match=rf"^{name} "):
        vqref.train(Xtr, **kwargs)


def test_K_larger_than_distinct_rows_raises():
    X = np.repeat(np.eye(3), 10, axis=0)
    with pytest.raises(ValueError, match="distinct rows"):
        vqref.train(X, K=4, m=2, batch=30)
    with pytest.raises(ValueError, match="distinct rows"):
        vqref.lloyd_max(X, 4)
    with pytest.raises(ValueError, match="distinct rows"):
        vqref.lloyd_max(X, 4, init=np.vstack([np.eye(3), [[5.0, 5.0, 5.0]]]))


def test_wrong_shapes_of_W_and_E_raise():
    X = np.ones((5, 4))
    with pytest.raises(ValueError, match="W must have shape"):
        vqref.loss_and_grads(X, np.eye(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match="E must have 2 columns"):
        vqref.loss_and_grads(X, np.eye(4)[:, :2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="init must have shape"):
        vqref.lloyd_max(np.random.default_rng(0).standard_normal((20, 2)), 3, init=np.ones((4, 2)))
    with pytest.raises(ValueError, match="estimator"):
        vqref.loss_and_grads(X, np.eye(4)[:, :2], np.ones((2, 2)), estimator="numerical")


# --------------------------------------------------------------------- demo

def test_demo_main_runs_and_prints_the_table(capsys):
    rows, errs = vqref.main(["--n", "1500", "--D", "12", "--K", "8", "--steps", "40",
                             "--batch", "200", "--seed", "0"])
    out = capsys.readouterr().out
    assert "PCA + Lloyd-Max" in out and "Rotation" in out and "gradient check" in out
    assert [r[0] for r in rows] == ["PCA + Lloyd-Max", "STE (manual)", "Rotation"]
    assert all(e < GRAD_TOL for e in errs)
    assert all(np.isfinite(r[1]["mse"]) for r in rows)


# ------------------------------------------------------------------ figures

def test_figures_quick_writes_valid_pngs_and_every_key_the_readme_reads(tmp_path):
    pytest.importorskip("matplotlib")
    import json
    import figures
    figures.main(["--quick", "--out", str(tmp_path), "--jobs", "2"])
    for name in ("gradient_check", "convergence", "codebook_scaling", "commitment_ablation"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 800 and height >= 500
    R = json.loads((tmp_path / "results.json").read_text())
    assert {"numpy", "date", "seeds", "config"} <= set(R["meta"])
    S = R["results"]
    for K in ("8", "16", "32", "64"):
        for m in ("baseline", "ste", "rotation"):
            assert len(S["scaling"][K][m]["mse"]["per_seed"]) == 2
    assert set(S["lr_grid"]) == {f"{w}/{e}" for w in figures.LRWS for e in figures.LRES}
    # The README section is computed from these keys alone; a missing one raises here.
    section = figures.readme_section(R)
    assert "Ranking at K = 32" in section
    assert section.count("reproduced**") == 7            # one verdict per study finding
    # The numbers in results.json are the ones the code measures.
    t = S["gradcheck"]["train"]
    assert t["mse_diff_pct"] == pytest.approx(100 * abs(t["mse_numerical"] / t["mse_ste"] - 1))
    assert t["mse_diff_pct"] < 1e-3                     # same gradients, same trajectory
    assert S["scaling"]["32"]["ste"]["max_orth_error"] < 1e-10
