"""Benchmark vqref against a PyTorch autograd loop and scikit-learn's k-means.

    python3 bench.py                  # everything, at 1 and at 2 threads (minutes)
    python3 bench.py --markdown       # the same, then write BENCHMARKS.md and README's table
    python3 bench.py --threads 1      # one thread count only
    python3 bench.py --only lloyd     # some of: training, mlp, lloyd, scale, suite
    python3 bench.py --quick          # tiny sizes: a smoke test (CI)
    python3 bench.py --json out.json  # also write the raw figures
    python3 bench.py --from out.json --markdown   # write the tables from saved figures

``--markdown`` replaces what lies between the ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` markers in BENCHMARKS.md (every table, per-run ranges, 1 against
2 threads) and in README.md (one row per race), so that no timing is typed by hand.

Each comparison runs both sides in one process, alternating, after a warm-up, each run
after a short pause (see race), and reports the median time of each and their ratio.
Both sides use the same number of threads: it is fixed for NumPy's BLAS, OpenMP
(scikit-learn) and PyTorch before any of them loads, so each thread count runs in its
own process. A peer that is not installed is skipped with a message; vqref itself
needs numpy only.

Training is ``vqref.train`` itself against a PyTorch loop of the same arithmetic, from
the same initial ``W`` and ``E`` (PCA + k-means++, computed once outside the timed
region and passed to both; its own cost is reported on its own line) and the same
batches (``vqref.minibatches``). Memory of a loop is measured in a fresh child process
as its peak resident memory during the loop (Linux VmHWM, reset through
/proc/self/clear_refs) minus the resident memory before it; the scale checks use
tracemalloc's peak.
"""

import os
import sys


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


THREADS = _threads_from_argv(sys.argv)
if THREADS is not None:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = THREADS  # before numpy, sklearn or torch load

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import vqref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = time.perf_counter()


def log(msg):
    print(f"{msg}   [{time.perf_counter() - T0:6.1f} s]", flush=True)


def optional(name, install):
    try:
        return __import__(name)
    except ImportError:
        print(f"  (skipped: {name} is not installed; {install} to compare)")
        return None


PAUSE = 0.3  # seconds of rest before each run: see race


def race(a, b, repeats):
    """Median seconds of a() and b(), run alternately after one warm-up each.

    Each run starts after a pause of PAUSE seconds. A BLAS or OpenMP library keeps its
    idle worker threads spinning for a moment after a threaded call; without the pause
    those threads of one side compete with the next run of the other and slow it.
    """
    ta, tb = [], []
    for i in range(repeats + 1):
        for f, times in ((a, ta), (b, tb)):
            time.sleep(PAUSE)
            t = time.perf_counter()
            f()
            if i:  # run 0 is the warm-up
                times.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb)), ta, tb


# ------------------------------------------------------- 1. training


def train_setup(D, m, K, B, steps, N, seed=0):
    """Data, its centred copy, the initial W and E (as train makes them), and the batches."""
    X = vqref.make_data(N, D, seed=seed, rank=min(D, 2 * m))
    init = vqref.train(X, K=K, m=m, steps=0, batch=B, seed=seed)
    it = vqref.minibatches(N, B, seed)
    return X, X - init.mean, init.W, init.E, [next(it) for _ in range(steps)]


# Both sides of the race take the study's learning rates and every step they are given.
RACE_LR = dict(lrW=vqref.STUDY["lrW"], lrE=vqref.STUDY["lrE"])


def vqref_train(X, W, E, estimator, steps, B):
    return vqref.train(
        X,
        estimator=estimator,
        K=E.shape[0],
        m=W.shape[1],
        steps=steps,
        batch=B,
        init_W=W,
        init_E=E,
        tol=None,
        **RACE_LR,
    )


