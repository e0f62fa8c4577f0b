# /// script
# requires-python = ">=3.9"
# dependencies = ["numpy>=1.22"]
# ///
"""vqref: vector quantization with hand-derived gradients, in one NumPy file.

The model, for data rows ``x`` (D,) with mean ``mu``::

    z = (x - mu) W              encoder, W (D, m) orthonormal (the Stiefel manifold)
    k = argmin_j ||z - e_j||^2  nearest codeword of the codebook E (K, m)
    x_hat = mu + e_k W^T        decoder, tied to the encoder

fitted by PCA + Lloyd-Max (k-means) [5], or by gradient descent through the straight-through
estimator (STE) [1, 2] or the rotation trick [3], checked against finite differences. Read it
beside the README's "Derivation": each backward line cites its equation. Below the "Machinery"
line is only what makes it fast or safe. Needs NumPy only. Demo: ``python vqref.py`` (``--help``).

Vocabulary: a *code* is an index ``k``, its *codeword* the row ``E[k]``, its *cell*
the rows with that code; the *distortion* is the mean of ``||z - e_k||^2``.

References (full titles in the README): [1] VQ-VAE, arXiv:1711.00937. [2] STE, arXiv:1308.3432.
[3] rotation trick, arXiv:2410.06424. [4] k-means++, SODA 2007. [5] Lloyd, IEEE Trans. Inf.
Theory 28(2), 1982. [6] Absil et al., Matrix Manifolds, 2008. [7] Hamerly, SDM 2010.
"""

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field

if __name__ == "__main__":  # before NumPy loads: vqref's small products are fastest on one thread
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

__version__ = "0.2.0"
ESTIMATORS = ("ste", "rotation", "numerical")
GRAD_TOL = 1e-6               # manual vs finite differences: the largest relative error accepted
ANTIPARALLEL_TOL = 1e-6       # ||u + v|| below this: the rotation becomes a reflection (eq. 6)
LRW_TIMES_VARIANCE_MAX = 1.0  # train() refuses lrW * (top variance of X) above this


# ------------------------------------------------------------------------- data
def make_data(n, D=64, *, seed=0, rank=4, decay=0.9, scale=2.0, noise=0.012, bimodal=0, sep=1.15):
    """Synthetic centred data (n, D): ``x = A s + sqrt(noise) eps``, ``s_j ~ N(0, scale decay^j)``
    (``j < rank``) in random orthonormal directions ``A``, ``eps ~ N(0, I_D)``. ``bimodal = b``
    adds ``b`` orthogonal directions carrying ``+-sep`` plus ``N(0, (sep/10)^2)``: less variance
    than the Gaussian signal, yet two codewords quantize each (README, "Where learning wins").
    """
    n, D, rank, bimodal, rng = _check_make_data(n, D, seed, rank, decay, scale, noise, bimodal, sep)
    A, _ = np.linalg.qr(rng.standard_normal((D, rank + bimodal)))  # (D, rank + b) orthonormal
    X = (rng.standard_normal((n, rank)) * np.sqrt(scale * decay ** np.arange(rank))) @ A[:, :rank].T
    X += np.sqrt(noise) * rng.standard_normal((n, D))               # (n, D)
    S = sep * (rng.choice([-1.0, 1.0], size=(n, bimodal)) + 0.1 * rng.standard_normal((n, bimodal)))
    X += S @ A[:, rank:].T                                          # (n, D), bimodal directions
    return X - X.mean(axis=0)


# -------------------------------------------------------------------------- PCA
def pca(X, m, *, variances=False):
    """Top-``m`` principal directions of ``X`` (N, D), centred first: ``W`` (D, m), orthonormal,
    each column's largest-magnitude entry positive (and, with ``variances``, all D variances)."""
    X = _as_matrix(X, "X")
    m = _check_int(m, "m", 1, X.shape[1])
    Xc = X - X.mean(axis=0)                                         # (N, D)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)                        # ascending
    W = evecs[:, ::-1][:, :m]                                       # (D, m)
    W = W * np.sign(W[np.argmax(np.abs(W), axis=0), np.arange(m)])
    return (np.ascontiguousarray(W), evals[::-1] / X.shape[0]) if variances else np.ascontiguousarray(W)


# ----------------------------------------------------------- nearest codeword
def nearest_codeword(Z, E):
    """README eq. 2 as written, ``argmin_j ||z_i - e_j||^2`` (ties: lowest index), for
    ``Z`` (N, m) and ``E`` (K, m). :func:`assign` gives the same in bounded memory."""
    diff = Z[:, None, :] - E[None, :, :]                            # (N, K, m)
    return np.argmin(np.einsum("nkm,nkm->nk", diff, diff), axis=1)  # (N,)


def assign(Z, E):
    """Codes (N,) of the rows of ``Z`` (N, m) for the codebook ``E`` (K, m): equal to
    :func:`nearest_codeword`, computed in blocks of rows by ``_assign`` (Machinery)."""
    Z = _as_matrix(Z, "Z")
    return _assign(Z, _as_matrix(E, "E", cols=Z.shape[1]))


