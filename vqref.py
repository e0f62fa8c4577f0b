"""vqref: vector quantization with hand-derived gradients, in one NumPy file.

A linear encoder ``Z = X @ W`` (``W`` orthonormal, on the Stiefel manifold), a
codebook ``E`` of ``K`` codewords, nearest-codeword assignment and a decoder tied
to the encoder, ``x_hat = q @ W.T``. Four ways to fit it are compared:

* PCA + Lloyd-Max: ``W = pca(X, m)``, ``E`` by Lloyd's algorithm (k-means).
* STE: gradient training with the straight-through estimator [1, 2].
* Rotation: gradient training with the rotation trick [3].
* Numerical: the same training with finite-difference gradients, to validate
  the hand-derived ones (slow; for checks only).

The math, with numbered equations that the backward pass cites, is in the
README ("Derivation"). Everything here needs NumPy only, so copying this one
file into a project is enough. Run ``python vqref.py --help`` for the demo.

Vocabulary: a *code* is an index ``k``; its *codeword* is the row ``E[k]``; the
*distortion* is the mean squared distance from a latent to its codeword.

References
----------
[1] A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, arXiv:1711.00937.
[2] Y. Bengio, N. Leonard, A. Courville, "Estimating or Propagating Gradients
    Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432.
[3] C. Fifty et al., "Restructuring Vector Quantization with the Rotation Trick",
    ICLR 2025, arXiv:2410.06424.
[4] D. Arthur, S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
    SODA 2007.
[5] S. Lloyd, "Least Squares Quantization in PCM", IEEE Trans. Inf. Theory 28(2),
    1982; J. Max, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory, 1960.
[6] P.-A. Absil, R. Mahony, R. Sepulchre, "Optimization Algorithms on Matrix
    Manifolds", Princeton University Press, 2008 (Stiefel gradient, QR retraction).
[7] G. Hamerly, "Making k-means even faster", SIAM International Conference on
    Data Mining (SDM), 2010.
"""

import argparse
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

__version__ = "0.1.0"

ESTIMATORS = ("ste", "rotation", "numerical")
# Below this ||u + v|| the rotation's Householder vector w is ill-conditioned and
# the antiparallel fallback (a reflection along u) is used instead; see rotation_factors.
ANTIPARALLEL_TOL = 1e-6
# Rows lloyd_max() handles at a time: bounds its temporaries to a few MB.
LLOYD_BLOCK_ROWS = 1 << 17
# Entries of the (rows, K) score block of one assign() chunk: 512 KB, so it stays in cache.
ASSIGN_CHUNK_ELEMENTS = 1 << 16
# Relative rounding bound of the expanded distance form: assign() decides rows whose
# two best scores are closer than this by exact distances, and lloyd_max() widens
# its distance bounds by it.
ASSIGN_TIE_RTOL = 1e-12


# ----------------------------------------------------------------- validation

def _as_matrix(A, name, *, cols=None):
    """Return A as a finite float64 2-D array, or raise ValueError naming it."""
    A = np.asarray(A)
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
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or inf")
    return A


