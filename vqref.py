# /// script
# requires-python = ">=3.9"
# dependencies = ["numpy>=1.22"]
# ///
"""vqref: vector quantization with hand-derived gradients, in one NumPy file.

The model, for data rows ``x`` (D,) with mean ``mu``::

    z = (x - mu) W              encoder, W (D, m) orthonormal (the Stiefel manifold)
    k = argmin_j ||z - e_j||^2  nearest codeword of the codebook E (K, m)
    x_hat = mu + e_k W^T        decoder, tied to the encoder

fitted by PCA + Lloyd-Max (k-means) [5], or by gradient descent through the
straight-through estimator (STE) [1, 2] or the rotation trick [3], checked against
finite differences. Read it beside the README's "Derivation": each backward line cites
its equation. Below the "Machinery" line is only what makes it fast or safe.
Needs NumPy only. Demo: ``python3 vqref.py`` (``--data FILE`` for your own rows,
``--help`` for its flags).

Vocabulary: a *code* is an index ``k``, its *codeword* the row ``E[k]``, its *cell*
the rows with that code; the *distortion* is the mean of ``||z - e_k||^2``.

References (full titles in the README): [1] VQ-VAE, arXiv:1711.00937.
[2] STE, arXiv:1308.3432. [3] rotation trick, arXiv:2410.06424. [4] k-means++,
SODA 2007. [5] Lloyd, IEEE Trans. Inf. Theory 28(2), 1982. [6] Absil et al.,
Matrix Manifolds, 2008. [7] Hamerly, SDM 2010.
"""

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

if __name__ == "__main__":
    # Before NumPy loads: vqref's small matrix products are fastest on one thread.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

__version__ = "0.3.0"  # 0.3: train defaults to the converged protocol
ESTIMATORS = ("ste", "rotation", "numerical")
GRAD_TOL = 1e-6               # manual vs finite differences: the largest relative error accepted
ANTIPARALLEL_TOL = 1e-6       # ||u + v|| below this: the rotation becomes a reflection (eq. 6)
LRW_TIMES_VARIANCE_MAX = 1.0  # train() refuses lrW * (top variance of X) above this
MODEL_FORMAT = "vqref-linear-1"  # save()'s format tag
MLP_MODEL_FORMAT = "vqref-mlp-1"  # save()'s format tag of an MLPModel
LRW_PER_VARIANCE = 0.16       # train()'s default lrW is this / (top variance of X)


# ------------------------------------------------------------------------- data
def make_data(n, D=64, *, seed=0, rank=4, decay=0.9, scale=2.0, noise=0.012, bimodal=0,
              sep=1.15, curve=0):
    """Synthetic centred data ``X`` (n, D).

    ``x = A s + sqrt(noise) eps`` with ``s_j ~ N(0, scale decay^j)`` for ``j < rank`` in
    random orthonormal directions ``A`` and ``eps ~ N(0, I_D)``. ``bimodal = b`` adds ``b``
    orthogonal directions carrying ``+-sep`` plus ``N(0, (sep/10)^2)``: less variance than
    the Gaussian signal, yet two codewords quantize each (README, "Where learning wins").

    ``curve = f > 0`` replaces the Gaussian signal (``rank``, ``decay`` and ``bimodal`` are
    not used) by a closed curve: ``s = (cos t, sin t, ..., cos f t, sin f t)`` with the pair
    of frequency ``j`` scaled to variance ``scale / j`` each, in ``2 f`` random orthonormal
    directions, and ``t`` uniform on ``[0, 2 pi)``: one dimension of signal, bent through
    ``2 f``, which no ``m``-dimensional subspace holds for ``2 f > m``.
    """
    n = _check_int(n, "n", 1)
    D = _check_int(D, "D", 1)
    rank = min(_check_int(rank, "rank", 1), D)
    _check_real(decay, "decay", positive=True)
    _check_real(scale, "scale", positive=True)
    _check_real(noise, "noise")
    _check_real(sep, "sep")
    bimodal = _check_int(bimodal, "bimodal", 0, D - rank)
    curve = _check_int(curve, "curve", 0, D // 2)
    rng = _rng(seed, "seed")
    if curve:
        return _curve_data(n, D, curve, scale, noise, rng)
    A, _ = np.linalg.qr(rng.standard_normal((D, rank + bimodal)))  # (D, rank + b) orthonormal
    S = rng.standard_normal((n, rank)) * np.sqrt(scale * decay ** np.arange(rank))  # (n, rank)
    X = S @ A[:, :rank].T                                           # (n, D)
    X += np.sqrt(noise) * rng.standard_normal((n, D))               # (n, D) isotropic noise
    signs = rng.choice([-1.0, 1.0], size=(n, bimodal))              # (n, b)
    S = sep * (signs + 0.1 * rng.standard_normal((n, bimodal)))     # (n, b)
    X += S @ A[:, rank:].T                                          # (n, D) bimodal directions
    return X - X.mean(axis=0)


def _curve_data(n, D, f, scale, noise, rng):
    """make_data's closed curve (``curve = f``): see :func:`make_data`."""
    A, _ = np.linalg.qr(rng.standard_normal((D, 2 * f)))         # (D, 2f) orthonormal
    t = rng.uniform(0.0, 2.0 * np.pi, n)                            # (n,) where on the curve
    j = np.arange(1, f + 1)                                         # (f,) frequencies
    S = np.empty((n, 2 * f))
    S[:, 0::2] = np.cos(np.outer(t, j))                             # variance 1/2 each
    S[:, 1::2] = np.sin(np.outer(t, j))
    S *= np.repeat(np.sqrt(2.0 * scale / j), 2)                     # variance scale / j
    X = S @ A.T + np.sqrt(noise) * rng.standard_normal((n, D))      # (n, D)
    return X - X.mean(axis=0)


def split(X, test_fraction=0.2, seed=0):
    """Shuffle the rows of ``X`` (N, D) and split them into ``(train, test)``.

    ``test`` holds ``round(test_fraction N)`` rows (at least one), ``train`` the rest.
    """
    X = _as_matrix(X, "X")
    rng = _rng(seed, "seed")
    perm = rng.permutation(X.shape[0])
    n_test = max(1, int(round(_check_real(test_fraction, "test_fraction") * X.shape[0])))
    return X[perm[n_test:]], X[perm[:n_test]]


# -------------------------------------------------------------------------- PCA
def pca(X, m, *, variances=False):
    """Top-``m`` principal directions ``W`` (D, m) of ``X`` (N, D), centred first.

    ``W`` is orthonormal, each column's largest-magnitude entry positive. With
    ``variances``, returns ``(W, all D variances in descending order)``.
    """
    X = _as_matrix(X, "X")
    m = _check_int(m, "m", 1, X.shape[1])
    Xc = X - X.mean(axis=0)                                         # (N, D)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)                        # ascending
    W = evecs[:, ::-1][:, :m]                                       # (D, m)
    W = W * np.sign(W[np.argmax(np.abs(W), axis=0), np.arange(m)])  # a fixed sign per column
    W = np.ascontiguousarray(W)
    if variances:
        return W, evals[::-1] / X.shape[0]
    return W


# ----------------------------------------------------------- nearest codeword
def nearest_codeword(Z, E):
    """Codes (N,): README eq. 2 as written, ``argmin_j ||z_i - e_j||^2`` (ties: lowest index).

    ``Z`` (N, m), ``E`` (K, m). :func:`assign` gives the same in bounded memory.
    """
    diff = Z[:, None, :] - E[None, :, :]                            # (N, K, m)
    return np.argmin(np.einsum("nkm,nkm->nk", diff, diff), axis=1)  # (N,)


def assign(Z, E):
    """Codes (N,) of the rows of ``Z`` (N, m) for the codebook ``E`` (K, m).

    Equal to :func:`nearest_codeword`; computed in blocks of rows by ``_assign`` (Machinery).
    """
    Z = _as_matrix(Z, "Z")
    E = _as_matrix(E, "E", cols=Z.shape[1])
    return _assign(Z, E)


def kmeans_pp(Z, K, rng):
    """Initial codebook (K, m) by k-means++ [4] on the rows of ``Z`` (N, m).

    Distinct rows of ``Z``, each drawn with probability proportional to its squared
    distance to the nearest one drawn so far. ``rng``: a seed or a ``numpy.random.Generator``.

    >>> Z = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    >>> sorted(kmeans_pp(Z, 2, np.random.default_rng(0))[:, 0].tolist())
    [0.0, 10.0]
    """
    Z = _as_matrix(Z, "Z")
    N = Z.shape[0]
    K = _check_int(K, "K", 1, N)
    rng = _rng(rng, "rng")
    idx = [int(rng.integers(N))]
    d2 = np.full(N, np.inf)                                         # (N,) to the nearest so far
    for j in range(1, K):
        np.minimum(d2, _row_sq(Z - Z[idx[-1]]), out=d2)
        cum = np.cumsum(d2)
        if cum[-1] <= 0.0:
            raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({j})")
        draw = rng.random() * cum[-1]
        # side="right" never lands on a zero-weight row (one already drawn).
        i = int(np.searchsorted(cum, draw, side="right"))
        idx.append(min(i, N - 1))
    return Z[idx].copy()


# ------------------------------------------------------------------ forward pass
def forward(X, W, E):
    """README eqs. 1-4 on a centred batch ``X`` (B, D): returns ``(rec, dist, cache)``.

    The loss is ``rec + (alpha + beta) dist``; ``cache`` is the dict of arrays that
    :func:`backward` takes.
    """
    B = X.shape[0]
    Z = X @ W                                                       # (B, m)  eq. 1
    k = assign(Z, E)                                                # (B,)    eq. 2
    Q = E[k]                                                        # (B, m)  eq. 3, the value of q
    X_hat = Q @ W.T                                                 # (B, D)  eq. 3
    rec = np.sum((X - X_hat) ** 2) / B                              # eq. 4, reconstruction
    dist = np.sum((Z - Q) ** 2) / B                                 # eq. 4, both ||z - e||^2 terms
    return rec, dist, dict(X=X, W=W, E=E, Z=Z, k=k, Q=Q, X_hat=X_hat)


# ------------------------------------------------------------------- estimators
# STE (eq. 5):      q = z + sg(e - z)   so the backward pass has dz = dq             (eq. 10)
# rotation (eq. 6): q = sg(lam R) z     so the backward pass has dz = lam R^T dq     (eq. 11)
def rotation_factors(Z, Q):
    """Frozen factors ``lam`` (B,), ``u, v, w`` (B, m) of eq. 6 for ``Z`` and its codewords ``Q``.

    Degenerate rows (README table): ``u == v``: ``R = I``; ``||u + v|| < ANTIPARALLEL_TOL``:
    ``R = I - 2 u u^T``; ``e = 0``: ``lam = 0``; ``z = 0``: the identity (the STE).
    """
    Z = np.asarray(Z, dtype=np.float64)                             # (B, m)
    Q = np.asarray(Q, dtype=np.float64)                             # (B, m)
    nz = np.sqrt(np.sum(Z * Z, axis=1))                             # (B,)    ||z||
    ne = np.sqrt(np.sum(Q * Q, axis=1))                             # (B,)    ||e||
    with np.errstate(divide="ignore", invalid="ignore"):            # degenerate rows fixed below
        lam = ne / nz                                               # (B,)    eq. 6
        u = Z / nz[:, None]                                         # (B, m)  eq. 6
        v = Q / ne[:, None]                                         # (B, m)  eq. 6
        ns = np.sqrt(np.sum((u + v) ** 2, axis=1))                  # (B,)    ||u + v||
        w = (u + v) / ns[:, None]                                   # (B, m)  eq. 6
    ok = (nz > 0) & (ne > 0)
    same = ok & np.all(u == v, axis=1)
    anti = ok & (ns < ANTIPARALLEL_TOL)
    identity = ~ok | same
    u[identity] = 0.0                                               # R = I
    v[identity] = 0.0
    w[identity] = 0.0
    lam[nz == 0] = 1.0                                              # lam R = I at z = 0
    v[anti] = -u[anti]                                              # R = I - 2 u u^T
    w[anti] = 0.0
    return lam, u, v, w


def apply_rotation(G, factors, *, transpose=False):
    """``lam R g`` (eq. 6), or with ``transpose`` ``lam R^T g`` (eq. 11), for each row of ``G``.

    ``G`` (B, m); ``factors`` from :func:`rotation_factors`. Returns (B, m).
    """
    lam, u, v, w = factors
    if transpose:                                                   # eq. 11: R^T swaps u and v
        a, b = v, u
    else:
        a, b = u, v
    wg = np.sum(w * G, axis=1, keepdims=True)                       # (B, 1)  w.g
    ag = np.sum(a * G, axis=1, keepdims=True)                       # (B, 1)  u.g (v.g for R^T)
    return lam[:, None] * (G - 2.0 * wg * w + 2.0 * ag * b)         # (B, m)  eq. 6 (11)


# ----------------------------------------------------------------- backward pass
def backward(cache, estimator="ste", beta=0.25, alpha=1.0):
    """Gradients ``dW`` (D, m) and ``dE`` (K, m) of the loss (4) under ``estimator``, eqs. 7-14."""
    X, W, E = cache["X"], cache["W"], cache["E"]
    Z, k, Q, X_hat = cache["Z"], cache["k"], cache["Q"], cache["X_hat"]
    B = X.shape[0]
    dX_hat = (2.0 / B) * (X_hat - X)                                # (B, D)  eq. 7
    dW_dec = dX_hat.T @ Q                                           # (D, m)  eq. 8, decoder path
    dQ = dX_hat @ W                                                 # (B, m)  eq. 9
    if estimator == "ste":
        dZ_rec = dQ                                                 # (B, m)  eq. 10
    else:
        factors = rotation_factors(Z, Q)
        dZ_rec = apply_rotation(dQ, factors, transpose=True)        # (B, m)  eq. 11
    dZ = dZ_rec + (2.0 * beta / B) * (Z - Q)                        # (B, m)  eq. 12, commitment
    dW = dW_dec + X.T @ dZ                                          # (D, m)  eq. 13, encoder path
    dE = np.zeros_like(E)
    np.add.at(dE, k, Q - Z)                                         # (K, m)  eq. 14, cell sums
    dE *= 2.0 * alpha / B                                           # (K, m)  eq. 14
    return dW, dE


def loss_and_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0):
    """Loss (4) and gradients (7-14): ``(loss, dW (D, m), dE (K, m))``.

    ``X`` (B, D) centred rows, ``W`` (D, m) orthonormal or not, ``E`` (K, m).
    ``estimator``: "ste" or "rotation"; ``beta`` pulls ``z`` to its codeword, ``alpha``
    the codeword to ``z``.
    """
    X, W, E = _check_XWE(X, W, E, estimator)
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    rec, dist, cache = forward(X, W, E)
    dW, dE = backward(cache, estimator, beta, alpha)
    return rec + (alpha + beta) * dist, dW, dE


