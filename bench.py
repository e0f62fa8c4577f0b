"""Benchmark vqref against a PyTorch autograd loop and scikit-learn's k-means.

    python bench.py                   # everything, about 10 minutes on 2 cores
    python bench.py --quick           # tiny sizes: a smoke test (CI)
    python bench.py --json out.json   # also write the raw figures

Each comparison runs both sides in this process, alternating, after a warm-up,
and reports the median time of each and their ratio. Both sides use the same
number of threads (``--threads``, default: all cores): it is fixed for NumPy's
BLAS, OpenMP (scikit-learn) and PyTorch before any of them loads. A peer that
is not installed is skipped with a message; vqref itself needs numpy only.

Memory of the training loops is measured per side in a fresh child process, as
its peak resident memory during the loop (Linux VmHWM, reset before the loop
through /proc/self/clear_refs) minus its resident memory before the loop; the
scale checks, numpy only, use tracemalloc's peak.
"""

import os
import sys


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(os.cpu_count() or 1)


THREADS = _threads_from_argv(sys.argv)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = THREADS                         # before numpy, sklearn or torch load

import argparse                                        # noqa: E402
import json                                            # noqa: E402
import platform                                        # noqa: E402
import subprocess                                      # noqa: E402
import tempfile                                        # noqa: E402
import time                                            # noqa: E402
import tracemalloc                                     # noqa: E402

import numpy as np                                     # noqa: E402

import vqref                                           # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def optional(name, install):
    try:
        return __import__(name)
    except ImportError:
        print(f"  (skipped: {name} is not installed; {install} to compare)")
        return None


def race(a, b, repeats):
    """Median seconds of a() and b(), run alternately after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb)), ta, tb


# ------------------------------------------------------- 1. training step

def train_setup(D, m, K, B, steps, N, seed=0):
    """Data, initial W and E, and the batches exactly as vqref.train draws them."""
    X = vqref.make_data(N, D, seed=seed, rank=min(D, 2 * m))
    rng = np.random.default_rng(seed)
    W = vqref.pca(X, m)
    E = vqref.kmeans_pp(X @ W, K, rng)
    order, pos, batches = rng.permutation(N), 0, []
    for _ in range(steps):
        if pos + B > N:
            order, pos = rng.permutation(N), 0
        batches.append(order[pos:pos + B])
        pos += B
    return X, W, E, batches


def vqref_loop(X, W, E, batches, estimator, lrW=0.08, lrE=0.2, beta=0.25, alpha=1.0):
    Xbuf = np.empty((len(batches[0]), X.shape[1]))
    for idx in batches:
        Xb = np.take(X, idx, axis=0, out=Xbuf)
        W, E, loss, _, _ = vqref._train_step(Xb, W, E, estimator, lrW, lrE, beta, alpha)
    return W, E


def torch_loop(torch, X, W, E, batches, estimator, lrW=0.08, lrE=0.2, beta=0.25, alpha=1.0):
    """The same loss (README eq. 4), estimators, SGD step on E and Stiefel QR step
    on W, in float64, with autograd computing the gradients."""
    X, W, E = torch.from_numpy(X), torch.from_numpy(W.copy()), torch.from_numpy(E.copy())
    for idx in batches:
        Xb = X[torch.from_numpy(idx)]
        W.requires_grad_(True)
        E.requires_grad_(True)
        B = Xb.shape[0]
        Z = Xb @ W
        with torch.no_grad():                          # nearest codeword, as vqref.assign
            c = E.mean(0)
            Ec = E - c
            k = ((Z - c) @ Ec.T - 0.5 * (Ec * Ec).sum(1)).argmax(1)
        Q = E[k]
        if estimator == "ste":
            q = Z + (Q - Z).detach()                   # straight-through
        else:                                          # q = sg(lam R) z, Householder form
            with torch.no_grad():
                nz, ne = Z.norm(dim=1, keepdim=True), Q.norm(dim=1, keepdim=True)
                u, v = Z / nz, Q / ne
                w = (u + v) / (u + v).norm(dim=1, keepdim=True)
                lam = ne / nz
            q = lam * (Z - 2 * w * (w * Z).sum(1, keepdim=True) + 2 * v * (u * Z).sum(1, keepdim=True))
        loss = (((Xb - q @ W.T) ** 2).sum() + alpha * ((Z.detach() - Q) ** 2).sum()
                + beta * ((Z - Q.detach()) ** 2).sum()) / B
        loss.backward()
        with torch.no_grad():
            G = W.grad
            S = W.T @ G
            Qr, Rr = torch.linalg.qr(W - lrW * (G - W @ (0.5 * (S + S.T))))
            W = (Qr * torch.where(torch.diagonal(Rr) < 0, -1.0, 1.0)).detach()
            E = (E - lrE * E.grad).detach()
    return W.numpy(), E.numpy()


def child_memory(args):
    """--child: run one side's loop in this fresh process and print its memory."""
    side, estimator, D, m, K, B, steps, N = args
    X, W, E, batches = train_setup(int(D), int(m), int(K), int(B), int(steps), int(N))
    torch = __import__("torch") if side == "torch" else None
    if torch is not None:
        torch.set_num_threads(int(THREADS))
        torch_loop(torch, X, W, E, batches[:1], estimator)         # load kernels first

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                                                # reset the peak (VmHWM)
    before = status("VmRSS:")
    if torch is not None:
        torch_loop(torch, X, W, E, batches, estimator)
    else:
        vqref_loop(X, W, E, batches, estimator)
    print(json.dumps({"peak_bytes": status("VmHWM:") - before}))


