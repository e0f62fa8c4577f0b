"""Regenerate the study's four comparison plots and its tables with vqref.

    python figures.py                 # all plots + results.json into figures/, 5 seeds
    python figures.py --quick         # reduced run (2 seeds, few steps), for CI
    python figures.py --readme        # rewrite README's results section from results.json

Every training run evaluates on held-out data (20% of the rows of each seed's
data set). Runs that several experiments share (K=32, beta=0.25, the default
learning rates) are computed once. Work is spread over ``--jobs`` processes,
each with one BLAS thread. Needs matplotlib besides vqref's numpy.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")                   # one BLAS thread per worker process

import argparse                                        # noqa: E402
import datetime                                        # noqa: E402
import json                                            # noqa: E402
import multiprocessing                                 # noqa: E402
import re                                              # noqa: E402
import time                                            # noqa: E402

import numpy as np                                     # noqa: E402

import vqref                                           # noqa: E402

# The study's reported numbers (its summary), used as reference markers and in the tables.
STUDY = {
    "ranking_K32": {"baseline": 2.4893, "autograd": 2.4475, "ste": 2.4577, "rotation": 2.4479},
    "scaling_baseline": {8: 3.899, 16: 3.063, 32: 2.489, 64: 2.013},
    "scaling_ste": {8: 3.895, 16: 3.047, 32: 2.447, 64: 2.001},
    "beta": {0.0: 2.4483, 0.25: 2.4470, 1.0: 2.4447},
    "autograd_vs_manual_pct": 0.46,
}
KS = (8, 16, 32, 64)
BETAS = (0.0, 0.1, 0.25, 0.5, 1.0)
LRWS = (0.04, 0.08, 0.16)
LRES = (0.1, 0.2, 0.4)
HS = tuple(10.0 ** np.arange(-12, 0.5, 1.0))
COLORS = {"baseline": "#000000", "ste": "#0072B2", "rotation": "#E69F00",   # Okabe-Ito
          "numerical": "#D55E00", "study": "#009E73"}
LABELS = {"baseline": "PCA + Lloyd-Max", "ste": "STE (manual)", "rotation": "Rotation",
          "numerical": "STE (finite differences)"}


def config(quick):
    """Sizes of every experiment; --quick shrinks them for CI."""
    if quick:
        return dict(n=4000, batch=256, steps=60, conv_steps=100, eval_every=10,
                    num_steps=15, num_batch=64, gc_rows=32)
    return dict(n=20000, batch=1024, steps=300, conv_steps=500, eval_every=10,
                num_steps=200, num_batch=256, gc_rows=128)


# ---------------------------------------------------------------- tasks
# Each task is a tuple; run_task computes it in a worker and returns plain numbers.

def split_data(n, seed):
    """The seed's data set, 80% for training and 20% held out, as in the demo."""
    return vqref._split(vqref.make_data(n, seed=seed), 0.2, np.random.default_rng(seed))


def run_task(task):
    t0 = time.perf_counter()
    kind, cfg, seed = task[0], dict(task[1]), task[2]
    if kind == "gradcheck":
        out = gradcheck_vs_h(cfg, seed)
    else:
        Xtr, Xte = split_data(cfg["n"], seed)
        if kind == "baseline":
            W, E = vqref.baseline(Xtr, cfg["K"], 4, seed=seed)
            out = {"test": vqref.evaluate(Xte, W, E)}
        else:                                          # a training run
            res = vqref.train(Xtr, estimator=cfg["estimator"], K=cfg["K"], steps=cfg["steps"],
                              lrW=cfg["lrW"], lrE=cfg["lrE"], beta=cfg["beta"],
                              batch=cfg["batch"], seed=seed, eval_X=Xte,
                              eval_every=cfg["eval_every"])
            h = res.history
            at = np.flatnonzero(np.isfinite(h["eval_mse"]))
            out = {"test": vqref.evaluate(Xte, res.W, res.E), "loss": h["loss"].tolist(),
                   "curve_step": (at + 1).tolist(), "curve_mse": h["eval_mse"][at].tolist(),
                   "curve_entropy": h["eval_entropy"][at].tolist(),
                   "max_orth_error": float(np.max(h["orth_error"], initial=0.0))}
    out["seconds"] = time.perf_counter() - t0
    return task, out