def _check_int(value, name, low, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_real(value, name, *, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return value


def _check_estimator(estimator, allowed=ESTIMATORS):
    if estimator not in allowed:
        raise ValueError(f"estimator must be one of {allowed}, got {estimator!r}")
    return estimator


def _row_sq(A):
    """Squared norm of each row of A (n, m), as a product with ones: about twice as
    fast as einsum for the short rows (m = 4) of latent vectors."""
    return np.square(A) @ np.ones(A.shape[1])


def _dist2(Z, E, k):
    """Squared distance of each row of Z (n, m) to its codeword E[k] (n,)."""
    return _row_sq(Z - np.take(E, k, axis=0))


def _check_model(X, W, E):
    X = _as_matrix(X, "X")
    W = _as_matrix(W, "W")
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"W must have shape (D, m) = ({X.shape[1]}, m), got {W.shape}")
    E = _as_matrix(E, "E", cols=W.shape[1])
    return X, W, E


# ----------------------------------------------------------------------- data

def make_data(n, D=64, *, seed=0, rank=4, decay=0.9, scale=2.0, noise=0.012):
    """Synthetic centered data: a low-rank Gaussian signal plus isotropic noise.

    Each row is ``x = A s + sqrt(noise) * eps`` with ``s ~ N(0, diag(var))``,
    ``var[j] = scale * decay**j`` for ``j < rank``, ``A`` a random (D, rank)
    orthonormal basis and ``eps ~ N(0, I_D)``. The columns are then centered
    exactly (the sample mean is subtracted), because the model has no bias.

    Parameters
    ----------
    n : int
        Number of rows, ``n >= 1``.
    D : int
        Ambient dimension.
    seed : int
        Seed of the ``numpy.random.Generator`` (0 is a valid seed).
    rank, decay, scale, noise
        Signal rank (capped at ``D``), geometric decay of the signal variances,
        variance of the first signal direction, and noise variance per dimension.
        The defaults put the PCA + Lloyd-Max baseline at D=64, m=4 within 3% of
        the study's reconstruction MSE for K = 8..64 (README, "Data").

    Returns
    -------
    X : ndarray of shape (n, D), float64
    """
    n = _check_int(n, "n", 1)
    D = _check_int(D, "D", 1)
    rank = min(_check_int(rank, "rank", 1), D)
    decay = _check_real(decay, "decay", positive=True)
    scale = _check_real(scale, "scale", positive=True)
    noise = _check_real(noise, "noise")
    rng = np.random.default_rng(seed)
    A, _ = np.linalg.qr(rng.standard_normal((D, rank)))             # (D, rank) orthonormal
    std = np.sqrt(scale * decay ** np.arange(rank))                 # (rank,)
    X = (rng.standard_normal((n, rank)) * std) @ A.T                # (n, D)
    X += np.sqrt(noise) * rng.standard_normal((n, D))               # (n, D)
    X -= X.mean(axis=0)
    return X


def pca(X, m):
    """Top-``m`` principal directions of ``X`` as orthonormal columns.

    ``X`` is taken as already centered (the encoder has no bias), so the
    directions are the top eigenvectors of ``X.T @ X``. Each column's sign is
    fixed so that its largest-magnitude entry is positive.

    Parameters
    ----------
    X : array_like of shape (N, D)
    m : int, 1 <= m <= D

    Returns
    -------
    W : ndarray of shape (D, m), with ``W.T @ W = I_m``
    """
    X = _as_matrix(X, "X")
    m = _check_int(m, "m", 1, X.shape[1])
    evals, evecs = np.linalg.eigh(X.T @ X)                          # ascending
    W = evecs[:, ::-1][:, :m]                                       # (D, m)
    flip = np.sign(W[np.argmax(np.abs(W), axis=0), np.arange(m)])
    return np.ascontiguousarray(W * flip)


# ------------------------------------------------------------------ quantizer

def assign(Z, E):
    """Index of the nearest codeword of each row of ``Z`` (ties: lowest index).

    Distances use the expanded form ``||z||^2 - 2 z.e + ||e||^2`` on points
    shifted by the codebook mean, so that data far from the origin does not
    cancel catastrophically, and are computed in chunks of rows so that memory
    stays bounded for large ``N * K``. A row whose best two candidates lie
    within the rounding error of that form (``ASSIGN_TIE_RTOL``) is decided by
    the exact distances ``||z - e||^2``, so exact ties go to the lowest index.

    Parameters
    ----------
    Z : array_like of shape (N, m)
    E : array_like of shape (K, m)

    Returns
    -------
    k : ndarray of shape (N,), int64
    """
    Z = _as_matrix(Z, "Z")
    E = _as_matrix(E, "E", cols=Z.shape[1])
    return _assign(Z, E)


def _assign(Z, E, out_dist=None, out_second=None):
    """assign() without validation. Optionally writes each row's squared distance to
    its codeword to out_dist, and a lower bound on its squared distance to every
    other codeword to out_second (inf when K = 1)."""
    N, m = Z.shape
    K = E.shape[0]
    c = E.sum(axis=0) / K                                           # codebook mean
    Ec = E - c                                                      # (K, m)
    # Augmented codebook [e; -||e||^2/2]: [z, 1] @ A = z.e - ||e||^2/2, whose argmax is
    # the nearest codeword (||z||^2 is common to a row), in one matrix product.
    A = np.empty((m + 1, K))
    A[:m] = Ec.T
    A[m] = -0.5 * np.einsum("km,km->k", Ec, Ec)
    e2max = -2.0 * A[m].min()
    step = max(256, ASSIGN_CHUNK_ELEMENTS // K)                     # rows a chunk: G fits in cache
    Za = np.empty((min(step, N), m + 1))                            # buffers reused by every chunk
    Za[:, m] = 1.0
    G = np.empty((min(step, N), K))
    k = np.empty(N, dtype=np.int64)
    close_none = np.empty(0, dtype=np.int64)
    for s in range(0, N, step):
        b = min(step, N - s)
        Zc = Za[:b, :m]
        np.subtract(Z[s:s + b], c, out=Zc)                          # (b, m) shifted by the mean
        Gb = np.matmul(Za[:b], A, out=G[:b])                        # (b, K)
        flat = Gb.ravel()                                           # entry (i, j) at i K + j
        rowstart = np.arange(0, b * K, K)                           # (b,)
        kb = np.argmax(Gb, axis=1)                                  # (b,) best code
        at = rowstart + kb                                          # (b,) flat index of each best
        best = np.take(flat, at)                                    # (b,) its score
        z2 = _row_sq(Zc)                                            # (b,)
        slack = ASSIGN_TIE_RTOL * (z2 + e2max)                      # rounding bound of a score
        if out_second is not None:                                  # second best score (b,)
            flat[at] = -np.inf
            second = np.take(flat, rowstart + np.argmax(Gb, axis=1))
            close = np.flatnonzero(best - second <= slack)
        else:                                                       # only whether it is close
            near = Gb >= (best - slack)[:, None]                    # (b, K)
            close = (np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
                     if np.count_nonzero(near) > b else close_none)
        # When the best two scores lie within the rounding error of the expanded form,
        # the exact distances decide, so that exact ties go to the lowest index.
        if close.size:
            diff = np.take(Z, s + close, axis=0)[:, None, :] - E[None]  # (r, K, m)
            kb[close] = np.argmin(np.einsum("rkm,rkm->rk", diff, diff), axis=1)
            if out_second is not None:
                second[close] = best[close]                         # the other may be as near
        k[s:s + b] = kb
        if out_dist is not None:
            out_dist[s:s + b] = _dist2(Zc, Ec, kb)
        if out_second is not None:
            # ||z - e||^2 = ||z||^2 - 2 score, lowered by the rounding bound.
            out_second[s:s + b] = z2 - 2.0 * (second + slack)
    return k


def kmeans_pp(Z, K, rng):
    """Initial codebook by k-means++ seeding [4].

    The first codeword is a row of ``Z`` chosen uniformly; each next one is a
    row chosen with probability proportional to its squared distance to the
    nearest codeword chosen so far. Rows already chosen have distance 0, so the
    codewords are distinct rows of ``Z``.

    Parameters
    ----------
    Z : array_like of shape (N, m)
    K : int
        Number of codewords, at most the number of distinct rows of ``Z``.
    rng : numpy.random.Generator or int
        Generator (or seed for one) that drives the sampling.

    Returns
    -------
    E : ndarray of shape (K, m)

    Examples
    --------
    >>> Z = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    >>> E = kmeans_pp(Z, 2, np.random.default_rng(0))
    >>> sorted(E[:, 0].tolist())
    [0.0, 10.0]
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    rng = np.random.default_rng(rng)
    N = Z.shape[0]
    idx = np.empty(K, dtype=np.int64)
    idx[0] = rng.integers(N)
    d2 = np.full(N, np.inf)
    for j in range(1, K):
        diff = Z - Z[idx[j - 1]]                                    # (N, m), exact 0 on duplicates
        np.minimum(d2, _row_sq(diff), out=d2)
        cum = np.cumsum(d2)                                         # (N,)
        if cum[-1] <= 0.0:
            raise ValueError(f"K={K} is larger than the number of distinct rows of Z ({j})")
        # side="right" never lands on a zero-weight row (an already chosen one).
        idx[j] = min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), N - 1)
    return Z[idx].copy()


def _cell_sums(Z, labels, K):
    """Row sums of Z per label, (K, m): one flat bincount (much faster than np.add.at)."""
    m = Z.shape[1]
    flat = (labels[:, None] * m + np.arange(m)).ravel()             # (N * m,)
    return np.bincount(flat, weights=Z.ravel(), minlength=K * m).reshape(K, m)


def _half_gaps(E):
    """Half the distance from each codeword to its nearest other one, rounded down (K,).
    A row closer than this to its own codeword has no other nearer codeword."""
    K = E.shape[0]
    if K == 1:
        return np.full(1, np.inf)
    Ec = E - E.mean(axis=0)
    e2 = np.einsum("km,km->k", Ec, Ec)
    D2 = e2[:, None] + e2[None, :] - 2.0 * (Ec @ Ec.T)             # (K, K) expanded form
    D2 -= 2.0 * ASSIGN_TIE_RTOL * (e2[:, None] + e2.max())          # minus its rounding bound
    np.fill_diagonal(D2, np.inf)
    return 0.5 * np.sqrt(np.maximum(D2.min(axis=1), 0.0))


def lloyd_max(Z, K, *, init=None, max_iter=100, tol=0.0, seed=0):
    """Generalized Lloyd algorithm (k-means) on the rows of ``Z`` [5].

    Alternates nearest-codeword assignment and centroid update. It stops when
    the assignments stop changing, when the relative drop of distortion is at
    most ``tol``, or after ``max_iter`` updates. A cell left empty is re-seeded
    deterministically with the row farthest from its codeword (the next farthest
    for a second empty cell, and so on), which lowers the distortion, so no code
    stays dead and the distortion never increases.

    The assignment step skips rows whose code cannot have changed, as certified
    by distance bounds [7]: each row keeps an upper bound on the distance to its
    codeword and a lower bound on the distance to every other one, moved by how
    far the codewords move. The assignments, and so the result, are those of the
    plain algorithm; only the work differs.

    Parameters
    ----------
    Z : array_like of shape (N, m)
    K : int
        Number of codewords, ``1 <= K <= N`` (and at most the distinct rows).
    init : array_like of shape (K, m), optional
        Initial codebook; by default k-means++ with ``seed``.
    max_iter : int
        Maximum number of centroid updates.
    tol : float
        Relative distortion drop below which to stop (0: only when the
        assignments stop changing).
    seed : int
        Seed for k-means++ when ``init`` is None.

    Returns
    -------
    E : ndarray of shape (K, m)
    info : dict
        ``labels`` (N,), ``distortion`` (final mean squared distance),
        ``history`` (distortion after each assignment), ``n_iter``,
        ``converged`` (bool), ``reseeded`` (number of re-seeded cells).
    """
    Z = _as_matrix(Z, "Z")
    K = _check_int(K, "K", 1, Z.shape[0])
    max_iter = _check_int(max_iter, "max_iter", 0)
    tol = _check_real(tol, "tol")
    if init is None:
        E = kmeans_pp(Z, K, np.random.default_rng(seed))
    else:
        E = _as_matrix(init, "init", cols=Z.shape[1]).copy()
        if E.shape[0] != K:
            raise ValueError(f"init must have shape (K, m) = ({K}, {Z.shape[1]}), got {E.shape}")
    N, m = Z.shape
    # Cell statistics about the data mean mu, kept up to date as rows change cells:
    # they give the centroids and the distortion without another pass over Z.
    mu = Z.mean(axis=0)
    Zs = Z - mu                                                     # (N, m)
    total = np.einsum("nm,nm->", Zs, Zs)
    labels = np.zeros(N, dtype=np.int64)
    counts = np.zeros(K, dtype=np.int64)
    counts[0] = N
    sums = np.zeros((K, m))
    sums[0] = Zs.sum(axis=0)                                        # (K, m)
    upper = np.full(N, np.inf)                                      # >= distance to own codeword
    lower = np.zeros(N)                                             # <= distance to any other

    def assign_step():
        """Re-assign the rows whose bounds do not certify their code; return how many moved."""
        half_gaps, moved = _half_gaps(E), 0
        for s in range(0, N, LLOYD_BLOCK_ROWS):                     # blocks: temporaries stay small
            # (np.take: row gathers here are several times faster than fancy indexing.)
            blk = slice(s, s + LLOYD_BLOCK_ROWS)
            bound = np.maximum(lower[blk], np.take(half_gaps, labels[blk]))
            rows = s + np.flatnonzero(upper[blk] >= bound)
            if rows.size == 0:
                continue
            Zr = np.take(Z, rows, axis=0)                           # (r, m)
            upper[rows] = np.sqrt(_dist2(Zr, E, np.take(labels, rows)))  # tighten: exact distance
            keep = upper[rows] >= bound[rows - s]
            rows, Zr = rows[keep], Zr[keep]
            if rows.size == 0:
                continue
            d2, second = np.empty(rows.size), np.empty(rows.size)
            new = _assign(Zr, E, d2, second)
            upper[rows] = np.sqrt(d2)
            lower[rows] = np.sqrt(np.maximum(second, 0.0))
            changed = new != np.take(labels, rows)
            move_rows(rows[changed], new[changed])
            moved += int(np.count_nonzero(changed))
        return moved

    def move_rows(rows, to):
        frm, Zr = np.take(labels, rows), np.take(Zs, rows, axis=0)
        counts[:] += np.bincount(to, minlength=K) - np.bincount(frm, minlength=K)
        sums[:] += _cell_sums(Zr, to, K) - _cell_sums(Zr, frm, K)
        labels[rows] = to

    def distortion():
        Es = E - mu                                                 # sum ||z - e_k||^2, expanded
        return (total - 2.0 * np.einsum("km,km->", Es, sums)
                + np.einsum("k,km,km->", counts, Es, Es)) / N

    assign_step()
    history = [distortion()]
    converged, reseeded, it = False, 0, 0
    for it in range(1, max_iter + 1):
        # Centroid update: each codeword moves to the mean of its cell.
        old = E.copy()
        full = counts > 0
        E[full] = mu + sums[full] / counts[full, None]
        empty = np.flatnonzero(~full)
        if empty.size:
            # Re-seed each empty cell on one of the rows farthest from their codewords.
            d2 = np.empty(N)
            for s in range(0, N, LLOYD_BLOCK_ROWS):
                blk = slice(s, s + LLOYD_BLOCK_ROWS)
                d2[blk] = _dist2(Z[blk], old, labels[blk])
            far = np.argsort(-d2, kind="stable")[:empty.size]
            if d2[far[-1]] == 0.0:
                raise ValueError(f"K={K} is larger than the number of distinct rows of Z")
            E[empty] = Z[far]
            move_rows(far, empty)
            upper[far], lower[far] = 0.0, 0.0                       # re-checked next step
            reseeded += empty.size
        # The bounds follow the codewords: a row's own codeword moved by shift[k],
        # every other one by at most the largest other shift.
        shift = np.sqrt(np.einsum("km,km->k", E - old, E - old))    # (K,)
        top = np.argsort(-shift, kind="stable")[:2]
        others = np.full(K, shift[top[0]])                          # largest shift of another code
        others[top[0]] = shift[top[-1]]
        upper += np.take(shift, labels)
        lower -= np.take(others, labels)
        moved = assign_step()
        history.append(distortion())
        if moved == 0:
            converged = True
            break
        if tol > 0 and history[-2] - history[-1] <= tol * history[-2]:
            converged = True
            break
    info = {"labels": labels, "distortion": history[-1], "history": np.array(history),
            "n_iter": it, "converged": converged, "reseeded": reseeded}
    return E, info


# ----------------------------------------------------------------- estimators

def rotation_factors(Z, Q):
    """Frozen factors of the rotation trick's map ``q = sg(lam * R) z`` [3].

    ``lam = ||e|| / ||z||`` and ``R = I - 2 w w^T + 2 v u^T`` with ``u = z/||z||``,
    ``v = e/||e||``, ``w = (u + v)/||u + v||`` (README eq. 6), so that
    ``R u = v`` and ``lam * R z = e``. Degenerate rows get a defined map:

    * ``u == v`` exactly (always so when ``e == z``): ``R = I``, so ``lam * R``
      is exactly the identity when ``e == z``. (For ``e`` parallel to ``z`` whose
      unit vectors differ by rounding, the formula gives ``I`` to rounding.)
    * ``||u + v|| < ANTIPARALLEL_TOL`` (antiparallel): ``R = I - 2 u u^T``, the
      reflection along ``u``; it is orthogonal and maps ``u`` to ``-u ~ v``.
    * ``||e|| = 0``: ``lam = 0``, so the map is 0 (the limit ``lam -> 0``).
    * ``||z|| = 0``: the rotation is undefined; the map falls back to the
      identity (the STE). An epsilon clamp on ``||z||`` would instead send
      ``q`` to 0, not to the codeword.

    ``R`` is stored as the triple ``(u, v, w)``: ``R g = g - 2 w (w.g) + 2 v (u.g)``.

    Parameters
    ----------
    Z : array_like of shape (B, m)
        Encoder outputs.
    Q : array_like of shape (B, m)
        Their codewords ``E[k]``.

    Returns
    -------
    lam : ndarray of shape (B,)
    u, v, w : ndarrays of shape (B, m)
    """
    # Rows of length B (the (m, B) layout): much faster than (B, m) rows of length m.
    Zt = np.array(np.asarray(Z, dtype=np.float64).T, order="C")     # (m, B)
    Qt = np.array(np.asarray(Q, dtype=np.float64).T, order="C")     # (m, B)
    nz = np.sqrt(np.square(Zt).sum(axis=0))                         # (B,)
    ne = np.sqrt(np.square(Qt).sum(axis=0))                         # (B,)
    with np.errstate(divide="ignore", invalid="ignore"):            # degenerate rows fixed below
        lam = ne / nz                                               # (B,)
        u = Zt / nz                                                 # (m, B)
        v = Qt / ne                                                 # (m, B)
        s = u + v                                                   # (m, B)
        ns = np.sqrt(np.square(s).sum(axis=0))                      # (B,)
        w = s / ns                                                  # (m, B)
    ok = (nz > 0) & (ne > 0)
    same = ok & np.all(u == v, axis=0)
    anti = ok & (ns < ANTIPARALLEL_TOL)
    if np.any(~ok | same | anti):
        u[:, ~ok], v[:, ~ok], w[:, ~ok] = 0.0, 0.0, 0.0             # R = I ...
        lam[nz == 0] = 1.0                                          # ... and lam R = I when z = 0
        lam[(nz > 0) & (ne == 0)] = 0.0                             # lam = 0 when e = 0
        u[:, same], v[:, same], w[:, same] = 0.0, 0.0, 0.0          # R = I
        v[:, anti], w[:, anti] = -u[:, anti], 0.0                   # R = I - 2 u u^T
    return lam, u.T, v.T, w.T                                       # (B,), (B, m) x 3


def apply_rotation(G, factors, *, transpose=False):
    """Apply ``lam * R`` (or ``lam * R^T``) row by row to ``G`` (README eqs. 6, 11).

    Parameters
    ----------
    G : ndarray of shape (B, m)
    factors : tuple
        ``(lam, u, v, w)`` from :func:`rotation_factors`.
    transpose : bool
        Apply ``lam * R^T = lam * (I - 2 w w^T + 2 u v^T)`` instead (the backward map).

    Returns
    -------
    ndarray of shape (B, m)
    """
    lam, u, v, w = factors
    a, b = (v, u) if transpose else (u, v)
    Gt, at, bt, wt = (np.asarray(x).T for x in (G, a, b, w))        # (m, B) views
    wg = np.einsum("mb,mb->b", wt, Gt)                              # (B,)
    ag = np.einsum("mb,mb->b", at, Gt)                              # (B,)
    out = Gt - 2.0 * wg * wt + 2.0 * ag * bt                        # (m, B)
    out *= lam
    return out.T                                                    # (B, m)


def _forward(X, W, E, estimator, beta, alpha):
    """Loss of README eq. 4 and what the backward pass needs. The reconstruction
    term is computed in the latent space (eq. 4'); the (B, D) X_hat is never formed."""
    B = X.shape[0]
    Z = X @ W                                                       # (B, m)  eq. 1
    k = _assign(Z, E)                                               # (B,)    eq. 2
    Q = np.take(E, k, axis=0)                                       # (B, m)  eq. 3, value of q
    QM = Q @ (W.T @ W)                                              # (B, m)  W^T W = I on the manifold
    Rz = Z - Q                                                      # (B, m)
    rec = (np.vdot(X, X) - 2.0 * np.vdot(Q, Z) + np.vdot(QM, Q)) / B   # eq. 4'
    dist = np.vdot(Rz, Rz) / B
    loss = rec + (alpha + beta) * dist                              # eq. 4
    cache = (X, W, E, Z, k, Q, QM, Rz, estimator, beta, alpha)
    return loss, rec, dist, cache


def _backward(cache):
    """Gradients of the frozen surrogate (README eqs. 7-14, in the latent-space
    form of eqs. 8' and 9'), term by term."""
    X, W, E, Z, k, Q, QM, Rz, estimator, beta, alpha = cache
    B = X.shape[0]
    dQ = (2.0 / B) * (QM - Z)                                       # (B, m)  eq. 9' (eqs. 7, 9)
    if estimator == "ste":
        # q = z + sg(e - z): the stop-gradient leaves dq/dz = I (eq. 5).
        dZ = dQ                                                     # (B, m)  eq. 10
    else:
        # q = sg(lam R) z: lam and R are frozen, so dz = lam R^T dq (eq. 6).
        dZ = apply_rotation(dQ, rotation_factors(Z, Q), transpose=True)  # (B, m)  eq. 11
    dZ += (2.0 * beta / B) * Rz                                     # (B, m)  eq. 12, commitment
    # Decoder path (eq. 8') and encoder path (eq. 13) share one product with X^T:
    # dW = (2/B) W Q^T Q - (2/B) X^T Q + X^T dZ.
    dW = X.T @ (dZ - (2.0 / B) * Q)                                 # (D, m)  eqs. 8', 13
    dW += W @ ((2.0 / B) * (Q.T @ Q))                               # (D, m)  eq. 8'
    dE = _cell_sums(Rz, k, E.shape[0]) * (-2.0 * alpha / B)         # (K, m)  eq. 14, codebook
    return dW, dE


def loss_and_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0):
    """Loss and hand-derived gradients of the frozen surrogate (README eqs. 4-14).

    Parameters
    ----------
    X : array_like of shape (B, D)
    W : array_like of shape (D, m)
    E : array_like of shape (K, m)
    estimator : {"ste", "rotation"}
    beta : float
        Commitment weight (pulls the encoder toward its codewords).
    alpha : float
        Codebook weight (pulls codewords toward their encoder outputs).

    Returns
    -------
    loss : float
    dW : ndarray of shape (D, m)
        Euclidean gradient with respect to ``W``.
    dE : ndarray of shape (K, m)
    """
    X, W, E = _check_model(X, W, E)
    _check_estimator(estimator, ("ste", "rotation"))
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    loss, _, _, cache = _forward(X, W, E, estimator, beta, alpha)
    dW, dE = _backward(cache)
    return loss, dW, dE


# ------------------------------------------------------------ gradient check

def _frozen_surrogate(X, W, E, estimator, beta, alpha):
    """The surrogate of README eq. 15 as a function of (W, E), with every sg(.)
    factor and every assignment frozen at the given point."""
    B = X.shape[0]
    Z0 = X @ W
    k = _assign(Z0, E)
    Q0 = E[k]
    if estimator == "ste":
        C = Q0 - Z0                                                 # sg(e - z), eq. 5
        to_q = lambda Z: Z + C                                      # noqa: E731
    else:
        F = rotation_factors(Z0, Q0)                                # sg(lam R), eq. 6
        to_q = lambda Z: apply_rotation(Z, F)                       # noqa: E731

    def f(W, E):
        Z = X @ W
        Rx = X - to_q(Z) @ W.T
        Ra = Z0 - E[k]                                              # sg(z) - e
        Rb = Z - Q0                                                 # z - sg(e)
        return (np.einsum("bd,bd->", Rx, Rx) + alpha * np.einsum("bm,bm->", Ra, Ra)
                + beta * np.einsum("bm,bm->", Rb, Rb)) / B
    return f


def numerical_grads(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Central-difference gradients of the frozen surrogate (README eq. 15).

    Every stop-gradient factor and every assignment is held at its value at
    ``(W, E)``, so the function differentiated is smooth and the result is
    directly comparable with :func:`loss_and_grads`. Costs ``2 (D m + K m)``
    loss evaluations.

    Parameters
    ----------
    X, W, E, estimator, beta, alpha
        As in :func:`loss_and_grads`.
    h : float
        Finite-difference step (``> 0``).

    Returns
    -------
    dW : ndarray of shape (D, m)
    dE : ndarray of shape (K, m)
    """
    X, W, E = _check_model(X, W, E)
    _check_estimator(estimator, ("ste", "rotation"))
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    h = _check_real(h, "h", positive=True)
    f = _frozen_surrogate(X, W, E, estimator, beta, alpha)
    grads = []
    for P, is_W in ((W, True), (E, False)):
        P = P.copy()
        G = np.empty_like(P)
        for idx in np.ndindex(P.shape):
            old = P[idx]
            P[idx] = old + h
            fp = f(P, E) if is_W else f(W, P)
            P[idx] = old - h
            fm = f(P, E) if is_W else f(W, P)
            P[idx] = old
            G[idx] = (fp - fm) / (2.0 * h)
        grads.append(G)
    return grads[0], grads[1]


def relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``: 0 when both are all zero."""
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def grad_check(X, W, E, *, estimator="ste", beta=0.25, alpha=1.0, h=1e-6):
    """Largest relative error between the manual and the numerical gradients.

    Returns
    -------
    err : float
        ``max(relative_error(dW, dW_num), relative_error(dE, dE_num))``, each
        relative to the largest entry of the gradient (see :func:`relative_error`).
    """
    _, dW, dE = loss_and_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha)
    nW, nE = numerical_grads(X, W, E, estimator=estimator, beta=beta, alpha=alpha, h=h)
    return max(relative_error(dW, nW), relative_error(dE, nE))


# ---------------------------------------------------------------- Stiefel step

def stiefel_project(W, G):
    """Riemannian gradient: ``G - W sym(W^T G)``, tangent at ``W`` (README eq. 16)."""
    S = W.T @ G                                                     # (m, m)
    return G - W @ (0.5 * (S + S.T))                                # (D, m)


def qr_retraction(Y):
    """Orthonormal ``Q`` of ``Y = Q R`` with ``diag(R) > 0`` (README eq. 17)."""
    Qm, Rm = np.linalg.qr(Y)                                        # (D, m), (m, m)
    sign = np.where(np.diagonal(Rm) < 0, -1.0, 1.0)                 # unique QR: diag(R) > 0
    return Qm * sign


def stiefel_step(W, dW, lr):
    """One Riemannian gradient step on the Stiefel manifold, then QR retraction."""
    return qr_retraction(W - lr * stiefel_project(W, dW))


# ------------------------------------------------------------------- metrics

def _warn_if_collapsed(counts, where):
    """Warn when all but one of K > 1 codes are dead: the quantizer is constant."""
    if counts.size > 1 and np.count_nonzero(counts) == 1:
        warnings.warn(f"all but one of the K={counts.size} codes are dead on {where}; "
                      "every row gets the same codeword", stacklevel=3)


def usage_entropy(counts):
    """Entropy in nats of the code-usage distribution given by ``counts`` (K,)."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-np.sum(p * np.log(p)) + 0.0)


def evaluate(X, W, E):
    """Reconstruction and usage metrics of the model ``(W, E)`` on ``X``.

    Parameters
    ----------
    X : array_like of shape (N, D)
    W : array_like of shape (D, m)
    E : array_like of shape (K, m)

    Returns
    -------
    dict
        ``mse`` (mean over rows of ``||x - x_hat||^2``), ``distortion`` (mean
        of ``||z - e_k||^2``), ``entropy`` (usage entropy in nats),
        ``perplexity`` (``exp(entropy)``), ``dead_codes`` (codes no row uses),
        ``max_entropy`` (``log K``). Warns when all but one code are dead.
    """
    X, W, E = _check_model(X, W, E)
    Z = X @ W                                                       # (N, m)
    d2 = np.empty(X.shape[0])
    k = _assign(Z, E, d2)
    Xh = E[k] @ W.T                                                 # (N, D)
    Xh -= X
    counts = np.bincount(k, minlength=E.shape[0])
    _warn_if_collapsed(counts, "X")
    H = usage_entropy(counts)
    return {"mse": float(np.einsum("nd,nd->", Xh, Xh) / X.shape[0]),
            "distortion": float(d2.mean()), "entropy": H, "perplexity": float(np.exp(H)),
            "dead_codes": int(np.sum(counts == 0)), "max_entropy": float(np.log(E.shape[0]))}


def baseline(X, K=32, m=4, *, seed=0, max_iter=100):
    """The PCA + Lloyd-Max baseline: ``W = pca(X, m)``, ``E = lloyd_max(X @ W, K)``.

    Returns
    -------
    W : ndarray of shape (D, m)
    E : ndarray of shape (K, m)
    """
    W = pca(X, m)
    E, _ = lloyd_max(X @ W, K, seed=seed, max_iter=max_iter)
    return W, E


# ------------------------------------------------------------------ training

@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    W : ndarray of shape (D, m)
    E : ndarray of shape (K, m)
    history : dict of ndarrays of shape (steps,)
        Per step, on that step's batch and before its update: ``loss``,
        ``mse``, ``entropy``, ``dead_codes``; and ``orth_error``,
        ``||W^T W - I||_F`` after the update. With ``eval_X``, also
        ``eval_mse`` and ``eval_entropy`` after the update.
    settings : dict
    """
    W: np.ndarray
    E: np.ndarray
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)




def _train_step(Xb, W, E, estimator, lrW, lrE, beta, alpha):
    """One update on the batch Xb: gradients (eqs. 4-14), the Stiefel step on W
    (eqs. 16-17) and a gradient step on E. Returns W, E, the batch loss, its
    reconstruction term and the codes."""
    if estimator == "numerical":
        loss, rec, _, cache = _forward(Xb, W, E, "ste", beta, alpha)
        dW, dE = numerical_grads(Xb, W, E, estimator="ste", beta=beta, alpha=alpha)
    else:
        loss, rec, _, cache = _forward(Xb, W, E, estimator, beta, alpha)
        dW, dE = _backward(cache)
    return stiefel_step(W, dW, lrW), E - lrE * dE, loss, rec, cache[4]


def train(X, *, estimator="ste", K=32, m=4, steps=300, lrW=0.08, lrE=0.2, beta=0.25,
          alpha=1.0, batch=1024, seed=0, eval_X=None, eval_every=1):
    """Train the encoder and codebook with a gradient estimator.

    Initialization: ``W = pca(X, m)``; ``E`` by k-means++ on ``X @ W``. Each
    step draws a batch without replacement (the rows are reshuffled every
    epoch), takes a Riemannian gradient step on ``W`` followed by the QR
    retraction (README eqs. 16-17), and a plain gradient step on ``E``. A batch
    larger than the data is clamped to the data, with a warning.

    Parameters
    ----------
    X : array_like of shape (N, D)
        Training data (float64 is used throughout).
    estimator : {"ste", "rotation", "numerical"}
        ``"numerical"`` uses STE's surrogate with :func:`numerical_grads`
        (slow; for validation only).
    K, m : int
        Codebook size and latent dimension.
    steps : int
        Number of updates (0 returns the initialization).
    lrW, lrE : float
        Learning rates of the encoder and codebook (> 0).
    beta, alpha : float
        Commitment and codebook weights (>= 0).
    batch : int
        Batch size.
    seed : int
        Seed of the generator behind the initialization and the batches.
    eval_X : array_like of shape (N', D), optional
        Held-out data evaluated every ``eval_every`` steps.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        When the loss becomes non-finite (learning rates too large).
    """
    X = _as_matrix(X, "X")
    N, D = X.shape
    _check_estimator(estimator)
    m = _check_int(m, "m", 1, D)
    K = _check_int(K, "K", 1, N)
    steps = _check_int(steps, "steps", 0)
    batch = _check_int(batch, "batch", 1)
    lrW = _check_real(lrW, "lrW", positive=True)
    lrE = _check_real(lrE, "lrE", positive=True)
    beta = _check_real(beta, "beta")
    alpha = _check_real(alpha, "alpha")
    eval_every = _check_int(eval_every, "eval_every", 1)
    if eval_X is not None:
        eval_X = _as_matrix(eval_X, "eval_X", cols=D)
    if batch > N:
        warnings.warn(f"batch={batch} is larger than the data (N={N}); using batch={N}",
                      stacklevel=2)
        batch = N
    settings = dict(estimator=estimator, K=K, m=m, steps=steps, lrW=lrW, lrE=lrE,
                    beta=beta, alpha=alpha, batch=batch, seed=seed)

    rng = np.random.default_rng(seed)
    W = pca(X, m)
    E = kmeans_pp(X @ W, K, rng)
    keys = ["loss", "mse", "entropy", "dead_codes", "orth_error"]
    if eval_X is not None:
        keys += ["eval_mse", "eval_entropy"]
    hist = {key: np.full(steps, np.nan) for key in keys}
    eye = np.eye(m)
    order, pos = rng.permutation(N), 0
    Xbuf = np.empty((batch, D))
    for t in range(steps):
        if pos + batch > N:
            order, pos = rng.permutation(N), 0
        Xb = np.take(X, order[pos:pos + batch], axis=0, out=Xbuf)   # (batch, D), buffer reused
        pos += batch
        W, E, loss, rec, k = _train_step(Xb, W, E, estimator, lrW, lrE, beta, alpha)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss became non-finite at step {t}; lower the learning rates "
                f"(lrW={lrW}, lrE={lrE})")
        counts = np.bincount(k, minlength=K)
        hist["loss"][t], hist["mse"][t] = loss, rec
        hist["entropy"][t] = usage_entropy(counts)
        hist["dead_codes"][t] = np.count_nonzero(counts == 0)
        if not np.isfinite(E.sum()):
            raise FloatingPointError(
                f"codebook became non-finite at step {t}; lower the learning rates "
                f"(lrW={lrW}, lrE={lrE})")
        hist["orth_error"][t] = np.linalg.norm(W.T @ W - eye)
        if eval_X is not None and (t % eval_every == 0 or t == steps - 1):
            ev = evaluate(eval_X, W, E)
            hist["eval_mse"][t], hist["eval_entropy"][t] = ev["mse"], ev["entropy"]
    _warn_if_collapsed(np.bincount(_assign(X @ W, E), minlength=K), "the training data")
    return TrainResult(W=W, E=E, history=hist, settings=settings)


