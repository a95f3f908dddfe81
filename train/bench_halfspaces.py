"""`pitrack bench halfspaces`: intersections of halfspaces, random 3-CNF and permanents.

Probability cases (each a Linear(n, k) → Step network with the event "every output is 1",
answered through the public API: explain(net, D, method="auto", budget=B).probability):
- gaussian: x ~ N(0, I_n), unit normals a_i uniform on the sphere, thresholds
  a_i·x ≥ b (b = 0: the reference setting; b ≠ 0: general). Truth: separation of
  variables with 2^14 points × 16 replicates and an independent seed (its three standard
  errors are recorded), checked against plain sampling (2·10⁵ draws) where p ≥ 1e-3;
  scipy's multivariate_normal.cdf (Genz's Fortran code; relative tolerance 1e-3) beside
  it when scipy is installed (`pip install pi-tracker[bench]`), k ≤ 20 and not --quick.
  Also compared with `mvn.log_orthant` (Genz with the Cholesky factor of A Aᵀ, separate
  code; it rejects some k > n sets). The degree-1 Hermite projection (the reference
  structured method) is run beside.
- cube: x uniform on {-1, 1}^n (n ≤ 22), Gaussian or ±1 weights; truth by enumeration.
- cnf: random 3-CNF with m clauses on n ≤ 22 variables; truth by enumeration.
Per case: `repeats` estimates with seeds 0..repeats-1; |log10 p̂/p| of each; the cost in
sample-equivalents; MSE = mean (p̂ - p)² against plain sampling at the same FLOPs,
whose MSE p(1 - p)/N (N = ⌊FLOPs / draw cost⌋) is exact.

Scaling: P ≈ 1e-4 intersections (b set so that (Φ(-b))^k = 1e-4) over k at n = 200 and
over n at k = 20, Gaussian and cube; per point the FLOPs and seconds of π at the default
budget and the FLOPs plain sampling needs for the same MSE, (2nk + 2k + n)·p(1-p)/MSE —
the O(kn/ε²) line. Truth: the Gaussian reference above; on the cube (n > 22) an SMC run
with 16× the budget and 8 replicates (labelled so in the CSV).

Permanents of random {0, 1} matrices (density ½, n = 8..20): Sinkhorn SIS against Ryser,
and Godsil–Gutman and uniform permutations at the same FLOPs, relative RMSE over repeats.

Outputs: CSV (one row per case), PNG (estimate vs truth; MSE gain over sampling; scaling;
permanents) and a printed summary over 1e-8 ≤ p ≤ 1e-2.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from explanations import BooleanCube, Gaussian, Step, compile_model, explain
from explanations.cnf import random_cnf
from explanations.cube_smc import cube_log_probability
from explanations.events import Above, All
from explanations.halfspaces import (Halfspaces, exact_cube_log_probability, gaussian_log_probability,
                                     hermite_log_probability)
from explanations.montecarlo import draw_cost
from explanations.mvn import log_orthant
from explanations.permanent import godsil_gutman, ryser, sinkhorn_sis, uniform_permutations

from .figures import save, subplots
from .tables import write_csv

SUMMARY_RANGE = (1e-8, 1e-2)
LN10 = math.log(10.0)


@dataclass(frozen=True)
class Case:
    family: str      # gaussian | cube | cnf
    n: int
    k: int
    b: float = 0.0
    weights: str = "sphere"   # sphere | sign (±1 entries) | cnf
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.family} n={self.n} k={self.k} b={self.b:g} {self.weights} s{self.seed}"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("gaussian", 100, 8, 0.0), Case("gaussian", 20, 4, 1.5), Case("cube", 14, 6, 0.5),
                Case("cnf", 14, 50, weights="cnf")]
    gaussian = [Case("gaussian", 1000, k) for k in (7, 10, 14, 20, 26)] + \
        [Case("gaussian", 20, k) for k in (10, 16)] + \
        [Case("gaussian", n, k, b) for n, k, b in ((100, 3, 2.5), (100, 5, 2.0), (50, 8, 1.0), (200, 30, 0.5),
                                                    (1000, 100, -1.5), (10, 100, -2.0), (30, 60, -1.0))]
    cube = [Case("cube", n, k, b, w) for n, k, b, w in (
        (16, 5, 0.0, "sphere"), (20, 12, 0.0, "sphere"), (20, 3, 1.5, "sphere"), (20, 10, 0.5, "sphere"),
        (20, 40, -0.8, "sphere"), (20, 100, -1.5, "sphere"), (18, 6, 0.6, "sign"), (20, 30, -0.5, "sign"),
        (20, 20, -0.2, "sign"), (22, 8, 0.5, "sphere"), (1000, 100, -1.35, "sphere"))]
    cnf = [Case("cnf", n, m, weights="cnf", seed=s) for n, m, s in (
        (20, 40, 0), (20, 60, 0), (20, 80, 1), (20, 85, 1), (22, 90, 0), (16, 64, 1))]
    return gaussian + cube + cnf


def halfspaces_of(case: Case) -> Halfspaces:
    if case.weights == "cnf":
        return random_cnf(case.n, case.k, seed=case.seed).halfspaces()
    generator = torch.Generator().manual_seed(1000 * case.seed + case.n + 7 * case.k)
    if case.weights == "sign":
        a = (torch.randint(0, 2, (case.k, case.n), generator=generator) * 2 - 1).to(torch.float64) / math.sqrt(case.n)
    else:
        a = torch.randn(case.k, case.n, generator=generator, dtype=torch.float64)
        a = a / a.norm(dim=1, keepdim=True)
    return Halfspaces(a, torch.full((case.k,), -case.b, dtype=torch.float64), torch.zeros(case.k, dtype=torch.bool))


def network(h: Halfspaces) -> nn.Sequential:
    linear = nn.Linear(h.n, h.k).to(torch.float64)
    with torch.no_grad():
        linear.weight.copy_(h.weight)
        linear.bias.copy_(h.offset)
    return nn.Sequential(linear, Step())


def event(k: int) -> All:
    return All(*[Above(i, 0.5) for i in range(k)])


def truth(case: Case, h: Halfspaces, big_budget_flops: float) -> tuple[float, str, float]:
    """(log p, how, relative error of the truth)."""
    if case.family == "gaussian":
        r = gaussian_log_probability(h, Gaussian.standard(h.n), points=1 << 14, replicates=16, seed=12345)
        return r.log_p, "sov 2^14x16", r.relative_se if r.log_p > -math.inf else 0.0
    if h.n <= 22:
        return exact_cube_log_probability(h), "enumeration", 0.0
    r = cube_log_probability(h, flops=big_budget_flops, replicates=8, seed=12345)
    return r.log_p, "smc x16", r.relative_se if r.log_p > -math.inf else 0.0


def evaluate(case: Case, repeats: int, budget: float, scipy: bool = True) -> dict:
    h = halfspaces_of(case)
    model = network(h)
    D = Gaussian.standard(h.n) if case.family == "gaussian" else BooleanCube(h.n)
    graph = compile_model(model)
    per_draw = draw_cost(graph, D)
    log_p, how, truth_rel = truth(case, h, 16 * budget * graph.flops_per_sample)
    p = math.exp(log_p)
    errors, squares, flops, seconds = [], [], [], []
    for seed in range(repeats):
        pi = explain(model, D, method="auto", budget=budget, seed=seed)
        start = time.perf_counter()
        estimate = pi.probability(event(h.k))
        seconds.append(time.perf_counter() - start)
        flops.append(estimate.flops)
        errors.append(abs(estimate.log10 - log_p / LN10) if p > 0 and estimate.value > 0 else
                      (0.0 if p == 0 and estimate.value == 0 else math.inf))
        squares.append((estimate.value - p) ** 2)
    mean_flops = statistics.fmean(flops)
    n_equal = max(1, int(mean_flops // per_draw))
    mse = statistics.fmean(squares)
    mse_sampling = p * (1 - p) / n_equal
    row = {"family": case.family, "case": case.name, "n": h.n, "k": h.k, "b": case.b, "weights": case.weights,
           "true_p": p, "truth": how, "truth_rel_se": truth_rel,
           "median_abs_log10_err": statistics.median(errors), "max_abs_log10_err": max(errors),
           "errors": " ".join(f"{e:.3f}" for e in errors),
           "sample_equivalents": mean_flops / graph.flops_per_sample, "flops": mean_flops,
           "seconds": statistics.fmean(seconds), "mse": mse, "mse_sampling_equal_flops": mse_sampling,
           "mse_gain": mse_sampling / mse if mse > 0 else math.inf, "equal_flops_samples": n_equal}
    if case.family == "gaussian":
        row.update(gaussian_extras(h, log_p, scipy))
    return row


def gaussian_extras(h: Halfspaces, log_p: float, scipy: bool) -> dict:
    """The Hermite reference method, plain sampling and scipy (when installed) beside the truth."""
    extras = {}
    try:   # an independent implementation: Genz's Cholesky-based orthant integral of A Aᵀ
        other = log_orthant(h.offset, h.weight @ h.weight.T, points=1 << 14, replicates=8, seed=999)
        extras["mvn_cholesky_abs_log10_diff"] = abs(other.log_p - log_p) / LN10 if log_p > -math.inf else math.nan
    except ValueError:   # it rejects some rank-deficient sets (k > n)
        pass
    hermite = hermite_log_probability(h, Gaussian.standard(h.n))
    extras["hermite_abs_log10_err"] = (abs(hermite.log_p - log_p) / LN10 if hermite.log_p > -math.inf
                                       and log_p > -math.inf else math.inf)
    if log_p >= math.log(1e-3) and h.n * h.k <= 20_000:
        draws = 200_000
        generator = torch.Generator().manual_seed(777)
        hits = sum(int(h.contains(torch.randn(50_000, h.n, generator=generator, dtype=torch.float64)).sum())
                   for _ in range(draws // 50_000))
        p, q = math.exp(log_p), hits / draws
        extras["sampling_check_z"] = (q - p) / math.sqrt(p * (1 - p) / draws)
    try:
        from scipy.stats import multivariate_normal
    except ImportError:
        return extras
    if not scipy:
        return extras
    if h.k <= 20:   # P(Ax + c ≥ 0) = P(-Ax ≤ c), -Ax ~ N(0, A Aᵀ); relative tolerance 1e-3
        value = multivariate_normal.cdf(h.offset.numpy(), mean=np.zeros(h.k), cov=(h.weight @ h.weight.T).numpy(),
                                        allow_singular=True, abseps=1e-300, releps=1e-3, maxpts=200_000 * h.k,
                                        rng=np.random.default_rng(0))
        extras["scipy_abs_log10_err"] = abs(math.log10(value) - log_p / LN10) if value > 0 else math.inf
    return extras


def scaling(quick: bool, budget: float, repeats: int) -> list[dict]:
    """π's cost against sampling's at equal MSE over k (n = 200) and over n (k = 20)."""
    grid = [("k", 200, k) for k in ((5, 20) if quick else (5, 10, 20, 50, 100))] + \
           [("n", n, 20) for n in ((50,) if quick else (20, 50, 500, 1000))]
    rows = []
    for family in ("gaussian", "cube"):
        for axis, n, k in tqdm(grid, desc=f"scaling {family}", leave=False):
            b = float(torch.special.ndtri(torch.tensor(1 - 1e-4 ** (1 / k), dtype=torch.float64)))
            rows.append({**evaluate(Case(family, n, k, b, "sphere", seed=3), repeats, budget, scipy=not quick),
                         "scaling": axis})
    return rows


def permanents(quick: bool, repeats: int, draws: int) -> list[dict]:
    rows = []
    for n in ((8, 10) if quick else (8, 12, 16, 20)):
        generator = torch.Generator().manual_seed(100 + n)
        a = (torch.rand(n, n, generator=generator) < 0.5).to(torch.float64)
        exact = ryser(a)
        row = {"family": "permanent", "case": f"permanent n={n}", "n": n, "true_p": exact, "truth": "ryser"}
        for name, run in (("sinkhorn_sis", lambda s, f: sinkhorn_sis(a, draws, seed=s)),
                          ("godsil_gutman", lambda s, f: godsil_gutman(a, max(1, int(f // (2 * n ** 3 // 3 + 2 * n * n + 1))), seed=s)),
                          ("uniform_permutations", lambda s, f: uniform_permutations(a, max(1, int(f // (2 * n + 1))), seed=s))):
            budget = sinkhorn_sis(a, 1).flops * draws
            results = [run(seed, budget) for seed in range(repeats)]
            rel = [(r.value - exact) / exact for r in results]
            row[f"{name}_rel_rmse"] = math.sqrt(statistics.fmean(e * e for e in rel))
            row[f"{name}_flops"] = statistics.fmean(r.flops for r in results)
        rows.append(row)
    return rows


COLUMNS = ["family", "case", "n", "k", "b", "weights", "true_p", "truth", "truth_rel_se", "median_abs_log10_err",
           "max_abs_log10_err", "errors", "sample_equivalents", "flops", "seconds", "mse", "mse_sampling_equal_flops",
           "mse_gain", "equal_flops_samples", "hermite_abs_log10_err", "sampling_check_z", "mvn_cholesky_abs_log10_diff",
           "scipy_abs_log10_err",
           "scaling", "sinkhorn_sis_rel_rmse", "sinkhorn_sis_flops", "godsil_gutman_rel_rmse", "godsil_gutman_flops",
           "uniform_permutations_rel_rmse", "uniform_permutations_flops"]


def plot(rows: list[dict], scale_rows: list[dict], perm_rows: list[dict], path: Path) -> None:
    figure, ((ax_est, ax_gain), (ax_scale, ax_perm)) = subplots(path, 2, 2, figsize=(12, 10))
    shown = [r for r in rows if r["true_p"] > 0]
    for family, marker in (("gaussian", "o"), ("cube", "s"), ("cnf", "^")):
        part = [r for r in shown if r["family"] == family]
        ax_est.scatter([r["true_p"] for r in part], [max(r["median_abs_log10_err"], 1e-4) for r in part],
                       marker=marker, label=f"π ({family})")
        ax_gain.scatter([r["true_p"] for r in part], [r["mse_gain"] for r in part], marker=marker, label=family)
    herm = [r for r in shown if math.isfinite(r.get("hermite_abs_log10_err", math.nan))]
    ax_est.scatter([r["true_p"] for r in herm], [max(r["hermite_abs_log10_err"], 1e-4) for r in herm], marker="x",
                   color="0.4", label="degree-1 Hermite projection (gaussian)")
    ax_est.axhline(0.1, color="r", linewidth=1, label="0.1 dex")
    ax_est.set(xscale="log", yscale="log", xlabel="true p", ylabel="median |log10 p̂/p| over repeats (floor 1e-4)",
               title="error of π (budget-limited, < 1e4 sample-equivalents)")
    ax_est.legend(fontsize=8)
    ax_gain.axhline(1, color="r", linewidth=1, label="sampling's MSE")
    ax_gain.set(xscale="log", yscale="log", xlabel="true p", ylabel="MSE(sampling) / MSE(π) at equal FLOPs",
                title="gain over plain sampling at equal FLOPs")
    ax_gain.legend(fontsize=8)
    for family, color in (("gaussian", "C0"), ("cube", "C1")):
        for axis, marker in (("k", "o"), ("n", "s")):
            part = sorted((r for r in scale_rows if r["family"] == family and r["scaling"] == axis),
                          key=lambda r: r["n"] * r["k"])
            kn = [r["n"] * r["k"] for r in part]
            ax_scale.plot(kn, [r["flops"] for r in part], marker=marker, color=color,
                          label=f"π {family}, varying {axis}")
            ax_scale.plot(kn, [r["mse_sampling_equal_flops"] / max(r["mse"], 1e-300) * r["flops"] for r in part],
                          marker=marker, color=color, linestyle=":", label=f"sampling, same MSE ({family}, {axis})")
    kn = sorted({r["n"] * r["k"] for r in scale_rows})
    if kn:
        ax_scale.plot(kn, [2 * x * (1 - 1e-4) / (1e-4 * 0.1 ** 2) for x in kn], color="0.5", linestyle="--",
                      label="sampling, 10% relative error at p = 1e-4: 2kn/(p ε²)")
    ax_scale.set(xscale="log", yscale="log", xlabel="k·n", ylabel="FLOPs",
                 title="cost at p ≈ 1e-4: π vs sampling's (2kn)·p(1-p)/MSE line")
    ax_scale.legend(fontsize=7)
    for name, marker in (("sinkhorn_sis", "o"), ("godsil_gutman", "s"), ("uniform_permutations", "^")):
        ax_perm.plot([r["n"] for r in perm_rows], [min(r[f"{name}_rel_rmse"], 10) for r in perm_rows],
                     marker=marker, label=name.replace("_", " "))
    ax_perm.set(yscale="log", xlabel="n", ylabel="relative RMSE (capped at 10)",
                title="permanent of random {0,1} matrices at equal FLOPs (truth: Ryser)")
    ax_perm.legend(fontsize=8)
    save(figure, path, dpi=110)


def summary(rows: list[dict]) -> list[str]:
    lo, hi = SUMMARY_RANGE
    lines = []
    for family in ("gaussian", "cube", "cnf", "all"):
        part = [r for r in rows if (family == "all" or r["family"] == family) and lo <= r["true_p"] <= hi]
        if not part:
            continue
        errors = [float(e) for r in part for e in r["errors"].split()]
        beats = sum(r["mse_gain"] > 1 for r in part)
        lines.append(f"{family:<9} cases {len(part):>3}  median |log10 p̂/p| {statistics.median(errors):.3f}"
                     f"  worst {max(errors):.3f}  max cost {max(r['sample_equivalents'] for r in part):,.0f}"
                     f" samples  beats sampling in MSE: {beats}/{len(part)}"
                     f"  min gain {min(r['mse_gain'] for r in part):.3g}")
    hermite = [r["hermite_abs_log10_err"] for r in rows if "hermite_abs_log10_err" in r and lo <= r["true_p"] <= hi]
    if hermite:
        lines.append(f"degree-1 Hermite projection (gaussian cases): median |log10 p̂/p| {statistics.median(hermite):.3f}"
                     f"  worst {max(hermite):.3g}  (p̂ ≤ 0 in {sum(math.isinf(e) for e in hermite)})")
    checks = [(r["case"], r.get("mvn_cholesky_abs_log10_diff"), r.get("scipy_abs_log10_err"))
              for r in rows if r["family"] == "gaussian"]
    cholesky = [c for _, c, _ in checks if c is not None and math.isfinite(c)]
    scipy = [s for *_, s in checks if s is not None]
    if cholesky:
        lines.append(f"Gaussian truth checks: max |Δlog10| against mvn.log_orthant {max(cholesky):.4f}"
                     f" ({len(cholesky)} cases)" + (f", against scipy {max(scipy):.4f} ({len(scipy)} cases)"
                                                    if scipy else ", scipy not installed"))
    return lines


def scaling_lines(rows: list[dict]) -> list[str]:
    """π's FLOPs and seconds against sampling's FLOPs for π's achieved relative RMSE ε."""
    lines = [f"{'family':<9} {'n':>5} {'k':>4} {'p':>9} {'ε (rel. RMSE)':>13} {'π FLOPs':>9} {'π s':>6}"
             f" {'sampling FLOPs, same ε':>22}"]
    for r in rows:
        eps = math.sqrt(r["mse"]) / r["true_p"]
        lines.append(f"{r['family']:<9} {r['n']:>5} {r['k']:>4} {r['true_p']:>9.3g} {eps:>13.2e} {r['flops']:>9.3g}"
                     f" {r['seconds']:>6.2f} {r['mse_sampling_equal_flops'] / max(r['mse'], 1e-300) * r['flops']:>22.3g}")
    return lines