# ------------------------------------------------ finite-difference check (eq. 15)
def frozen_surrogate(X, W, E, estimator="ste", beta=0.25, alpha=1.0):
    """``L~(W, E)`` of eq. 15: the loss with every ``sg(.)`` and code frozen at ``(W, E)``."""
    Z0 = X @ W                                                      # (B, m)
    k = assign(Z0, E)                                               # (B,) frozen codes
    Q0 = E[k]                                                       # (B, m)
    if estimator == "ste":
        def phi(Z):
            return Z + (Q0 - Z0)                                    # eq. 5, sg(e - z) frozen
    else:
        F = rotation_factors(Z0, Q0)

        def phi(Z):
            return apply_rotation(Z, F)                             # eq. 6, sg(lam R) frozen

    def L(W, E):
        Z = X @ W
        rec = np.sum((X - phi(Z) @ W.T) ** 2)
        codebook = alpha * np.sum((Z0 - E[k]) ** 2)                 # sg(z) frozen at Z0
        commitment = beta * np.sum((Z - Q0) ** 2)                   # sg(e) frozen at Q0
        return (rec + codebook + commitment) / X.shape[0]
    return L


def numerical_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Central differences of eq. 15, ``(L~(P + h) - L~(P - h)) / 2h``: ``dW``, ``dE``."""
    X, W, E = _check_XWE(X, W, E, estimator)
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    h = _check_real(h, "h", positive=True)
    _check_step(h, W, E)
    L = frozen_surrogate(X, W, E, estimator, beta, alpha)
    with np.errstate(over="ignore", invalid="ignore"):             # a bad h is reported below
        dW = central_differences(lambda P: L(P, E), W, h)
        dE = central_differences(lambda P: L(W, P), E, h)
    if not (np.all(np.isfinite(dW)) and np.all(np.isfinite(dE))):
        raise ValueError(f"h={h:g} gives non-finite differences; use h near 1e-6")
    return dW, dE


def central_differences(f, P, h):
    """``(f(P + h e_i) - f(P - h e_i)) / 2h`` for each entry ``i`` of ``P``, shaped as ``P``."""
    P = P.copy()                                                    # perturbed in place
    dP = np.empty_like(P)
    for i in np.ndindex(P.shape):
        old = P[i]
        P[i] = old + h
        up = f(P)
        P[i] = old - h
        down = f(P)
        dP[i] = (up - down) / (2.0 * h)
        P[i] = old
    return dP


def relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``; 0 when both are all zero."""
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    if scale == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / scale)


def grad_check(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6, verbose=False):
    """Largest relative error of :func:`loss_and_grads` against :func:`numerical_grads`.

    ``verbose`` prints a row per parameter: max|diff|, relative error, and OK if below
    ``GRAD_TOL``.
    """
    _, dW, dE = loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha, h=h)
    errs = [relative_error(dW, nW), relative_error(dE, nE)]
    if verbose:
        for name, manual, numerical, err in zip(("dW", "dE"), (dW, dE), (nW, nE), errs):
            diff = np.max(np.abs(manual - numerical))
            verdict = "OK" if err < GRAD_TOL else "NOT OK"
            print(f"{estimator:<9} {name:<3} {diff:12.1e} {err:12.1e}  {verdict}")
    return max(errs)


def check_point(X, m, K, *, seed=0, margin=1e-4):
    """A random ``(W (D, m) orthonormal, E (K, m))`` for a gradient check on ``X`` (N, D).

    Redrawn until each row's two nearest squared distances differ by more than ``margin``,
    so that a step ``h`` changes no code.
    """
    X = _as_matrix(X, "X")
    rng = _rng(seed, "seed")
    for _ in range(100):
        W = qr_retraction(rng.standard_normal((X.shape[1], m)))    # (D, m)
        Z = X @ W                                                   # (N, m)
        E = kmeans_pp(Z, K, rng) + 0.1 * Z.std() * rng.standard_normal((K, m))
        d2 = np.sort(np.sum((Z[:, None, :] - E[None]) ** 2, axis=2), axis=1)   # (N, K)
        if K == 1 or np.min(d2[:, 1] - d2[:, 0]) > margin:
            return W, E
    raise ValueError(f"no check point with margin={margin} found; "
                     "use fewer rows or a smaller margin")


# ------------------------------------------------------------------ Stiefel step
def stiefel_project(W, G):
    """Riemannian gradient ``G - W sym(W^T G)`` (D, m), tangent at ``W`` (eq. 16)."""
    S = W.T @ G                                                     # (m, m)
    return G - W @ (0.5 * (S + S.T))                                # (D, m)


def qr_retraction(Y):
    """Orthonormal ``Q`` (D, m) of ``Y = Q R`` with ``diag(R) > 0`` (eq. 17)."""
    Qm, Rm = np.linalg.qr(Y)                                        # (D, m), (m, m)
    return Qm * np.where(np.diagonal(Rm) < 0, -1.0, 1.0)


def stiefel_step(W, dW, lr):
    """One Riemannian gradient step of size ``lr >= 0`` on the Stiefel manifold (eqs. 16-17)."""
    lr = _check_real(lr, "lr")
    return qr_retraction(W - lr * stiefel_project(W, dW))


# --------------------------------------------------------------------- the model
@dataclass
class TrainResult:
    """A model ``(mean (D,), W (D, m), E (K, m))`` with its ``history`` (arrays) and ``settings``.

    :func:`train`'s history has, per step, on its batch before the update: ``loss``, ``mse``,
    ``entropy``, ``dead_codes`` (int); after it: ``orth_error`` (``||W^T W - I||_F``); with
    ``eval_X``, ``eval_mse`` and ``eval_entropy`` (NaN between evaluations).
    :func:`baseline`'s has Lloyd's ``distortion`` per assignment.
    """
    mean: np.ndarray
    W: np.ndarray
    E: np.ndarray
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def encode(X, model):
    """Codes (N,) of the rows of ``X`` (N, D): the nearest codewords of ``(X - mean) W``.

    Their dtype is the smallest unsigned integer type that holds ``K - 1`` (``uint8`` up to
    K = 256): ``log2 K`` bits of information a row, stored in one byte for K = 32.
    """
    if isinstance(model, MLPModel):                                 # G codes a row (eq. 21)
        Z, (_, _, _, E, G) = _mlp_latents(X, model)
        codes = _assign(Z, E).reshape(-1, G)
        if G == 1:
            codes = codes[:, 0]
    else:
        mean, W, E = _check_model(model)
        X = _as_matrix(X, "X", cols=W.shape[0])
        codes = _assign((X - mean) @ W, E)
    return codes.astype(np.min_scalar_type(E.shape[0] - 1))


def decode(codes, model):
    """Reconstructions ``mean + E[codes] W^T`` (N, D) of the codes (N,); for an
    :class:`MLPModel`, its decoder on the codewords of the codes (N,) or (N, G)."""
    if isinstance(model, MLPModel):
        parts = _check_mlp_model(model)
        E, G = parts[3], parts[4]
        c = np.asarray(codes)
        if G > 1:
            if c.ndim != 2 or c.shape[1] != G:
                raise ValueError(f"codes must have shape (N, {G}) for a model with "
                                 f"groups={G}, got {c.shape}")
            c = c.reshape(-1)
        c = _check_codes(c, E.shape[0])
        return _mlp_decode(E[c].reshape(-1, G * E.shape[1]), parts)
    mean, W, E = _check_model(model)
    codes = _check_codes(codes, E.shape[0])
    return mean + E[codes] @ W.T