def torch_loop(torch, Xc, W, E, batches, estimator, lrW=RACE_LR["lrW"], lrE=RACE_LR["lrE"],
               beta=0.25, alpha=1.0):
    """README eq. 4 with autograd, the same estimators, the SGD step on E and the Stiefel
    QR step on W, in float64, on the centred data."""
    X, W, E = torch.from_numpy(Xc), torch.from_numpy(W.copy()), torch.from_numpy(E.copy())
    for idx in batches:
        Xb = X[torch.from_numpy(idx)]
        W.requires_grad_(True)
        E.requires_grad_(True)
        B = Xb.shape[0]
        Z = Xb @ W
        with torch.no_grad():  # nearest codeword, scored as vqref's
            c = E.mean(0)
            Ec = E - c
            k = ((Z - c) @ Ec.T - 0.5 * (Ec * Ec).sum(1)).argmax(1)
        Q = E[k]
        if estimator == "ste":
            q = Z + (Q - Z).detach()  # straight-through
        else:  # q = sg(lam R) z, Householder form
            with torch.no_grad():
                nz, ne = Z.norm(dim=1, keepdim=True), Q.norm(dim=1, keepdim=True)
                u, v = Z / nz, Q / ne
                w = (u + v) / (u + v).norm(dim=1, keepdim=True)
                lam = ne / nz
            q = lam * (
                Z - 2 * w * (w * Z).sum(1, keepdim=True) + 2 * v * (u * Z).sum(1, keepdim=True)
            )
        loss = (
            ((Xb - q @ W.T) ** 2).sum()
            + alpha * ((Z.detach() - Q) ** 2).sum()
            + beta * ((Z - Q.detach()) ** 2).sum()
        ) / B
        loss.backward()
        with torch.no_grad():
            G = W.grad
            S = W.T @ G
            Qr, Rr = torch.linalg.qr(W - lrW * (G - W @ (0.5 * (S + S.T))))
            W = (Qr * torch.where(torch.diagonal(Rr) < 0, -1.0, 1.0)).detach()
            E = (E - lrE * E.grad).detach()
    return W.numpy(), E.numpy()


# ------------------------------------------------- 1b. the nonlinear model's training

# Both sides: train_mlp's default Adam step sizes, every step given (no early stop).
MLP_LR = dict(lr=vqref.train_mlp.__kwdefaults__["lr"], lrE=vqref.train_mlp.__kwdefaults__["lrE"])


def mlp_setup(D, H, m, K, B, steps, N, seed=0):
    """Data on make_data's curve, train_mlp's start (steps=0), the scaled rows, the batches."""
    X = vqref.make_data(N, D, seed=seed, curve=min(8, D // 2))
    init = vqref.train_mlp(X, K=K, m=m, hidden=H, steps=0, batch=B, seed=seed)
    Xs = (X - init.mean) / init.scale
    it = vqref.minibatches(N, B, seed)
    return X, Xs, init, [next(it) for _ in range(steps)]


def vqref_mlp(X, init, estimator, steps, B):
    K, m = init.E.shape
    return vqref.train_mlp(X, estimator=estimator, K=K, m=m, hidden=init.params["W1"].shape[1],
                           steps=steps, batch=B, init_params=init.params, init_E=init.E,
                           tol=None, **MLP_LR)


def torch_mlp_loop(torch, Xs, init, batches, estimator, beta=0.25, alpha=1.0):
    """README eqs. 19-24 with autograd, the same estimators and torch.optim.Adam (the same
    step sizes for the weights and the codebook), in float64, on the scaled rows."""
    X = torch.from_numpy(Xs)
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.params.items()}
    E = torch.from_numpy(init.E.copy()).requires_grad_(True)
    opt = torch.optim.Adam([{"params": list(P.values()), "lr": MLP_LR["lr"]},
                            {"params": [E], "lr": MLP_LR["lrE"]}], betas=(0.9, 0.999), eps=1e-8)
    m = E.shape[1]
    for idx in batches:
        Xb = X[torch.from_numpy(idx)]
        B = Xb.shape[0]
        Z = (torch.tanh(Xb @ P["W1"] + P["b1"]) @ P["W2"] + P["b2"]).reshape(-1, m)
        with torch.no_grad():  # nearest codeword, scored as vqref's
            c = E.mean(0)
            Ec = E - c
            k = ((Z - c) @ Ec.T - 0.5 * (Ec * Ec).sum(1)).argmax(1)
        Q = E[k]
        if estimator == "ste":
            q = Z + (Q - Z).detach()
        else:
            with torch.no_grad():
                nz, ne = Z.norm(dim=1, keepdim=True), Q.norm(dim=1, keepdim=True)
                u, v = Z / nz, Q / ne
                w = (u + v) / (u + v).norm(dim=1, keepdim=True)
                lam = ne / nz
            q = lam * (
                Z - 2 * w * (w * Z).sum(1, keepdim=True) + 2 * v * (u * Z).sum(1, keepdim=True)
            )
        X_hat = torch.tanh(q.reshape(B, -1) @ P["V1"] + P["c1"]) @ P["V2"] + P["c2"]
        loss = (
            ((Xb - X_hat) ** 2).sum()
            + alpha * ((Z.detach() - Q) ** 2).sum()
            + beta * ((Z - Q.detach()) ** 2).sum()
        ) / B
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in P.items()}, E.detach().numpy()