def gradcheck_vs_h(cfg, seed):
    """Relative error of manual vs central-difference gradients for each step h."""
    rng = np.random.default_rng(1000 + seed)
    X = vqref.make_data(cfg["gc_rows"], seed=1000 + seed)
    W = vqref.qr_retraction(rng.standard_normal((X.shape[1], 4)))
    E = vqref.kmeans_pp(X @ W, 32 if cfg["gc_rows"] >= 32 else 8, rng)
    E += 0.1 * rng.standard_normal(E.shape)
    out = {}
    for est in ("ste", "rotation"):
        out[est] = [vqref.grad_check(X, W, E, estimator=est, h=h) for h in HS]
    return out


def train_task(c, estimator, seed, *, K=32, beta=0.25, lrW=0.08, lrE=0.2, steps=None,
               batch=None, eval_every=None):
    cfg = dict(n=c["n"], estimator=estimator, K=K, beta=beta, lrW=lrW, lrE=lrE,
               steps=c["steps"] if steps is None else steps,
               batch=c["batch"] if batch is None else batch,
               eval_every=c["steps"] if eval_every is None else eval_every)
    return ("train", tuple(sorted(cfg.items())), seed)


def baseline_task(c, K, seed):
    return ("baseline", tuple(sorted(dict(n=c["n"], K=K).items())), seed)


def plan(c, seeds):
    """All experiments as task tuples (duplicates are computed once)."""
    P = {"convergence": {}, "scaling": {}, "beta": {}, "lr_grid": {}, "gradcheck": {}}
    for s in seeds:
        for est in ("ste", "rotation"):
            P["convergence"][(est, s)] = train_task(c, est, s, steps=c["conv_steps"],
                                                    eval_every=c["eval_every"])
            for K in KS:
                P["scaling"][(est, K, s)] = train_task(c, est, s, K=K)
            for b in BETAS:
                P["beta"][(est, b, s)] = train_task(c, est, s, beta=b)
        for K in KS:
            P["scaling"][("baseline", K, s)] = baseline_task(c, K, s)
        for lw in LRWS:
            for le in LRES:
                P["lr_grid"][(lw, le, s)] = train_task(c, "ste", s, lrW=lw, lrE=le)
        P["gradcheck"][("h", s)] = ("gradcheck", tuple(sorted(dict(gc_rows=c["gc_rows"]).items())), s)
    s0 = seeds[0]
    for est in ("ste", "numerical"):
        P["gradcheck"][(est, "train")] = train_task(c, est, s0, steps=c["num_steps"],
                                                    batch=c["num_batch"])
    return P


def run_all(c, seeds, jobs, log):
    P = plan(c, seeds)
    tasks = sorted({t for exp in P.values() for t in exp.values()},
                   key=lambda t: (t[0] != "train" or dict(t[1])["estimator"] != "numerical", repr(t)))
    t_start = time.perf_counter()
    done, remaining = {}, {name: set(exp.values()) for name, exp in P.items()}
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for task, out in pool.imap_unordered(run_task, tasks):
            done[task] = out
            for name in list(remaining):
                remaining[name].discard(task)
                if not remaining[name]:
                    log(f"{name:<12} done after {time.perf_counter() - t_start:6.1f} s")
                    del remaining[name]
    return {name: {k: done[t] for k, t in exp.items()} for name, exp in P.items()}


# -------------------------------------------------------------- summaries