def kmeans_pp(Z, K, rng):
    """Initial codebook (K, m) by k-means++ [4]: distinct rows of ``Z`` (N, m), each drawn with
    probability proportional to its squared distance to the nearest so far (``rng``: a seed
    or a ``numpy.random.Generator``).

    >>> Z = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    >>> sorted(kmeans_pp(Z, 2, np.random.default_rng(0))[:, 0].tolist())
    [0.0, 10.0]
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(_check_int(rng, "rng", 0))
    idx, d2 = [int(rng.integers(Z.shape[0]))], np.full(Z.shape[0], np.inf)
    for j in range(1, K):
        np.minimum(d2, _row_sq(Z - Z[idx[-1]]), out=d2)             # (N,) to the nearest so far
        cum = np.cumsum(d2)
        if cum[-1] <= 0.0:
            raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({j})")
        # side="right" never lands on a zero-weight row (one already drawn).
        idx.append(min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), Z.shape[0] - 1))
    return Z[idx].copy()


# ------------------------------------------------------------------ forward pass
def forward(X, W, E):
    """README eqs. 1-4 on a centred batch ``X`` (B, D): ``(rec, dist, cache)``; the loss is
    ``rec + (alpha + beta) dist``, and ``cache`` is the dict of arrays :func:`backward` takes."""
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
    """Frozen factors ``lam`` (B,), ``u, v, w`` (B, m) of eq. 6 for ``Z`` and its codewords ``Q`` (B, m).

    Degenerate rows (README table): ``u == v``: ``R = I``; ``||u + v|| < ANTIPARALLEL_TOL``:
    ``R = I - 2 u u^T``; ``e = 0``: ``lam = 0``; ``z = 0``: the identity (the STE)."""
    Z, Q = np.asarray(Z, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    nz, ne = np.sqrt(np.sum(Z * Z, axis=1)), np.sqrt(np.sum(Q * Q, axis=1))  # (B,)
    with np.errstate(divide="ignore", invalid="ignore"):            # degenerate rows fixed below
        lam = ne / nz                                               # (B,)    eq. 6
        u, v = Z / nz[:, None], Q / ne[:, None]                     # (B, m)  eq. 6
        ns = np.sqrt(np.sum((u + v) ** 2, axis=1))                  # (B,)
        w = (u + v) / ns[:, None]                                   # (B, m)  eq. 6
    ok = (nz > 0) & (ne > 0)
    same, anti = ok & np.all(u == v, axis=1), ok & (ns < ANTIPARALLEL_TOL)
    u[~ok | same], v[~ok | same], w[~ok | same] = 0.0, 0.0, 0.0     # R = I
    lam[nz == 0] = 1.0                                              # lam R = I when z = 0 (e = 0: lam = 0)
    v[anti], w[anti] = -u[anti], 0.0                                # R = I - 2 u u^T
    return lam, u, v, w


def apply_rotation(G, factors, *, transpose=False):
    """Apply ``lam R`` (eq. 6) or, with ``transpose``, ``lam R^T`` (eq. 11) to each row of ``G`` (B, m)."""
    lam, u, v, w = factors
    a, b = (v, u) if transpose else (u, v)                          # eq. 11: R^T swaps u and v
    wg = np.sum(w * G, axis=1, keepdims=True)                       # (B, 1)  w.g
    ag = np.sum(a * G, axis=1, keepdims=True)                       # (B, 1)  u.g (v.g for R^T)
    return lam[:, None] * (G - 2.0 * wg * w + 2.0 * ag * b)         # (B, m)  eq. 6 (11): lam R g


# ----------------------------------------------------------------- backward pass
def backward(cache, estimator="ste", beta=0.25, alpha=1.0):
    """Gradients ``dW`` (D, m), ``dE`` (K, m) of the loss (4) under ``estimator``, eqs. 7-14."""
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
    """Loss (4) and gradients (7-14) on centred rows ``X`` (B, D) for ``W`` (D, m), orthonormal
    or not, and ``E`` (K, m): ``(loss, dW (D, m), dE (K, m))``. ``estimator``: "ste" or
    "rotation"; ``beta`` pulls ``z`` to its codeword, ``alpha`` the codeword to ``z``."""
    X, W, E = _check_XWE(X, W, E, estimator)
    beta, alpha = _check_real(beta, "beta"), _check_real(alpha, "alpha")
    rec, dist, cache = forward(X, W, E)
    return (rec + (alpha + beta) * dist, *backward(cache, estimator, beta, alpha))


# ------------------------------------------------ finite-difference check (eq. 15)
def frozen_surrogate(X, W, E, estimator="ste", beta=0.25, alpha=1.0):
    """``L~(W, E)`` of eq. 15: the loss with every ``sg(.)`` and assignment frozen at ``(W, E)``."""
    Z0 = X @ W
    k = assign(Z0, E)
    Q0 = E[k]
    if estimator == "ste":
        phi = lambda Z: Z + (Q0 - Z0)                               # noqa: E731  eq. 5, sg frozen
    else:
        F = rotation_factors(Z0, Q0)
        phi = lambda Z: apply_rotation(Z, F)                        # noqa: E731  eq. 6, sg frozen

    def L(W, E):
        Z = X @ W
        return (np.sum((X - phi(Z) @ W.T) ** 2) + alpha * np.sum((Z0 - E[k]) ** 2)
                + beta * np.sum((Z - Q0) ** 2)) / X.shape[0]
    return L


def numerical_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Central differences ``(L~(P + h) - L~(P - h)) / 2h`` of eq. 15: ``dW`` (D, m), ``dE`` (K, m)."""
    X, W, E = _check_XWE(X, W, E, estimator)
    L = frozen_surrogate(X, W, E, estimator, _check_real(beta, "beta"), _check_real(alpha, "alpha"))
    h = _check_step(_check_real(h, "h", positive=True), W, E)
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
        raise ValueError(f"h={h:g} gives non-finite differences; use h near 1e-6")
    return dW, dE


def relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``; 0 when both are all zero."""
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def grad_check(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6, verbose=False):
    """Largest relative error of :func:`loss_and_grads` against :func:`numerical_grads`;
    ``verbose`` prints a row per parameter: max|diff|, relative error, OK if below GRAD_TOL."""
    _, dW, dE = loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha, h=h)
    errs = [relative_error(dW, nW), relative_error(dE, nE)]
    for name, a, n, err in zip(("dW", "dE"), (dW, dE), (nW, nE), errs if verbose else ()):
        print(f"{estimator:<9} {name:<3} {np.max(np.abs(a - n)):12.1e} {err:12.1e}  "
              f"{'OK' if err < GRAD_TOL else 'NOT OK'}")
    return max(errs)


# ------------------------------------------------------------------ Stiefel step
def stiefel_project(W, G):
    """Riemannian gradient ``G - W sym(W^T G)``, tangent at ``W`` (eq. 16)."""
    S = W.T @ G                                                     # (m, m)
    return G - W @ (0.5 * (S + S.T))                                # (D, m)


def qr_retraction(Y):
    """Orthonormal ``Q`` of ``Y = Q R`` with ``diag(R) > 0`` (eq. 17)."""
    Qm, Rm = np.linalg.qr(Y)                                        # (D, m), (m, m)
    return Qm * np.where(np.diagonal(Rm) < 0, -1.0, 1.0)


def stiefel_step(W, dW, lr):
    """One Riemannian gradient step of size ``lr >= 0`` on the Stiefel manifold (eqs. 16-17)."""
    return qr_retraction(W - _check_real(lr, "lr") * stiefel_project(W, dW))


# --------------------------------------------------------------------- the model
@dataclass
class TrainResult:
    """A model ``(mean (D,), W (D, m), E (K, m))``, its ``history`` (arrays) and ``settings``.
    :func:`train`'s history per step, on its batch before the update: ``loss``, ``mse``,
    ``entropy``, ``dead_codes`` (int); after it: ``orth_error`` (``||W^T W - I||_F``), with
    ``eval_X`` ``eval_mse`` and ``eval_entropy`` (NaN between evaluations). :func:`baseline`'s:
    Lloyd's ``distortion`` per assignment."""
    mean: np.ndarray
    W: np.ndarray
    E: np.ndarray
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def encode(X, model):
    """Codes (N,) of the rows of ``X`` (N, D): the nearest codewords of ``(X - mean) W``."""
    mean, W, E = _check_model(model)
    return _assign((_as_matrix(X, "X", cols=W.shape[0]) - mean) @ W, E)


def decode(codes, model):
    """Reconstructions ``mean + E[codes] W^T`` (N, D) of codes (N,)."""
    mean, W, E = _check_model(model)
    return mean + E[_check_codes(codes, E.shape[0])] @ W.T


# ---------------------------------------------------------------------- training
def levelled_off(loss, window, tol):
    """Whether the mean of the last ``window`` values of ``loss`` is less than ``tol``
    (relative) below the mean of the ``window`` before: the "converged" protocol's stop."""
    before, last = np.sum(loss[-2 * window:-window]) / window, np.sum(loss[-window:]) / window
    return len(loss) >= 2 * window and bool(before - last < tol * before)