def mlp_products(Xs, init, batches):
    """The BLAS products of train_mlp's steps alone, same shapes: with one code a row (the
    settings here), four forward (the decoder's two on the K codewords) and eight backward
    (one a one-hot product summing dX_hat by code)."""
    p = init.params
    E = init.E
    B = len(batches[0])
    if p["V1"].shape[0] != E.shape[1]:
        raise ValueError("mlp_products mirrors train_mlp's step for one code a row only")
    onehot = np.zeros((E.shape[0], B))
    for idx in batches:
        Xb = Xs[idx]
        H1 = Xb @ p["W1"]
        Z = H1 @ p["W2"]                                # (B, m), the shape of Q too
        T2 = E @ p["V1"]
        T2 @ p["V2"]
        R_K = onehot @ Xb                               # Xb: the shape of dX_hat
        T2.T @ R_K
        dP = Xb @ p["V2"].T
        Z.T @ dP
        dP @ p["V1"].T
        H1.T @ Z
        dA = Z @ p["W2"].T
        Xb.T @ dA


def bench_mlp(quick, repeats, results):
    log(
        f"\n1b. Nonlinear training: vqref.train_mlp (hand-derived) vs PyTorch autograd + Adam, "
        f"float64, {THREADS} thread(s)"
    )
    torch = optional("torch", "`pip install torch` (README, Performance)")
    if torch is None:
        return
    torch.set_num_threads(int(THREADS))
    results["machine"]["torch"] = torch.__version__
    settings = (
        [dict(D=64, H=128, m=4, K=32, B=256, steps=20, N=1797)]
        if quick
        else [
            dict(D=64, H=128, m=4, K=32, B=256, steps=300, N=1797),
            dict(D=512, H=512, m=16, K=512, B=1024, steps=30, N=20000),
        ]
    )
    print(f"{'setting':<38} {'estimator':<9} {'vqref':>8} {'torch':>8} {'torch/vqref':>11} "
          f"{'max diff':>9} {'BLAS share':>10}")
    for cfg in settings:
        X, Xs, init, batches = mlp_setup(*(cfg[k] for k in ("D", "H", "m", "K", "B", "steps",
                                                            "N")))
        for est in ("ste", "rotation"):
            res = vqref_mlp(X, init, est, 3, cfg["B"])  # same start, same 3 batches
            Pt, Et = torch_mlp_loop(torch, Xs, init, batches[:3], est)
            diff = max([np.abs(res.E - Et).max()]
                       + [np.abs(res.params[k] - Pt[k]).max() for k in Pt])
            if diff > 1e-8:
                raise SystemExit(
                    f"vqref.train_mlp and the PyTorch loop disagree after 3 steps ({diff:.1e})"
                )
            tv, tt, ta, tb = race(
                lambda: vqref_mlp(X, init, est, cfg["steps"], cfg["B"]),
                lambda: torch_mlp_loop(torch, Xs, init, batches, est),
                repeats,
            )
            t = time.perf_counter()
            mlp_products(Xs, init, batches)
            blas = time.perf_counter() - t
            name = (f"D={cfg['D']} H={cfg['H']} m={cfg['m']} K={cfg['K']} B={cfg['B']} "
                    f"x{cfg['steps']}")
            print(f"{name:<38} {est:<9} {tv:7.3f}s {tt:7.3f}s {tt / tv:10.2f}x {diff:9.1e} "
                  f"{blas / tv:9.0%}", flush=True)
            results.setdefault("mlp", []).append(
                dict(cfg, threads=int(THREADS), estimator=est, vqref_s=tv, torch_s=tt,
                     vqref_times=ta, torch_times=tb, max_abs_diff_after_3_steps=float(diff),
                     blas_s=blas)
            )


def child_memory(args):
    """--child: run one side's loop in this fresh process and print its memory."""
    side, estimator, D, m, K, B, steps, N = args
    X, Xc, W, E, batches = train_setup(int(D), int(m), int(K), int(B), int(steps), int(N))
    torch = __import__("torch") if side == "torch" else None
    if torch is not None:
        torch.set_num_threads(int(THREADS or 1))
        torch_loop(torch, Xc, W, E, batches[:1], estimator)  # load kernels first

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM)
    before = status("VmRSS:")
    if torch is not None:
        torch_loop(torch, Xc, W, E, batches, estimator)
    else:
        vqref_train(X, W, E, estimator, int(steps), int(B))
    print(json.dumps({"peak_bytes": status("VmHWM:") - before}))