def mean_std(xs):
    xs = np.asarray(xs, dtype=float)
    return {"mean": float(xs.mean()), "std": float(xs.std(ddof=1)) if xs.size > 1 else 0.0,
            "min": float(xs.min()), "max": float(xs.max()), "per_seed": xs.tolist()}


def summarize(raw, c, seeds):
    """results.json: every number behind every plot and table, per seed."""
    S = {}
    conv = raw["convergence"]
    S["convergence"] = {
        est: {"step": conv[(est, seeds[0])]["curve_step"],
              "mse": [conv[(est, s)]["curve_mse"] for s in seeds],
              "entropy": [conv[(est, s)]["curve_entropy"] for s in seeds],
              "final_mse": mean_std([conv[(est, s)]["test"]["mse"] for s in seeds])}
        for est in ("ste", "rotation")}
    sc = raw["scaling"]
    S["scaling"] = {}
    for K in KS:
        row = {m: {key: mean_std([sc[(m, K, s)]["test"][key] for s in seeds])
                   for key in ("mse", "entropy", "dead_codes", "perplexity")}
               for m in ("baseline", "ste", "rotation")}
        for m in ("ste", "rotation"):
            row[m]["change_pct"] = mean_std([100 * (sc[(m, K, s)]["test"]["mse"]
                                                    / sc[("baseline", K, s)]["test"]["mse"] - 1)
                                             for s in seeds])
            row[m]["max_orth_error"] = max(sc[(m, K, s)]["max_orth_error"] for s in seeds)
        row["max_entropy"] = float(np.log(K))
        S["scaling"][str(K)] = row
    S["convergence"]["baseline_mse"] = S["scaling"]["32"]["baseline"]["mse"]
    be = raw["beta"]
    S["beta"] = {str(b): {est: mean_std([be[(est, b, s)]["test"]["mse"] for s in seeds])
                          for est in ("ste", "rotation")} for b in BETAS}
    lr = raw["lr_grid"]
    S["lr_grid"] = {f"{lw}/{le}": {"lrW": lw, "lrE": le,
                                  "mse": mean_std([lr[(lw, le, s)]["test"]["mse"] for s in seeds])}
                    for lw in LRWS for le in LRES}
    gc = raw["gradcheck"]
    S["gradcheck"] = {"h": list(HS),
                      **{est: [gc[("h", s)][est] for s in seeds] for est in ("ste", "rotation")}}
    a, b = gc[("ste", "train")], gc[("numerical", "train")]
    S["gradcheck"]["train"] = {
        "steps": c["num_steps"], "batch": c["num_batch"], "seed": seeds[0],
        "loss_ste": a["loss"], "loss_numerical": b["loss"],
        "mse_ste": a["test"]["mse"], "mse_numerical": b["test"]["mse"],
        "mse_diff_pct": 100 * abs(b["test"]["mse"] / a["test"]["mse"] - 1),
        "entropy_diff_pct": 100 * abs(b["test"]["entropy"] / a["test"]["entropy"] - 1)}
    # The study's "numbers that matter", measured here.
    s32 = S["scaling"]["32"]
    betas_mse = [S["beta"][str(b)]["ste"]["mean"] for b in BETAS]
    S["numbers"] = {
        "manual_vs_numerical_max_rel_error": float(max(
            min(np.median([gc[("h", s)][est][i] for s in seeds]) for i in range(len(HS)))
            for est in ("ste", "rotation"))),
        "improvement_vs_baseline_pct_ste": s32["ste"]["change_pct"]["mean"],
        "improvement_vs_baseline_pct_rotation": s32["rotation"]["change_pct"]["mean"],
        "ste_vs_rotation_pct": 100 * abs(s32["ste"]["mse"]["mean"] / s32["rotation"]["mse"]["mean"] - 1),
        "beta_range_pct": 100 * (max(betas_mse) - min(betas_mse)) / min(betas_mse),
        "utilization_K64_pct": 100 * S["scaling"]["64"]["ste"]["entropy"]["mean"] / np.log(64),
        "dead_codes_max": max(max(S["scaling"][str(K)][m]["dead_codes"]["max"] for K in KS)
                              for m in ("baseline", "ste", "rotation")),
        "error_reduction_K8_K64_pct": 100 * (1 - S["scaling"]["64"]["ste"]["mse"]["mean"]
                                             / S["scaling"]["8"]["ste"]["mse"]["mean"]),
    }
    return S