def train(X, *, estimator="ste", K=32, m=4, steps=300, lrW=0.08, lrE=0.2, beta=0.25, alpha=1.0,
          batch=1024, seed=0, init_W=None, init_E=None, tol=None, window=100, eval_X=None,
          eval_every=1):
    """Fit a :class:`TrainResult` ``(mean, W, E)`` to the rows of ``X`` (N, D) (eqs. 4-17).

    ``W`` starts at ``pca(X, m)`` (or ``init_W``), ``E`` at k-means++ on the latents (or
    ``init_E``); each step takes a batch of :func:`minibatches`, a Stiefel step on ``W`` and
    ``E -= lrE dE``. ``estimator``: "ste", "rotation", or "numerical" (STE by finite
    differences; a slow check). ``lrW`` scales as 1 / variance of ``X`` and is refused above
    ``LRW_TIMES_VARIANCE_MAX / (top variance)``; ``lrE`` does not depend on scale. With
    ``tol``, stop once the mean training loss of the last ``window`` steps is less than
    ``tol`` (relative) below that of the ``window`` before (README, "converged").
    ``eval_X`` (N', D) is evaluated every ``eval_every`` steps and after the last.
    Raises FloatingPointError when training diverges.
    """
    X, settings = _check_train(X, locals())
    batch, window = settings["batch"], settings["window"]
    mean = X.mean(axis=0)                                           # (D,)
    Xc = X - mean                                                   # (N, D)
    W, var = pca(Xc if init_W is None else Xc[::max(1, len(Xc) // 4096)], m, variances=True)
    _check_lrW(lrW, var[0])                                         # (a subsample will do for it)
    W = W if init_W is None else qr_retraction(np.asarray(init_W, dtype=np.float64))
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])     # the batches use [1]
    E = kmeans_pp(Xc @ W, K, rng) if init_E is None else np.array(init_E, dtype=np.float64)
    keys = ["loss", "mse", "entropy", "dead_codes", "orth_error", "eval_mse", "eval_entropy"]
    hist = {key: np.full(steps, np.nan) for key in keys[:5 if eval_X is None else 7]}
    hist["dead_codes"] = np.zeros(steps, dtype=np.int64)
    batches, t, eye = minibatches(X.shape[0], batch, seed), -1, np.eye(m)
    xsq, xb = np.einsum("nd,nd->n", Xc, Xc), np.empty((batch, Xc.shape[1]))  # rows' ||x||^2 (N,), batch buffer
    plogp = np.arange(batch + 1) / batch * np.log(np.arange(batch + 1).clip(1) / batch)  # p log p at p = c / B
    for t in range(steps):
        idx = next(batches)
        W, E, loss, rec, k = _train_step(Xc, idx, W, E, estimator, lrW, lrE, beta, alpha, xsq, xb)
        _check_diverged(t, loss, W, E, lrW, lrE)
        hist["loss"][t], hist["mse"][t], hist["orth_error"][t] = loss, rec, np.linalg.norm(W.T @ W - eye)
        counts = np.bincount(k, minlength=K)                        # entropy -sum p log p by table
        hist["entropy"][t], hist["dead_codes"][t] = 0.0 - plogp[counts].sum(), K - np.count_nonzero(counts)
        stop = tol is not None and (t + 1) % window == 0 and levelled_off(hist["loss"][:t + 1], window, tol)
        if eval_X is not None and (t % eval_every == 0 or t == steps - 1 or stop):
            ev = evaluate(eval_X, TrainResult(mean, W, E))
            hist["eval_mse"][t], hist["eval_entropy"][t] = ev["mse"], ev["entropy"]
        if stop:
            break
    hist = {key: v[:t + 1] for key, v in hist.items()}
    if t >= 0:                                                      # the final model on the last batch
        _warn_if_collapsed(np.bincount(_assign(Xc[idx] @ W, E), minlength=K), "the last training batch")
    return TrainResult(mean, W, E, hist, dict(settings, steps_run=t + 1))


# ------------------------------------------------------------------------ metrics
def usage_entropy(counts):
    """Entropy in nats of the code usage given by non-negative ``counts`` (K,): ``-sum p log p``."""
    counts = _check_counts(counts)
    p = counts[counts > 0] / counts.sum()                           # (used codes,) shares of the rows
    return float(-np.sum(p * np.log(p)) + 0.0)                      # + 0.0: no -0.0 for a single code


def evaluate(X, model):
    """Metrics of ``model`` on the rows of ``X`` (N, D), from explicit residuals: ``mse``
    (mean ``||x - x_hat||^2``), ``distortion`` (mean ``||z - e_k||^2``), ``entropy`` (nats),
    ``perplexity`` (``exp(entropy)``), ``dead_codes`` (unused codes), ``max_entropy`` (``log K``)."""
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
    """Lloyd's algorithm (k-means) [5] on the rows of ``Z`` (N, m) from ``init`` (K, m) (default
    k-means++ with ``seed``): ``(E, info)``. ``converged``: an update re-seeded no empty cell and
    changed no code, so each codeword is its cell's mean. Else it stops when the distortion falls
    by at most ``tol`` (relative), or warns at ``max_iter``. ``info``: ``labels`` (N,),
    ``distortion``, ``history`` (``n_iter + 1`` values), ``n_iter``, ``converged``, ``reseeded``."""
    Z, K, E = _check_lloyd(Z, K, init, seed)
    max_iter, tol = _check_int(max_iter, "max_iter", 0), _check_real(tol, "tol")
    cells = _LloydCells(Z, E)                                       # codes = assign(Z, E), cell statistics
    history, reseeded, converged, it = [], 0, False, 0
    for it in range(1, max_iter + 1):
        history.append(cells.distortion())                          # distortion of this assignment
        full = cells.counts > 0                                     # (K,); cells.sums: sums of z - e_k
        E[full] += cells.sums[full] / cells.counts[full, None]      # to the mean of the cell
        empty = np.flatnonzero(~full)
        if empty.size:
            far = np.argsort(-_row_sq(Z - E[cells.labels]), kind="stable")[:empty.size]
            E[empty] = Z[far]
            reseeded += empty.size
        converged = cells.update(E) == 0                            # a re-seeded row always changes code,
        if converged or (tol > 0 and it > 1 and history[-2] - history[-1] <= tol * history[-2]):
            break                                                   # so unchanged codes: none re-seeded
    history.append(cells.distortion())
    if not converged and tol == 0 and max_iter > 0:
        warnings.warn(f"lloyd_max stopped at max_iter={max_iter} before converging", stacklevel=2)
    return E, {"labels": cells.labels.copy(), "distortion": history[-1], "history": np.array(history),
               "n_iter": it, "converged": bool(converged), "reseeded": reseeded}


def baseline(X, K=32, m=4, *, seed=0, max_iter=1000):
    """PCA + Lloyd-Max: ``W = pca(X, m)``, ``E`` by :func:`lloyd_max` on the latents. Returns a
    :class:`TrainResult`; ``settings`` holds Lloyd's ``n_iter`` and ``converged``."""
    X = _as_matrix(X, "X")
    mean = X.mean(axis=0)
    W = pca(X, m)
    E, info = lloyd_max((X - mean) @ W, K, seed=seed, max_iter=max_iter)
    return TrainResult(mean, W, E, {"distortion": info["history"]},
                       dict(K=K, m=m, seed=seed, n_iter=info["n_iter"], converged=info["converged"]))


# -------------------------------------------------------------------------- demo
# "Converged" (README): a codebook step that moves a code used by 1/K of a batch 2 lrE / K
# of the way to its cell's mean, until the training loss levels off (train's tol, window).
CONVERGED = dict(lrE=2.0, tol=1e-3, window=500, steps=20000)


def main(argv=None):
    """Demo: PCA + Lloyd-Max, STE and rotation on held-out rows, then a gradient check."""
    p, a = _demo_args(argv)
    try:
        Xtr, Xte = split(make_data(a.n, a.D, seed=a.seed), 0.2, seed=a.seed)
        kw = dict(K=a.K, m=a.m, batch=a.batch, lrW=a.lrW, beta=a.beta, alpha=a.alpha, seed=a.seed)
        t0 = time.perf_counter()
        base = baseline(Xtr, a.K, a.m, seed=a.seed)
        rows = [("PCA + Lloyd-Max", f"{base.settings['n_iter']} it", base, time.perf_counter() - t0)]
        for proto, pkw in (("study", dict(steps=a.steps, lrE=a.lrE)), ("converged", CONVERGED)):
            for name in ("STE", "rotation"):
                t0 = time.perf_counter()
                res = train(Xtr, estimator=name.lower(), **kw, **pkw)
                rows.append((f"{name}, {proto}", str(res.settings["steps_run"]), res, time.perf_counter() - t0))
    except (ValueError, FloatingPointError) as err:                 # bad flags, divergence: name the flag
        p.exit(2, f"vqref: error: {'--' * (str(err).split(' ')[0].split('=')[0] in vars(a))}{err}\n")
    evs = _print_demo_table(a, len(Xtr), rows, Xte)
    Xc = Xtr[:256] - base.mean                                      # gradient check on 256 rows
    W, E = check_point(Xc, a.m, min(a.K, len(Xc)), seed=a.seed)
    print(f"\ngradient check: manual vs central differences of eq. 15 (h=1e-6, {len(Xc)} rows, random "
          f"point; OK below {GRAD_TOL:g})\n{'estimator':<13} {'max|diff|':>12} {'max rel err':>12}")
    errs = [grad_check(Xc, W, E, estimator=est, beta=a.beta, alpha=a.alpha, verbose=True)
            for est in ("ste", "rotation")]
    return [(r[0], ev) for r, ev in zip(rows, evs)], errs


# =============================================================================
# Machinery: nothing below changes a result; it makes it fast or safe.
# =============================================================================

SAFE_MIN, SAFE_MAX = 1e-100, 1e100  # largest |entry| accepted (or 0): squared distances neither under- nor overflow
ASSIGN_CHUNK_ELEMENTS = 1 << 17  # entries of one (rows, K) score block of _assign
ASSIGN_TIE_RTOL = 1e-12          # relative rounding bound of the expanded distance form


# ---------------------------------------------------------------- validation
def _as_matrix(A, name, *, cols=None):
    """``A`` as a finite float64 2-D array within [SAFE_MIN, SAFE_MAX], or ValueError naming it."""
    try:
        A = np.asarray(A)
    except ValueError as err:                                       # ragged nested lists
        raise ValueError(f"{name} must be a rectangular numeric array ({err})") from None
    _require(A.dtype.kind in "biuf", f"{name} must be a real numeric array, got dtype {A.dtype}")
    _require(A.ndim == 2 and 0 not in A.shape, f"{name} must be 2-D and non-empty, got shape {A.shape}")
    _require(cols is None or A.shape[1] == cols, f"{name} must have {cols} columns, got shape {A.shape}")
    A = np.asarray(A, dtype=np.float64)
    big = max(A.max(), -A.min())                                    # NaN propagates
    _require(np.isfinite(big), f"{name} contains NaN or inf")
    _require(big <= SAFE_MAX and not 0 < big < SAFE_MIN, f"{name} has entries of magnitude {big:.1e}, where squared "
             f"distances {'overflow' if big > 1 else 'underflow'}: rescale {name} into [{SAFE_MIN:g}, {SAFE_MAX:g}]")
    return A


def _check_int(value, name, low, high=None):
    _require(isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)),
             f"{name} must be an integer, got {value!r}")
    return _require(low <= value <= (value if high is None else high), f"{name} must be "
                    f"{f'>= {low}' if high is None else f'in [{low}, {high}]'}, got {value}") or int(value)