# ----------------------------------------------------------------------- demo

def _split(X, test_fraction, rng):
    perm = rng.permutation(X.shape[0])
    n_test = max(1, int(round(test_fraction * X.shape[0])))
    return X[perm[n_test:]], X[perm[:n_test]]


def _entropy_share(ev):
    """Usage entropy as a share of its maximum log K (1 for K = 1, where both are 0)."""
    return ev["entropy"] / ev["max_entropy"] if ev["max_entropy"] > 0 else 1.0


def _demo_rows(a):
    X = make_data(a.n, a.D, seed=a.seed)
    Xtr, Xte = _split(X, 0.2, np.random.default_rng(a.seed))
    t0 = time.perf_counter()
    W, E = baseline(Xtr, a.K, a.m, seed=a.seed)
    rows = [("PCA + Lloyd-Max", evaluate(Xte, W, E), time.perf_counter() - t0)]
    for name, est in (("STE (manual)", "ste"), ("Rotation", "rotation")):
        t0 = time.perf_counter()
        res = train(Xtr, estimator=est, K=a.K, m=a.m, steps=a.steps, lrW=a.lrW, lrE=a.lrE,
                    beta=a.beta, alpha=a.alpha, batch=a.batch, seed=a.seed)
        rows.append((name, evaluate(Xte, res.W, res.E), time.perf_counter() - t0))
    return rows, Xte.shape[0], Xtr