# ------------------------------------------------------------------ plots

def plot_all(S, out):
    import matplotlib
    matplotlib.use("Agg")                              # headless: never opens a window
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 150, "savefig.dpi": 150, "font.size": 9,
                         "axes.grid": True, "grid.alpha": 0.3})
    paths = {}

    # 1. gradient check
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    g = S["gradcheck"]
    for est in ("ste", "rotation"):
        errs = np.maximum(np.array(g[est]), 1e-17)   # (seeds, len(h)); exact 0 drawn at the floor
        a1.loglog(g["h"], np.median(errs, 0), "o-", color=COLORS[est], label=LABELS[est])
        a1.fill_between(g["h"], errs.min(0), errs.max(0), color=COLORS[est], alpha=0.2)
    a1.axhline(1e-6, color="grey", ls="--", lw=1, label="test tolerance 1e-6")
    a1.set(xlabel="finite-difference step h", ylabel="max relative error (manual vs numerical)",
           title=f"(a) gradient error vs step h ({len(g['ste'])} random points)")
    a1.legend()
    tr = g["train"]
    steps = np.arange(1, len(tr["loss_ste"]) + 1)
    a2.plot(steps, tr["loss_ste"], color=COLORS["ste"], lw=2.5, label=LABELS["ste"])
    a2.plot(steps, tr["loss_numerical"], color=COLORS["numerical"], lw=1, ls="--",
            label=LABELS["numerical"])
    a2.set(xlabel="training step", ylabel="batch loss (eq. 4)",
           title=f"(b) training with manual vs finite-difference gradients\n"
                 f"(seed {tr['seed']}, batch {tr['batch']}, K=32)")
    a2.text(0.97, 0.95, f"held-out MSE: {tr['mse_ste']:.4f} vs {tr['mse_numerical']:.4f}\n"
                        f"difference {tr['mse_diff_pct']:.2g}% (study: autograd vs manual "
                        f"{STUDY['autograd_vs_manual_pct']}%)",
            transform=a2.transAxes, ha="right", va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    a2.legend(loc="lower left")
    paths["gradient_check"] = save(fig, out, "gradient_check.png")

    # 2. convergence
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    cv = S["convergence"]
    for est in ("ste", "rotation"):
        st = np.array(cv[est]["step"])
        for ax, key in ((a1, "mse"), (a2, "entropy")):
            y = np.array(cv[est][key])
            ax.plot(st, y.mean(0), color=COLORS[est], label=LABELS[est])
            ax.fill_between(st, y.min(0), y.max(0), color=COLORS[est], alpha=0.2)
    a1.axhline(cv["baseline_mse"]["mean"], color=COLORS["baseline"], ls="--",
               label=LABELS["baseline"] + " (mean)")
    a1.set_ylim(bottom=cv["baseline_mse"]["mean"] - 0.05)
    a2.axhline(np.log(32), color="grey", ls=":", label="log K (maximum)")
    n_seeds = len(cv["ste"]["mse"])
    a1.set(xlabel="training step", ylabel="held-out reconstruction MSE",
           title=f"held-out MSE, K=32 (mean, min-max band over {n_seeds} seeds)")
    a2.set(xlabel="training step", ylabel="usage entropy (nats)",
           title="code usage entropy on held-out data")
    a1.legend(), a2.legend(loc="lower right")
    paths["convergence"] = save(fig, out, "convergence.png")

    # 3. codebook scaling
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in ("baseline", "ste", "rotation"):
        y = [S["scaling"][str(K)][m]["mse"] for K in KS]
        ax.errorbar(KS, [v["mean"] for v in y], yerr=[v["std"] for v in y], marker="o",
                    color=COLORS[m], label=LABELS[m], capsize=3,
                    ls="--" if m == "rotation" else "-")
    ax.plot(KS, [STUDY["scaling_baseline"][K] for K in KS], "x", color=COLORS["study"], ms=8,
            label="study: baseline")
    ax.plot(KS, [STUDY["scaling_ste"][K] for K in KS], "+", color=COLORS["study"], ms=10,
            label="study: manual STE")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(K) for K in KS])
    ax.set(xlabel="codebook size K", ylabel="held-out reconstruction MSE",
           title=f"MSE vs codebook size (mean ± std over {n_seeds} seeds)")
    ax.legend()
    paths["codebook_scaling"] = save(fig, out, "codebook_scaling.png")

    # 4. commitment ablation
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for est in ("ste", "rotation"):
        y = [S["beta"][str(b)][est] for b in BETAS]
        ax.plot(BETAS, [v["mean"] for v in y], marker="o", color=COLORS[est], label=LABELS[est],
                ls="--" if est == "rotation" else "-")
        ax.fill_between(BETAS, [v["min"] for v in y], [v["max"] for v in y],
                        color=COLORS[est], alpha=0.2)
    ax.plot(list(STUDY["beta"]), list(STUDY["beta"].values()), "x", color=COLORS["study"],
            ms=8, label="study")
    ax.set(xlabel="commitment weight beta", ylabel="held-out reconstruction MSE",
           title=f"MSE vs beta, K=32 (mean, min-max band over {n_seeds} seeds)")
    ax.legend()
    paths["commitment_ablation"] = save(fig, out, "commitment_ablation.png")
    return paths