def _check_real(value, name, *, positive=False):
    _require(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)),
             f"{name} must be a real number, got {value!r}")
    return _require(np.isfinite(value) and value >= 0 and not (positive and value == 0),
                    f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}") or float(value)


def _require(ok, message, error=ValueError):  # returns None, so "_require(ok, message) or value" is value
    if not ok:
        raise error(message)


def _check_estimator(estimator, allowed=ESTIMATORS):
    _require(estimator in allowed, f"estimator must be one of {allowed}, got {estimator!r}")


def _check_XWE(X, W, E, estimator):
    X, W = _as_matrix(X, "X"), _as_matrix(W, "W")
    _require(W.shape[0] == X.shape[1], f"W must have shape (D, m) = ({X.shape[1]}, m), got {W.shape}")
    return X, W, _check_estimator(estimator, ("ste", "rotation")) or _as_matrix(E, "E", cols=W.shape[1])


def _check_model(model):
    _require(all(hasattr(model, a) for a in ("mean", "W", "E")),
             f"model must have mean, W and E (a TrainResult), got {type(model).__name__}")
    W, mean = _as_matrix(model.W, "model.W"), np.asarray(model.mean, dtype=np.float64)
    _require(mean.shape == (W.shape[0],) and np.all(np.isfinite(mean)),
             f"model.mean must be finite with shape ({W.shape[0]},), got {mean.shape}")
    return mean, W, _as_matrix(model.E, "model.E", cols=W.shape[1])


def _check_codes(codes, K):
    c = np.asarray(codes)
    return _require(c.ndim == 1 and c.size > 0 and c.dtype.kind in "iu" and 0 <= c.min() <= c.max() < K,
                    f"codes must be a non-empty 1-D integer array with values in [0, {K - 1}]") or c


def _check_counts(counts):
    p = np.asarray(counts, dtype=np.float64)
    return _require(p.ndim == 1 and p.size > 0 and np.all(np.isfinite(p)) and np.all(p >= 0),
                    f"counts must be a non-empty 1-D array of non-negative numbers, got {counts!r}") or p


def _check_distinct_rows(Z, K):
    """ValueError unless ``Z`` has ``K`` distinct rows (one sort of a projection decides most cases)."""
    if K > 1 and np.unique(Z @ np.cos(np.arange(1, Z.shape[1] + 1))).size < K:
        n = np.unique(Z, axis=0).shape[0]
        _require(n >= K, f"K={K} is larger than the number of distinct rows of Z ({n}); lower K")


def _check_make_data(n, D, seed, rank, decay, scale, noise, bimodal, sep):
    n, D = _check_int(n, "n", 1), _check_int(D, "D", 1)
    rank = min(_check_int(rank, "rank", 1), D)
    for value, name in ((decay, "decay"), (scale, "scale"), (noise, "noise"), (sep, "sep")):
        _check_real(value, name, positive=name in ("decay", "scale"))
    return n, D, rank, _check_int(bimodal, "bimodal", 0, D - rank), np.random.default_rng(_check_int(seed, "seed", 0))


def _check_train(X, a):
    """Validate train()'s arguments ``a`` (its locals); return X and the settings dict."""
    X = _as_matrix(X, "X")
    (N, D), s = X.shape, {k: a[k] for k in ("estimator", "K", "m", "steps", "lrW", "lrE", "beta", "alpha",
                                            "batch", "seed", "tol", "window")}
    _check_estimator(s["estimator"])
    for name, low, high in (("K", 1, N), ("m", 1, D), ("steps", 0, 10 ** 7), ("batch", 1, None),
                            ("seed", 0, None), ("window", 1, None), ("eval_every", 1, None)):
        _check_int(a[name], name, low, high)
    for name in ("lrW", "lrE", "beta", "alpha") + ("tol",) * (a["tol"] is not None):
        _check_real(a[name], name, positive=name.startswith("lr"))
    for name, shape in (("init_W", (D, s["m"])), ("init_E", (s["K"], s["m"]))):
        _require(a[name] is None or _as_matrix(a[name], name).shape == shape,
                 f"{name} must have shape {shape}, got {np.shape(a[name])}")
    a["eval_X"] is None or _as_matrix(a["eval_X"], "eval_X", cols=D)
    if s["batch"] > N:
        warnings.warn(f"batch={s['batch']} is larger than the data (N={N}); using batch={N}", stacklevel=3)
        s["batch"] = N
    return X, s


