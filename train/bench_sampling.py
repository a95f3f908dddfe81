"""`pitrack bench sampling`: the hybrid (π-guided sampling) against plain sampling at equal FLOPs.

On the tail zoo of `bench_tails` (its networks, events and cached ground truth), for each
event with 1e-8 ≤ p ≤ 1e-2: R independent repeats of `explain(model, D, method,
seed=r).probability(event, flops=B)` (design-guided importance sampling or subset
simulation where π's Gaussian puts the event below 5e-2, plain sampling otherwise, see
`explanations.guided`) with a budget of B sample-equivalents in FLOPs: π's build, the
search and the draws are all paid from it. The budget split: π only guides the draws
here (the bulk test, the design search's starting points, the levels of subset
simulation), so the hybrid is `explain(model, D, "guide")`, the cheapest explanation
that does (see `explain`); the estimator itself sends the whole budget to plain draws
where π's part would take more than half of it.
Per event:
    MSE_hybrid = mean_r (p̂_r - p)²                         (includes the truth's own error²)
    MSE_plain  = p (1 - p) / N_eq,  N_eq = mean_r flops_r / (FLOPs of one draw)
the exact mean squared error of plain sampling with the same FLOPs (binomial: no need to
simulate it), their ratio, the hybrid's relative RMSE √MSE/p and how many of its 95%
intervals hold p. With R repeats the ratio itself is uncertain by a factor of about
1 ± 2√(2/R) (the spread of a mean of R squared errors). Writes a CSV and a PNG.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from explanations import compile_model, explain
from explanations.montecarlo import draw_cost

from .bench_tails import DEFAULT_CACHE, QUICK, Settings, build, ground_truth, zoo
from .tables import write_csv

DEFAULT_CSV = Path("out/bench_sampling.csv")
DEFAULT_PNG = Path("out/bench_sampling.png")
RANGE = (1e-8, 1e-2)
COLUMNS = ["case", "event", "true_p", "true_se", "repeats", "samples", "sample_equivalents", "hybrid_mse",
           "plain_mse", "mse_ratio", "relative_rmse", "covered", "methods", "note"]


def evaluate_event(case_name: str, model, graph, D, event, entry: dict, repeats: int, budget: int,
                   method: str = "guide") -> dict:
    """One row of the module docstring's figures for one event."""
    unit = draw_cost(graph, D)
    try:
        estimates = [explain(model, D, method, seed=r).probability(event, flops=budget * graph.flops_per_sample)
                     for r in range(repeats)]
    except ValueError as error:            # π's part (build, search) did not leave a draw
        return {"case": case_name, "event": repr(event), "true_p": entry["p"], "true_se": entry["se"],
                "repeats": repeats, "note": str(error)}
    p = entry["p"]
    values = [e.value for e in estimates]
    hybrid = statistics.fmean((v - p) ** 2 for v in values)
    equal_draws = statistics.fmean(e.flops for e in estimates) / unit
    plain = p * (1 - p) / equal_draws
    covered = sum(e.interval is not None and e.interval[0] <= p <= e.interval[1] for e in estimates)
    return {"case": case_name, "event": repr(event), "true_p": p, "true_se": entry["se"], "repeats": repeats,
            "samples": round(statistics.fmean(e.samples for e in estimates)), "sample_equivalents": statistics.fmean(e.sample_equivalents for e in estimates),
            "hybrid_mse": hybrid, "plain_mse": plain, "mse_ratio": plain / hybrid if hybrid > 0 else math.inf,
            "relative_rmse": math.sqrt(hybrid) / p, "covered": covered,
            "methods": ",".join(sorted({e.method for e in estimates}))}


