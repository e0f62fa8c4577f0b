# /// script
# requires-python = ">=3.9"
# dependencies = ["numpy>=1.22"]
# ///
"""vqref: vector quantization with hand-derived gradients, in one NumPy file.

The model, for data rows ``x`` (D,) with mean ``mu``:

    z = (x - mu) W            encoder, W (D, m) orthonormal (Stiefel manifold)
    k = argmin_j ||z - e_j||  nearest codeword of the codebook E (K, m)
    q = e_k                   with a gradient path to z chosen by the estimator
    x_hat = mu + q W^T        decoder, tied to the encoder

It is fitted four ways: PCA + Lloyd-Max (k-means on the PCA latents), the
straight-through estimator (STE) [1, 2], the rotation trick [3], and the STE
with finite-difference gradients, to check the hand-derived ones. Read this
file top to bottom beside the README's "Derivation": every backward line cites
its equation. Below the "Machinery" line is only what makes it fast or safe.
NumPy is all it needs. Demo: ``python vqref.py`` (``--help`` for flags).

Vocabulary: a *code* is an index ``k``; its *codeword* is the row ``E[k]``; a
*cell* is the set of rows with the same code; the *distortion* is the mean
squared distance from a latent ``z`` to its codeword.

References
----------
[1] A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, arXiv:1711.00937.
[2] Y. Bengio, N. Leonard, A. Courville, "Estimating or Propagating Gradients
    Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432.
[3] C. Fifty et al., "Restructuring Vector Quantization with the Rotation Trick",
    ICLR 2025, arXiv:2410.06424.
[4] D. Arthur, S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
[5] S. Lloyd, "Least Squares Quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982.
[6] P.-A. Absil, R. Mahony, R. Sepulchre, "Optimization Algorithms on Matrix
    Manifolds", Princeton University Press, 2008.
[7] G. Hamerly, "Making k-means even faster", SIAM SDM 2010.
"""

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

if __name__ == "__main__":  # before NumPy loads: vqref's small products are fastest on one thread
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

__version__ = "0.2.0"

ESTIMATORS = ("ste", "rotation", "numerical")
GRAD_TOL = 1e-6          # manual vs finite-difference gradients: max relative error (README eq. 15)
ANTIPARALLEL_TOL = 1e-6  # ||u + v|| below this: the rotation falls back to a reflection (eq. 6)
LRW_TIMES_VARIANCE_MAX = 1.0  # train() refuses lrW * (top variance of X) above this (README, API)


# ------------------------------------------------------------------------- data

def make_data(n, D=64, *, seed=0, rank=4, decay=0.9, scale=2.0, noise=0.012, bimodal=0, sep=0.8):
    """Synthetic centred data: a low-rank Gaussian signal plus isotropic noise.

    ``x = A s + sqrt(noise) eps`` with ``s_j ~ N(0, scale * decay**j)`` for ``j < rank``
    in random orthonormal directions ``A``, and ``eps ~ N(0, I_D)``. With
    ``bimodal = b > 0``, ``b`` further orthogonal directions carry ``+-sep`` (equal
    odds) plus ``N(0, (sep / 10)^2)``: less variance than the Gaussian signal, but
    two codewords quantize each one almost exactly (README, "Where learning wins").
    The columns are centred exactly.

    Parameters
    ----------
    n, D : int
        Rows and dimension.
    seed : int
        Seed of the ``numpy.random.Generator`` (0 is a valid seed).
    rank, decay, scale, noise, bimodal, sep
        As above; ``rank + bimodal <= D``.

    Returns
    -------
    X : ndarray of shape (n, D)
    """
    n, D = _check_int(n, "n", 1), _check_int(D, "D", 1)
    rank = min(_check_int(rank, "rank", 1), D)
    bimodal = _check_int(bimodal, "bimodal", 0, D - rank)
    decay, scale = _check_real(decay, "decay", positive=True), _check_real(scale, "scale", positive=True)
    noise, sep = _check_real(noise, "noise"), _check_real(sep, "sep")
    rng = np.random.default_rng(_check_seed(seed))
    A, _ = np.linalg.qr(rng.standard_normal((D, rank + bimodal)))  # (D, rank + bimodal) orthonormal
    std = np.sqrt(scale * decay ** np.arange(rank))                 # (rank,)
    X = (rng.standard_normal((n, rank)) * std) @ A[:, :rank].T      # (n, D)
    X += np.sqrt(noise) * rng.standard_normal((n, D))               # (n, D)
    if bimodal:
        S = sep * (rng.choice([-1.0, 1.0], size=(n, bimodal)) + 0.1 * rng.standard_normal((n, bimodal)))
        X += S @ A[:, rank:].T                                      # (n, D)
    return X - X.mean(axis=0)


def split(X, test_fraction=0.2, seed=0):
    """Shuffle the rows of ``X`` and split them into ``(train, test)``."""
    X = _as_matrix(X, "X")
    perm = np.random.default_rng(_check_seed(seed)).permutation(X.shape[0])
    n_test = max(1, int(round(_check_real(test_fraction, "test_fraction") * X.shape[0])))
    return X[perm[n_test:]], X[perm[:n_test]]


# -------------------------------------------------------------------------- PCA

def pca(X, m):
    """Top-``m`` principal directions of ``X`` (centred first), as orthonormal columns.

    Each column's sign makes its largest-magnitude entry positive.

    Returns
    -------
    W : ndarray of shape (D, m), ``W.T @ W = I_m``
    """
    return _pca(_as_matrix(X, "X"), m)[0]


def _pca(X, m):
    m = _check_int(m, "m", 1, X.shape[1])
    Xc = X - X.mean(axis=0)                                         # (N, D)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)                        # ascending
    W = evecs[:, ::-1][:, :m]                                       # (D, m)
    W = W * np.sign(W[np.argmax(np.abs(W), axis=0), np.arange(m)])
    return np.ascontiguousarray(W), evals[::-1] / X.shape[0]        # W, variances (D,)


# ----------------------------------------------------------- nearest codeword

def nearest_codeword(Z, E):
    """README eq. 2 as written: ``k_i = argmin_j ||z_i - e_j||^2`` (ties: lowest index).

    Forms all (N, K, m) differences; :func:`assign` gives the same indices in bounded memory.
    """
    diff = Z[:, None, :] - E[None, :, :]                            # (N, K, m)
    return np.argmin(np.einsum("nkm,nkm->nk", diff, diff), axis=1)  # (N,)