def memory_of(side, estimator, cfg):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--threads",
        THREADS or "1",
        "--child",
        side,
        estimator,
    ] + [str(cfg[k]) for k in ("D", "m", "K", "B", "steps", "N")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def bench_training(quick, repeats, results):
    log(
        f"\n1. Training: vqref.train (hand-derived) vs PyTorch autograd, float64, {THREADS} "
        "thread(s)"
    )
    torch = optional("torch", "`pip install torch` (README, Performance)")
    if torch is None:
        return
    torch.set_num_threads(int(THREADS))
    results["machine"]["torch"] = torch.__version__
    settings = (
        [dict(D=64, m=4, K=32, B=256, steps=20, N=2000)]
        if quick
        else [
            dict(D=64, m=4, K=32, B=1024, steps=300, N=20000),
            dict(D=512, m=64, K=512, B=4096, steps=50, N=20000),
        ]
    )
    print(
        f"{'setting':<30} {'estimator':<9} {'vqref':>8} {'torch':>8} {'torch/vqref':>11} "
        f"{'max|dW|,|dE|':>12} {'mem vqref':>9} {'mem torch':>9}"
    )
    for cfg in settings:
        X, Xc, W, E, batches = train_setup(
            cfg["D"], cfg["m"], cfg["K"], cfg["B"], cfg["steps"], cfg["N"]
        )
        t = time.perf_counter()
        vqref.train(X, K=cfg["K"], m=cfg["m"], steps=0, batch=cfg["B"])
        init_s = time.perf_counter() - t
        for est in ("ste", "rotation"):
            res = vqref_train(X, W, E, est, 3, cfg["B"])  # same start, same 3 batches
            Wt, Et = torch_loop(torch, Xc, W, E, batches[:3], est)
            diff = max(np.abs(res.W - Wt).max(), np.abs(res.E - Et).max())
            if diff > 1e-8:
                raise SystemExit(
                    f"vqref.train and the PyTorch loop disagree after 3 steps ({diff:.1e})"
                )
            tv, tt, ta, tb = race(
                lambda: vqref_train(X, W, E, est, cfg["steps"], cfg["B"]),
                lambda: torch_loop(torch, Xc, W, E, batches, est),
                repeats,
            )
            mv, mt = memory_of("vqref", est, cfg), memory_of("torch", est, cfg)
            name = f"D={cfg['D']} m={cfg['m']} K={cfg['K']} B={cfg['B']} x{cfg['steps']}"
            print(
                f"{name:<30} {est:<9} {tv:7.3f}s {tt:7.3f}s {tt / tv:10.2f}x {diff:12.1e} "
                f"{mv / 2**20:7.1f}MB {mt / 2**20:7.1f}MB",
                flush=True,
            )
            results.setdefault("training", []).append(
                dict(
                    cfg,
                    threads=int(THREADS),
                    estimator=est,
                    vqref_s=tv,
                    torch_s=tt,
                    ratio_torch_over_vqref=tt / tv,
                    max_abs_diff_after_3_steps=float(diff),
                    vqref_times=ta,
                    torch_times=tb,
                    vqref_peak_bytes=mv,
                    torch_peak_bytes=mt,
                    init_s=init_s,
                )
            )
        print(
            f"{'':<30} {'init':<9} {init_s:7.3f}s  (PCA + k-means++, once, outside the timed "
            "loops)"
        )


# ------------------------------------------------------------- 2. Lloyd-Max


def bench_lloyd(quick, repeats, results):
    log(
        f"\n2. Lloyd-Max: vqref.lloyd_max vs sklearn KMeans(algorithm='lloyd'), same init, "
        f"{THREADS} thread(s)"
    )
    sklearn = optional("sklearn", "`pip install scikit-learn`")
    if sklearn is None:
        return
    from sklearn.cluster import KMeans

    results["machine"]["scikit-learn"] = sklearn.__version__

    N = 5000 if quick else 100_000
    X = vqref.make_data(N, 64, seed=0)
    Z = np.ascontiguousarray(X @ vqref.pca(X, 4))  # (N, 4)
    print(
        f"{'N, m, K':<16} {'iterations':<11} {'vqref':>8} {'sklearn':>8} {'sklearn/vqref':>13} "
        f"{'iters':>9} {'max|E - E_sk|':>13}"
    )
    for K in ((16,) if quick else (32, 256)):
        init = vqref.kmeans_pp(Z, K, np.random.default_rng(1))
        for cap in (10_000, 60):
            out = {}

            def ours():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the 60-iteration cap warns
                    out["v"] = vqref.lloyd_max(Z, K, init=init, max_iter=cap)

            def theirs():
                out["s"] = KMeans(
                    K, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=cap
                ).fit(Z)

            tv, ts, ta, tb = race(ours, theirs, repeats)
            (E, info), km = out["v"], out["s"]
            diff = float(np.abs(E - km.cluster_centers_).max())
            what = "to the end" if cap > 60 else "60"
            print(
                f"{f'{N}, 4, {K}':<16} {what:<11} {tv:7.3f}s {ts:7.3f}s {ts / tv:12.2f}x "
                f"{info['n_iter']:4d}/{km.n_iter_:<4d} {diff:13.1e}",
                flush=True,
            )
            results.setdefault("lloyd", []).append(
                dict(
                    N=N,
                    m=4,
                    K=K,
                    max_iter=cap,
                    threads=int(THREADS),
                    vqref_s=tv,
                    sklearn_s=ts,
                    ratio_sklearn_over_vqref=ts / tv,
                    vqref_iter=info["n_iter"],
                    sklearn_iter=int(km.n_iter_),
                    converged=info["converged"],
                    max_abs_codebook_diff=diff,
                    vqref_times=ta,
                    sklearn_times=tb,
                )
            )


# ------------------------------------------------------------------ 3. scale


def traced(f):
    tracemalloc.start()
    t = time.perf_counter()
    f()
    sec = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return sec, peak


def bench_scale(quick, results):
    log(
        f"\n3. Scale: time and peak memory (tracemalloc) against 2 x data + 256 MB, {THREADS} "
        "thread(s)"
    )
    rows = []
    N = 20_000 if quick else 1_000_000
    Z = np.random.default_rng(0).standard_normal((N, 8)) * np.linspace(2.0, 0.5, 8)
    init = {}
    sec, peak = traced(
        lambda: init.setdefault("E", vqref.kmeans_pp(Z, 256, np.random.default_rng(0)))
    )
    rows.append((f"kmeans_pp N={N} m=8 K=256", Z.nbytes, sec, peak))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sec, peak = traced(
            lambda: out.setdefault("r", vqref.lloyd_max(Z, 256, init=init["E"], max_iter=100))
        )
    rows.append((f"lloyd_max N={N} m=8 K=256, {out['r'][1]['n_iter']} it", Z.nbytes, sec, peak))
    N2, steps = (4000, 5) if quick else (50_000, 50)
    X = vqref.make_data(N2, 512, seed=0, rank=128)
    sec, peak = traced(
        lambda: vqref.train(X, K=512, m=64, batch=4096 if not quick else 512, steps=steps,
                            tol=None, **RACE_LR)
    )
    rows.append((f"train N={N2} D=512 m=64 K=512 x{steps}", X.nbytes, sec, peak))
    print(f"{'run':<42} {'data':>9} {'time':>8} {'peak':>9} {'bound':>9}  within")
    for name, nbytes, sec, peak in rows:
        bound = 2 * nbytes + 256 * 2**20
        print(
            f"{name:<42} {nbytes / 2**20:7.1f}MB {sec:7.2f}s {peak / 2**20:7.1f}MB "
            f"{bound / 2**20:7.1f}MB  {'yes' if peak <= bound else 'NO'}",
            flush=True,
        )
        results.setdefault("scale", []).append(
            dict(run=name, data_bytes=nbytes, seconds=sec, peak_bytes=peak, bound_bytes=bound)
        )


# ------------------------------------------------------------------ 4. suite


def bench_suite(quick, results):
    log("\n4. Suite: wall time of the scripts (fresh processes, their own thread settings)")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    with tempfile.TemporaryDirectory() as tmp:
        cmds = (
            [["vqref.py", "--n", "2000", "--steps", "20"]]
            if quick
            else [
                ["vqref.py"],
                ["figures.py", "--quick", "--out", tmp],
                ["figures.py", "--out", tmp],
            ]
        )
        for cmd in cmds:
            t = time.perf_counter()
            subprocess.run(
                [sys.executable] + cmd, cwd=HERE, env=env, check=True, capture_output=True
            )
            sec = time.perf_counter() - t
            shown = " ".join(c if c != tmp else "TMP" for c in cmd)
            print(f"{shown:<40} {sec:7.1f} s", flush=True)
            results.setdefault("suite", []).append(dict(command=shown, seconds=sec))


# --------------------------------------------------------------- markdown

PEERS = ("torch", "scikit-learn")


def _machine(run):
    info = run["machine"]
    parts = [f"{info['cpu']}, {info['cores']} cores"]
    parts += [f"Python {info['python']}", f"numpy {info['numpy']}"]
    parts += [f"{peer} {info[peer]}" for peer in PEERS if peer in info]
    return ", ".join(parts)


def _seconds(sec):
    return f"{sec:.3f} s"


def _spread(times):
    return f"{min(times):.3f}-{max(times):.3f}"


def _mb(nbytes):
    return f"{nbytes / 2**20:.1f} MB"


def _training_name(row):
    return f"D={row['D']} m={row['m']} K={row['K']} B={row['B']}, {row['steps']} steps"


def _mlp_name(row):
    return (f"D={row['D']} H={row['H']} m={row['m']} K={row['K']} B={row['B']}, "
            f"{row['steps']} steps")


def _lloyd_name(row):
    until = "to its fixed point" if row["max_iter"] > 60 else "60 iterations"
    return f"N={row['N']} m={row['m']} K={row['K']}, {until}"


# Each race: its section of a run, the setting's name, the peer and the key of its time.
RACES = (
    ("training", lambda r: f"train, {r['estimator']}: {_training_name(r)}", "PyTorch autograd",
     "torch_s"),
    ("mlp", lambda r: f"train_mlp, {r['estimator']}: {_mlp_name(r)}", "PyTorch autograd",
     "torch_s"),
    ("lloyd", lambda r: f"lloyd_max: {_lloyd_name(r)}", "scikit-learn KMeans", "sklearn_s"),
)


def races(run):
    """One dict per race of a run: its name, both sides' median seconds and the peer."""
    out = []
    for section, name, peer, peer_key in RACES:
        for row in run.get(section, []):
            out.append(dict(setting=name(row), vqref_s=row["vqref_s"], peer=peer,
                            peer_s=row[peer_key], threads=row["threads"]))
    return out


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def readme_table(runs):
    """README's performance table: one row per race, at the fewest threads measured."""
    fewest = min(run["machine"]["threads"] for run in runs)
    run = next(run for run in runs if run["machine"]["threads"] == fewest)
    rows = [
        [
            r["setting"],
            _seconds(r["vqref_s"]),
            f"{_seconds(r['peer_s'])} ({r['peer']})",
            f"{r['peer_s'] / r['vqref_s']:.2f}",
            r["threads"],
        ]
        for r in races(run)
    ]
    header = ["race", "vqref", "peer", "peer / vqref", "threads"]
    intro = (
        f"Median seconds, on {_machine(run)}, {run['date']}"
        f"{' (--quick sizes)' if run['quick'] else ''}; a ratio above 1 means vqref is faster."
    )
    return intro + "\n\n" + _table(header, rows)


def _training_section(run):
    rows = [
        [
            _training_name(r),
            r["estimator"],
            _seconds(r["vqref_s"]),
            _spread(r["vqref_times"]),
            _seconds(r["torch_s"]),
            _spread(r["torch_times"]),
            f"{r['torch_s'] / r['vqref_s']:.2f}",
            f"{r['max_abs_diff_after_3_steps']:.1e}",
            _mb(r["vqref_peak_bytes"]),
            _mb(r["torch_peak_bytes"]),
            _seconds(r["init_s"]),
        ]
        for r in run.get("training", [])
    ]
    header = [
        "setting",
        "estimator",
        "vqref",
        "vqref runs (s)",
        "PyTorch",
        "PyTorch runs (s)",
        "PyTorch / vqref",
        "max diff after 3 steps",
        "memory vqref",
        "memory PyTorch",
        "init (once)",
    ]
    return _table(header, rows)


def _mlp_section(run):
    rows = [
        [
            _mlp_name(r),
            r["estimator"],
            _seconds(r["vqref_s"]),
            _spread(r["vqref_times"]),
            _seconds(r["torch_s"]),
            _spread(r["torch_times"]),
            f"{r['torch_s'] / r['vqref_s']:.2f}",
            f"{r['max_abs_diff_after_3_steps']:.1e}",
            f"{r['blas_s'] / r['vqref_s']:.0%}",
        ]
        for r in run.get("mlp", [])
    ]
    header = [
        "setting",
        "estimator",
        "vqref",
        "vqref runs (s)",
        "PyTorch",
        "PyTorch runs (s)",
        "PyTorch / vqref",
        "max diff after 3 steps",
        "BLAS products' share of vqref",
    ]
    return _table(header, rows)


def _lloyd_section(run):
    rows = [
        [
            _lloyd_name(r),
            _seconds(r["vqref_s"]),
            _spread(r["vqref_times"]),
            _seconds(r["sklearn_s"]),
            _spread(r["sklearn_times"]),
            f"{r['sklearn_s'] / r['vqref_s']:.2f}",
            f"{r['vqref_iter']} / {r['sklearn_iter']}",
            f"{r['max_abs_codebook_diff']:.1e}",
        ]
        for r in run.get("lloyd", [])
    ]
    header = [
        "setting",
        "vqref",
        "vqref runs (s)",
        "scikit-learn",
        "scikit-learn runs (s)",
        "scikit-learn / vqref",
        "iterations vqref / scikit-learn",
        "max codebook diff",
    ]
    return _table(header, rows)


def _threads_section(runs):
    counts = [run["machine"]["threads"] for run in runs]
    by_count = {run["machine"]["threads"]: races(run) for run in runs}
    header = ["race"]
    for n in counts:
        header += [f"vqref, {n} thr", f"peer, {n} thr"]
    rows = []
    for i, first in enumerate(by_count[counts[0]]):
        row = [first["setting"]]
        for n in counts:
            r = by_count[n][i]
            row += [_seconds(r["vqref_s"]), _seconds(r["peer_s"])]
        rows.append(row)
    return _table(header, rows)


def _scale_section(run):
    rows = [
        [
            r["run"],
            _mb(r["data_bytes"]),
            f"{r['seconds']:.2f} s",
            _mb(r["peak_bytes"]),
            _mb(r["bound_bytes"]),
            "yes" if r["peak_bytes"] <= r["bound_bytes"] else "NO",
        ]
        for r in run["scale"]
    ]
    header = ["run", "data", "time", "peak memory", "bound", "within"]
    return _table(header, rows)


def _suite_section(run):
    rows = [[f"`{r['command']}`", f"{r['seconds']:.1f} s"] for r in run["suite"]]
    return _table(["script and arguments", "wall time"], rows)


def _threads_name(n):
    return "1 thread" if n == 1 else f"{n} threads"


def _race_section(run, name, title, render, peer):
    """One race's table, or why it is missing; None when the run left the race out."""
    if name not in run.get("sections", SECTIONS):
        return None
    if name not in run:
        return f"### {title}\n\n(not run: {peer} is not installed)"
    first = run[name][0]
    runs = len(first["vqref_times"])
    return f"### {title}\n\nMedian of {runs} timed runs after a warm-up.\n\n" + render(run)


def benchmarks_markdown(runs):
    """BENCHMARKS.md's generated part: every table of every run."""
    parts = [
        f"Generated by `bench.py --markdown` on {_machine(runs[0])}, {runs[0]['date']}"
        f"{' (--quick sizes)' if runs[0]['quick'] else ''}. Times are medians; "
        '"runs" gives the fastest and slowest of the timed runs; a ratio above 1 means '
        "vqref is faster."
    ]
    for run in runs:
        tables = [
            _race_section(
                run,
                "training",
                "Training: `vqref.train` against a PyTorch autograd loop",
                _training_section,
                "PyTorch",
            ),
            _race_section(
                run,
                "mlp",
                "Nonlinear training: `vqref.train_mlp` against a PyTorch autograd loop with "
                "`torch.optim.Adam`",
                _mlp_section,
                "PyTorch",
            ),
            _race_section(
                run,
                "lloyd",
                "Lloyd-Max: `vqref.lloyd_max` against scikit-learn's "
                '`KMeans(algorithm="lloyd")`, same initial codebook',
                _lloyd_section,
                "scikit-learn",
            ),
        ]
        tables = [table for table in tables if table is not None]
        if tables:
            parts.append(f"## {_threads_name(run['machine']['threads'])}")
            parts += tables
    race_counts = {len(races(run)) for run in runs}
    if len(runs) > 1 and len(race_counts) == 1 and 0 not in race_counts:
        parts.append("## Threads compared (medians)\n\n" + _threads_section(runs))
    for run in runs:
        threads = _threads_name(run["machine"]["threads"])
        if "scale" in run:
            parts.append(
                f"## Scale ({threads}): time and peak memory (tracemalloc) against "
                "2 x data + 256 MB\n\n" + _scale_section(run)
            )
        if "suite" in run:
            parts.append(
                "## Scripts: wall time in fresh processes, their own thread settings\n\n"
                + _suite_section(run)
            )
    return "\n\n".join(parts)


def write_between(path, body):
    """Replace the text between ``<!-- bench:begin ... -->`` and ``<!-- bench:end -->``."""
    with open(path) as fh:
        text = fh.read()
    pattern = r"<!-- bench:begin.*?-->.*?<!-- bench:end -->"
    if not re.search(pattern, text, flags=re.S):
        raise SystemExit(f"{path} has no <!-- bench:begin --> ... <!-- bench:end --> markers")
    block = (
        "<!-- bench:begin (generated by bench.py --markdown; do not edit) -->\n"
        + body
        + "\n<!-- bench:end -->"
    )
    with open(path, "w") as fh:
        fh.write(re.sub(pattern, lambda _: block, text, flags=re.S))


def write_markdown(runs, benchmarks, readme):
    write_between(benchmarks, benchmarks_markdown(runs))
    write_between(readme, readme_table(runs))


# ------------------------------------------------------------------- main

SECTIONS = ("training", "mlp", "lloyd", "scale", "suite")


def _sections(text):
    chosen = [name.strip() for name in text.split(",")]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {unknown[0]!r}: choose from {', '.join(SECTIONS)}"
        )
    return chosen