def main(argv=None):
    """Demo: baseline, STE and rotation on held-out data, then a gradient check."""
    p = argparse.ArgumentParser(prog="vqref", description=main.__doc__)
    p.add_argument("--K", type=int, default=32, help="codebook size (default 32)")
    p.add_argument("--m", type=int, default=4, help="latent dimension (default 4)")
    p.add_argument("--D", type=int, default=64, help="data dimension (default 64)")
    p.add_argument("--n", type=int, default=20000, help="rows, 20%% held out (default 20000)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch", type=int, default=1024, help="batch size (default 1024)")
    p.add_argument("--lrW", type=float, default=0.08, help="encoder learning rate (default 0.08)")
    p.add_argument("--lrE", type=float, default=0.2, help="codebook learning rate (default 0.2)")
    p.add_argument("--beta", type=float, default=0.25, help="commitment weight (default 0.25)")
    p.add_argument("--alpha", type=float, default=1.0, help="codebook weight (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    a = p.parse_args(argv)
    if a.n < 2:
        p.error("--n must be at least 2 (one training and one held-out row)")

    try:
        rows, n_test, Xtr = _demo_rows(a)
    except ValueError as err:                                       # bad flag values
        p.error(str(err))
    base = rows[0][1]["mse"]
    print(f"vqref demo: D={a.D} m={a.m} K={a.K} n={a.n} (test {n_test}) "
          f"steps={a.steps} batch={a.batch} lrW={a.lrW} lrE={a.lrE} "
          f"beta={a.beta} alpha={a.alpha} seed={a.seed}")
    print(f"{'method':<16} {'test MSE':>9} {'vs base':>8} {'entropy':>8} "
          f"{'of log K':>8} {'dead':>5} {'time':>7}")
    for name, ev, sec in rows:
        print(f"{name:<16} {ev['mse']:9.4f} {100 * (ev['mse'] / base - 1):+7.2f}% "
              f"{ev['entropy']:8.3f} {100 * _entropy_share(ev):7.1f}% "
              f"{ev['dead_codes']:5d} {sec:6.2f}s")

    # Gradient check on 256 training rows at a random, non-symmetric point.
    rng = np.random.default_rng(a.seed + 1)
    Xc = Xtr[:256]
    Wc = qr_retraction(rng.standard_normal((a.D, a.m)))
    Kc = min(a.K, Xc.shape[0])
    Ec = kmeans_pp(Xc @ Wc, Kc, rng) + 0.1 * rng.standard_normal((Kc, a.m))
    errs = [grad_check(Xc, Wc, Ec, estimator=est, beta=a.beta, alpha=a.alpha)
            for est in ("ste", "rotation")]
    print(f"gradient check vs central differences (h=1e-6, {Xc.shape[0]} rows): "
          f"max relative error STE {errs[0]:.1e}, rotation {errs[1]:.1e}")
    return rows, errs


if __name__ == "__main__":
    main()