def assign(Z, E):
    """Index of the nearest codeword of each row of ``Z`` (eq. 2, ties: lowest index).

    Equal to :func:`nearest_codeword`, computed in blocks by ``_assign`` (Machinery).

    Parameters
    ----------
    Z : array_like of shape (N, m)
    E : array_like of shape (K, m)

    Returns
    -------
    k : ndarray of shape (N,), int64
    """
    Z = _as_matrix(Z, "Z")
    return _assign(Z, _as_matrix(E, "E", cols=Z.shape[1]))


def kmeans_pp(Z, K, rng):
    """Initial codebook by k-means++ seeding [4]: distinct rows of ``Z``.

    Each next codeword is a row drawn with probability proportional to its squared
    distance to the nearest codeword so far (0 for rows already drawn).

    Parameters
    ----------
    Z : array_like of shape (N, m)
    K : int, at most the number of distinct rows of ``Z``
    rng : numpy.random.Generator or int

    Returns
    -------
    E : ndarray of shape (K, m)

    Examples
    --------
    >>> Z = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    >>> sorted(kmeans_pp(Z, 2, np.random.default_rng(0))[:, 0].tolist())
    [0.0, 10.0]
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(_check_seed(rng, "rng"))
    N = Z.shape[0]
    idx = [int(rng.integers(N))]
    d2 = np.full(N, np.inf)
    for j in range(1, K):
        np.minimum(d2, _row_sq(Z - Z[idx[-1]]), out=d2)             # (N,) to the nearest so far
        cum = np.cumsum(d2)
        if cum[-1] <= 0.0:
            raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({j})")
        # side="right" never lands on a zero-weight row (one already drawn).
        idx.append(min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), N - 1))
    return Z[idx].copy()


# ------------------------------------------------------------------ forward pass

def forward(X, W, E):
    """Forward pass of README eqs. 1-4 on a centred batch; returns ``(rec, dist, cache)``.

    ``rec`` is the reconstruction term and ``dist`` the mean ``||z - e_k||^2``, so the
    loss (4) is ``rec + (alpha + beta) * dist``. ``cache`` is a dict of arrays.
    """
    B = X.shape[0]
    Z = X @ W                                                       # (B, m)  eq. 1
    k = assign(Z, E)                                                # (B,)    eq. 2
    Q = E[k]                                                        # (B, m)  eq. 3, the value of q
    X_hat = Q @ W.T                                                 # (B, D)  eq. 3
    rec = np.sum((X - X_hat) ** 2) / B                              # eq. 4, first term
    dist = np.sum((Z - Q) ** 2) / B                                 # eq. 4, ||z - e_k||^2 terms
    return rec, dist, dict(X=X, W=W, E=E, Z=Z, k=k, Q=Q, X_hat=X_hat)


# ------------------------------------------------------------------- estimators
# STE (eq. 5):      q = z + sg(e - z)    -> in the backward pass, dz = dq
# rotation (eq. 6): q = sg(lam R) z      -> in the backward pass, dz = lam R^T dq

def rotation_factors(Z, Q):
    """Frozen factors ``(lam, u, v, w)`` of the rotation trick's ``q = sg(lam R) z`` [3].

    ``lam = ||e|| / ||z||``, ``R = I - 2 w w^T + 2 v u^T`` with ``u = z/||z||``,
    ``v = e/||e||``, ``w = (u + v)/||u + v||`` (eq. 6). Degenerate rows (README table):
    ``u == v``: ``R = I``; ``||u + v|| < ANTIPARALLEL_TOL``: ``R = I - 2 u u^T``;
    ``e = 0``: ``lam = 0``; ``z = 0``: the identity (the STE).

    Parameters
    ----------
    Z, Q : array_like of shape (B, m)
        Encoder outputs and their codewords.

    Returns
    -------
    lam : ndarray of shape (B,)
    u, v, w : ndarrays of shape (B, m)
    """
    Z, Q = np.asarray(Z, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    nz = np.sqrt(np.sum(Z * Z, axis=1))                             # (B,)
    ne = np.sqrt(np.sum(Q * Q, axis=1))                             # (B,)
    with np.errstate(divide="ignore", invalid="ignore"):            # degenerate rows fixed below
        lam = ne / nz                                               # (B,)   eq. 6
        u, v = Z / nz[:, None], Q / ne[:, None]                     # (B, m) eq. 6
        s = u + v
        ns = np.sqrt(np.sum(s * s, axis=1))                         # (B,)
        w = s / ns[:, None]                                         # (B, m) eq. 6
    ok = (nz > 0) & (ne > 0)
    same = ok & np.all(u == v, axis=1)
    anti = ok & (ns < ANTIPARALLEL_TOL)
    u[~ok | same], v[~ok | same], w[~ok | same] = 0.0, 0.0, 0.0     # R = I
    lam[nz == 0] = 1.0                                              # lam R = I when z = 0
    lam[(nz > 0) & (ne == 0)] = 0.0                                 # lam = 0 when e = 0
    v[anti], w[anti] = -u[anti], 0.0                                # R = I - 2 u u^T
    return lam, u, v, w


def apply_rotation(G, factors, *, transpose=False):
    """Apply ``lam R`` (eq. 6) or, with ``transpose``, ``lam R^T`` (eq. 11) to each row of ``G`` (B, m)."""
    lam, u, v, w = factors
    a, b = (v, u) if transpose else (u, v)                          # R^T = I - 2 w w^T + 2 u v^T
    wg = np.sum(w * G, axis=1, keepdims=True)                       # (B, 1)
    ag = np.sum(a * G, axis=1, keepdims=True)                       # (B, 1)
    return lam[:, None] * (G - 2.0 * wg * w + 2.0 * ag * b)         # (B, m)


# ----------------------------------------------------------------- backward pass

def backward(cache, estimator="ste", beta=0.25, alpha=1.0):
    """Gradients of the loss (4) under an estimator, README eqs. 7-14; returns ``dW, dE``."""
    X, W, E, Z, k, Q, X_hat = (cache[n] for n in ("X", "W", "E", "Z", "k", "Q", "X_hat"))
    B = X.shape[0]
    dX_hat = (2.0 / B) * (X_hat - X)                                # (B, D)  eq. 7
    dW_dec = dX_hat.T @ Q                                           # (D, m)  eq. 8, decoder path
    dQ = dX_hat @ W                                                 # (B, m)  eq. 9
    if estimator == "ste":
        dZ_rec = dQ                                                 # (B, m)  eq. 10
    else:
        dZ_rec = apply_rotation(dQ, rotation_factors(Z, Q), transpose=True)  # (B, m)  eq. 11
    dZ = dZ_rec + (2.0 * beta / B) * (Z - Q)                        # (B, m)  eq. 12, commitment
    dW = dW_dec + X.T @ dZ                                          # (D, m)  eq. 13, encoder path
    dE = (2.0 * alpha / B) * _cell_sums(Q - Z, k, E.shape[0])       # (K, m)  eq. 14
    return dW, dE


def loss_and_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0):
    """Loss (eq. 4) and hand-derived gradients (eqs. 7-14) on a batch ``X``.

    The math is for centred data (the model's mean already subtracted); ``W`` need not
    be orthonormal here.

    Parameters
    ----------
    X : array_like of shape (B, D)
    W : array_like of shape (D, m)
    E : array_like of shape (K, m)
    estimator : {"ste", "rotation"}
    beta, alpha : float
        Commitment weight (pulls ``z`` to its codeword) and codebook weight (pulls the codeword to ``z``).

    Returns
    -------
    loss : float
    dW : ndarray of shape (D, m)
        Euclidean gradient.
    dE : ndarray of shape (K, m)
    """
    X, W, E = _check_XWE(X, W, E)
    _check_estimator(estimator, ("ste", "rotation"))
    beta, alpha = _check_real(beta, "beta"), _check_real(alpha, "alpha")
    rec, dist, cache = forward(X, W, E)
    return rec + (alpha + beta) * dist, *backward(cache, estimator, beta, alpha)


# ------------------------------------------------ finite-difference check (eq. 15)

def frozen_surrogate(X, W, E, estimator="ste", beta=0.25, alpha=1.0):
    """The surrogate ``L~(W, E)`` of README eq. 15: every ``sg(.)`` factor and every
    assignment frozen at ``(W, E)``. Returns it as a function of ``(W, E)``."""
    Z0 = X @ W
    k = assign(Z0, E)                                               # frozen assignments
    Q0 = E[k]
    if estimator == "ste":
        phi = lambda Z: Z + (Q0 - Z0)                               # noqa: E731  eq. 5, sg(e - z) frozen
    else:
        F = rotation_factors(Z0, Q0)
        phi = lambda Z: apply_rotation(Z, F)                        # noqa: E731  eq. 6, sg(lam R) frozen

    def L(W, E):
        Z = X @ W
        return (np.sum((X - phi(Z) @ W.T) ** 2) + alpha * np.sum((Z0 - E[k]) ** 2)
                + beta * np.sum((Z - Q0) ** 2)) / X.shape[0]
    return L


def numerical_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Central differences ``(L~(P + h) - L~(P - h)) / 2h`` of eq. 15, entry by entry.

    Returns
    -------
    dW : ndarray of shape (D, m)
    dE : ndarray of shape (K, m)
    """
    X, W, E = _check_XWE(X, W, E)
    _check_estimator(estimator, ("ste", "rotation"))
    beta, alpha = _check_real(beta, "beta"), _check_real(alpha, "alpha")
    h = _check_real(h, "h", positive=True)
    if max(np.abs(W).max(), np.abs(E).max()) + h == max(np.abs(W).max(), np.abs(E).max()):
        raise ValueError(f"h={h} is below the rounding of the largest entry of W and E; use h near 1e-6")
    L = frozen_surrogate(X, W, E, estimator, beta, alpha)
    dW, dE = np.empty_like(W), np.empty_like(E)
    with np.errstate(over="ignore", invalid="ignore"):             # a bad h is reported below
        for P, dP, f in ((W.copy(), dW, lambda P: L(P, E)), (E.copy(), dE, lambda P: L(W, P))):
            for i in np.ndindex(P.shape):
                old = P[i]
                P[i] = old + h
                up = f(P)
                P[i] = old - h
                dP[i] = (up - f(P)) / (2.0 * h)
                P[i] = old
    if not (np.all(np.isfinite(dW)) and np.all(np.isfinite(dE))):
        raise ValueError(f"h={h} gives non-finite differences; use h near 1e-6")
    return dW, dE


def relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``; 0 when both are all zero."""
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def grad_check(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6, verbose=False):
    """Compare :func:`loss_and_grads` with :func:`numerical_grads`; return the largest
    relative error over ``dW`` and ``dE``. ``verbose`` prints one table row per parameter:
    max absolute difference, max relative error, OK or NOT OK against ``GRAD_TOL``."""
    _, dW, dE = loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha, h=h)
    errs = []
    for name, a, n in (("dW", dW, nW), ("dE", dE, nE)):
        errs.append(relative_error(a, n))
        if verbose:
            print(f"{estimator:<9} {name:<3} {np.max(np.abs(a - n)):12.1e} {errs[-1]:12.1e}  "
                  f"{'OK' if errs[-1] < GRAD_TOL else 'NOT OK'}")
    return max(errs)


def check_point(X, m, K, *, seed=0, margin=1e-4):
    """A random, non-symmetric ``(W, E)`` for a gradient check on ``X``, away from kinks.

    ``W`` is a random orthonormal (D, m); ``E`` is k-means++ on ``X W`` plus noise of a
    tenth of the latents' spread, redrawn until every row's two nearest squared
    distances differ by more than ``margin`` (so ``h`` cannot flip an assignment).
    """
    X = _as_matrix(X, "X")
    rng = np.random.default_rng(_check_seed(seed))
    for _ in range(100):
        W = qr_retraction(rng.standard_normal((X.shape[1], m)))    # (D, m)
        Z = X @ W
        E = kmeans_pp(Z, K, rng) + 0.1 * Z.std() * rng.standard_normal((K, m))
        d2 = np.sort(np.sum((Z[:, None, :] - E[None]) ** 2, axis=2), axis=1)
        if K == 1 or np.min(d2[:, 1] - d2[:, 0]) > margin:
            return W, E
    raise ValueError(f"no check point with margin={margin} found; use fewer rows or a smaller margin")


# ------------------------------------------------------------- Stiefel step

def stiefel_project(W, G):
    """Riemannian gradient ``G - W sym(W^T G)``, tangent at ``W`` (README eq. 16)."""
    S = W.T @ G                                                     # (m, m)
    return G - W @ (0.5 * (S + S.T))                                # (D, m)


def qr_retraction(Y):
    """Orthonormal ``Q`` of ``Y = Q R`` with ``diag(R) > 0`` (README eq. 17)."""
    Qm, Rm = np.linalg.qr(Y)                                        # (D, m), (m, m)
    return Qm * np.where(np.diagonal(Rm) < 0, -1.0, 1.0)


def stiefel_step(W, dW, lr):
    """One Riemannian gradient step of size ``lr >= 0`` on the Stiefel manifold (eqs. 16-17)."""
    return qr_retraction(W - _check_real(lr, "lr") * stiefel_project(W, dW))


# --------------------------------------------------------------------- the model

@dataclass
class TrainResult:
    """A fitted model ``(mean, W, E)``, as :func:`train` and :func:`baseline` return it.

    Attributes
    ----------
    mean : ndarray of shape (D,)
        Mean of the training rows; encode ``(x - mean) W``, decode ``mean + q W^T``.
    W : ndarray of shape (D, m)
    E : ndarray of shape (K, m)
    history : dict of ndarrays
        :func:`train`: per step, on its batch before the update, ``loss``, ``mse``,
        ``entropy``, ``dead_codes`` (int); ``orth_error`` ``||W^T W - I||_F`` after it;
        with ``eval_X``, ``eval_mse`` and ``eval_entropy`` after it (NaN between
        evaluations). :func:`baseline`: ``distortion``, Lloyd's, per assignment.
    settings : dict
    """
    mean: np.ndarray
    W: np.ndarray
    E: np.ndarray
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def encode(X, model):
    """Codes (N,) of the rows of ``X`` (N, D): ``assign((X - mean) W, E)``."""
    mean, W, E = _check_model(model)
    return _assign((_as_matrix(X, "X", cols=W.shape[0]) - mean) @ W, E)


def decode(codes, model):
    """Reconstructions (N, D) of codes (N,): ``mean + E[codes] W^T``."""
    mean, W, E = _check_model(model)
    codes = _check_codes(codes, E.shape[0])
    return mean + E[codes] @ W.T


# ---------------------------------------------------------------------- training

def minibatches(N, batch, seed=0):
    """Endless row indices of batches of ``batch`` rows, drawn without replacement
    from a fresh permutation of ``range(N)`` each epoch (the order :func:`train` uses)."""
    rng = np.random.default_rng(np.random.SeedSequence(_check_seed(seed)).spawn(2)[1])
    while True:
        order = rng.permutation(N)
        for s in range(0, N - batch + 1, batch):
            yield order[s:s + batch]


def train(X, *, estimator="ste", K=32, m=4, steps=300, lrW=0.08, lrE=0.2, beta=0.25, alpha=1.0,
          batch=1024, seed=0, init_W=None, init_E=None, tol=None, window=100, eval_X=None,
          eval_every=1):
    """Fit ``(mean, W, E)`` by gradient descent with an estimator (README eqs. 4-17).

    ``mean`` is the mean of ``X``; the rest works on ``X - mean``. ``W`` starts at
    ``pca(X, m)`` (or ``init_W``), ``E`` at k-means++ on the latents (or ``init_E``).
    Each step takes a batch (:func:`minibatches`), a Stiefel step on ``W`` and a
    plain step ``E -= lrE * dE``.

    Parameters
    ----------
    X : array_like of shape (N, D)
    estimator : {"ste", "rotation", "numerical"}
        ``"numerical"``: STE's surrogate with :func:`numerical_grads` (slow; a check).
    K, m : int
        Codebook size and latent dimension.
    steps : int
        Number of steps, or with ``tol`` the most steps.
    lrW, lrE : float
        Learning rates (> 0). ``lrW`` scales with ``1 / variance`` of the data: ``lrW``
        times the top variance of ``X`` above ``LRW_TIMES_VARIANCE_MAX`` is refused.
    beta, alpha : float
        Commitment and codebook weights (>= 0).
    batch, seed : int
    init_W : array_like of shape (D, m), optional
        Start for ``W`` (made orthonormal by :func:`qr_retraction`).
    init_E : array_like of shape (K, m), optional
    tol : float, optional
        Stop when the mean training loss over the last ``window`` steps is less than
        ``tol`` (relative) below that of the ``window`` steps before (the "converged"
        protocol, README). Uses training batches only.
    eval_X : array_like of shape (N', D), optional
        Held-out rows evaluated every ``eval_every`` steps and at the last step.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        When the loss or the model diverges (learning rates too large).
    """
    X = _as_matrix(X, "X")
    N, D = X.shape
    _check_estimator(estimator)
    m, K = _check_int(m, "m", 1, D), _check_int(K, "K", 1, N)
    steps, batch = _check_int(steps, "steps", 0, MAX_STEPS), _check_int(batch, "batch", 1)
    lrW, lrE = _check_real(lrW, "lrW", positive=True), _check_real(lrE, "lrE", positive=True)
    beta, alpha = _check_real(beta, "beta"), _check_real(alpha, "alpha")
    seed, window = _check_seed(seed), _check_int(window, "window", 1)
    tol = None if tol is None else _check_real(tol, "tol")
    eval_every = _check_int(eval_every, "eval_every", 1)
    eval_X = None if eval_X is None else _as_matrix(eval_X, "eval_X", cols=D)
    if batch > N:
        warnings.warn(f"batch={batch} is larger than the data (N={N}); using batch={N}", stacklevel=2)
        batch = N
    mean = X.mean(axis=0)                                           # (D,)
    Xc = X - mean                                                   # (N, D) centred
    W, variances = _pca(Xc, m)
    if lrW * variances[0] > LRW_TIMES_VARIANCE_MAX:
        raise ValueError(f"lrW={lrW} is too large for data of this scale (top variance "
                         f"{variances[0]:.3g}): use lrW <= {LRW_TIMES_VARIANCE_MAX / variances[0]:.3g}, "
                         "or standardize X (README, API)")
    if init_W is not None:
        W = qr_retraction(_as_matrix(init_W, "init_W", cols=m))
        if W.shape[0] != D:
            raise ValueError(f"init_W must have shape (D, m) = ({D}, {m}), got {W.shape}")
    if init_E is None:
        E = kmeans_pp(Xc @ W, K, np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]))
    else:
        E = _as_matrix(init_E, "init_E", cols=m).copy()
        if E.shape[0] != K:
            raise ValueError(f"init_E must have shape (K, m) = ({K}, {m}), got {E.shape}")
    settings = dict(estimator=estimator, K=K, m=m, steps=steps, lrW=lrW, lrE=lrE, beta=beta,
                    alpha=alpha, batch=batch, seed=seed, tol=tol, window=window)
    keys = ["loss", "mse", "entropy", "dead_codes", "orth_error"] + (
        ["eval_mse", "eval_entropy"] if eval_X is not None else [])
    hist = {key: np.full(steps, np.nan) for key in keys}
    hist["dead_codes"] = np.zeros(steps, dtype=np.int64)
    eye, batches, t = np.eye(m), minibatches(N, batch, seed), -1
    step = _train_step if estimator != "numerical" else _numerical_train_step
    for t in range(steps):
        W, E, loss, rec, k = step(Xc, next(batches), W, E, estimator, lrW, lrE, beta, alpha)
        if not (np.isfinite(loss) and np.isfinite(W.sum()) and np.abs(E).max() <= SAFE_MAX):
            raise FloatingPointError(f"training diverged at step {t}; lower the learning rates "
                                     f"(lrW={lrW}, lrE={lrE})")
        counts = np.bincount(k, minlength=K)
        hist["loss"][t], hist["mse"][t] = loss, rec
        hist["entropy"][t], hist["dead_codes"][t] = usage_entropy(counts), np.count_nonzero(counts == 0)
        hist["orth_error"][t] = np.linalg.norm(W.T @ W - eye)
        if eval_X is not None and (t % eval_every == 0 or t == steps - 1):
            ev = evaluate(eval_X, TrainResult(mean, W, E))
            hist["eval_mse"][t], hist["eval_entropy"][t] = ev["mse"], ev["entropy"]
        if tol is not None and t + 1 >= 2 * window and (t + 1) % window == 0:
            last, prev = hist["loss"][t + 1 - window:t + 1].mean(), hist["loss"][t + 1 - 2 * window:t + 1 - window].mean()
            if prev - last < tol * prev:
                break
    settings["steps_run"] = t + 1
    hist = {key: v[:t + 1] for key, v in hist.items()}
    if eval_X is not None and t >= 0 and np.isnan(hist["eval_mse"][t]):
        ev = evaluate(eval_X, TrainResult(mean, W, E))
        hist["eval_mse"][t], hist["eval_entropy"][t] = ev["mse"], ev["entropy"]
    model = TrainResult(mean, W, E, hist, settings)
    _warn_if_collapsed(np.bincount(_assign(Xc @ W, E), minlength=K), "the training data")
    return model


def _numerical_train_step(Xc, idx, W, E, estimator, lrW, lrE, beta, alpha):
    """One step with finite-difference gradients of STE's surrogate (a check, slow)."""
    Xb = Xc[idx]
    rec, dist, cache = forward(Xb, W, E)
    dW, dE = numerical_grads(Xb, W, E, estimator="ste", beta=beta, alpha=alpha)
    return stiefel_step(W, dW, lrW), E - lrE * dE, rec + (alpha + beta) * dist, rec, cache["k"]


# ------------------------------------------------------------------------ metrics

def usage_entropy(counts):
    """Entropy in nats of the code usage given by non-negative ``counts`` (K,)."""
    p = np.asarray(counts, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"counts must be a non-empty 1-D array of non-negative numbers, got {counts!r}")
    p = p[p > 0] / p.sum()
    return float(-np.sum(p * np.log(p)) + 0.0)


def evaluate(X, model):
    """Reconstruction and usage metrics of ``model`` on the rows of ``X`` (N, D).

    Returns
    -------
    dict
        ``mse`` (mean ``||x - x_hat||^2``), ``distortion`` (mean ``||z - e_k||^2``),
        ``entropy`` (nats), ``perplexity`` (``exp(entropy)``), ``dead_codes``,
        ``max_entropy`` (``log K``); all from explicit residuals.
    """
    mean, W, E = _check_model(model)
    Xc = _as_matrix(X, "X", cols=W.shape[0]) - mean                 # (N, D)
    Z = Xc @ W                                                      # (N, m)
    k = _assign(Z, E)                                               # (N,)
    Q = E[k]                                                        # (N, m)
    counts = np.bincount(k, minlength=E.shape[0])
    _warn_if_collapsed(counts, "X")
    H = usage_entropy(counts)
    return {"mse": float(np.mean(_row_sq(Xc - Q @ W.T))), "distortion": float(np.mean(_row_sq(Z - Q))),
            "entropy": H, "perplexity": float(np.exp(H)), "dead_codes": int(np.sum(counts == 0)),
            "max_entropy": float(np.log(E.shape[0]))}


# ---------------------------------------------------------------------- Lloyd-Max

def lloyd_max(Z, K, *, init=None, max_iter=1000, tol=0.0, seed=0):
    """Lloyd's algorithm (k-means) on the rows of ``Z`` [5], run to a fixed point.

    Alternates: assign each row to its nearest codeword; move each codeword to the
    mean of its cell; re-seed an empty cell with the row farthest from its new
    codeword. It stops when an update re-seeds nothing and changes no assignment
    (``converged``: every codeword is its cell's mean, no cell empty), when the
    distortion drops by at most ``tol`` (relative; not converged), or after ``max_iter``
    updates (warns). The distortion never rises.

    Parameters
    ----------
    Z : array_like of shape (N, m)
    K : int
        At most the number of distinct rows of ``Z``.
    init : array_like of shape (K, m), optional
        Initial codebook; default k-means++ with ``seed``.
    max_iter : int
    tol : float
    seed : int

    Returns
    -------
    E : ndarray of shape (K, m)
    info : dict
        ``labels`` (N,), ``distortion`` (final, from explicit residuals), ``history``
        (distortion after each assignment, ``n_iter + 1`` values), ``n_iter``,
        ``converged``, ``reseeded`` (cells re-seeded in all).
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    max_iter, tol = _check_int(max_iter, "max_iter", 0), _check_real(tol, "tol")
    _check_distinct_rows(Z, K)
    if init is None:
        E = kmeans_pp(Z, K, np.random.default_rng(_check_seed(seed)))
    else:
        E = _as_matrix(init, "init", cols=Z.shape[1]).copy()
        if E.shape[0] != K:
            raise ValueError(f"init must have shape (K, m) = ({K}, {Z.shape[1]}), got {E.shape}")
    nearest = _BoundedAssign(Z)                                     # = assign(Z, E) at every call
    labels = nearest(E)                                             # (N,)
    history, reseeded, converged, it = [], 0, False, 0
    for it in range(1, max_iter + 1):
        R = Z - E[labels]                                           # (N, m) residual to own codeword
        history.append(float(np.mean(_row_sq(R))))                 # distortion of this assignment
        counts = np.bincount(labels, minlength=K)                   # (K,)
        full = counts > 0
        E[full] += _cell_sums(R, labels, K)[full] / counts[full, None]  # codeword -> cell mean
        empty = np.flatnonzero(~full)
        if empty.size:                                              # re-seed on the farthest rows
            far = np.argsort(-_row_sq(Z - E[labels]), kind="stable")[:empty.size]
            E[empty] = Z[far]
            reseeded += empty.size
        new = nearest(E)
        stop = empty.size == 0 and np.array_equal(new, labels)
        converged = bool(stop)
        labels = new
        if stop or (tol > 0 and len(history) > 1 and history[-2] - history[-1] <= tol * history[-2]):
            break
    history.append(float(np.mean(_row_sq(Z - E[labels]))))
    if not converged and tol == 0 and max_iter > 0:
        warnings.warn(f"lloyd_max stopped at max_iter={max_iter} before converging", stacklevel=2)
    return E, {"labels": labels, "distortion": history[-1], "history": np.array(history),
               "n_iter": it, "converged": converged, "reseeded": reseeded}


def baseline(X, K=32, m=4, *, seed=0, max_iter=1000):
    """The PCA + Lloyd-Max model: ``W = pca(X, m)``, ``E`` by :func:`lloyd_max` on the latents.

    Returns
    -------
    TrainResult
        ``history["distortion"]`` is Lloyd's per assignment; ``settings`` holds
        ``n_iter`` and ``converged``.
    """
    X = _as_matrix(X, "X")
    mean = X.mean(axis=0)
    W = pca(X, m)
    E, info = lloyd_max((X - mean) @ W, K, seed=seed, max_iter=max_iter)
    return TrainResult(mean, W, E, {"distortion": info["history"]},
                       dict(K=K, m=m, seed=seed, max_iter=max_iter, n_iter=info["n_iter"],
                            converged=info["converged"]))


# -------------------------------------------------------------------------- demo

# The "converged" protocol (README, "Both sides converged"): a codebook step that moves
# a code used by 1/K of the batch 2 lrE / K of the way to its cell mean, and training
# until the mean training loss of the last `window` steps improves by less than `tol`.
CONVERGED = dict(lrE=2.0, tol=1e-3, window=1000, steps=20000)


def main(argv=None):
    """Demo: PCA + Lloyd-Max, STE and rotation on held-out rows, then a gradient check."""
    p = argparse.ArgumentParser(prog="vqref", description=main.__doc__)
    for flag, typ, default, what in (
            ("K", int, 32, "codebook size"), ("m", int, 4, "latent dimension"),
            ("D", int, 64, "data dimension"), ("n", int, 20000, "rows, 20%% held out"),
            ("steps", int, 300, "training steps of the study's protocol"),
            ("batch", int, 1024, "batch size"), ("lrW", float, 0.08, "encoder learning rate"),
            ("lrE", float, 0.2, "codebook learning rate of the study's protocol"),
            ("beta", float, 0.25, "commitment weight"), ("alpha", float, 1.0, "codebook weight"),
            ("seed", int, 0, "random seed")):
        p.add_argument(f"--{flag}", type=typ, default=default, help=f"{what} (default {default})")
    a = p.parse_args(argv)
    try:
        return _demo(a)
    except (ValueError, FloatingPointError) as err:                 # bad flags, divergence
        msg = str(err)
        word = msg.split(" ", 1)[0].split("=", 1)[0]
        p.error(f"--{msg}" if word in vars(a) else msg)


def _demo(a):
    if a.n < 2:
        raise ValueError("n must be at least 2 (one training and one held-out row)")
    Xtr, Xte = split(make_data(a.n, a.D, seed=a.seed), 0.2, seed=a.seed)
    common = dict(K=a.K, m=a.m, batch=a.batch, lrW=a.lrW, beta=a.beta, alpha=a.alpha, seed=a.seed)
    t0 = time.perf_counter()
    base = baseline(Xtr, a.K, a.m, seed=a.seed)
    rows = [("PCA + Lloyd-Max", f"{base.settings['n_iter']} it", base, time.perf_counter() - t0)]
    for proto, kw in (("study", dict(steps=a.steps, lrE=a.lrE)), ("converged", CONVERGED)):
        for name, est in (("STE", "ste"), ("rotation", "rotation")):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")                     # collapse is shown in the table
                res = train(Xtr, estimator=est, **common, **kw)
            rows.append((f"{name}, {proto}", str(res.settings["steps_run"]), res,
                         time.perf_counter() - t0))
    print(f"vqref demo: D={a.D} m={a.m} K={a.K}, {Xtr.shape[0]} training rows, {Xte.shape[0]} held out, "
          f"batch={a.batch} lrW={a.lrW} beta={a.beta} alpha={a.alpha} seed={a.seed}\n"
          f"study: {a.steps} steps at lrE={a.lrE}; converged: lrE={CONVERGED['lrE']} until the "
          f"training loss improves < {CONVERGED['tol']:g} over {CONVERGED['window']} steps")
    print(f"{'method':<20} {'steps':>7} {'test MSE':>9} {'vs base':>8} {'entropy':>8} "
          f"{'of log K':>8} {'dead':>5} {'time':>7}")
    evs = [evaluate(Xte, model) for _, _, model, _ in rows]
    for (name, steps, _, sec), ev in zip(rows, evs):
        share = ev["entropy"] / ev["max_entropy"] if ev["max_entropy"] > 0 else 1.0
        print(f"{name:<20} {steps:>7} {ev['mse']:9.4f} {100 * (ev['mse'] / evs[0]['mse'] - 1):+7.2f}% "
              f"{ev['entropy']:8.3f} {100 * share:7.1f}% {ev['dead_codes']:5d} {sec:6.2f}s")
    Xc = Xtr[:256] - rows[0][2].mean
    W, E = check_point(Xc, a.m, min(a.K, Xc.shape[0]), seed=a.seed)
    print(f"\ngradient check: manual vs central differences of eq. 15 (h=1e-6, {Xc.shape[0]} rows, "
          f"random point; OK below {GRAD_TOL:g})\n{'estimator':<9} {'':<3} {'max|diff|':>12} "
          f"{'max rel err':>12}")
    errs = [grad_check(Xc, W, E, estimator=est, beta=a.beta, alpha=a.alpha, verbose=True)
            for est in ("ste", "rotation")]
    return [(r[0], ev) for r, ev in zip(rows, evs)], errs



# =============================================================================
# Machinery: nothing below changes a result; it makes it fast or safe.
# =============================================================================

SAFE_MAX = 1e100   # |entries| accepted: squared distances stay far from overflow ...
SAFE_MIN = 1e-100  # ... and from underflow (largest entry below this, but not 0, is refused)
MAX_STEPS = 10 ** 7
ASSIGN_CHUNK_ELEMENTS = 1 << 16  # entries of one (rows, K) score block of _assign
ASSIGN_TIE_RTOL = 1e-12          # relative rounding bound of the expanded distance form
LLOYD_BLOCK_ROWS = 1 << 17       # rows _BoundedAssign handles at a time


# ---------------------------------------------------------------- validation

def _as_matrix(A, name, *, cols=None):
    """``A`` as a finite float64 2-D array within [SAFE_MIN, SAFE_MAX], or ValueError naming it."""
    try:
        A = np.asarray(A)
    except ValueError as err:                                       # ragged nested lists
        raise ValueError(f"{name} must be a rectangular numeric array ({err})") from None
    if A.dtype == object or not (np.issubdtype(A.dtype, np.number) or A.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {A.dtype}")
    if np.iscomplexobj(A):
        raise ValueError(f"{name} must be real, got dtype {A.dtype}")
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows are samples), got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {A.shape}")
    if cols is not None and A.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {A.shape}")
    A = np.asarray(A, dtype=np.float64)
    big = np.abs(A).max()
    if not np.isfinite(big):
        raise ValueError(f"{name} contains NaN or inf")
    if big > SAFE_MAX or 0 < big < SAFE_MIN:
        raise ValueError(f"{name} has entries of magnitude {big:.1e}: squared distances would "
                         f"{'overflow' if big > 1 else 'underflow'}; rescale {name} to within "
                         f"[{SAFE_MIN:g}, {SAFE_MAX:g}] (for example, divide by its standard deviation)")
    return A


def _check_int(value, name, low, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {f'>= {low}' if high is None else f'in [{low}, {high}]'}, got {value}")
    return int(value)


def _check_real(value, name, *, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return float(value)


def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_estimator(estimator, allowed=ESTIMATORS):
    if estimator not in allowed:
        raise ValueError(f"estimator must be one of {allowed}, got {estimator!r}")
    return estimator


def _check_XWE(X, W, E):
    X, W = _as_matrix(X, "X"), _as_matrix(W, "W")
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"W must have shape (D, m) = ({X.shape[1]}, m), got {W.shape}")
    return X, W, _as_matrix(E, "E", cols=W.shape[1])


def _check_model(model):
    if not all(hasattr(model, a) for a in ("mean", "W", "E")):
        raise ValueError(f"model must have mean, W and E (a TrainResult), got {type(model).__name__}")
    W = _as_matrix(model.W, "model.W")
    mean = np.asarray(model.mean, dtype=np.float64)
    if mean.shape != (W.shape[0],) or not np.all(np.isfinite(mean)):
        raise ValueError(f"model.mean must be finite with shape ({W.shape[0]},), got {mean.shape}")
    return mean, W, _as_matrix(model.E, "model.E", cols=W.shape[1])


def _check_codes(codes, K):
    codes = np.asarray(codes)
    if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer) or codes.size == 0 \
            or codes.min() < 0 or codes.max() >= K:
        raise ValueError(f"codes must be a non-empty 1-D integer array with values in [0, {K - 1}]")
    return codes


def _check_distinct_rows(Z, K):
    """ValueError unless ``Z`` has at least ``K`` distinct rows (a 1-D projection decides
    most cases with one sort; np.unique over rows decides the rest)."""
    if K == 1 or np.unique(Z @ np.cos(np.arange(1, Z.shape[1] + 1))).size >= K:
        return
    n = np.unique(Z, axis=0).shape[0]
    if n < K:
        raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({n}); lower K")


def _warn_if_collapsed(counts, where):
    if counts.size > 1 and np.count_nonzero(counts) == 1:
        warnings.warn(f"all but one of the K={counts.size} codes are dead on {where}; "
                      "every row gets the same codeword", stacklevel=3)


# ------------------------------------------------------------- small kernels

def _row_sq(A):
    """Squared norm of each row of ``A`` (n, m): a product with ones, fast for short rows."""
    return np.square(A) @ np.ones(A.shape[1])


def _dist2(Z, E, k):
    """Squared distance of each row of ``Z`` (n, m) to its codeword ``E[k]`` (n,)."""
    return _row_sq(Z - np.take(E, k, axis=0))


def _cell_sums(R, labels, K):
    """Sum of the rows of ``R`` (N, m) in each cell (K, m): ``np.add.at(S, labels, R)``, by bincount."""
    m = R.shape[1]
    flat = (labels[:, None] * m + np.arange(m)).ravel()             # (N * m,)
    return np.bincount(flat, weights=R.ravel(), minlength=K * m).reshape(K, m)


# ---------------------------------------------------- assignment (= nearest_codeword)

def _assign(Z, E, out_dist=None, out_second=None):
    """:func:`nearest_codeword` in blocks of rows, without validation.

    Scores ``z.e - ||e||^2/2`` (the expanded distance, up to ``||z||^2``) about the
    codebook mean, one augmented product per block; rows whose best two scores lie
    within the rounding bound ``ASSIGN_TIE_RTOL`` are decided by exact distances, so
    exact ties go to the lowest index. Optionally writes each row's squared distance to
    its codeword (``out_dist``) and a lower bound on that to any other (``out_second``).
    """
    N, m = Z.shape
    K = E.shape[0]
    c = E.sum(axis=0) / K
    Ec = E - c                                                      # (K, m)
    A = np.empty((m + 1, K))                                        # [e; -||e||^2/2]
    A[:m] = Ec.T
    A[m] = -0.5 * np.einsum("km,km->k", Ec, Ec)
    e2max = -2.0 * A[m].min()
    step = max(256, ASSIGN_CHUNK_ELEMENTS // K)
    Za = np.empty((min(step, N), m + 1))
    Za[:, m] = 1.0
    G = np.empty((min(step, N), K))
    k = np.empty(N, dtype=np.int64)
    for s in range(0, N, step):
        b = min(step, N - s)
        Zc = Za[:b, :m]
        np.subtract(Z[s:s + b], c, out=Zc)                          # (b, m)
        Gb = np.matmul(Za[:b], A, out=G[:b])                        # (b, K) scores
        flat = Gb.ravel()
        rowstart = np.arange(0, b * K, K)
        kb = np.argmax(Gb, axis=1)                                  # (b,)
        at = rowstart + kb
        best = np.take(flat, at)
        z2 = _row_sq(Zc)
        slack = ASSIGN_TIE_RTOL * (z2 + e2max)                      # rounding bound of a score
        if out_second is not None:
            flat[at] = -np.inf
            second = np.take(flat, rowstart + np.argmax(Gb, axis=1))
            close = np.flatnonzero(best - second <= slack)
        else:
            near = Gb >= (best - slack)[:, None]                    # (b, K)
            close = (np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
                     if np.count_nonzero(near) > b else np.empty(0, dtype=np.int64))
        if close.size:                                              # near-ties: exact distances
            diff = np.take(Z, s + close, axis=0)[:, None, :] - E[None]   # (r, K, m)
            kb[close] = np.argmin(np.einsum("rkm,rkm->rk", diff, diff), axis=1)
            if out_second is not None:
                second[close] = best[close]
        k[s:s + b] = kb
        if out_dist is not None:
            out_dist[s:s + b] = _dist2(Zc, Ec, kb)
        if out_second is not None:
            out_second[s:s + b] = z2 - 2.0 * (second + slack)      # ||z - e||^2 lowered by the bound
    return k


# ------------------------------------------- Lloyd's distance bounds (= assign)

def _half_gaps(E):
    """Half the distance from each codeword to its nearest other one, rounded down (K,)."""
    K = E.shape[0]
    if K == 1:
        return np.full(1, np.inf)
    Ec = E - E.mean(axis=0)
    e2 = np.einsum("km,km->k", Ec, Ec)
    D2 = e2[:, None] + e2[None, :] - 2.0 * (Ec @ Ec.T)             # (K, K)
    D2 -= 2.0 * ASSIGN_TIE_RTOL * (e2[:, None] + e2.max())          # minus its rounding bound
    np.fill_diagonal(D2, np.inf)
    return 0.5 * np.sqrt(np.maximum(D2.min(axis=1), 0.0))


class _BoundedAssign:
    """``assign(Z, E)`` for a sequence of codebooks ``E``, skipping certified rows [7].

    Each row keeps an upper bound on the distance to its codeword and a lower bound on
    the distance to any other, moved by how far the codewords move (triangle
    inequality); a row is re-assigned only when they do not certify its code.
    """

    def __init__(self, Z):
        N = Z.shape[0]
        self.Z, self.E = Z, None
        self.labels = np.zeros(N, dtype=np.int64)
        self.upper, self.lower = np.full(N, np.inf), np.zeros(N)

    def __call__(self, E):
        Z, labels, upper, lower = self.Z, self.labels, self.upper, self.lower
        if self.E is not None:
            shift = np.sqrt(_row_sq(E - self.E))                    # (K,) how far each codeword moved
            top = np.argsort(-shift, kind="stable")[:2]
            others = np.full(E.shape[0], shift[top[0]])             # largest move of another code
            others[top[0]] = shift[top[-1]]
            upper += np.take(shift, labels)
            lower -= np.take(others, labels)
        self.E = E.copy()
        half_gaps = _half_gaps(E)
        for s in range(0, Z.shape[0], LLOYD_BLOCK_ROWS):
            blk = slice(s, s + LLOYD_BLOCK_ROWS)
            bound = np.maximum(lower[blk], np.take(half_gaps, labels[blk]))
            rows = s + np.flatnonzero(upper[blk] >= bound)
            if rows.size == 0:
                continue
            Zr = np.take(Z, rows, axis=0)                           # (r, m)
            upper[rows] = np.sqrt(_dist2(Zr, E, np.take(labels, rows)))  # tighten to exact
            keep = upper[rows] >= bound[rows - s]
            rows, Zr = rows[keep], Zr[keep]
            if rows.size == 0:
                continue
            d2, second = np.empty(rows.size), np.empty(rows.size)
            labels[rows] = _assign(Zr, E, d2, second)
            upper[rows] = np.sqrt(d2)
            lower[rows] = np.sqrt(np.maximum(second, 0.0))
        return labels.copy()


# ------------------------------------------- training step (= forward + backward)

def _train_step(Xc, idx, W, E, estimator, lrW, lrE, beta, alpha):
    """One step of :func:`train` on the batch ``Xc[idx]``: :func:`forward`,
    :func:`backward`, :func:`stiefel_step` and ``E - lrE dE`` fused, without validation.
    Returns ``W, E, loss, rec, k``."""
    Xb = np.take(Xc, idx, axis=0)                                   # (B, D)
    B = Xb.shape[0]
    Z = Xb @ W                                                      # (B, m)
    k = _assign(Z, E)
    Q = np.take(E, k, axis=0)                                       # (B, m)
    Rz = Z - Q                                                      # (B, m)
    Rx = Xb - Q @ W.T                                               # (B, D) = -(B/2) dX_hat
    rec, dist = np.vdot(Rx, Rx) / B, np.vdot(Rz, Rz) / B
    dQ = (-2.0 / B) * (Rx @ W)
    dZ = dQ if estimator == "ste" else apply_rotation(dQ, rotation_factors(Z, Q), transpose=True)
    dZ = dZ + (2.0 * beta / B) * Rz
    dW = Xb.T @ dZ - (2.0 / B) * (Rx.T @ Q)
    dE = _cell_sums(Rz, k, E.shape[0]) * (-2.0 * alpha / B)
    S = W.T @ dW
    W = qr_retraction(W - lrW * (dW - W @ (0.5 * (S + S.T))))
    return W, E - lrE * dE, rec + (alpha + beta) * dist, rec, k


if __name__ == "__main__":  # at the end, so that the machinery above is defined
    main()