def run_children(a):
    """Run each thread count in its own process; return their results, 1 thread first."""
    runs = []
    for n in (1, 2):
        # scale and the scripts' wall time run once, at 2 threads
        only = [name for name in a.only if n == 2 or name in ("training", "mlp", "lloyd")]
        if not only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(n)]
            cmd += ["--json", out, "--only", ",".join(only)]
            if a.quick:
                cmd.append("--quick")
            if a.repeats:
                cmd += ["--repeats", str(a.repeats)]
            subprocess.run(cmd, check=True)
            with open(out) as fh:
                runs += json.load(fh)
    return runs


def cpu_model():
    """The processor's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_here(a):
    """Run the chosen sections in this process, at THREADS threads."""
    repeats = a.repeats or (2 if a.quick else 5)
    results = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": int(THREADS),
        },
        "date": time.strftime("%Y-%m-%d"),
        "quick": a.quick,
        "repeats": repeats,
        "sections": a.only,
    }
    print(f"vqref bench: {results['machine']}, {repeats} timed repeats after a warm-up")
    if "training" in a.only:
        bench_training(a.quick, repeats, results)
    if "mlp" in a.only:
        bench_mlp(a.quick, repeats, results)
    if "lloyd" in a.only:
        bench_lloyd(a.quick, max(2, repeats - 2), results)
    if "scale" in a.only:
        bench_scale(a.quick, results)
    if "suite" in a.only:
        bench_suite(a.quick, results)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--json", metavar="FILE", help="write the raw figures to FILE (a list of runs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every side (default: run at 1, then at 2)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 5; 2 with --quick)"
    )
    p.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        metavar="SECTIONS",
        help="comma-separated sections to run (default: training,mlp,lloyd,scale,suite)",
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="write the tables into BENCHMARKS.md and README.md between their markers",
    )
    p.add_argument("--from", dest="source", metavar="FILE", help="render saved --json figures")
    p.add_argument("--benchmarks", default=os.path.join(HERE, "BENCHMARKS.md"), metavar="FILE")
    p.add_argument("--readme", default=os.path.join(HERE, "README.md"), metavar="FILE")
    p.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_memory(a.child)
    into_project = a.benchmarks == p.get_default("benchmarks")
    into_project = into_project or a.readme == p.get_default("readme")
    refusal = (
        "--markdown with --quick figures would replace the full tables with smoke-test "
        "sizes: pass --benchmarks FILE and --readme FILE to write them elsewhere"
    )
    if a.markdown and a.quick and into_project:
        p.error(refusal)
    if a.source:
        with open(a.source) as fh:
            runs = json.load(fh)
        if isinstance(runs, dict):
            runs = [runs]
        if a.markdown and into_project and any(run["quick"] for run in runs):
            p.error(refusal)
    elif a.threads is None:
        runs = run_children(a)
    else:
        runs = [run_here(a)]
    if a.json and not a.source:
        with open(a.json, "w") as fh:
            json.dump(runs, fh, indent=1)
    if a.markdown:
        write_markdown(runs, a.benchmarks, a.readme)
    return runs


if __name__ == "__main__":
    main()