def save(fig, out, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


# ----------------------------------------------------------------- README

def pm(v, digits=4):
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def pm_pct(v):
    return f"{v['mean']:+.2f}% ± {v['std']:.2f}%"


def verdict(ok):
    return "**reproduced**" if ok else "**not reproduced**"


def readme_section(R, figdir="figures"):
    """The README's results section (markdown), computed from results.json."""
    S, meta = R["results"], R["meta"]
    s32, N = S["scaling"]["32"], S["numbers"]
    n = len(meta["seeds"])
    L = [f"Measured by `python figures.py` ({n} seeds, numpy {meta['numpy']}, {meta['date']}, "
         f"{meta['seconds']:.0f} s on {meta['jobs']} processes); mean ± std over seeds, held-out "
         f"data. Regenerate this section with `python figures.py --readme`.", ""]
    L += ["### Ranking at K = 32", "",
          "| method | study: MSE | study: vs baseline | vqref: MSE | vqref: vs baseline |",
          "|---|---|---|---|---|",
          f"| PCA + Lloyd-Max | {STUDY['ranking_K32']['baseline']} | baseline | "
          f"{pm(s32['baseline']['mse'])} | baseline |",
          f"| STE, autograd | {STUDY['ranking_K32']['autograd']} | -1.68% | "
          f"(finite-difference check instead, below) | |"]
    for m, study_pct in (("ste", "-1.27%"), ("rotation", "-1.66%")):
        L.append(f"| {LABELS[m]} | {STUDY['ranking_K32'][m]} | {study_pct} | {pm(s32[m]['mse'])} | "
                 f"{pm_pct(s32[m]['change_pct'])} |")
    L += ["", f"![convergence]({figdir}/convergence.png)", "",
          f"Held-out MSE and usage entropy over {R['meta']['config']['conv_steps']} steps "
          "(the dashed line is the baseline). STE and rotation lie on top of each other, so "
          "their two bands blend into one.", ""]
    L += ["### Codebook size", "",
          "| K | study: baseline | vqref: baseline | study: manual STE | vqref: STE | "
          "vqref: rotation | vqref: STE vs baseline |", "|---|---|---|---|---|---|---|"]
    for K in KS:
        r = S["scaling"][str(K)]
        L.append(f"| {K} | {STUDY['scaling_baseline'][K]} | {pm(r['baseline']['mse'], 3)} | "
                 f"{STUDY['scaling_ste'][K]} | {pm(r['ste']['mse'], 3)} | "
                 f"{pm(r['rotation']['mse'], 3)} | {pm_pct(r['ste']['change_pct'])} |")
    L += ["", f"![codebook scaling]({figdir}/codebook_scaling.png)", ""]
    L += ["### Commitment weight", "", "| beta | study: MSE | vqref: STE | vqref: rotation |",
          "|---|---|---|---|"]
    for b in BETAS:
        L.append(f"| {b} | {STUDY['beta'].get(b, '')} | {pm(S['beta'][str(b)]['ste'])} | "
                 f"{pm(S['beta'][str(b)]['rotation'])} |")
    L += ["", f"![commitment ablation]({figdir}/commitment_ablation.png)", ""]
    L += ["### Learning rates", "",
          "The study's \"best hyperparameters\" (lrW = 0.08, lrE = 0.2), tested on a 3 x 3 grid "
          "around them (STE, K = 32, held-out MSE); the whole grid:", "",
          "| lrW \\ lrE | " + " | ".join(str(le) for le in LRES) + " |",
          "|---|" + "---|" * len(LRES)]
    for lw in LRWS:
        L.append(f"| {lw} | " + " | ".join(pm(S["lr_grid"][f"{lw}/{le}"]["mse"])
                                           for le in LRES) + " |")
    best = min(S["lr_grid"].values(), key=lambda v: v["mse"]["mean"])
    L += ["", f"Best cell: lrW = {best['lrW']}, lrE = {best['lrE']} "
          f"({pm(best['mse'])}). The figures use the study's values (0.08, 0.2) so that they "
          "test the study's claims at its own settings.", ""]
    gt, gc = S["gradcheck"]["train"], S["gradcheck"]
    best_h = {est: gc["h"][int(np.argmin(np.median(gc[est], axis=0)))] for est in ("ste", "rotation")}
    L += ["### Gradient check", "", f"![gradient check]({figdir}/gradient_check.png)", "",
          f"(a) The median error over {len(gc['ste'])} random points is smallest at h = "
          f"{best_h['ste']:.0e} (STE) and {best_h['rotation']:.0e} (rotation), where truncation "
          f"and round-off error meet; there the manual gradients agree with finite differences "
          f"to {N['manual_vs_numerical_max_rel_error']:.1e} or better. (b) Training with finite-difference gradients (seed {gt['seed']}, "
          f"batch {gt['batch']}, {gt['steps']} steps; one seed, as it costs 2(Dm + Km) loss "
          f"evaluations a step) ends at held-out MSE {gt['mse_numerical']:.6f} against "
          f"{gt['mse_ste']:.6f} for manual STE: a {gt['mse_diff_pct']:.2g}% difference "
          f"(usage entropy {gt['entropy_diff_pct']:.2g}%).", ""]
    # The study's findings, judged by stated criteria.
    imp = N["improvement_vs_baseline_pct_ste"], N["improvement_vs_baseline_pct_rotation"]
    red = N["error_reduction_K8_K64_pct"]
    util = min(100 * S["scaling"][str(K)][m]["entropy"]["mean"] / np.log(K)
               for K in KS for m in ("baseline", "ste", "rotation"))
    L += ["### The study's findings, checked", "",
          "| study's finding | measured here | criterion | verdict |", "|---|---|---|---|",
          f"| gradient methods beat the baseline by 1-2% at K=32 | STE {imp[0]:+.2f}%, rotation "
          f"{imp[1]:+.2f}% | change between -2% and -1% | {verdict(all(-2 <= v <= -1 for v in imp))} |",
          f"| manual STE matches autograd within 1.4% (max error) | manual vs finite differences: "
          f"{N['manual_vs_numerical_max_rel_error']:.1e} max relative error | below 1.4% | "
          f"{verdict(N['manual_vs_numerical_max_rel_error'] < 0.014)} |",
          f"| STE and rotation within 0.02% | {N['ste_vs_rotation_pct']:.3f}% | at most 0.02% | "
          f"{verdict(N['ste_vs_rotation_pct'] <= 0.02)} |",
          f"| beta in [0, 1] moves MSE by about 0.2% | {N['beta_range_pct']:.2f}% (STE) | at most "
          f"0.4% | {verdict(N['beta_range_pct'] <= 0.4)} |",
          f"| usage entropy above 98% of log K, no dead codes | lowest share {util:.1f}% (any K, "
          f"method); {'no' if N['dead_codes_max'] == 0 else 'up to %d' % N['dead_codes_max']} dead "
          f"codes | above 98%, 0 dead | "
          f"{verdict(util > 98 and N['dead_codes_max'] == 0)} |",
          f"| K=64 uses 98.7% of log K | {N['utilization_K64_pct']:.1f}% (STE) | within 1 point | "
          f"{verdict(abs(N['utilization_K64_pct'] - 98.7) <= 1)} |",
          f"| error down by about half (48%) from K=8 to K=64 | {red:.1f}% (STE) | 40% to 56% | "
          f"{verdict(40 <= red <= 56)} |", ""]
    return "\n".join(L)


def update_readme(results_path, readme="README.md"):
    with open(results_path) as fh:
        R = json.load(fh)
    text = open(readme).read()
    figdir = os.path.relpath(os.path.dirname(results_path) or ".", os.path.dirname(readme) or ".")
    new = ("<!-- results:begin (generated by figures.py --readme; do not edit) -->\n"
           + readme_section(R, figdir) + "\n<!-- results:end -->")
    pattern = r"<!-- results:begin.*?-->.*?<!-- results:end -->"
    if not re.search(pattern, text, flags=re.S):
        raise SystemExit(f"{readme} has no results markers")
    with open(readme, "w") as fh:
        fh.write(re.sub(pattern, lambda _: new, text, flags=re.S))


# ------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="figures", help="output folder (default figures)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per experiment (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="reduced run for CI")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default: up to 2)")
    p.add_argument("--readme", action="store_true",
                   help="only rewrite README.md's results section from OUT/results.json")
    a = p.parse_args(argv)
    if a.readme:
        update_readme(os.path.join(a.out, "results.json"))
        print(f"README.md results section rewritten from {a.out}/results.json")
        return None
    seeds = a.seeds if a.seeds is not None else (2 if a.quick else 5)
    if seeds < 2:
        p.error("--seeds must be at least 2 (the tables report a standard deviation)")
    if a.jobs < 1:
        p.error("--jobs must be at least 1")
    os.makedirs(a.out, exist_ok=True)
    c = config(a.quick)
    t0 = time.perf_counter()
    raw = run_all(c, list(range(seeds)), a.jobs, lambda msg: print(msg, flush=True))
    S = summarize(raw, c, list(range(seeds)))
    R = {"meta": {"numpy": np.__version__, "vqref": vqref.__version__,
                  "date": datetime.date.today().isoformat(), "seeds": list(range(seeds)),
                  "quick": a.quick, "jobs": a.jobs, "config": c,
                  "study": {k: {str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v
                            for k, v in STUDY.items()}},
         "results": S}
    paths = plot_all(S, a.out)
    R["meta"]["seconds"] = time.perf_counter() - t0
    with open(os.path.join(a.out, "results.json"), "w") as fh:
        json.dump(R, fh, indent=1)
    print(f"wrote {', '.join(sorted(paths.values()))} and {a.out}/results.json "
          f"in {R['meta']['seconds']:.1f} s")
    return R


if __name__ == "__main__":
    main()