def run(quick: bool = False, repeats: int = 10, budget: float = 3000, csv_path: Path = Path("out/bench_halfspaces.csv"),
        png_path: Path = Path("out/bench_halfspaces.png"), progress: bool = True) -> list[dict]:
    repeats = min(repeats, 2) if quick else repeats
    rows = [evaluate(case, repeats, budget, scipy=not quick)
            for case in tqdm(cases(quick), desc="bench halfspaces", unit="case", disable=not progress)]
    scale_rows = scaling(quick, budget, repeats)
    perm_rows = permanents(quick, repeats, draws=50 if quick else 200)
    write_csv(rows + scale_rows + perm_rows, Path(csv_path), COLUMNS)
    plot(rows, scale_rows, perm_rows, Path(png_path))
    lines = [f"{'case':<42} {'p':>9} {'truth':<12} {'med err':>7} {'max err':>7} {'cost':>7} {'MSE gain':>9}"
             f" {'hermite':>7} {'check':>7} {'scipy':>7}"]
    for r in rows + scale_rows:
        lines.append(f"{r['case']:<42} {r['true_p']:>9.3g} {r['truth']:<12} {r['median_abs_log10_err']:>7.3f}"
                     f" {r['max_abs_log10_err']:>7.3f} {r['sample_equivalents']:>7.0f} {r['mse_gain']:>9.3g}"
                     f" {r.get('hermite_abs_log10_err', math.nan):>7.2f}"
                     f" {r.get('mvn_cholesky_abs_log10_diff', math.nan):>7.3f}"
                     f" {r.get('scipy_abs_log10_err', math.nan):>7.4f}"
                     + (f"  sampling z {r['sampling_check_z']:+.2f}" if "sampling_check_z" in r else ""))
    lines += ["", f"summary over {SUMMARY_RANGE[0]:g} ≤ p ≤ {SUMMARY_RANGE[1]:g} (errors of every repeat):",
              *summary(rows + scale_rows), "", "scaling (p ≈ 1e-4; default budget):", *scaling_lines(scale_rows),
              "", "permanents (relative RMSE at equal FLOPs):"]
    lines += [f"  n={r['n']:<3} perm={r['true_p']:.4g}  sinkhorn-SIS {r['sinkhorn_sis_rel_rmse']:.3f}"
              f"  Godsil-Gutman {r['godsil_gutman_rel_rmse']:.3f}  uniform {r['uniform_permutations_rel_rmse']:.3f}"
              f"  ({r['sinkhorn_sis_flops']:.3g} FLOPs)" for r in perm_rows]
    lines += ["", f"CSV: {csv_path}", f"PNG: {png_path}"]
    print("\n".join(lines))
    return rows + scale_rows + perm_rows