def run(repeats: int = 20, budget: int = 10_000, quick: bool = False, cache: Path = DEFAULT_CACHE,
        csv_path: Path = DEFAULT_CSV, png_path: Path = DEFAULT_PNG, progress: bool = True,
        cases: list[str] | None = None) -> list[dict]:
    """Every zoo event in RANGE (module docstring), or those of the named `cases`; prints a
    table and a summary."""
    settings = QUICK if quick else Settings()
    rows = []
    chosen = [c for c in zoo(quick) if cases is None or c.name in cases]
    for case in tqdm(chosen, desc="bench sampling", unit="case", disable=not progress):
        model, D, _ = build(case)
        graph = compile_model(model)
        truth, _ = ground_truth(case, graph, D, settings, Path(cache))
        for spec, entry in zip(case.specs, truth["events"]):
            if not RANGE[0] <= entry["p"] <= RANGE[1]:
                continue
            event = spec.event(entry["level"], truth["mean"], truth["sd"])
            rows.append(evaluate_event(case.name, model, graph, D, event, entry, repeats, budget))
    write_csv(rows, Path(csv_path), COLUMNS)
    plot(rows, Path(png_path), budget)
    print(report(rows, budget, Path(csv_path), Path(png_path)))
    return rows


def report(rows: list[dict], budget: int, csv_path: Path, png_path: Path) -> str:
    lines = [f"{'case':<5} {'true p':>9} {'samples':>8} {'cost':>7} {'MSE plain/hybrid':>17} {'rel RMSE':>9} "
             f"{'covered':>8}  method"]
    failed = [r for r in rows if r.get("note")]
    for r in failed:
        lines.append(f"{r['case']:<5} {r['true_p']:>9.2e}  over budget: {r['note']}")
    rows = [r for r in rows if not r.get("note")]
    for r in rows:
        lines.append(f"{r['case']:<5} {r['true_p']:>9.2e} {r['samples']:>8,} {r['sample_equivalents']:>7,.0f} "
                     f"{r['mse_ratio']:>17.3g} {r['relative_rmse']:>9.3f} {r['covered']:>3}/{r['repeats']:<4}  "
                     f"{r['methods']}")
    if rows:
        rare = [r for r in rows if r["true_p"] <= 1e-5]
        pairs = sum(r["repeats"] for r in rows)
        lines += ["", f"budget {budget:,} sample-equivalents; {len(rows)} events, {pairs} (event, repeat) pairs"
                  f" ({len(failed)} events over budget)",
                  f"MSE ratio plain/hybrid: min {min(r['mse_ratio'] for r in rows):.3g}, "
                  f"median {statistics.median(r['mse_ratio'] for r in rows):.3g}; "
                  f"events with ratio < 1: {sum(r['mse_ratio'] < 1 for r in rows)}",
                  f"p ≤ 1e-5 ({len(rare)} events): min ratio "
                  f"{min((r['mse_ratio'] for r in rare), default=math.nan):.3g}, "
                  f"below 100: {sum(r['mse_ratio'] < 100 for r in rare)}",
                  f"relative RMSE: max {max(r['relative_rmse'] for r in rows):.3f}, "
                  f"above 0.3: {sum(r['relative_rmse'] > 0.3 for r in rows)}",
                  f"95% interval coverage: {sum(r['covered'] for r in rows)}/{pairs} "
                  f"({sum(r['covered'] for r in rows) / pairs:.1%})"]
    lines += [f"CSV: {csv_path}", f"PNG: {png_path}"]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, budget: int) -> None:
    """MSE ratio (plain / hybrid) and the hybrid's relative RMSE against the true p."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = [r for r in rows if not r.get("note")]
    p = np.array([r["true_p"] for r in rows])
    left.scatter(p, [r["mse_ratio"] for r in rows], s=20)
    left.axhline(1, color="0.4", linewidth=1, label="equal MSE")
    left.axhline(100, color="0.6", linestyle="--", linewidth=1, label="100× (target for p ≤ 1e-5)")
    left.set(xscale="log", yscale="log", xlabel="true p", ylabel="MSE plain / MSE hybrid",
             title=f"hybrid vs plain sampling at equal FLOPs (~{budget:,} samples)")
    left.legend(fontsize=8)
    right.scatter(p, [r["relative_rmse"] for r in rows], s=20)
    right.axhline(0.3, color="0.6", linestyle="--", linewidth=1, label="0.3 (target)")
    right.set(xscale="log", yscale="log", xlabel="true p", ylabel="relative RMSE of the hybrid",
              title="hybrid: relative root-mean-squared error")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