def save(model, path):
    """Write ``model`` to ``path`` as a plain ``.npz`` of arrays, read back by :func:`load`.

    Stores ``mean``, ``W``, ``E``, each ``history`` array, and the ``settings`` as JSON
    text (a value JSON cannot hold, such as a Generator seed, as its ``repr``). No pickle.
    The file is written to ``path`` exactly (no ``.npz`` is appended).
    """
    if isinstance(model, MLPModel):
        mean, scale, params, E, G = _check_mlp_model(model)
        arrays = {"vqref_format": np.array(MLP_MODEL_FORMAT), "mean": mean,
                  "scale": np.array(scale), "E": E, "groups": np.array(G)}
        arrays.update({"params." + name: params[name] for name in MLP_PARAMS})
    else:
        mean, W, E = _check_model(model)
        arrays = {"vqref_format": np.array(MODEL_FORMAT), "mean": mean, "W": W, "E": E}
    for key, values in getattr(model, "history", {}).items():
        arrays["history." + key] = np.asarray(values)
    settings = getattr(model, "settings", {})
    arrays["settings"] = np.array(json.dumps(settings, default=repr))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load(path):
    """The :class:`TrainResult` that :func:`save` wrote to ``path``; equal to the saved one.

    Raises ValueError if ``path`` is not such a file. Reads no pickles, so runs no code.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":                          # an .npz is a zip file
                raise ValueError("not an .npz archive")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as err:                 # unreadable, or a bad zip
        raise ValueError(f"path {path!r} is not a vqref model file ({err})") from None
    kind = str(arrays.get("vqref_format", ""))
    if kind not in (MODEL_FORMAT, MLP_MODEL_FORMAT):
        raise ValueError(f"path {path!r} is not a vqref model file (no "
                         f"vqref_format={MODEL_FORMAT!r} or {MLP_MODEL_FORMAT!r} entry)")
    needed = ["mean", "E", "settings"]
    if kind == MODEL_FORMAT:
        needed.append("W")
    else:
        needed += ["scale", "groups"] + ["params." + name for name in MLP_PARAMS]
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise ValueError(f"path {path!r} is not a vqref model file (no {', '.join(missing)})")
    history = {key[len("history."):]: values for key, values in arrays.items()
               if key.startswith("history.")}
    settings = json.loads(str(arrays["settings"]))
    if kind == MODEL_FORMAT:
        model = TrainResult(arrays["mean"], arrays["W"], arrays["E"], history, settings)
        _check_model(model)
    else:
        params = {name: arrays["params." + name] for name in MLP_PARAMS}
        model = MLPModel(arrays["mean"], float(arrays["scale"]), params, arrays["E"],
                         int(arrays["groups"]), history, settings)
        _check_mlp_model(model)
    return model


# ---------------------------------------------------------------------- training
def train_step(X, idx, W, E, estimator, lrW, lrE, beta, alpha):
    """One step of :func:`train` on the batch ``X[idx]`` (B, D) of centred rows.

    :func:`forward`, then :func:`backward` (or, for "numerical", the STE's gradients by
    :func:`numerical_grads`), then :func:`stiefel_step` for ``W`` and ``E - lrE dE``.
    Returns ``(W, E, loss, rec, k)``: the new parameters, then the batch's loss,
    reconstruction error and codes (B,) before the update.
    """
    Xb = X[idx]                                                     # (B, D)
    rec, dist, cache = forward(Xb, W, E)                            # eqs. 1-4
    if estimator == "numerical":
        dW, dE = numerical_grads(Xb, W, E, estimator="ste", beta=beta, alpha=alpha)  # eq. 15
    else:
        dW, dE = backward(cache, estimator, beta, alpha)            # eqs. 7-14
    W_new = stiefel_step(W, dW, lrW)                                # eqs. 16-17
    E_new = E - lrE * dE
    return W_new, E_new, rec + (alpha + beta) * dist, rec, cache["k"]


def minibatches(N, batch, seed=0):
    """Endless batches of ``batch`` row indices out of ``range(N)``, in :func:`train`'s order.

    Each epoch is a fresh permutation, cut into full batches (the remainder is skipped).
    ``seed``: a non-negative int or a ``numpy.random.Generator``, as in :func:`train`.
    """
    N = _check_int(N, "N", 1)
    batch = _check_int(batch, "batch", 1, N)
    return _epochs(N, batch, np.random.default_rng(_train_seeds(seed)[1]))


def levelled_off(loss, window, tol):
    """Whether the "converged" protocol stops: the mean of the last ``window`` values of
    ``loss`` is less than ``tol`` (relative) below the mean of the ``window`` before."""
    if len(loss) < 2 * window:
        return False
    before = np.sum(loss[-2 * window:-window]) / window
    last = np.sum(loss[-window:]) / window
    return bool(before - last < tol * before)


def train(X, *, estimator="ste", K=32, m=4, steps=20000, lrW=None, lrE=2.0, beta=0.25,
          alpha=1.0, batch=1024, seed=0, init_W=None, init_E=None, tol=1e-3, window=500,
          eval_X=None, eval_every=1):
    """Fit a model to the rows of ``X`` by gradient descent (README eqs. 4-17).

    ``W`` starts at ``pca(X, m)`` (or ``init_W``), ``E`` at k-means++ on the latents (or
    ``init_E``). Each step takes a batch of :func:`minibatches` and makes a
    :func:`train_step`: a Stiefel step on ``W`` and ``E -= lrE dE``. The defaults are the
    README's "converged" protocol (:data:`CONVERGED`), on data of any scale;
    ``train(X, **STUDY)`` runs the study's settings (:data:`STUDY`).

    Parameters
    ----------
    X : array (N, D)
        Training rows, any mean (the model carries it).
    estimator : {"ste", "rotation", "numerical"}
        "numerical" is the STE by finite differences: a slow check.
    K, m : int
        Codebook size and latent dimension.
    steps : int
        The most steps to take.
    lrW : float, optional
        Encoder learning rate. The step it makes grows as the variance of ``X``, so the
        default is ``LRW_PER_VARIANCE / (top variance of X)``; a given ``lrW`` is refused
        above ``LRW_TIMES_VARIANCE_MAX / (top variance)``.
    lrE : float
        Codebook learning rate; it does not depend on the data's scale.
    beta, alpha : float
        Commitment and codebook weights of the loss (4).
    batch : int
        Rows per step (at most N).
    seed : int or numpy.random.Generator
        Seeds the initial codebook and the batches (a Generator is drawn from once).
    init_W : array (D, m), optional
        Initial encoder, orthonormalized first.
    init_E : array (K, m), optional
        Initial codebook.
    tol : float or None
        Stop once the mean training loss of the last ``window`` steps is less than ``tol``
        (relative) below that of the ``window`` before (README, "converged"); None: run
        all ``steps``.
    window : int
    eval_X : array (N', D), optional
        Rows evaluated every ``eval_every`` steps and after the last.
    eval_every : int

    Returns
    -------
    TrainResult
        ``(mean, W, E)``, the history per step, and the settings with ``steps_run`` (and
        the ``lrW`` used).

    Raises
    ------
    ValueError
        For a bad argument, naming it.
    FloatingPointError
        When training diverges.

    Warns
    -----
    UserWarning
        When ``alpha = 0`` (the codebook gets no gradient and never moves), when ``batch``
        exceeds N, and when all but one code are dead on the last batch.
    """
    X, settings = _check_train(X, locals())
    batch = settings["batch"]
    mean = X.mean(axis=0)                                           # (D,)
    Xc = X - mean                                                   # (N, D)
    if init_W is None:
        W, variances = pca(Xc, m, variances=True)
    else:                                                           # only the top variance needed:
        stride = max(1, len(Xc) // 4096)                            # a subsample will do for it
        _, variances = pca(Xc[::stride], m, variances=True)
    if lrW is None:
        lrW = LRW_PER_VARIANCE / variances[0]
    _check_lrW(lrW, variances[0])
    settings["lrW"] = lrW
    if init_W is not None:
        W = qr_retraction(np.asarray(init_W, dtype=np.float64))
    init_seed, batch_seed = _train_seeds(seed)
    if init_E is None:
        E = kmeans_pp(Xc @ W, K, np.random.default_rng(init_seed))
    else:
        E = np.array(init_E, dtype=np.float64)

    keys = ["loss", "mse", "entropy", "dead_codes", "orth_error"]
    if eval_X is not None:
        keys += ["eval_mse", "eval_entropy"]
    hist = {key: np.full(steps, np.nan) for key in keys}
    hist["dead_codes"] = np.zeros(steps, dtype=np.int64)
    batches = _epochs(X.shape[0], batch, np.random.default_rng(batch_seed))   # = minibatches
    if estimator == "numerical":
        step = train_step
    else:
        step = _FusedStep(Xc, batch)                                # = train_step, fast
    eye = np.eye(m)
    t = -1
    for t in range(steps):
        idx = next(batches)
        with np.errstate(over="ignore", invalid="ignore"):          # divergence: checked next
            W, E, loss, rec, k = step(Xc, idx, W, E, estimator, lrW, lrE, beta, alpha)
        _check_diverged(t, loss, W, E, lrW, lrE)
        counts = np.bincount(k, minlength=K)                        # (K,) the batch's code usage
        hist["loss"][t] = loss
        hist["mse"][t] = rec
        hist["entropy"][t] = _entropy(counts)
        hist["dead_codes"][t] = K - np.count_nonzero(counts)
        hist["orth_error"][t] = np.linalg.norm(W.T @ W - eye)
        stop = False
        if tol is not None and (t + 1) % window == 0:
            stop = levelled_off(hist["loss"][:t + 1], window, tol)
        if eval_X is not None and (t % eval_every == 0 or t == steps - 1 or stop):
            ev = evaluate(eval_X, TrainResult(mean, W, E))
            hist["eval_mse"][t] = ev["mse"]
            hist["eval_entropy"][t] = ev["entropy"]
        if stop:
            break
    hist = {key: values[:t + 1] for key, values in hist.items()}
    if t >= 0:                                                      # the final model, last batch
        counts = np.bincount(_assign(Xc[idx] @ W, E), minlength=K)
        _warn_if_collapsed(counts, "the last training batch")
    return TrainResult(mean, W, E, hist, dict(settings, steps_run=t + 1))


# ------------------------------------------------------------------------ metrics
def usage_entropy(counts):
    """Entropy in nats, ``-sum p log p``, of the code usage given by ``counts`` (K,) >= 0."""
    return _entropy(_check_counts(counts))


def evaluate(X, model):
    """Metrics of ``model`` on the rows of ``X`` (N, D), from explicit residuals.

    Returns a dict: ``mse`` (mean ``||x - x_hat||^2``), ``distortion`` (mean
    ``||z - e_k||^2``), ``entropy`` (nats), ``perplexity`` (``exp(entropy)``),
    ``dead_codes`` (unused codes), ``max_entropy`` (``log K``). For an
    :class:`MLPModel` with G codes a row, ``distortion`` sums a row's G codes and the
    usage counts all N G codes.
    """
    if isinstance(model, MLPModel):
        X = _as_matrix(X, "X")
        Z, parts = _mlp_latents(X, model)                           # (N G, m)
        E = parts[3]
        k = _assign(Z, E)
        Q = E[k]
        Xc = X - parts[0]
        X_hat = _mlp_decode(Q.reshape(X.shape[0], -1), parts) - parts[0]
        Z = Z.reshape(X.shape[0], -1)                               # the row's G codes
        Q = Q.reshape(X.shape[0], -1)
    else:
        mean, W, E = _check_model(model)
        Xc = _as_matrix(X, "X", cols=W.shape[0]) - mean             # (N, D)
        Z = Xc @ W                                                  # (N, m)
        k = _assign(Z, E)                                           # (N,)
        Q = E[k]                                                    # (N, m)
        X_hat = Q @ W.T                                             # (N, D), about the mean
    counts = np.bincount(k, minlength=E.shape[0])
    _warn_if_collapsed(counts, "X")
    H = usage_entropy(counts)
    return {
        "mse": float(np.mean(np.sum((Xc - X_hat) ** 2, axis=1))),
        "distortion": float(np.mean(np.sum((Z - Q) ** 2, axis=1))),
        "entropy": H,
        "perplexity": float(np.exp(H)),
        "dead_codes": int(np.sum(counts == 0)),
        "max_entropy": float(np.log(E.shape[0])),
    }


# ---------------------------------------------------------------------- Lloyd-Max
def lloyd_max(Z, K, *, init=None, max_iter=1000, tol=0.0, seed=0):
    """Lloyd's algorithm (k-means) [5] on the rows of ``Z`` (N, m).

    Parameters
    ----------
    Z : array (N, m)
    K : int
        Codebook size, at most the number of distinct rows.
    init : array (K, m), optional
        Initial codebook; default k-means++ with ``seed``.
    max_iter : int
        Warns if it has not converged after this many updates (and ``tol`` is 0).
    tol : float
        Also stop after the first update that lowers the distortion by at most ``tol``
        (relative to the distortion before it).
    seed : int or numpy.random.Generator
        Seeds k-means++ when ``init`` is None.

    Returns
    -------
    E : array (K, m)
    info : dict
        ``labels`` (N,), ``distortion``, ``history`` (``n_iter + 1`` distortions),
        ``n_iter``, ``converged`` (an update re-seeded no empty cell and changed no code,
        so each codeword is its cell's mean), ``reseeded`` (empty cells re-seeded).
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    _check_distinct_rows(Z, K)
    E = _initial_codebook(Z, K, init, seed)                         # (K, m)
    max_iter = _check_int(max_iter, "max_iter", 0)
    tol = _check_real(tol, "tol")
    cells = _LloydCells(Z, E)                                       # codes; counts, sums of z - e
    history = [cells.distortion()]                                  # of the first assignment
    reseeded = 0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        full = cells.counts > 0                                     # (K,)
        E[full] += cells.sums[full] / cells.counts[full, None]      # to the means of their cells
        empty = np.flatnonzero(~full)
        if empty.size:                                              # the rows farthest from theirs
            far = np.argsort(-_row_sq(Z - E[cells.labels]), kind="stable")[:empty.size]
            E[empty] = Z[far]
            reseeded += empty.size
        # A re-seeded row always changes code, so no change of code means none was re-seeded.
        converged = cells.update(E) == 0
        history.append(cells.distortion())                          # after this update
        if converged:
            break
        if tol > 0 and history[-2] - history[-1] <= tol * history[-2]:   # this update's fall
            break
    if not converged and tol == 0 and max_iter > 0:
        warnings.warn(f"lloyd_max stopped at max_iter={max_iter} before converging", stacklevel=2)
    info = {
        "labels": cells.labels.copy(),
        "distortion": history[-1],
        "history": np.array(history),
        "n_iter": it,
        "converged": bool(converged),
        "reseeded": reseeded,
    }
    return E, info


def baseline(X, K=32, m=4, *, seed=0, max_iter=1000):
    """PCA + Lloyd-Max: ``W = pca(X, m)``, then ``E`` by :func:`lloyd_max` on the latents.

    ``seed`` (int or ``numpy.random.Generator``) seeds k-means++. Returns a
    :class:`TrainResult`; its ``settings`` hold Lloyd's ``n_iter`` and ``converged``.
    """
    X = _as_matrix(X, "X")
    mean = X.mean(axis=0)                                           # (D,)
    W = pca(X, m)                                                   # (D, m)
    E, info = lloyd_max((X - mean) @ W, K, seed=seed, max_iter=max_iter)
    settings = dict(K=K, m=m, seed=seed, n_iter=info["n_iter"], converged=info["converged"])
    return TrainResult(mean, W, E, {"distortion": info["history"]}, settings)


# ------------------------------------------- a nonlinear encoder and decoder (eqs. 19-35)
MLP_PARAMS = ("W1", "b1", "W2", "b2", "V1", "c1", "V2", "c2")


@dataclass
class MLPModel:
    """A nonlinear model: rows ``x`` (D,) are read as ``(x - mean) / scale``, encoded by the
    MLP ``params`` into ``groups`` latents of ``m`` (README eqs. 19-20), quantized by ``E``
    (K, m) and decoded by the second MLP (eqs. 22-23), then ``x_hat * scale + mean``.

    :func:`train_mlp` returns one; :func:`encode`, :func:`decode`, :func:`evaluate`,
    :func:`save` and :func:`load` take it as they take a :class:`TrainResult`.
    """
    mean: np.ndarray
    scale: float
    params: dict
    E: np.ndarray
    groups: int = 1
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def mlp_init(D, m, *, groups=1, hidden=128, seed=0):
    """Initial ``params`` of the nonlinear model for D inputs: LeCun normal weights.

    Each weight matrix (fan_in, fan_out) is drawn from ``N(0, 1 / fan_in)`` and each bias is
    0, so a layer keeps unit-variance inputs near unit variance: tanh starts in its
    near-linear range, neither saturated nor vanishing. (The codebook is not here:
    :func:`train_mlp` starts it as k-means++ on the initial latents.)
    """
    rng = _rng(seed, "seed")
    D = _check_int(D, "D", 1)
    m = _check_int(m, "m", 1)
    G = _check_int(groups, "groups", 1)
    H = _check_int(hidden, "hidden", 1)
    weights = {"W1": (D, H), "W2": (H, G * m), "V1": (G * m, H), "V2": (H, D)}
    biases = {"b1": H, "b2": G * m, "c1": H, "c2": D}
    params = {}
    for name in MLP_PARAMS:
        if name in weights:
            fan_in, fan_out = weights[name]
            params[name] = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        else:
            params[name] = np.zeros(biases[name])
    return params


def mlp_forward(X, params, E):
    """README eqs. 19-24 on a batch ``X`` (B, D): returns ``(rec, dist, cache)``.

    The loss is ``rec + (alpha + beta) dist``; ``dist`` sums the ``G`` codes of each row.
    """
    p = params
    B = X.shape[0]
    m = E.shape[1]
    H1 = np.tanh(X @ p["W1"] + p["b1"])                             # (B, H)    eq. 19
    Z = H1 @ p["W2"] + p["b2"]                                      # (B, G m)  eq. 20
    Zg = Z.reshape(-1, m)                                           # (B G, m)  one code each
    k = assign(Zg, E)                                               # (B G,)    eq. 21
    Qg = E[k]                                                       # (B G, m)  eq. 21, value of q
    Q = Qg.reshape(B, -1)                                           # (B, G m)
    H2 = np.tanh(Q @ p["V1"] + p["c1"])                             # (B, H)    eq. 22
    X_hat = H2 @ p["V2"] + p["c2"]                                  # (B, D)    eq. 23
    rec = np.sum((X - X_hat) ** 2) / B                              # eq. 24, reconstruction
    dist = np.sum((Zg - Qg) ** 2) / B                               # eq. 24, both code terms
    cache = dict(X=X, params=p, E=E, H1=H1, Zg=Zg, k=k, Qg=Qg, Q=Q, H2=H2, X_hat=X_hat)
    return rec, dist, cache


def mlp_backward(cache, estimator="ste", beta=0.25, alpha=1.0):
    """Gradients of the loss (24) for every parameter and ``"E"``, eqs. 25-33 (a dict)."""
    X, p, E = cache["X"], cache["params"], cache["E"]
    H1, Zg, k, Qg, Q, H2 = (cache[name] for name in ("H1", "Zg", "k", "Qg", "Q", "H2"))
    B = X.shape[0]
    g = {}
    dX_hat = (2.0 / B) * (cache["X_hat"] - X)                       # (B, D)    eq. 25
    g["V2"] = H2.T @ dX_hat                                         # (H, D)    eq. 26
    g["c2"] = dX_hat.sum(axis=0)                                    # (D,)      eq. 26
    dP = (dX_hat @ p["V2"].T) * (1.0 - H2 ** 2)                     # (B, H)    eq. 27
    g["V1"] = Q.T @ dP                                              # (G m, H)  eq. 28
    g["c1"] = dP.sum(axis=0)                                        # (H,)      eq. 28
    dQ = (dP @ p["V1"].T).reshape(Zg.shape)                         # (B G, m)  eq. 29
    if estimator == "ste":
        dZ_rec = dQ                                                 # (B G, m)  eq. 30 with (10)
    else:
        factors = rotation_factors(Zg, Qg)
        dZ_rec = apply_rotation(dQ, factors, transpose=True)        # (B G, m)  eq. 30 with (11)
    dZ = (dZ_rec + (2.0 * beta / B) * (Zg - Qg)).reshape(B, -1)     # (B, G m)  eq. 30 with (12)
    g["W2"] = H1.T @ dZ                                             # (H, G m)  eq. 31
    g["b2"] = dZ.sum(axis=0)                                        # (G m,)    eq. 31
    dA = (dZ @ p["W2"].T) * (1.0 - H1 ** 2)                         # (B, H)    eq. 32
    g["W1"] = X.T @ dA                                              # (D, H)    eq. 33
    g["b1"] = dA.sum(axis=0)                                        # (H,)      eq. 33
    dE = np.zeros_like(E)
    np.add.at(dE, k, Qg - Zg)                                       # (K, m)    eq. 14, all B G
    g["E"] = dE * (2.0 * alpha / B)
    return {name: g[name] for name in MLP_PARAMS + ("E",)}


def mlp_loss_and_grads(X, params, E, *, estimator="ste", beta=0.25, alpha=1.0):
    """Loss (24) and its gradients (25-33): ``(loss, grads)``, grads keyed as ``params`` + "E".

    ``X`` (B, D) rows as given (no centring or scaling here), ``params`` as from
    :func:`mlp_init`, ``E`` (K, m). The latent width ``G m`` is ``params["W2"]``'s columns.
    """
    X, params, E = _check_mlp_XpE(X, params, E, estimator)
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    rec, dist, cache = mlp_forward(X, params, E)
    return rec + (alpha + beta) * dist, mlp_backward(cache, estimator, beta, alpha)


def mlp_frozen_surrogate(X, params, E, estimator="ste", beta=0.25, alpha=1.0):
    """``L~(params, E)`` of eq. 35: the loss (24) with codes and every ``sg(.)`` frozen."""
    _, _, c0 = mlp_forward(X, params, E)
    Z0, k, Q0 = c0["Zg"], c0["k"], c0["Qg"]
    if estimator == "ste":
        def phi(Zg):
            return Zg + (Q0 - Z0)                                   # eq. 5, sg(e - z) frozen
    else:
        F = rotation_factors(Z0, Q0)

        def phi(Zg):
            return apply_rotation(Zg, F)                            # eq. 6, sg(lam R) frozen

    def L(p, E):
        B = X.shape[0]
        Zg = (np.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]).reshape(Z0.shape)
        Q = phi(Zg).reshape(B, -1)
        X_hat = np.tanh(Q @ p["V1"] + p["c1"]) @ p["V2"] + p["c2"]
        rec = np.sum((X - X_hat) ** 2)
        codebook = alpha * np.sum((Z0 - E[k]) ** 2)                 # sg(z) frozen at Z0
        commitment = beta * np.sum((Zg - Q0) ** 2)                  # sg(e) frozen at Q0
        return (rec + codebook + commitment) / B
    return L


def mlp_numerical_grads(X, params, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Central differences of eq. 35 for every parameter and ``"E"`` (a dict, as
    :func:`mlp_loss_and_grads`)."""
    X, params, E = _check_mlp_XpE(X, params, E, estimator)
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    h = _check_real(h, "h", positive=True)
    L = mlp_frozen_surrogate(X, params, E, estimator, beta, alpha)
    grads = {}
    with np.errstate(over="ignore", invalid="ignore"):             # a bad h is reported below
        for name in MLP_PARAMS:
            def f(P, name=name):
                return L(dict(params, **{name: P}), E)
            grads[name] = central_differences(f, params[name], h)
        grads["E"] = central_differences(lambda P: L(params, P), E, h)
    if not all(np.all(np.isfinite(v)) for v in grads.values()):
        raise ValueError(f"h={h:g} gives non-finite differences; use h near 1e-6")
    return grads


def mlp_grad_check(X, params, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6,
                   verbose=False):
    """Largest relative error of :func:`mlp_loss_and_grads` against
    :func:`mlp_numerical_grads`; ``verbose`` prints a row per parameter as :func:`grad_check`.
    """
    _, manual = mlp_loss_and_grads(X, params, E, estimator=estimator, beta=beta, alpha=alpha)
    numerical = mlp_numerical_grads(X, params, E, estimator=estimator, beta=beta, alpha=alpha,
                                    h=h)
    errs = []
    for name in MLP_PARAMS + ("E",):
        err = relative_error(manual[name], numerical[name])
        errs.append(err)
        if verbose:
            diff = np.max(np.abs(manual[name] - numerical[name]))
            verdict = "OK" if err < GRAD_TOL else "NOT OK"
            print(f"{estimator:<9} d{name:<3} {diff:12.1e} {err:12.1e}  {verdict}")
    return max(errs)


def mlp_check_point(X, m, K, *, groups=1, hidden=16, seed=0, margin=1e-4):
    """Random ``(params, E (K, m))`` for a gradient check of the nonlinear model on ``X``.

    Weights as :func:`mlp_init`, biases drawn too (so their gradients are tested at a
    general point); ``E`` is K of the latents, moved a little. Redrawn until each latent's
    two nearest squared distances differ by more than ``margin``, so a step ``h`` changes
    no code.
    """
    X = _as_matrix(X, "X")
    rng = _rng(seed, "seed")
    for _ in range(100):
        params = mlp_init(X.shape[1], m, groups=groups, hidden=hidden, seed=rng)
        for name in ("b1", "b2", "c1", "c2"):
            params[name] = 0.3 * rng.standard_normal(params[name].shape)
        _, _, cache = mlp_forward(X, params, np.zeros((1, m)))
        Z = cache["Zg"]                                             # (N G, m)
        E = Z[rng.choice(len(Z), K, replace=False)] + 0.1 * rng.standard_normal((K, m))
        d2 = np.sort(np.sum((Z[:, None, :] - E[None]) ** 2, axis=2), axis=1)
        if K == 1 or np.min(d2[:, 1] - d2[:, 0]) > margin:
            return params, E
    raise ValueError(f"no check point with margin={margin:g} in 100 draws; lower margin")


def adam_step(P, G, state, lr, *, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step [8] on the array ``P`` in place, for its gradient ``G`` (eq. 34).

    ``lr`` is a number or an array shaped as ``P`` (a step size per entry). ``state`` is a
    dict holding ``t`` and the moment arrays ``m`` and ``v`` (created at 0 on the first
    call): ``m = b1 m + (1 - b1) G``, ``v = b2 v + (1 - b2) G^2``, then
    ``P -= lr m_hat / (sqrt(v_hat) + eps)`` with the bias corrections ``1 - b^t``.
    """
    if "m" not in state:
        state.update(t=0, m=np.zeros_like(P), v=np.zeros_like(P))
    state["t"] += 1
    t = state["t"]
    state["m"] = b1 * state["m"] + (1.0 - b1) * G                  # eq. 34, first moment
    state["v"] = b2 * state["v"] + (1.0 - b2) * G * G              # eq. 34, second moment
    m_hat = state["m"] / (1.0 - b1 ** t)
    v_hat = state["v"] / (1.0 - b2 ** t)
    P -= lr * m_hat / (np.sqrt(v_hat) + eps)                        # eq. 34
    return P


def train_mlp(X, *, estimator="ste", K=32, m=4, groups=1, hidden=128, lr=3e-4, lrE=1e-2,
              steps=20000, batch=256, beta=0.25, alpha=1.0, seed=0, init_params=None,
              init_E=None, tol=1e-3, window=500, eval_X=None, eval_every=500):
    """Fit the nonlinear model (README eqs. 19-34) to the rows of ``X`` by Adam.

    The rows are centred by their mean and divided by one scale (the root mean column
    variance), so data of any scale trains with the same ``lr``. The weights start as
    :func:`mlp_init`, the codebook as k-means++ on the initial latents. Each step takes a
    batch of :func:`minibatches`, computes :func:`mlp_forward` and :func:`mlp_backward` (by
    a fast step equal to them), and makes one :func:`adam_step` on every parameter and the
    codebook together. The defaults
    are the README's protocol for this model: a user who changes nothing gets it.

    Parameters
    ----------
    X : array (N, D)
        Training rows, any mean and scale (the model carries both).
    estimator : {"ste", "rotation"}
    K, m : int
        Codebook size and the width of one code.
    groups : int
        Codes per row, G: the encoder's output (G m) is read as G codes of m, each
        quantized by the shared codebook.
    hidden : int
        Width of the hidden layer of the encoder and of the decoder.
    lr : float
        Adam's step size for the weights and biases.
    lrE : float or None
        Adam's step size for the codebook (None: ``lr``). Larger than ``lr``: Adam moves
        each codeword at most about ``lrE`` a step, and the latents, moved by every weight
        of the encoder at once, would otherwise outrun their codewords and leave codes dead.
    steps : int
        The most steps to take.
    batch : int
        Rows per step (at most N).
    beta, alpha : float
        Commitment and codebook weights of the loss (24).
    seed : int or numpy.random.Generator
        Seeds the initial weights, the initial codebook and the batches.
    init_params : dict, optional
        Initial weights and biases (as :func:`mlp_init` returns), on the scaled rows.
    init_E : array (K, m), optional
        Initial codebook.
    tol : float or None
        Stop once the mean training *reconstruction* error of the last ``window`` steps is
        less than ``tol`` (relative) below that of the ``window`` before; None: run all
        ``steps``. (The latents' scale is free here, so the code terms can fall while the
        reconstruction does not: they are not watched.)
    window : int
    eval_X : array (N', D), optional
        Rows evaluated every ``eval_every`` steps and after the last.
    eval_every : int

    Returns
    -------
    MLPModel
        History per step, on its batch before the update: ``loss``, ``mse`` (in the data's
        units), ``entropy``, ``dead_codes``, ``latent_norm`` (mean ``||z||`` of a code); with
        ``eval_X``, ``eval_mse`` and ``eval_entropy`` (NaN between evaluations). Settings
        with ``steps_run``.

    Raises
    ------
    ValueError
        For a bad argument, naming it.
    FloatingPointError
        When training diverges (naming ``lr`` and ``lrE``).
    """
    X, settings = _check_train_mlp(X, locals())
    N, D = X.shape
    batch = settings["batch"]
    mean = X.mean(axis=0)                                           # (D,)
    scale = float(np.sqrt(np.mean(X.var(axis=0))))                 # one scale for all columns
    Xs = (X - mean) / scale                                         # (N, D), unit mean variance
    init_seed, batch_seed = _train_seeds(seed)
    rng = np.random.default_rng(init_seed)
    params = mlp_init(D, m, groups=groups, hidden=hidden, seed=rng)
    if init_params is not None:
        params = _check_mlp_params(init_params, D)[0]
        if params["W2"].shape[1] != groups * m or params["W1"].shape[1] != hidden:
            raise ValueError(f"init_params must have hidden={hidden} and groups * m = "
                             f"{groups * m} latent columns")
    if init_E is None:
        _, _, c0 = mlp_forward(Xs, params, np.zeros((1, m)))       # the initial latents
        _check_distinct_rows(c0["Zg"], K)
        E = kmeans_pp(c0["Zg"], K, rng)                             # (K, m)
    else:
        E = _as_matrix(init_E, "init_E", cols=m)
        if E.shape[0] != K:
            raise ValueError(f"init_E must have shape ({K}, {m}), got {E.shape}")
    theta, views = _pack(params, E)                                 # one vector, views into it
    params = {name: views[name] for name in MLP_PARAMS}
    E = views["E"]
    adam = _Adam(theta.size)                                        # = adam_step
    step_sizes = np.full(theta.size, lr)                            # Adam's lr, entry by entry
    step_sizes[theta.size - E.size:] = lr if lrE is None else lrE   # the codebook comes last
    keys = ["loss", "mse", "entropy", "latent_norm"]
    if eval_X is not None:
        keys += ["eval_mse", "eval_entropy"]
    hist = {key: np.full(steps, np.nan) for key in keys}
    hist["dead_codes"] = np.zeros(steps, dtype=np.int64)
    batches = _epochs(N, batch, np.random.default_rng(batch_seed))  # = minibatches
    step = _MLPStep(batch, D, hidden, groups * m, m, K)             # = mlp_forward, mlp_backward
    g_flat, grads = _pack(params, E)                                # the gradients' vector
    Xb = np.empty((batch, D))
    t = -1
    for t in range(steps):
        idx = next(batches)
        np.take(Xs, idx, axis=0, out=Xb, mode="wrap")               # idx is valid: as "raise"
        with np.errstate(over="ignore", invalid="ignore"):          # divergence: checked next
            rec, dist, k, Zg = step(Xb, params, E, estimator, beta, alpha, grads)
            adam(theta, g_flat, step_sizes)
        loss = rec + (alpha + beta) * dist
        # A NaN in theta makes its max NaN, which fails the comparison.
        bound = np.sqrt(SAFE_MAX)
        if not (np.isfinite(loss) and theta.max() <= bound and theta.min() >= -bound):
            lr_codebook = lr if lrE is None else lrE
            raise FloatingPointError(f"training diverged at step {t}; lower the learning "
                                     f"rates (lr={lr:g}, lrE={lr_codebook:g})")
        counts = np.bincount(k, minlength=K)
        hist["loss"][t] = loss
        hist["mse"][t] = rec * scale ** 2
        hist["entropy"][t] = _entropy(counts)
        hist["dead_codes"][t] = np.sum(counts == 0)
        hist["latent_norm"][t] = np.mean(np.sqrt(_row_sq(Zg)))
        stop = False
        if tol is not None and (t + 1) % window == 0:
            stop = levelled_off(hist["mse"][:t + 1], window, tol)
        if eval_X is not None and (t % eval_every == 0 or t == steps - 1 or stop):
            ev = evaluate(eval_X, MLPModel(mean, scale, _copy(params), E.copy(), groups))
            hist["eval_mse"][t] = ev["mse"]
            hist["eval_entropy"][t] = ev["entropy"]
        if stop:
            break
    hist = {key: values[:t + 1] for key, values in hist.items()}
    model = MLPModel(mean, scale, _copy(params), E.copy(), groups, hist,
                     dict(settings, steps_run=t + 1))
    if t >= 0:
        counts = np.bincount(encode(X[idx], model).ravel(), minlength=K)
        _warn_if_collapsed(counts, "the last training batch")
    return model


# ---------------------------------------------------------------------- protocols
# The README's two protocols, as train() keywords. "Converged", train's defaults: a
# codebook step that moves a code used by 1/K of a batch 2 lrE / K of the way to its
# cell's mean, until the training loss levels off (tol, window); lrW scaled to the data.
# "Study": the study's settings, a fixed 300 steps, for data of make_data's scale.
CONVERGED = dict(steps=20000, lrE=2.0, tol=1e-3, window=500)
STUDY = dict(steps=300, lrW=0.08, lrE=0.2, tol=None)


def main(argv=None):
    """Demo: PCA + Lloyd-Max, STE and rotation on held-out rows, then a gradient check.

    On make_data's rows: the study's protocol and the converged one. On a file
    (--data): the converged protocol only, as the study's settings are for
    make_data's scale. The nonlinear model is not run here: in Python,
    vqref.train_mlp(X) (README, "A nonlinear encoder and decoder").
    """
    parser, a = _demo_args(argv)
    with warnings.catch_warnings(record=True) as caught:            # shown as one line each
        warnings.simplefilter("always")
        try:
            X, source = _demo_data(a)
            Xtr, Xte = split(X, 0.2, seed=a.seed)
            _check_demo_rows(a, len(Xtr))
            kw = dict(K=a.K, m=a.m, batch=a.batch, beta=a.beta, alpha=a.alpha, seed=a.seed)
            t0 = time.perf_counter()
            base = baseline(Xtr, a.K, a.m, seed=a.seed)
            seconds = time.perf_counter() - t0
            rows = [("PCA + Lloyd-Max", f"{base.settings['n_iter']} it", base, seconds)]
            for protocol, protocol_kw in _demo_protocols(a):
                for name in ("STE", "rotation"):
                    t0 = time.perf_counter()
                    res = train(Xtr, estimator=name.lower(), **kw, **protocol_kw)
                    seconds = time.perf_counter() - t0
                    steps_run = str(res.settings["steps_run"])
                    rows.append((f"{name}, {protocol}", steps_run, res, seconds))
        except (ValueError, FloatingPointError) as err:             # bad flags, divergence
            parser.exit(2, f"vqref: error: {_as_flag_message(err, a)}\n")
        evs = _print_demo_table(a, source, len(Xtr), rows, Xte)     # evaluate() may warn too
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"vqref: warning: {message}", file=sys.stderr)
    Xc = Xtr[:256] - base.mean                                      # gradient check on 256 rows
    W, E = check_point(Xc, a.m, min(a.K, len(Xc)), seed=a.seed)
    print(f"\ngradient check: manual vs central differences of eq. 15 (h=1e-6, {len(Xc)} rows, "
          f"random point; OK below {GRAD_TOL:g})")
    print(f"{'estimator':<13} {'max|diff|':>12} {'max rel err':>12}")
    errs = []
    for estimator in ("ste", "rotation"):
        errs.append(grad_check(Xc, W, E, estimator=estimator, beta=a.beta, alpha=a.alpha,
                               verbose=True))
    return [(row[0], ev) for row, ev in zip(rows, evs)], errs


# =============================================================================
# Machinery: nothing below changes a result; it makes it fast or safe.
# =============================================================================

SAFE_MIN = 1e-100             # smallest |entry| accepted (or 0): squared distances don't underflow
SAFE_MAX = 1e100              # largest |entry| accepted: squared distances do not overflow
ASSIGN_CHUNK_ELEMENTS = 1 << 17  # entries of one (rows, K) score block of _assign
ASSIGN_TIE_RTOL = 1e-12          # relative rounding bound of the expanded distance form
TRAIN_SETTINGS = ("estimator", "K", "m", "steps", "lrW", "lrE", "beta", "alpha", "batch",
                  "seed", "tol", "window")


# ---------------------------------------------------------------- validation
def _as_matrix(A, name, *, cols=None):
    """``A`` as a finite float64 2-D array within [SAFE_MIN, SAFE_MAX], or ValueError naming it."""
    try:
        A = np.asarray(A)
    except ValueError as err:                                       # ragged nested lists
        raise ValueError(f"{name} must be a rectangular numeric array ({err})") from None
    if A.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {A.dtype}")
    if A.ndim != 2 or 0 in A.shape:
        raise ValueError(f"{name} must be 2-D and non-empty, got shape {A.shape}")
    if cols is not None and A.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {A.shape}")
    A = np.asarray(A, dtype=np.float64)
    big = max(A.max(), -A.min())                                    # NaN propagates
    if not np.isfinite(big):
        raise ValueError(f"{name} contains NaN or inf")
    if big > SAFE_MAX or 0 < big < SAFE_MIN:
        failure = "overflow" if big > 1 else "underflow"
        raise ValueError(f"{name} has entries of magnitude {big:.1e}, where squared distances "
                         f"{failure}: rescale {name} into [{SAFE_MIN:g}, {SAFE_MAX:g}]")
    return A


def _check_int(value, name, low, high=None):
    """``value`` as an int in ``[low, high]`` (no upper limit if ``high`` is None)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if high is None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def _check_real(value, name, *, positive=False):
    """``value`` as a finite float, ``>= 0`` (``> 0`` if ``positive``)."""
    real = (int, float, np.integer, np.floating)
    if not isinstance(value, real) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound} and finite, got {value}")
    return float(value)


def _check_estimator(estimator, allowed=ESTIMATORS):
    if estimator not in allowed:
        raise ValueError(f"estimator must be one of {allowed}, got {estimator!r}")


def _check_XWE(X, W, E, estimator):
    """``X`` (B, D), ``W`` (D, m) and ``E`` (K, m) as matrices that fit together."""
    X = _as_matrix(X, "X")
    W = _as_matrix(W, "W")
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"W must have shape (D, m) = ({X.shape[1]}, m), got {W.shape}")
    _check_estimator(estimator, ("ste", "rotation"))
    E = _as_matrix(E, "E", cols=W.shape[1])
    return X, W, E


def _check_model(model):
    """A model's ``(mean (D,), W (D, m), E (K, m))``, checked to fit together."""
    if not all(hasattr(model, a) for a in ("mean", "W", "E")):
        raise ValueError(f"model must have mean, W and E (a TrainResult), "
                         f"got {type(model).__name__}")
    W = _as_matrix(model.W, "model.W")
    mean = np.asarray(model.mean, dtype=np.float64)
    if mean.shape != (W.shape[0],) or not np.all(np.isfinite(mean)):
        raise ValueError(f"model.mean must be finite with shape ({W.shape[0]},), "
                         f"got {mean.shape}")
    E = _as_matrix(model.E, "model.E", cols=W.shape[1])
    return mean, W, E


def _check_codes(codes, K):
    c = np.asarray(codes)
    valid = c.ndim == 1 and c.size > 0 and c.dtype.kind in "iu"
    if not valid or not 0 <= c.min() <= c.max() < K:
        raise ValueError(f"codes must be a non-empty 1-D integer array with values "
                         f"in [0, {K - 1}]")
    return c


def _check_counts(counts):
    p = np.asarray(counts, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or not np.all(p >= 0):
        raise ValueError(f"counts must be a non-empty 1-D array of non-negative numbers, "
                         f"got {counts!r}")
    return p


def _check_distinct_rows(Z, K):
    """ValueError unless ``Z`` has ``K`` distinct rows (one sort of a projection decides most)."""
    if K > 1 and np.unique(Z @ np.cos(np.arange(1, Z.shape[1] + 1))).size < K:
        n = np.unique(Z, axis=0).shape[0]
        if n < K:
            raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({n}); "
                             "lower K")


def _initial_codebook(Z, K, init, seed):
    """lloyd_max's starting codebook (K, m): a copy of ``init``, or k-means++ with ``seed``."""
    if init is None:
        return kmeans_pp(Z, K, _rng(seed, "seed"))
    E = _as_matrix(init, "init", cols=Z.shape[1]).copy()
    if E.shape[0] != K:
        raise ValueError(f"init must have shape (K, m) = ({K}, {Z.shape[1]}), got {E.shape}")
    return E


def _check_train(X, a):
    """Validate train()'s arguments ``a`` (its locals): returns X and the settings dict."""
    X = _as_matrix(X, "X")
    N, D = X.shape
    _check_estimator(a["estimator"])
    int_ranges = (("K", 1, N), ("m", 1, D), ("steps", 0, 10 ** 7), ("batch", 1, None),
                  ("window", 1, None), ("eval_every", 1, None))
    for name, low, high in int_ranges:
        _check_int(a[name], name, low, high)
    if not isinstance(a["seed"], np.random.Generator):
        _check_int(a["seed"], "seed", 0)
    if a["lrW"] is not None:
        _check_real(a["lrW"], "lrW", positive=True)
    _check_real(a["lrE"], "lrE", positive=True)
    _check_real(a["beta"], "beta")
    if _check_real(a["alpha"], "alpha") == 0:
        warnings.warn("alpha=0: the codebook gets no gradient and never moves from its "
                      "initial value", stacklevel=3)
    if a["tol"] is not None:
        _check_real(a["tol"], "tol")
    for name, shape in (("init_W", (D, a["m"])), ("init_E", (a["K"], a["m"]))):
        if a[name] is not None and _as_matrix(a[name], name).shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {np.shape(a[name])}")
    if a["eval_X"] is not None:
        _as_matrix(a["eval_X"], "eval_X", cols=D)
    settings = {name: a[name] for name in TRAIN_SETTINGS}
    if settings["batch"] > N:
        warnings.warn(f"batch={settings['batch']} is larger than the data (N={N}); "
                      f"using batch={N}", stacklevel=3)
        settings["batch"] = N
    return X, settings


def _check_lrW(lrW, top_variance):
    """ValueError if ``lrW`` is too large for the data's scale (the step grows as the variance)."""
    largest = LRW_TIMES_VARIANCE_MAX / top_variance
    if lrW > largest:
        shown = _round_down(largest)                                # accepted when passed
        raise ValueError(f"lrW={lrW:g} is too large for data of this scale (top variance "
                         f"{top_variance:.3g}): pass lrW <= {shown:.3g}, or leave lrW unset (the "
                         "default) to scale it to the data (README, \"Choosing learning "
                         "rates\")")


def _check_diverged(t, loss, W, E, lrW, lrE):
    """FloatingPointError if step ``t`` left a non-finite loss or ``W``, or a runaway ``E``."""
    if not (np.isfinite(loss + W.sum()) and np.abs(E).max() <= SAFE_MAX):
        raise FloatingPointError(f"training diverged at step {t}; lower the learning rates "
                                 f"(lrW={lrW:g}, lrE={lrE:g})")


def _check_step(h, W, E):
    """ValueError if the finite-difference step ``h`` is lost in the rounding of W or E."""
    top = max(np.abs(W).max(), np.abs(E).max())
    if top + h == top:
        raise ValueError(f"h={h:g} is below the rounding of max(|W|, |E|) = {top:.3g}; "
                         "use h near 1e-6")


def _warn_if_collapsed(counts, where):
    if counts.size > 1 and np.count_nonzero(counts) == 1:
        warnings.warn(f"all but one of the K={counts.size} codes are dead on {where}; "
                      "every row gets the same codeword", stacklevel=3)


def _as_flag_message(err, args):
    """The message of ``err``, as a flag (``--K=...``) when it starts with a flag's name."""
    name = str(err).split(" ")[0].split("=")[0]
    if name in vars(args):
        return f"--{err}"
    return str(err)


# ------------------------------------------------------------ small pieces
def _rng(seed, name):
    """A ``numpy.random.Generator``: ``seed`` itself if it is one, else seeded by the int."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(_check_int(seed, name, 0))


def _train_seeds(seed):
    """The two seed streams of :func:`train`: ``[0]`` its initial codebook, ``[1]`` its batches.

    An int seeds a ``SeedSequence``; a ``Generator`` gives one draw to seed it (and advances).
    """
    if isinstance(seed, np.random.Generator):
        entropy = int(seed.integers(2 ** 63))
    else:
        entropy = _check_int(seed, "seed", 0)
    return np.random.SeedSequence(entropy).spawn(2)


def _round_down(x, digits=3):
    """``x > 0`` rounded down to ``digits`` significant digits (printed, it is <= x)."""
    exponent = int(np.floor(np.log10(x))) - (digits - 1)
    shown = np.floor(x / 10.0 ** exponent) * 10.0 ** exponent
    while float(f"{shown:.{digits}g}") > x:                        # rounding of the division
        shown -= 10.0 ** exponent
    return float(f"{shown:.{digits}g}")


def _epochs(N, batch, rng):
    """:func:`minibatches`' endless batches, drawn by the Generator ``rng``."""
    while True:
        yield from rng.permutation(N)[:N // batch * batch].reshape(-1, batch)


def _entropy(counts):
    """:func:`usage_entropy` of checked ``counts`` (K,)."""
    p = counts[counts > 0] / counts.sum()                           # (used codes,) row shares
    return float(-np.sum(p * np.log(p)) + 0.0)                      # + 0.0: no -0.0 for one code


def _row_sq(A):
    """``np.sum(A ** 2, axis=1)`` (n,) for ``A`` (n, m), as a product with ones: fast."""
    return np.square(A) @ np.ones(A.shape[1])


def _cell_sums(R, labels, K):
    """Sum of the rows of ``R`` (N, m) in each cell (K, m): ``np.add.at(S, labels, R)``.

    One ``bincount`` per column.
    """
    return np.array([np.bincount(labels, weights=column, minlength=K) for column in R.T]).T


# ------------------------------------------------ assignment in blocks (= nearest_codeword)
def _assign(Z, E, out_second=None):
    """Codes (N,) of the rows of ``Z`` (N, m) for ``E`` (K, m): :func:`nearest_codeword`.

    Unvalidated. With ``out_second`` (N,), also writes there a lower bound of each row's
    squared distance to its second-nearest codeword.

    ``argmin_j ||z - e_j||^2`` is ``argmax_j s_j`` with the score ``s_j = z.e_j - ||e_j||^2 / 2``:
    one product of ``[z, 1]`` with ``[e_j, -||e_j||^2 / 2]``, the bias row. Scores are taken
    about the codebook mean ``c``, which keeps their digits far from the origin. A score is
    exact to ``slack``; rows whose best two scores are closer than that (near-ties) are
    decided by exact distances.
    """
    N, m = Z.shape
    K = E.shape[0]
    c = E.sum(axis=0) / K                                           # (m,) the codebook mean
    Ec = E - c                                                      # (K, m) codewords about c
    A = np.concatenate([Ec, -0.5 * _row_sq(Ec)[:, None]], axis=1)   # (K, m + 1) [e, -||e||^2 / 2]
    e2max = -2.0 * A[:, m].min()                                    # largest ||e - c||^2
    rows_per_block = max(256, ASSIGN_CHUNK_ELEMENTS // K)
    Zt = np.ones((m + 1, min(rows_per_block, N)))                   # [z - c; 1] per column
    k = np.empty(N, dtype=np.int64)
    for s in range(0, N, rows_per_block):
        b = min(rows_per_block, N - s)
        Zc = np.subtract(Z[s:s + b].T, c[:, None], out=Zt[:m, :b])  # (m, b) z - c
        z2 = _row_sq(Zc.T)                                          # (b,) ||z - c||^2
        slack = ASSIGN_TIE_RTOL * (z2 + e2max)                      # (b,) a score's rounding bound
        if K > 64:
            kb, best, second, close = _best_two_by_rows(A, Zt[:, :b], slack)
        else:
            kb, best, second, close = _best_two_by_columns(A, Zt[:, :b], slack,
                                                           out_second is not None)
        if close.size:                                              # near-ties: exact distances
            diff = np.take(Z, s + close, axis=0)[:, None, :] - E[None]   # (r, K, m)
            kb[close] = np.argmin(np.einsum("rkm,rkm->rk", diff, diff), axis=1)
        k[s:s + b] = kb
        if out_second is not None:
            second[close] = best[close]                             # a near-tie's second: its best
            out_second[s:s + b] = z2 - 2.0 * (second + slack)      # ||z - e||^2 = ||z||^2 - 2 s
    return k


def _best_two_by_rows(A, Zt, slack):
    """For K > 64: scores (b, K), reduced along each row.

    Returns ``(codes (b,), best score (b,), second-best score (b,), near-tie rows)``.
    """
    b, K = Zt.shape[1], A.shape[0]
    G = Zt.T @ A.T                                                  # (b, K) scores
    rows = np.arange(0, b * K, K)                                   # (b,) flat index of each row
    kb = np.argmax(G, axis=1)                                       # (b,) best code
    best = np.take(G, rows + kb)                                    # (b,) best score
    G.ravel()[rows + kb] = -np.inf
    second = np.take(G, rows + np.argmax(G, axis=1))                # (b,) second-best score
    close = np.flatnonzero(best - second <= slack)
    return kb, best, second, close


def _best_two_by_columns(A, Zt, slack, want_second):
    """For K <= 64: scores (K, b), reduced in whole-row passes over K short rows.

    Returns ``(codes (b,), best score (b,), second-best score (b,) or None, near-tie rows)``.
    """
    b, K = Zt.shape[1], A.shape[0]
    G = A @ Zt                                                      # (K, b) scores
    best = G.max(axis=0)                                            # (b,) best score
    near = (G >= best - slack).view(np.uint8)                       # (K, b) 1 within slack of best
    # A row with a single 1 in near has that code; others are near-ties, decided by the caller.
    codes = np.arange(K, dtype=np.uint8)
    kb = np.minimum(np.einsum("kb,k->b", near, codes), K - 1).astype(np.int64)   # (b,)
    if np.count_nonzero(near) > b:
        close = np.flatnonzero(near.sum(axis=0) > 1)
    else:
        close = kb[:0]                                              # none
    second = None
    if want_second:
        G.ravel()[kb * b + np.arange(b)] = -np.inf
        second = G.max(axis=0)                                      # (b,) second-best score
    return kb, best, second, close


# ------------------------------------------- Lloyd's cells and distance bounds (= assign)
class _LloydCells:
    """lloyd_max's state for a sequence of codebooks: the codes of the rows of ``Z`` (N, m).

    ``labels`` (N,) equal ``assign(Z, E)``; each cell's ``counts`` (K,) and ``sums`` (K, m)
    of ``z - e_k`` are updated only where codes change. Distance bounds [7] spare
    re-assigning most rows: an upper bound on each row's distance to its codeword and a
    lower bound on that to any other follow the codewords' moves (triangle inequality).
    Large gathers use ``mode="wrap"``: the indices are valid, so the values are those of
    the default "raise", without its checks.
    """

    def __init__(self, Z, E):
        K = E.shape[0]
        second = np.empty(Z.shape[0])
        self.Z = Z
        self.E = E.copy()
        self.buf = np.empty_like(Z)                                 # (N, m) for distortion()
        self.labels = _assign(Z, E, second)                         # (N,)
        R = Z - np.take(E, self.labels, axis=0, mode="wrap")        # (N, m) z - e_k
        self.upper = np.sqrt(_row_sq(R))                            # (N,) exact to start
        self.lower = np.sqrt(np.maximum(second, 0.0))               # (N,)
        self.counts = np.bincount(self.labels, minlength=K)         # (K,)
        self.sums = _cell_sums(R, self.labels, K)                   # (K, m)

    def distortion(self):
        """Mean ``||z - e_k||^2`` of the current codes, from explicit residuals."""
        Q = np.take(self.E, self.labels, axis=0, out=self.buf, mode="wrap")
        R = np.subtract(self.Z, Q, out=self.buf)                    # (N, m)
        return float(np.vdot(R, R)) / R.shape[0]

    def _dist(self, Z, codes):
        """``||z - e_c||`` (n,) per row of ``Z`` (n, m) and code ``c``, computed in place."""
        R = np.take(self.E, codes, axis=0, mode="wrap")             # (n, m)
        return np.sqrt(np.square(np.subtract(Z, R, out=R), out=R) @ np.ones(Z.shape[1]))

    def _half_gaps(self):
        """Half of each codeword's distance to its nearest other codeword (K,), rounded down.

        A row nearer its codeword than that keeps its code; inf when K = 1.
        """
        Ec = self.E - self.E.mean(axis=0)                           # (K, m)
        e2 = _row_sq(Ec)                                            # (K,)
        rounding = 2.0 * ASSIGN_TIE_RTOL * (e2[:, None] + e2.max())
        D2 = e2[:, None] + e2[None, :] - 2.0 * (Ec @ Ec.T) - rounding   # (K, K) rounded down
        np.fill_diagonal(D2, np.inf)
        return 0.5 * np.sqrt(np.maximum(D2.min(axis=1), 0.0))

    def update(self, E):
        """Move to the codebook ``E`` (K, m); returns how many rows changed code."""
        K = E.shape[0]
        move = E - self.E                                           # (K, m) each codeword's move
        shift = np.sqrt(_row_sq(move))                              # (K,) its length
        self.sums -= self.counts[:, None] * move                    # residuals about the new ones
        # Grow the upper bounds by their codeword's move; shrink the lower by the largest.
        self.upper += np.take(shift, self.labels, mode="wrap")
        self.lower -= shift.max()
        self.E = E.copy()
        # Certify: a row whose upper bound is below its lower bound or its codeword's
        # half gap keeps its code.
        half_gaps = np.take(self._half_gaps(), self.labels, mode="wrap")   # (N,)
        bound = np.maximum(self.lower, half_gaps)                   # (N,)
        rows = np.flatnonzero(self.upper >= bound)                  # not certified
        Zr = np.take(self.Z, rows, axis=0, mode="wrap")
        old = np.take(self.labels, rows, mode="wrap")
        # Tighten: the exact distance replaces the upper bound and certifies some more.
        u = self._dist(Zr, old)
        self.upper[rows] = u
        keep = np.flatnonzero(u >= np.take(bound, rows))            # still not certified
        rows = np.take(rows, keep)
        Zr = np.take(Zr, keep, axis=0)
        old = np.take(old, keep)
        # Re-assign the rest, with fresh bounds.
        second = np.empty(keep.size)
        new = _assign(Zr, E, second)
        self.upper[rows] = self._dist(Zr, new)
        self.lower[rows] = np.sqrt(np.maximum(second, 0.0))
        # Move the rows that changed code from their old cell's statistics to the new one's.
        moved = np.flatnonzero(new != old)
        Zm = np.take(Zr, moved, axis=0)
        new_m = np.take(new, moved)
        old_m = np.take(old, moved)
        added = _cell_sums(Zm - E[new_m], new_m, K)
        removed = _cell_sums(Zm - E[old_m], old_m, K)
        self.sums += added - removed
        self.counts += np.bincount(new_m, minlength=K) - np.bincount(old_m, minlength=K)
        self.labels[rows] = new
        return moved.size


# ------------------------------------------- the fused training step (= train_step)
class _FusedStep:
    """:func:`train_step` for "ste" and "rotation" (equal to rounding), made for the rows ``X``.

    It never forms the (B, D) ``X_hat``: it uses the latent form of README eqs. 4', 8', 9',
    one latent per column (m, B). It holds each row's ``||x||^2`` (N,) for (4') and a (B, D)
    buffer the batch is gathered into.
    """

    def __init__(self, X, batch):
        self.X = X
        self.row_sq = np.einsum("nd,nd->n", X, X)                   # (N,) each row's ||x||^2
        self.Xb = np.empty((batch, X.shape[1]))                     # (B, D)

    def __call__(self, X, idx, W, E, estimator, lrW, lrE, beta, alpha):
        if X is not self.X:
            raise ValueError("this step was made for other rows X")
        B = len(idx)
        # idx is valid, so "wrap" gives the values of "raise", which with out= gathers
        # through a temporary.
        Xb = np.take(X, idx, axis=0, out=self.Xb, mode="wrap")      # (B, D)
        Z = W.T @ Xb.T                                              # (m, B)  eq. 1
        k = _assign(Z.T, E)                                         # (B,)    eq. 2
        Q = np.take(E.T, k, axis=1)                                 # (m, B)  eq. 3
        Rz = Z - Q                                                  # (m, B)  z - e_k
        QM = (W.T @ W) @ Q                                          # (m, B)  M e_k
        x2 = np.take(self.row_sq, idx).sum()                        # ||Xb||^2
        rec = (x2 - 2.0 * np.vdot(Q, Z) + np.vdot(QM, Q)) / B       # eq. 4'
        if rec < 1e-4 * x2 / B:                                     # (4') lost digits: explicit
            rec = np.sum(np.square(Xb - Q.T @ W.T)) / B
        dQ = (2.0 / B) * (QM - Z)                                   # (m, B)  eq. 9'
        if estimator == "ste":
            dZ_rec = dQ                                             # (m, B)  eq. 10
        else:
            dZ_rec = _rotation_backward(dQ, Z, Q)                   # (m, B)  eq. 11
        dZ = dZ_rec + (2.0 * beta / B) * Rz                         # (m, B)  eq. 12
        dW = Xb.T @ (dZ - (2.0 / B) * Q).T + W @ ((2.0 / B) * (Q @ Q.T))   # (D, m)  eqs. 8', 13
        dE = _cell_sums(Rz.T, k, E.shape[0]) * (-2.0 * alpha / B)   # (K, m)  eq. 14
        W_new = _cholesky_qr(W - lrW * stiefel_project(W, dW))     # eqs. 16-17
        E_new = E - lrE * dE
        loss = rec + (alpha + beta) * np.vdot(Rz, Rz) / B
        return W_new, E_new, loss, rec, k


def _cholesky_qr(Y):
    """:func:`qr_retraction` in fewer calls: ``Y R^-1`` with ``Y^T Y = R^T R``.

    A step's ``Y`` is well conditioned (``Y^T Y = I + lrW^2 xi^T xi``).
    """
    try:
        return np.linalg.solve(np.linalg.cholesky(Y.T @ Y), Y.T).T  # (D, m)
    except np.linalg.LinAlgError:                                   # NaN in Y: not pos. definite
        return qr_retraction(Y)


def _rotation_backward(G, Z, Q):
    """``apply_rotation(G.T, rotation_factors(Z.T, Q.T), transpose=True).T``, a sample per column.

    ``G``, ``Z``, ``Q`` (m, B). Rows with a degenerate rotation take the plain path.
    """
    def dot(a, b):
        return np.einsum("mb,mb->b", a, b)                          # (B,) column dot products

    nz = np.sqrt(dot(Z, Z))                                         # (B,)
    ne = np.sqrt(dot(Q, Q))                                         # (B,)
    if nz.min() > 0 and ne.min() > 0:
        u = Z / nz
        v = Q / ne
        w = u + v
        ns = np.sqrt(dot(w, w))
        if ns.min() >= ANTIPARALLEL_TOL:
            w /= ns
            return (G - 2.0 * dot(w, G) * w + 2.0 * dot(v, G) * u) * (ne / nz)
    return apply_rotation(G.T, rotation_factors(Z.T, Q.T), transpose=True).T


def _through_tanh(dH, H):
    """``dH * (1 - H^2)`` in place, for ``H = tanh(.)``: the gradient before the tanh.

    ``H`` is overwritten (it holds ``1 - H^2`` after).
    """
    np.multiply(H, H, out=H)
    np.subtract(1.0, H, out=H)
    dH *= H
    return dH


class _MLPStep:
    """:func:`mlp_forward` then :func:`mlp_backward` (equal to rounding), for train_mlp.

    It writes each product into a buffer made once and each gradient straight into its
    place in one vector (the order of ``_pack``), so a step allocates little. A bias's
    column sum is the product ``ones (B,) @ dA``: one BLAS call, a third of ``np.sum``'s time.

    With one code a row (G = 1) the decoder sees only the K codewords, so it runs on them:
    its hidden layer and reconstructions are K rows, ``tanh(E V1 + c1)`` and ``dec(e_k)``,
    gathered by code (the K-point quantizer of the README), and ``dV2`` is the product of
    those K hidden rows with the batch's residuals summed by code (a one-hot product).
    """

    def __init__(self, B, D, H, Gm, m, K):
        self.m, self.K = m, K
        self.ones = np.ones(B)
        self.H1 = np.empty((B, H))
        self.Z = np.empty((B, Gm))
        self.Q = np.empty((B, Gm))
        self.H2 = np.empty((B, H))
        self.R = np.empty((B, D))
        self.dP = np.empty((B, H))
        self.dQ = np.empty((B, Gm))
        self.one_code = Gm == m                                     # G = 1
        self.onehot = np.zeros((K, B))                              # (K, B) for G = 1

    def __call__(self, Xb, p, E, estimator, beta, alpha, grad):
        """Fill ``grad`` (a dict of views) and return ``(rec, dist, k, Zg)``."""
        B = Xb.shape[0]
        m = self.m
        H1 = np.matmul(Xb, p["W1"], out=self.H1)
        H1 += p["b1"]
        np.tanh(H1, out=H1)                                         # eq. 19
        Z = np.matmul(H1, p["W2"], out=self.Z)
        Z += p["b2"]                                                # eq. 20
        Zg = Z.reshape(-1, m)
        k = _assign(Zg, E)                                          # eq. 21
        Qg = np.take(E, k, axis=0, out=self.Q.reshape(-1, m))
        if self.one_code:
            rec, dP = self._decoder_on_codewords(Xb, p, E, k, grad)    # eqs. 22-27, G = 1
        else:
            rec, dP = self._decoder(Xb, p, grad)                    # eqs. 22-27
        Rz = Zg - Qg
        dist = np.vdot(Rz, Rz) / B
        np.matmul(self.Q.T, dP, out=grad["V1"])                     # eq. 28
        np.matmul(self.ones, dP, out=grad["c1"])                    # eq. 28
        dQ = np.matmul(dP, p["V1"].T, out=self.dQ).reshape(-1, m)  # eq. 29
        if estimator == "ste":
            dZ = dQ                                                 # eq. 30 with (10)
        else:
            # On (m, B G) copies: its column dot products then run along contiguous rows.
            GZQ = [np.ascontiguousarray(a.T) for a in (dQ, Zg, Qg)]
            dZ = _rotation_backward(*GZQ).T                         # eq. 30 with (11)
        dZ = (dZ + (2.0 * beta / B) * Rz).reshape(B, -1)            # eq. 30 with (12)
        np.matmul(H1.T, dZ, out=grad["W2"])                         # eq. 31
        np.matmul(self.ones, dZ, out=grad["b2"])                    # eq. 31
        dA = _through_tanh(np.matmul(dZ, p["W2"].T, out=self.dP), H1)   # eq. 32
        np.matmul(Xb.T, dA, out=grad["W1"])                         # eq. 33
        np.matmul(self.ones, dA, out=grad["b1"])                    # eq. 33
        grad["E"][...] = _cell_sums(Rz, k, self.K) * (-2.0 * alpha / B)   # eq. 14
        return rec, dist, k, Zg

    def _decoder(self, Xb, p, grad):
        """Eqs. 22-27 on the batch: fills ``grad``'s V2 and c2; returns ``(rec, dP)``."""
        B = Xb.shape[0]
        H2 = np.matmul(self.Q, p["V1"], out=self.H2)
        H2 += p["c1"]
        np.tanh(H2, out=H2)                                         # eq. 22
        R = np.matmul(H2, p["V2"], out=self.R)
        R += p["c2"]
        R -= Xb                                                     # X_hat - X, eq. 23
        rec = np.vdot(R, R) / B                                     # eq. 24
        R *= 2.0 / B                                                # dX_hat, eq. 25
        np.matmul(H2.T, R, out=grad["V2"])                          # eq. 26
        np.matmul(self.ones, R, out=grad["c2"])                     # eq. 26
        dP = _through_tanh(np.matmul(R, p["V2"].T, out=self.dP), H2)    # eq. 27
        return rec, dP

    def _decoder_on_codewords(self, Xb, p, E, k, grad):
        """:meth:`_decoder` for G = 1, run on the K codewords: the same fills and returns."""
        B = Xb.shape[0]
        T2 = np.tanh(E @ p["V1"] + p["c1"])                         # (K, H)  eq. 22 on E
        X_hat_K = T2 @ p["V2"] + p["c2"]                            # (K, D)  eq. 23: dec(e_k)
        R = np.take(X_hat_K, k, axis=0, out=self.R)
        R -= Xb                                                     # X_hat - X, eq. 23
        rec = np.vdot(R, R) / B                                     # eq. 24
        R *= 2.0 / B                                                # dX_hat, eq. 25
        rows = np.arange(B)
        # Summed by code as a one-hot product: for D columns, 4x faster than _cell_sums.
        self.onehot[k, rows] = 1.0                                  # (K, B) row b's code
        R_K = self.onehot @ R                                       # (K, D)  dX_hat by code
        self.onehot[k, rows] = 0.0
        np.matmul(T2.T, R_K, out=grad["V2"])                        # eq. 26, H2 = T2[k]
        np.matmul(self.ones, R, out=grad["c2"])                     # eq. 26
        dP = np.matmul(R, p["V2"].T, out=self.dP)
        dP *= np.take(1.0 - T2 * T2, k, axis=0, out=self.H2)        # eq. 27
        return rec, dP


class _Adam:
    """:func:`adam_step` on one vector (equal to rounding), for train_mlp: the moments and a
    work vector are made once and every operation is in place.

    It keeps the moments divided by their weights, ``mu = m / (1 - b1)`` and
    ``nu = v / (1 - b2)``, which spares a pass each (``mu = b1 mu + g``); the constants
    go into the two scalars of the final division.
    """

    def __init__(self, size, b1=0.9, b2=0.999, eps=1e-8):
        self.b1, self.b2, self.eps = b1, b2, eps
        self.t = 0
        self.mu = np.zeros(size)
        self.nu = np.zeros(size)
        self.work = np.empty(size)

    def __call__(self, P, G, lr):
        self.t += 1
        b1, b2 = self.b1, self.b2
        mu, nu, work = self.mu, self.nu, self.work
        mu *= b1
        mu += G                                                     # eq. 34: m = (1 - b1) mu
        nu *= b2
        nu += np.multiply(G, G, out=work)                           # eq. 34: v = (1 - b2) nu
        # lr m_hat / (sqrt(v_hat) + eps) = lr mu / (sqrt(nu) s + eps / a), with m_hat = a mu
        # (a = (1 - b1) / (1 - b1^t)) and sqrt(v_hat) = s' sqrt(nu); s = s' / a.
        a = (1.0 - b1) / (1.0 - b1 ** self.t)
        s = np.sqrt((1.0 - b2) / (1.0 - b2 ** self.t)) / a
        np.sqrt(nu, out=work)
        work *= s
        work += self.eps / a
        np.divide(mu, work, out=work)                               # m_hat / (sqrt(v_hat) + eps)
        work *= lr
        P -= work                                                   # eq. 34
        return P


# ---------------------------------------------------- the nonlinear model's plumbing
TRAIN_MLP_SETTINGS = ("estimator", "K", "m", "groups", "hidden", "lr", "lrE", "steps", "batch",
                      "beta", "alpha", "seed", "tol", "window")


def _pack(params, E):
    """One float64 vector holding ``params`` (in MLP_PARAMS order) and ``E``, and a dict of
    views into it with their shapes: an Adam step on the vector updates them all."""
    arrays = [params[name] for name in MLP_PARAMS] + [E]
    theta = np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)
    views = {}
    start = 0
    for name, a in zip(MLP_PARAMS + ("E",), arrays):
        size = np.size(a)
        views[name] = theta[start:start + size].reshape(np.shape(a))
        start += size
    return theta, views


def _copy(params):
    return {name: np.array(value) for name, value in params.items()}


def _check_mlp_params(params, D=None):
    """``params`` as a dict of finite float64 arrays of matching shapes: (params, D, H, G m)."""
    if not isinstance(params, dict) or set(params) != set(MLP_PARAMS):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys {', '.join(MLP_PARAMS)}, got {got}")
    p = {"W1": _as_matrix(params["W1"], "params['W1']"),
         "W2": _as_matrix(params["W2"], "params['W2']")}
    D_, H = p["W1"].shape
    Gm = p["W2"].shape[1]
    shapes = {"W1": (D_, H), "b1": (H,), "W2": (H, Gm), "b2": (Gm,), "V1": (Gm, H),
              "c1": (H,), "V2": (H, D_), "c2": (D_,)}
    for name in MLP_PARAMS:
        value = np.asarray(params[name], dtype=np.float64)
        if value.shape != shapes[name]:
            raise ValueError(f"params['{name}'] must have shape {shapes[name]}, "
                             f"got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"params['{name}'] contains NaN or inf")
        p[name] = value
    if D is not None and D_ != D:
        raise ValueError(f"params['W1'] must have {D} rows (X's columns), got {D_}")
    return p, D_, H, Gm


def _check_mlp_XpE(X, params, E, estimator):
    X = _as_matrix(X, "X")
    params, _, _, Gm = _check_mlp_params(params, X.shape[1])
    E = _as_matrix(E, "E")
    if Gm % E.shape[1]:
        raise ValueError(f"E must have a number of columns m that divides the latent width "
                         f"{Gm} (params['W2']'s columns), got shape {E.shape}")
    _check_estimator(estimator, ("ste", "rotation"))
    return X, params, E


def _check_train_mlp(X, a):
    """Validate train_mlp()'s arguments ``a`` (its locals): returns X and the settings."""
    X = _as_matrix(X, "X")
    N, D = X.shape
    _check_estimator(a["estimator"], ("ste", "rotation"))
    int_ranges = (("K", 1, None), ("m", 1, None), ("groups", 1, None), ("hidden", 1, None),
                  ("steps", 0, 10 ** 7), ("batch", 1, None), ("window", 1, None),
                  ("eval_every", 1, None))
    for name, low, high in int_ranges:
        _check_int(a[name], name, low, high)
    if a["K"] > N * a["groups"]:
        raise ValueError(f"K={a['K']} is more than the {N * a['groups']} latents of X "
                         f"({N} rows x groups={a['groups']})")
    if not isinstance(a["seed"], np.random.Generator):
        _check_int(a["seed"], "seed", 0)
    _check_real(a["lr"], "lr", positive=True)
    if a["lrE"] is not None:
        _check_real(a["lrE"], "lrE", positive=True)
    _check_real(a["beta"], "beta")
    if _check_real(a["alpha"], "alpha") == 0:
        warnings.warn("alpha=0: the codebook gets no gradient from the loss; Adam leaves it "
                      "at its initial value", stacklevel=3)
    if a["tol"] is not None:
        _check_real(a["tol"], "tol")
    if a["eval_X"] is not None:
        _as_matrix(a["eval_X"], "eval_X", cols=D)
    if np.all(X.var(axis=0) == 0):
        raise ValueError("X has no variance: every row is the same")
    settings = {name: a[name] for name in TRAIN_MLP_SETTINGS}
    if settings["batch"] > N:
        warnings.warn(f"batch={settings['batch']} is larger than the data (N={N}); "
                      f"using batch={N}", stacklevel=3)
        settings["batch"] = N
    return X, settings


def _check_mlp_model(model):
    """An MLPModel's ``(mean (D,), scale, params, E (K, m), G)``, checked to fit together."""
    params, D, _, Gm = _check_mlp_params(model.params)
    mean = np.asarray(model.mean, dtype=np.float64)
    if mean.shape != (D,) or not np.all(np.isfinite(mean)):
        raise ValueError(f"model.mean must be finite with shape ({D},), got {mean.shape}")
    scale = float(model.scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"model.scale must be a positive number, got {model.scale!r}")
    G = _check_int(model.groups, "model.groups", 1)
    if Gm % G:
        raise ValueError(f"model.groups={G} does not divide the latent width {Gm}")
    E = _as_matrix(model.E, "model.E", cols=Gm // G)
    return mean, scale, params, E, G


def _mlp_latents(X, model):
    """The rows' latents (N G, m) and the checked model parts."""
    mean, scale, params, E, G = _check_mlp_model(model)
    X = _as_matrix(X, "X", cols=mean.shape[0])
    H1 = np.tanh((X - mean) / scale @ params["W1"] + params["b1"])
    Z = (H1 @ params["W2"] + params["b2"]).reshape(-1, E.shape[1])
    return Z, (mean, scale, params, E, G)


def _mlp_decode(Q, model_parts):
    """Rows in the data's units (N, D) from the quantized latents ``Q`` (N, G m)."""
    mean, scale, params, _, _ = model_parts
    X_hat = np.tanh(Q @ params["V1"] + params["c1"]) @ params["V2"] + params["c2"]
    return X_hat * scale + mean


# --------------------------------------------------------------- demo plumbing
DEMO_FLAGS = (  # flag, type, default, help (%(default)s: argparse fills it in)
    ("data", str, None, "a .npy, or .csv/.txt of numbers (rows x columns), to use instead "
                        "of make_data; runs the baseline and converged rows only"),
    ("n", int, 20000, "make_data rows, 20%% held out (default %(default)s)"),
    ("D", int, 64, "make_data dimension (default %(default)s)"),
    ("K", int, 32, "codebook size, all rows (default %(default)s)"),
    ("m", int, 4, "latent dimension, all rows (default %(default)s)"),
    ("steps", int, STUDY["steps"], "steps of the study rows (default %(default)s; the "
                                   f"converged rows stop by themselves, at most "
                                   f"{CONVERGED['steps']})"),
    ("lrE", float, STUDY["lrE"], "codebook learning rate of the study rows (default "
                                 f"%(default)s; converged rows: {CONVERGED['lrE']:g})"),
    ("lrW", float, None, "encoder learning rate of the learned rows (default: "
                         f"{STUDY['lrW']:g} for the study rows, train's {LRW_PER_VARIANCE:g} / "
                         "top variance for the converged rows)"),
    ("batch", int, 1024, "batch size of the learned rows (default %(default)s)"),
    ("beta", float, 0.25, "commitment weight of the learned rows (default %(default)s)"),
    ("alpha", float, 1.0, "codebook weight of the learned rows; 0 freezes the codebook "
                          "(default %(default)s)"),
    ("seed", int, 0, "random seed of the data, split and every method (default %(default)s)"),
)


def _demo_args(argv):
    parser = argparse.ArgumentParser(prog="vqref", description=main.__doc__)
    for flag, typ, default, what in DEMO_FLAGS:
        metavar = "FILE" if flag == "data" else None
        parser.add_argument(f"--{flag}", type=typ, default=default, help=what, metavar=metavar)
    return parser, parser.parse_args(argv)


def _demo_data(a):
    """The demo's rows and a line saying where they come from: ``--data``, or make_data."""
    if a.data is None:
        _check_int(a.n, "n", 2)
        return make_data(a.n, a.D, seed=a.seed), f"make_data(n={a.n}, D={a.D}, seed={a.seed})"
    return _read_rows(a.data), a.data


def _read_rows(path):
    """The rows of a ``.npy`` file, or a ``.csv`` (commas) / ``.txt`` (spaces) of numbers."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv", ".txt"):
        raise ValueError(f"data {path}: expected a .npy, .csv or .txt file")
    if not os.path.isfile(path):
        raise ValueError(f"data {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")                          # an empty file: an error
            if ext == ".npy":
                X = np.load(path, allow_pickle=False)
            else:
                X = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
    except (OSError, ValueError, UserWarning) as err:               # unreadable, ragged, text
        raise ValueError(f"data {path}: {err}") from None
    return _as_matrix(X, f"data {path}")


def _check_demo_rows(a, n_train):
    """ValueError naming the flag that sets the rows, if there are fewer than ``--K``."""
    if n_train >= a.K:
        return
    if a.data is None:
        raise ValueError(f"n={a.n} leaves {n_train} training rows, fewer than --K={a.K}: "
                         f"raise --n or lower --K")
    raise ValueError(f"data {a.data}: {n_train} training rows, fewer than --K={a.K}: "
                     f"lower --K")


def _demo_protocols(a):
    """The demo's protocols as ``(name, train keywords)``: the study's (not on a file), then
    the converged one, with the flags that change them."""
    converged = dict(CONVERGED, lrW=a.lrW)
    if a.data is not None:
        return [("converged", converged)]
    _check_int(a.steps, "steps", 1)                                 # 0: no study rows to show
    study = dict(STUDY, steps=a.steps, lrE=a.lrE)
    if a.lrW is not None:
        study["lrW"] = a.lrW
    return [("study", study), ("converged", converged)]


def _print_demo_table(a, source, n_train, rows, Xte):
    """Print the demo's header and a row per model; returns each model's :func:`evaluate`."""
    D = Xte.shape[1]
    print(f"vqref demo on {source}: D={D} m={a.m} K={a.K}, {n_train} training rows, "
          f"{len(Xte)} held out, batch={a.batch} beta={a.beta} alpha={a.alpha} seed={a.seed}")
    for name, _, model, _ in rows[1:]:
        if name.startswith("STE, "):                                # one line per protocol
            st = model.settings
            stop = "steps" if st["tol"] is None else "steps at most, until the training " \
                f"loss improves by < {st['tol']:g} over {st['window']} steps"
            print(f"{name[5:]}: lrW={st['lrW']:.3g} lrE={st['lrE']:g}, {st['steps']} {stop}")
    print(f"{'method':<20} {'steps':>7} {'test MSE':>9} {'vs base':>8} {'entropy':>8} "
          f"{'of log K':>8} {'dead':>5} {'time':>7}")
    evs = [evaluate(Xte, model) for _, _, model, _ in rows]
    for (name, steps, _, seconds), ev in zip(rows, evs):
        share = ev["entropy"] / ev["max_entropy"] if ev["max_entropy"] else 1.0
        vs_base = 100 * (ev["mse"] / evs[0]["mse"] - 1)
        print(f"{name:<20} {steps:>7} {ev['mse']:9.4f} {vs_base:+7.2f}% {ev['entropy']:8.3f} "
              f"{100 * share:7.1f}% {ev['dead_codes']:5d} {seconds:6.2f}s")
    return evs


if __name__ == "__main__":  # at the end, once the machinery is defined
    main()