def memory_of(side, estimator, cfg):
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", THREADS, "--child", side,
           estimator] + [str(cfg[k]) for k in ("D", "m", "K", "B", "steps", "N")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def bench_training(quick, repeats, results):
    print("\n1. Training step: vqref (hand-derived) vs PyTorch autograd, float64")
    torch = optional("torch", "`pip install torch` (README, Performance)")
    if torch is None:
        return
    torch.set_num_threads(int(THREADS))
    settings = ([dict(D=64, m=4, K=32, B=256, steps=20, N=2000)] if quick else
                [dict(D=64, m=4, K=32, B=1024, steps=300, N=20000),
                 dict(D=512, m=64, K=512, B=4096, steps=50, N=20000)])
    print(f"{'setting':<32} {'estimator':<9} {'vqref':>9} {'torch':>9} {'torch/vqref':>11} "
          f"{'max|dW|,|dE|':>12} {'mem vqref':>10} {'mem torch':>10}")
    for cfg in settings:
        X, W, E, batches = train_setup(cfg["D"], cfg["m"], cfg["K"], cfg["B"], cfg["steps"], cfg["N"])
        for est in ("ste", "rotation"):
            # Same W and E after the first steps, or the race is not fair.
            Wv, Ev = vqref_loop(X, W, E, batches[:3], est)
            Wt, Et = torch_loop(torch, X, W, E, batches[:3], est)
            diff = max(np.abs(Wv - Wt).max(), np.abs(Ev - Et).max())
            res = vqref.train(X, estimator=est, K=cfg["K"], m=cfg["m"], steps=3, batch=cfg["B"])
            same_as_train = max(np.abs(res.W - Wv).max(), np.abs(res.E - Ev).max())
            if diff > 1e-8 or same_as_train > 1e-12:
                raise SystemExit(f"the two loops disagree ({diff:.1e}, {same_as_train:.1e})")
            tv, tt, ta, tb = race(lambda: vqref_loop(X, W, E, batches, est),
                                  lambda: torch_loop(torch, X, W, E, batches, est), repeats)
            mv, mt = memory_of("vqref", est, cfg), memory_of("torch", est, cfg)
            name = f"D={cfg['D']} m={cfg['m']} K={cfg['K']} B={cfg['B']} x{cfg['steps']}"
            print(f"{name:<32} {est:<9} {tv:8.3f}s {tt:8.3f}s {tt / tv:10.2f}x {diff:12.1e} "
                  f"{mv / 2**20:8.1f}MB {mt / 2**20:8.1f}MB", flush=True)
            results.setdefault("training", []).append(dict(
                cfg, estimator=est, vqref_s=tv, torch_s=tt, ratio_torch_over_vqref=tt / tv,
                max_abs_diff_after_3_steps=float(diff), vqref_times=ta, torch_times=tb,
                vqref_peak_bytes=mv, torch_peak_bytes=mt))


# ------------------------------------------------------------- 2. Lloyd-Max

def bench_lloyd(quick, repeats, results):
    print("\n2. Lloyd-Max: vqref.lloyd_max vs sklearn KMeans(algorithm='lloyd'), same init, to convergence")
    sklearn = optional("sklearn", "`pip install scikit-learn`")
    if sklearn is None:
        return
    from sklearn.cluster import KMeans
    N = 5000 if quick else 100_000
    X = vqref.make_data(N, 64, seed=0)
    Z = np.ascontiguousarray(X @ vqref.pca(X, 4))                 # (N, 4)
    print(f"{'N, m, K':<18} {'vqref':>9} {'sklearn':>9} {'vqref/sklearn':>13} {'iters':>9} "
          f"{'distortion vqref':>17} {'sklearn':>14} {'max|E - E_sk|':>13}")
    for K in ((16,) if quick else (32, 256)):
        init = vqref.kmeans_pp(Z, K, np.random.default_rng(1))
        out = {}

        def ours():
            out["v"] = vqref.lloyd_max(Z, K, init=init, max_iter=10_000)

        def theirs():
            out["s"] = KMeans(K, init=init, n_init=1, algorithm="lloyd", tol=0.0,
                              max_iter=10_000).fit(Z)
        tv, ts, ta, tb = race(ours, theirs, repeats)
        (E, info), km = out["v"], out["s"]
        diff = float(np.abs(E - km.cluster_centers_).max())
        name = f"{N}, 4, {K}"
        print(f"{name:<18} {tv:8.3f}s {ts:8.3f}s {tv / ts:12.2f}x {info['n_iter']:4d}/{km.n_iter_:<4d} "
              f"{info['distortion']:17.10f} {km.inertia_ / N:14.10f} {diff:13.1e}", flush=True)
        results.setdefault("lloyd", []).append(dict(
            N=N, m=4, K=K, vqref_s=tv, sklearn_s=ts, ratio_vqref_over_sklearn=tv / ts,
            vqref_iter=info["n_iter"], sklearn_iter=int(km.n_iter_),
            vqref_distortion=float(info["distortion"]), sklearn_distortion=float(km.inertia_ / N),
            max_abs_codebook_diff=diff, vqref_times=ta, sklearn_times=tb))


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
    print("\n3. Scale: time and peak memory (tracemalloc) against 2 x data + 256 MB")
    rows = []
    N = 20_000 if quick else 1_000_000
    Z = np.random.default_rng(0).standard_normal((N, 8)) * np.linspace(2.0, 0.5, 8)
    init = {}
    sec_pp, peak_pp = traced(lambda: init.setdefault("E", vqref.kmeans_pp(Z, 256, np.random.default_rng(0))))
    rows.append((f"kmeans_pp N={N} m=8 K=256", Z.nbytes, sec_pp, peak_pp))
    out = {}
    sec, peak = traced(lambda: out.setdefault("r", vqref.lloyd_max(Z, 256, init=init["E"])))
    rows.append((f"lloyd_max N={N} m=8 K=256, {out['r'][1]['n_iter']} it", Z.nbytes, sec, peak))
    N2, steps = (4000, 5) if quick else (50_000, 50)
    X = vqref.make_data(N2, 512, seed=0, rank=128)
    sec, peak = traced(lambda: vqref.train(X, K=512, m=64, batch=4096 if not quick else 512,
                                           steps=steps))
    rows.append((f"train N={N2} D=512 m=64 K=512 x{steps}", X.nbytes, sec, peak))
    print(f"{'run':<42} {'data':>9} {'time':>8} {'peak':>9} {'bound':>9}  within")
    for name, nbytes, sec, peak in rows:
        bound = 2 * nbytes + 256 * 2**20
        print(f"{name:<42} {nbytes / 2**20:7.1f}MB {sec:7.2f}s {peak / 2**20:7.1f}MB "
              f"{bound / 2**20:7.1f}MB  {'yes' if peak <= bound else 'NO'}", flush=True)
        results.setdefault("scale", []).append(dict(run=name, data_bytes=nbytes, seconds=sec,
                                                    peak_bytes=peak, bound_bytes=bound))


# ------------------------------------------------------------------ 4. suite

def bench_suite(quick, results):
    print("\n4. Suite: wall time of the scripts (fresh processes)")
    # The scripts choose their own threads: figures.py runs one BLAS thread per worker.
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = ([["vqref.py", "--n", "2000", "--steps", "20"]] if quick else
                [["vqref.py"], ["figures.py", "--quick", "--out", tmp], ["figures.py", "--out", tmp]])
        for cmd in cmds:
            t = time.perf_counter()
            subprocess.run([sys.executable] + cmd, cwd=HERE, env=env, check=True, capture_output=True)
            sec = time.perf_counter() - t
            shown = " ".join(c if c != tmp else "TMP" for c in cmd)
            print(f"python {shown:<40} {sec:7.1f} s", flush=True)
            results.setdefault("suite", []).append(dict(command="python " + shown, seconds=sec))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--json", metavar="FILE", help="write the raw figures to FILE")
    p.add_argument("--threads", type=int, default=int(THREADS),
                   help="threads for every side (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 2 with --quick)")
    p.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_memory(a.child)
    repeats = a.repeats or (2 if a.quick else 5)
    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "processor": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "threads": int(THREADS)},
               "date": time.strftime("%Y-%m-%d"), "quick": a.quick, "repeats": repeats}
    print(f"vqref bench: {results['machine']}, {repeats} timed repeats after a warm-up")
    bench_training(a.quick, repeats, results)
    bench_lloyd(a.quick, max(2, repeats - 2), results)
    bench_scale(a.quick, results)
    bench_suite(a.quick, results)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"\nwrote {a.json}")
    return results


if __name__ == "__main__":
    main()