def _check_lrW(lrW, top_variance):                                  # the step grows with the variance
    _require(lrW <= LRW_TIMES_VARIANCE_MAX / top_variance, f"lrW={lrW:g} is too large for data of this "
             f"scale (top variance {top_variance:.3g}): use lrW <= {LRW_TIMES_VARIANCE_MAX / top_variance:.3g}, "
             "or standardize X (README, \"Choosing learning rates\")")


def _check_diverged(t, loss, W, E, lrW, lrE):
    if not (np.isfinite(loss + W.sum()) and np.abs(E).max() <= SAFE_MAX):  # the message only when raised
        raise FloatingPointError(f"training diverged at step {t}; lower the learning rates (lrW={lrW:g}, lrE={lrE:g})")


def _check_step(h, W, E):
    top = max(np.abs(W).max(), np.abs(E).max())
    return _require(top + h != top, f"h={h:g} is below the rounding of max(|W|, |E|) = {top:.3g}; use h near 1e-6") or h


def _check_lloyd(Z, K, init, seed):
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    _check_distinct_rows(Z, K)
    if init is None:
        return Z, K, kmeans_pp(Z, K, np.random.default_rng(_check_int(seed, "seed", 0)))
    E = _as_matrix(init, "init", cols=Z.shape[1]).copy()
    return Z, K, _require(E.shape[0] == K, f"init must have shape (K, m) = ({K}, {Z.shape[1]}), got {E.shape}") or E


def _warn_if_collapsed(counts, where):
    if counts.size > 1 and np.count_nonzero(counts) == 1:
        warnings.warn(f"all but one of the K={counts.size} codes are dead on {where}; every row gets the same codeword",
                      stacklevel=3)


# ---------------------------------------- a point for the gradient check
def check_point(X, m, K, *, seed=0, margin=1e-4):
    """A random ``(W (D, m) orthonormal, E (K, m))`` for a gradient check on ``X`` (N, D), redrawn until
    each row's two nearest squared distances differ by more than ``margin`` (so ``h`` flips no code)."""
    X = _as_matrix(X, "X")
    rng = np.random.default_rng(_check_int(seed, "seed", 0))
    for _ in range(100):
        W = qr_retraction(rng.standard_normal((X.shape[1], m)))    # (D, m)
        Z = X @ W
        E = kmeans_pp(Z, K, rng) + 0.1 * Z.std() * rng.standard_normal((K, m))
        d2 = np.sort(np.sum((Z[:, None, :] - E[None]) ** 2, axis=2), axis=1)
        if K == 1 or np.min(d2[:, 1] - d2[:, 0]) > margin:
            return W, E
    raise ValueError(f"no check point with margin={margin} found; use fewer rows or a smaller margin")


# ----------------------------------------- row norms, cell sums, assignment (= nearest_codeword)
def _row_sq(A):
    """Squared norm of each row of ``A`` (n, m): a product with ones, fast for short rows."""
    return np.square(A) @ np.ones(A.shape[1])


def _cell_sums(R, labels, K):
    """Sum of the rows of ``R`` (N, m) in each cell (K, m): ``np.add.at(S, labels, R)``, a bincount per column."""
    return np.array([np.bincount(labels, weights=column, minlength=K) for column in R.T]).T


def _assign(Z, E, out_second=None):
    """:func:`nearest_codeword` in blocks, unvalidated: scores ``z.e - ||e||^2/2`` about the codebook mean in one
    product, (K, rows) for K <= 64, else (rows, K), so reductions run along long rows; near-ties (within
    ``ASSIGN_TIE_RTOL``) go to exact distances. ``out_second`` (N,): lower bounds of ``||z - e||^2``, other codes."""
    (N, m), K, c = Z.shape, E.shape[0], E.sum(axis=0) / E.shape[0]  # c (m,): the codebook mean
    Ec = E - c                                                      # (K, m) codewords about c
    A = np.concatenate([Ec, -0.5 * _row_sq(Ec)[:, None]], axis=1)   # (K, m + 1) = [e, -||e||^2 / 2], about c
    e2max, step, ax = -2.0 * A[:, m].min(), max(256, ASSIGN_CHUNK_ELEMENTS // K), int(K > 64)
    Zt, k, codes = np.ones((m + 1, min(step, N))), np.empty(N, dtype=np.int64), np.arange(min(K, 64), dtype=np.uint8)
    for s in range(0, N, step):
        b = min(step, N - s)
        Zc = np.subtract(Z[s:s + b].T, c[:, None], out=Zt[:m, :b])  # (m, b)
        z2 = _row_sq(Zc.T)                                          # (b,)
        slack = ASSIGN_TIE_RTOL * (z2 + e2max)                      # rounding bound of a score
        if ax:                                                      # scores (b, K): argmax along each row
            G, rows = Zt[:, :b].T @ A.T, np.arange(0, b * K, K)
            kb = np.argmax(G, axis=1)
            best = np.take(G, rows + kb)                            # (b,) best score
            G.ravel()[rows + kb] = -np.inf
            second = np.take(G, rows + np.argmax(G, axis=1))        # (b,) second-best score
            close = np.flatnonzero(best - second <= slack)
        else:                                                       # K <= 64, scores (K, b): whole-row passes
            G = A @ Zt[:, :b]
            best = G.max(axis=0)                                    # (b,) best score
            near = (G >= best - slack).view(np.uint8)               # (K, b): 1 at the best and any within slack
            kb = np.minimum(np.einsum("kb,k->b", near, codes), K - 1).astype(np.int64)  # its code, if alone
            close = np.flatnonzero(near.sum(axis=0) > 1) if np.count_nonzero(near) > b else kb[:0]
            if out_second is not None:
                G.ravel()[kb * b + np.arange(b)] = -np.inf
                second = G.max(axis=0)                              # (b,) second-best score
        if close.size:                                              # near-ties: exact distances
            diff = np.take(Z, s + close, axis=0)[:, None, :] - E[None]   # (r, K, m)
            kb[close] = np.argmin(np.einsum("rkm,rkm->rk", diff, diff), axis=1)
        k[s:s + b] = kb
        if out_second is not None:                                  # at a near-tie, the second is the best
            second[close] = best[close]
            out_second[s:s + b] = z2 - 2.0 * (second + slack)      # ||z - e||^2 lowered by the bound
    return k

# ------------------------------------------- Lloyd's cells and distance bounds (= assign)
class _LloydCells:
    """lloyd_max's state for a sequence of codebooks: codes ``labels`` (= assign(Z, E)) of the rows of ``Z`` (N, m),
    each cell's ``counts`` and ``sums`` (K, m) of ``z - e_k``, updated where codes change. Distance bounds [7] spare
    re-assigning most rows: an upper bound on each row's distance to its codeword and a lower bound on that to any
    other follow the codewords' moves (triangle inequality). Its large gathers take ``mode="wrap"``: the indices
    are valid, so the values are those of "raise", and it measured fastest."""

    def __init__(self, Z, E):
        K, second = E.shape[0], np.empty(Z.shape[0])
        self.Z, self.E, self.buf, self.labels = Z, E.copy(), np.empty_like(Z), _assign(Z, E, second)
        R = Z - np.take(E, self.labels, axis=0, mode="wrap")        # (N, m)
        self.upper, self.lower = np.sqrt(_row_sq(R)), np.sqrt(np.maximum(second, 0.0))
        self.counts, self.sums = np.bincount(self.labels, minlength=K), _cell_sums(R, self.labels, K)

    def distortion(self):
        """Mean ``||z - e_k||^2`` of the current codes, from explicit residuals."""
        R = np.subtract(self.Z, np.take(self.E, self.labels, axis=0, out=self.buf, mode="wrap"), out=self.buf)
        return float(np.vdot(R, R)) / R.shape[0]

    def _dist(self, Z, codes):
        """``||z - e_c||`` per row of ``Z`` (n, m) and code ``c``, in place: fresh (n, m) temporaries page-fault."""
        R = np.take(self.E, codes, axis=0, mode="wrap")
        return np.sqrt(np.square(np.subtract(Z, R, out=R), out=R) @ np.ones(Z.shape[1]))

    def update(self, E):
        """Move to the codebook ``E`` (K, m); returns how many rows changed code."""
        K, move = E.shape[0], E - self.E                            # (K, m) each codeword's move
        shift = np.sqrt(_row_sq(move))                              # (K,) how far each codeword moved
        self.sums -= self.counts[:, None] * move                    # residual sums about the new codewords
        self.upper += np.take(shift, self.labels, mode="wrap")
        self.lower -= shift.max()                                   # no code moved further (one number, no gather)
        self.E, Ec = E.copy(), E - E.mean(axis=0)                   # half of each code's gap, rounded down:
        e2 = _row_sq(Ec)                                            # nearer than that, no other code is
        D2 = e2[:, None] + e2[None, :] - 2.0 * (Ec @ Ec.T) - 2.0 * ASSIGN_TIE_RTOL * (e2[:, None] + e2.max())
        np.fill_diagonal(D2, np.inf)
        half_gaps = 0.5 * np.sqrt(np.maximum(D2.min(axis=1), 0.0))  # (K,), inf when K = 1
        bound = np.maximum(self.lower, np.take(half_gaps, self.labels, mode="wrap"))
        rows = np.flatnonzero(self.upper >= bound)                  # not certified
        Zr, old = np.take(self.Z, rows, axis=0, mode="wrap"), np.take(self.labels, rows, mode="wrap")
        self.upper[rows] = u = self._dist(Zr, old)                  # tightened: exact
        keep = np.flatnonzero(u >= np.take(bound, rows))            # still not certified: indices, not masks
        rows, Zr, old, second = np.take(rows, keep), np.take(Zr, keep, axis=0), np.take(old, keep), np.empty(keep.size)
        new = _assign(Zr, E, second)                                # re-assigned
        self.upper[rows], self.lower[rows] = self._dist(Zr, new), np.sqrt(np.maximum(second, 0.0))
        moved = np.flatnonzero(new != old)                          # the cells' statistics follow
        Zm, new_m, old_m = np.take(Zr, moved, axis=0), np.take(new, moved), np.take(old, moved)
        self.sums += _cell_sums(Zm - E[new_m], new_m, K) - _cell_sums(Zm - E[old_m], old_m, K)
        self.counts += np.bincount(new_m, minlength=K) - np.bincount(old_m, minlength=K)
        self.labels[rows] = new
        return moved.size

# ------------------------------------------- training step (= forward + backward)
def minibatches(N, batch, seed=0):
    """Endless batches of row indices, each epoch a fresh permutation of ``range(N)`` (train's order)."""
    rng = np.random.default_rng(np.random.SeedSequence(_check_int(seed, "seed", 0)).spawn(2)[1])
    batch = _check_int(batch, "batch", 1, _check_int(N, "N", 1))
    while True:                                                     # an epoch's permutation, in full batches
        yield from rng.permutation(N)[:N // batch * batch].reshape(-1, batch)


def _train_step(Xc, idx, W, E, estimator, lrW, lrE, beta, alpha, xsq, xb):
    """:func:`forward`, :func:`backward`, :func:`stiefel_step` and ``E - lrE dE`` on ``Xc[idx]`` (equal to rounding) in
    the latent form of README eqs. 4', 8', 9', without the (B, D) ``X_hat``, one latent per column (m, B); "numerical":
    STE by :func:`numerical_grads`. ``xsq`` (N,): rows' ``||x||^2``; ``xb``: a (B, D) buffer for the batch, filled
    with ``mode="wrap"`` (with ``out``, "raise" gathers via a temporary). Returns ``W, E, loss, rec, k``."""
    if estimator == "numerical":
        rec, dist, cache = forward(Xc[idx], W, E)
        dW, dE = numerical_grads(Xc[idx], W, E, estimator="ste", beta=beta, alpha=alpha)
        return stiefel_step(W, dW, lrW), E - lrE * dE, rec + (alpha + beta) * dist, rec, cache["k"]
    Xb, B = np.take(Xc, idx, axis=0, out=xb, mode="wrap"), len(idx)  # (B, D); idx is valid, so "wrap" = "raise"
    Z = W.T @ Xb.T                                                  # (m, B): one latent per column
    k = _assign(Z.T, E)
    Q = np.take(E.T, k, axis=1)                                     # (m, B)
    Rz = Z - Q                                                      # (m, B)
    QM = (W.T @ W) @ Q                                              # (m, B)
    x2 = np.take(xsq, idx).sum()                                    # ||Xb||^2 from the rows' norms
    rec = (x2 - 2.0 * np.vdot(Q, Z) + np.vdot(QM, Q)) / B           # eq. 4'
    if rec < 1e-4 * x2 / B:                                         # (4') lost digits: explicit
        rec = np.sum(np.square(Xb - Q.T @ W.T)) / B
    dQ = (2.0 / B) * (QM - Z)                                       # eq. 9'
    dZ = (dQ if estimator == "ste" else _rotation_backward(dQ, Z, Q)) + (2.0 * beta / B) * Rz  # eqs. 10-12
    dW = Xb.T @ (dZ - (2.0 / B) * Q).T + W @ ((2.0 / B) * (Q @ Q.T))  # eqs. 8', 13
    dE = _cell_sums(Rz.T, k, E.shape[0]) * (-2.0 * alpha / B)       # eq. 14
    W = _cholesky_qr(W - lrW * stiefel_project(W, dW))             # eqs. 16-17; Y^T Y = I + lrW^2 xi^T xi
    return W, E - lrE * dE, rec + (alpha + beta) * np.vdot(Rz, Rz) / B, rec, k


def _cholesky_qr(Y):
    """:func:`qr_retraction` in fewer calls, ``Y R^-1`` with ``Y^T Y = R^T R``: a step's ``Y`` is well conditioned."""
    try:
        return np.linalg.solve(np.linalg.cholesky(Y.T @ Y), Y.T).T  # (D, m)
    except np.linalg.LinAlgError:                                   # not positive definite: NaN in Y
        return qr_retraction(Y)


def _rotation_backward(G, Z, Q):
    """``apply_rotation(G.T, rotation_factors(Z.T, Q.T), transpose=True).T`` with one sample per column (m, B)."""
    dot = lambda a, b: np.einsum("mb,mb->b", a, b)                  # noqa: E731
    nz, ne = np.sqrt(dot(Z, Z)), np.sqrt(dot(Q, Q))                 # (B,)
    if nz.min() > 0 and ne.min() > 0:
        u, v = Z / nz, Q / ne
        w = u + v
        ns = np.sqrt(dot(w, w))
        if ns.min() >= ANTIPARALLEL_TOL:
            w /= ns
            return (G - 2.0 * dot(w, G) * w + 2.0 * dot(v, G) * u) * (ne / nz)
    return apply_rotation(G.T, rotation_factors(Z.T, Q.T), transpose=True).T


# --------------------------------------------------------------- demo plumbing
def split(X, test_fraction=0.2, seed=0):
    """Shuffle the rows of ``X`` and split them into ``(train, test)``."""
    X = _as_matrix(X, "X")
    perm = np.random.default_rng(_check_int(seed, "seed", 0)).permutation(X.shape[0])
    n_test = max(1, int(round(_check_real(test_fraction, "test_fraction") * X.shape[0])))
    return X[perm[n_test:]], X[perm[:n_test]]


def _demo_args(argv):
    p = argparse.ArgumentParser(prog="vqref", description=main.__doc__)
    for flag, typ, default, what in (
            ("K", int, 32, "codebook size"), ("m", int, 4, "latent dimension"), ("D", int, 64, "data dimension"),
            ("n", int, 20000, "rows, 20%% held out"), ("steps", int, 300, "steps of the study's protocol"),
            ("batch", int, 1024, "batch size"), ("lrW", float, 0.08, "encoder learning rate"), ("lrE", float, 0.2,
             "codebook learning rate of the study's protocol"), ("beta", float, 0.25, "commitment weight"),
            ("alpha", float, 1.0, "codebook weight"), ("seed", int, 0, "random seed")):
        p.add_argument(f"--{flag}", type=typ, default=default, help=f"{what} (default {default})")
    return p, p.parse_args(argv)


def _print_demo_table(a, n_train, rows, Xte):
    print(f"vqref demo: D={a.D} m={a.m} K={a.K}, {n_train} training rows, {len(Xte)} held out, batch={a.batch} "
          f"lrW={a.lrW} beta={a.beta} alpha={a.alpha} seed={a.seed}\nstudy: {a.steps} steps at lrE={a.lrE}; "
          f"converged: lrE={CONVERGED['lrE']} until the training loss improves by < {CONVERGED['tol']:g} over "
          f"{CONVERGED['window']} steps\n{'method':<20} {'steps':>7} {'test MSE':>9} {'vs base':>8} {'entropy':>8} "
          f"{'of log K':>8} {'dead':>5} {'time':>7}")
    evs = [evaluate(Xte, model) for _, _, model, _ in rows]
    for (name, steps, _, sec), ev in zip(rows, evs):
        share = ev["entropy"] / ev["max_entropy"] if ev["max_entropy"] else 1.0
        print(f"{name:<20} {steps:>7} {ev['mse']:9.4f} {100 * (ev['mse'] / evs[0]['mse'] - 1):+7.2f}% "
              f"{ev['entropy']:8.3f} {100 * share:7.1f}% {ev['dead_codes']:5d} {sec:6.2f}s")
    return evs


if __name__ == "__main__":  # at the end, once the machinery is defined
    main()
