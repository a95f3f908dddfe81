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
1 ± 2√(2/R) (the spread of a mean of R squared errors), more where one run dominates: the
table gives each event's 95% percentile-bootstrap interval of MSE_hybrid over its runs
(`mse_summary`), hence of the ratio and the relative RMSE, and the report counts the
events that miss a target beyond that noise (the whole interval on the wrong side). With
heavy-tailed errors the interval is itself uncertain: its upper end of MSE_hybrid is low
when the rare large errors were not drawn. Writes a CSV and a PNG, and a
second CSV with every run (seed, estimate, interval, sampler, effective hits, the unbiased
estimate and the weights cut of importance sampling), from which
the report's coverage and run-by-run |log10(p̂/p)| by sampler come. `first_seed`
(`--first-seed`) moves the repeats to seeds first_seed … first_seed + R - 1: a check on
other seeds with the same command.

With `openturns=True` (`--openturns`; needs `pip install -e .[openturns]`), the same events
also go to OpenTURNS' FORM, SORM, subset sampling and cross-entropy importance sampling at
a budget of B model evaluations each (`train.openturns_methods`; the stochastic ones with
R_OT repeats, by default R): the CSV gains their relative errors (relative RMSE for the
stochastic ones) and evaluations, the best of them per event, and the ratio
best OpenTURNS error / hybrid relative RMSE (> 1: the hybrid wins); the report gains a
table and the win/loss count; a second PNG (`<png>_openturns.png`) plots them.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from explanations import compile_model, explain
from explanations.montecarlo import draw_cost

from .bench_tails import DEFAULT_CACHE, QUICK, Settings, build, ground_truth, zoo
from .figures import save, subplots
from .tables import write_csv

DEFAULT_CSV = Path("out/bench_sampling.csv")
DEFAULT_PNG = Path("out/bench_sampling.png")
DEFAULT_RUNS = Path("out/bench_sampling_runs.csv")
RANGE = (1e-8, 1e-2)
COLUMNS = ["case", "event", "true_p", "true_se", "repeats", "samples", "sample_equivalents", "hybrid_mse",
           "plain_mse", "mse_ratio", "mse_ratio_low", "mse_ratio_high", "relative_rmse", "relative_rmse_low",
           "relative_rmse_high", "covered", "methods", "note"]
RESAMPLES, MIN_RUNS = 2000, 10     # bootstrap resamples of an event's runs, and the fewest runs (`mse_summary`)
RUN_DETAILS = ["effective_hits", "pilot_effective_hits", "pilot_mode_hits", "coefficient_of_variation_bound",
               "unbiased", "cut_weights"]   # from Estimate.details
RUN_COLUMNS = ["case", "event", "true_p", "seed", "value", "log10", "low", "high", "covered", "sampler",
               "sample_equivalents"] + RUN_DETAILS


def mse_summary(values: list[float], p: float, resamples: int = RESAMPLES, seed: int = 0
                ) -> tuple[float, float, float]:
    """mean_r (p̂_r - p)² over the runs' estimates `values`, and its 95% percentile-bootstrap
    interval (Efron & Tibshirani 1993, ch. 13: `resamples` resamples of the R runs with
    replacement, from a fixed generator, so that a table is reproducible; every event of R
    runs draws the same resamples). Fewer than MIN_RUNS runs give (0, ∞): a percentile
    bootstrap of so few is too narrow to say anything. An estimate that is not finite makes
    the interval nan."""
    if not values:
        raise ValueError("no runs to summarise")
    squares = (np.asarray(values, dtype=np.float64) - p) ** 2
    mse = float(squares.mean())
    if not np.isfinite(squares).all():
        return mse, math.nan, math.nan
    if len(squares) < MIN_RUNS:
        return mse, 0.0, math.inf
    picks = np.random.default_rng(seed).integers(0, len(squares), size=(resamples, len(squares)))
    low, high = np.quantile(squares[picks].mean(axis=1), [0.025, 0.975])
    return mse, float(low), float(high)


def ratio(plain: float, mse: float) -> float:
    """plain/mse: ∞ where mse is 0, nan where it is nan."""
    return plain / mse if mse != 0 else math.inf


def error_columns(values: list[float], p: float, plain: float) -> dict:
    """The hybrid's MSE and relative RMSE over its runs, the ratio plain/hybrid MSE, and
    their bootstrap intervals (`mse_summary`): the ratio's low end is plain over the MSE's
    high end, and its high end plain over the MSE's low end."""
    mse, low, high = mse_summary(values, p)
    return {"hybrid_mse": mse, "mse_ratio": ratio(plain, mse), "mse_ratio_low": ratio(plain, high),
            "mse_ratio_high": ratio(plain, low), "relative_rmse": math.sqrt(mse) / p,
            "relative_rmse_low": math.sqrt(low) / p, "relative_rmse_high": math.sqrt(high) / p}


def evaluate_event(case_name: str, model, graph, D, event, entry: dict, repeats: int, budget: int,
                   method: str = "guide", first_seed: int = 0) -> tuple[dict, list[dict]]:
    """One row of the module docstring's figures for one event (the hybrid's part), and
    one record per run."""
    unit = draw_cost(graph, D)
    seeds = range(first_seed, first_seed + repeats)
    try:
        estimates = [explain(model, D, method, seed=r).probability(event, flops=budget * graph.flops_per_sample)
                     for r in seeds]
    except ValueError as error:            # π's part (build, search) did not leave a draw
        return {"case": case_name, "event": repr(event), "true_p": entry["p"], "true_se": entry["se"],
                "repeats": repeats, "note": str(error)}, []
    p = entry["p"]
    runs = [{"case": case_name, "event": repr(event), "true_p": p, "seed": r, "value": e.value, "log10": e.log10,
             "low": e.interval[0] if e.interval else None, "high": e.interval[1] if e.interval else None,
             "covered": e.interval is not None and e.interval[0] <= p <= e.interval[1],
             "sampler": e.method.rpartition("+")[2] if "+" in e.method else "plain",
             "sample_equivalents": e.sample_equivalents,
             **{k: e.details.get(k) for k in RUN_DETAILS}} for r, e in zip(seeds, estimates)]
    values = [e.value for e in estimates]
    equal_draws = statistics.fmean(e.flops for e in estimates) / unit
    plain = p * (1 - p) / equal_draws
    covered = sum(run["covered"] for run in runs)
    return {"case": case_name, "event": repr(event), "true_p": p, "true_se": entry["se"], "repeats": repeats,
            "samples": round(statistics.fmean(e.samples for e in estimates)), "sample_equivalents": statistics.fmean(e.sample_equivalents for e in estimates),
            "plain_mse": plain, **error_columns(values, p, plain), "covered": covered,
            "methods": ",".join(sorted({e.method for e in estimates}))}, runs


def versus_openturns(row: dict, graph, D, event, budget: int, repeats: int) -> dict:
    """The row with OpenTURNS' methods on the same event and the ratio of the best one's
    relative error to the hybrid's relative RMSE (module docstring)."""
    from .openturns_methods import compare

    row = dict(row, **compare(graph, D, event, row["true_p"], budget, repeats))
    if row.get("relative_rmse") is not None and row.get("best_ot_rel_error") is not None:
        row["best_ot_over_hybrid"] = (row["best_ot_rel_error"] / row["relative_rmse"] if row["relative_rmse"] > 0
                                      else math.inf)
    return row


def chosen_cases(quick: bool, names: list[str] | None) -> list:
    """The zoo's cases (of --quick's zoo if `quick`) named in `names`, all of them for None;
    a ValueError lists the names it does not know."""
    cases = zoo(quick)
    if names is None:
        return cases
    unknown = sorted(set(names) - {c.name for c in cases})
    if unknown:
        raise ValueError(f"unknown cases {unknown}; the {'quick ' if quick else ''}zoo has "
                         f"{', '.join(c.name for c in cases)}")
    return [c for c in cases if c.name in names]


def run(repeats: int = 20, budget: int = 10_000, quick: bool = False, cache: Path = DEFAULT_CACHE,
        csv_path: Path = DEFAULT_CSV, png_path: Path = DEFAULT_PNG, progress: bool = True,
        cases: list[str] | None = None, openturns: bool = False, openturns_repeats: int | None = None,
        first_seed: int = 0, runs_path: Path = DEFAULT_RUNS) -> list[dict]:
    """Every zoo event in RANGE (module docstring), or those of the named `cases`; prints a
    table and a summary. With `openturns`, OpenTURNS' methods beside (`openturns_repeats`
    runs of the stochastic ones, default `repeats`)."""
    settings = QUICK if quick else Settings()
    ot_repeats = repeats if openturns_repeats is None else openturns_repeats
    if openturns:             # fails here, before the hybrid's runs, if the extra is not installed
        from .openturns_methods import COLUMNS as OT_COLUMNS
    rows, runs = [], []
    started = time.perf_counter()
    chosen = chosen_cases(quick, cases)
    for case in tqdm(chosen, desc="bench sampling", unit="case", disable=not progress):
        model, D, _ = build(case)
        graph = compile_model(model)
        truth, _ = ground_truth(case, graph, D, settings, Path(cache))
        for spec, entry in zip(case.specs, truth["events"]):
            if not RANGE[0] <= entry["p"] <= RANGE[1]:
                continue
            event = spec.event(entry["level"], truth["mean"], truth["sd"])
            row, event_runs = evaluate_event(case.name, model, graph, D, event, entry, repeats, budget,
                                             first_seed=first_seed)
            runs += event_runs
            rows.append(versus_openturns(row, graph, D, event, budget, ot_repeats) if openturns else row)
    write_csv(rows, Path(csv_path), COLUMNS + (OT_COLUMNS + ["best_ot_over_hybrid"] if openturns else []))
    write_csv(runs, Path(runs_path), RUN_COLUMNS)
    print(report(rows, budget, Path(csv_path), Path(png_path)))
    if any(r.get("mse_ratio") is not None for r in rows):        # nothing to plot where every event failed
        plot(rows, Path(png_path), budget)
    print(report_runs(runs, Path(runs_path)))
    if openturns:
        ot_png = Path(png_path).with_name(Path(png_path).stem + "_openturns.png")
        plot_openturns(rows, ot_png, budget)
        print(report_openturns(rows, budget, ot_png))
    print(f"wall time {time.perf_counter() - started:.0f} s")
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
                  f"events with ratio < 1: {sum(r['mse_ratio'] < 1 for r in rows)} "
                  f"(beyond the repeats' noise: {sum(r['mse_ratio_high'] < 1 for r in rows)})",
                  f"p ≤ 1e-5 ({len(rare)} events): min ratio "
                  f"{min((r['mse_ratio'] for r in rare), default=math.nan):.3g}, "
                  f"below 100: {sum(r['mse_ratio'] < 100 for r in rare)} "
                  f"(beyond noise: {sum(r['mse_ratio_high'] < 100 for r in rare)})",
                  f"relative RMSE: max {max(r['relative_rmse'] for r in rows):.3f}, "
                  f"above 0.3: {sum(r['relative_rmse'] > 0.3 for r in rows)} "
                  f"(beyond noise: {sum(r['relative_rmse_low'] > 0.3 for r in rows)})",
                  f"95% interval coverage: {sum(r['covered'] for r in rows)}/{pairs} "
                  f"({sum(r['covered'] for r in rows) / pairs:.1%})"]
    lines += [f"CSV: {csv_path}", f"PNG: {png_path}"]
    return "\n".join(lines)


def report_runs(runs: list[dict], runs_path: Path) -> str:
    """`sampler_lines` and where the runs were written."""
    return "\n".join(sampler_lines(runs) + [f"runs CSV: {runs_path}"])


def sampler_lines(runs: list[dict]) -> list[str]:
    """Per sampler (design-IS, subset-simulation, plain): runs, interval coverage and the
    spread of |log10(p̂/p)| over runs (the tail benchmark's error, run by run, from the
    estimate's log10, which survives underflow; p̂ = 0 counts as infinitely far)."""
    lines = ["by sampler: runs, 95% coverage, |log10(p̂/p)| median / 95th / 99th percentile, share > 0.5"]
    for sampler in sorted({r["sampler"] for r in runs}) + ["all"]:
        mine = [r for r in runs if sampler in ("all", r["sampler"])]
        if not mine:
            continue
        covered = sum(r["covered"] for r in mine)
        dex = np.abs(np.array([r["log10"] - math.log10(r["true_p"]) for r in mine]))
        median, high, highest = np.quantile(dex, [0.5, 0.95, 0.99], method="nearest")
        lines.append(f"  {sampler:<18} {len(mine):>5}  {covered / len(mine):6.1%}  {median:.3f} / {high:.2f} / "
                     f"{highest:.2f}  {np.mean(dex > 0.5):.1%}")
    return lines


def plot(rows: list[dict], path: Path, budget: int) -> None:
    """MSE ratio (plain / hybrid) and the hybrid's relative RMSE against the true p."""
    figure, (left, right) = subplots(path, 1, 2, figsize=(11, 4.5))
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
    save(figure, path)


OT_LABELS = {"form": "FORM", "sorm": "SORM", "subset": "subset", "cross_entropy": "CE-IS"}
CLEAR = 1.5       # a ratio of relative errors past this is counted as a clear win or loss


def ot_error(row: dict, method: str) -> float | None:
    """An OpenTURNS method's relative error on the row's event (RMSE for the stochastic ones)."""
    return row.get(f"{method}_rel_error", row.get(f"{method}_rel_rmse"))


def hybrid_wins(row: dict) -> bool:
    """The hybrid's relative RMSE is below the best OpenTURNS method's relative error (a
    hybrid without an estimate loses; OpenTURNS without any estimate loses)."""
    if row.get("relative_rmse") is None:
        return False
    return row.get("best_ot_rel_error") is None or row["relative_rmse"] < row["best_ot_rel_error"]


def report_openturns(rows: list[dict], budget: int, png_path: Path) -> str:
    """Per event the hybrid's relative RMSE beside each OpenTURNS method's relative error
    and the best of them; win/loss counts and medians."""
    from .openturns_methods import METHODS

    def cell(value: float | None) -> str:
        return f"{value:>8.3g}" if value is not None else f"{'failed':>8}"

    lines = ["", f"OpenTURNS at equal model evaluations (budget {budget:,}; FORM and SORM one run, |p̂-p|/p; "
             f"subset sampling and CE-IS relative RMSE over {rows[0]['ot_repeats'] if rows else 0} runs; the hybrid's "
             f"relative RMSE over {rows[0]['repeats'] if rows else 0} runs):",
             f"{'case':<5} {'true p':>9} {'hybrid':>8} " + " ".join(f"{OT_LABELS[m]:>8}" for m in METHODS)
             + f"  {'best OT':<7} {'OT/hybrid':>9}  verdict"]
    for r in rows:
        ratio = r.get("best_ot_over_hybrid")
        lines.append(f"{r['case']:<5} {r['true_p']:>9.2e} {cell(r.get('relative_rmse'))} "
                     + " ".join(cell(ot_error(r, m)) for m in METHODS)
                     + f"  {OT_LABELS.get(r.get('best_ot'), '-'):<7} "
                     + (f"{ratio:>9.3g}" if ratio is not None else f"{'-':>9}")
                     + f"  {'wins' if hybrid_wins(r) else 'LOSES'}")
    if not rows:
        return "\n".join(lines)
    wins = [r for r in rows if hybrid_wins(r)]
    losses = [r for r in rows if not hybrid_wins(r)]
    hybrid = [r["relative_rmse"] for r in rows if r.get("relative_rmse") is not None]
    best = [r["best_ot_rel_error"] for r in rows if r.get("best_ot_rel_error") is not None]
    ratios = [r["best_ot_over_hybrid"] for r in rows if r.get("best_ot_over_hybrid") is not None]
    lines += ["", f"hybrid vs the best OpenTURNS method per event (picked with the truth): wins on {len(wins)}, "
              f"loses on {len(losses)} of {len(rows)} events; by more than {CLEAR}×: wins on "
              f"{sum(x > CLEAR for x in ratios)}, loses on {sum(x < 1 / CLEAR for x in ratios)}",
              f"median relative error: hybrid {statistics.median(hybrid):.3g}, best OpenTURNS "
              f"{statistics.median(best):.3g}; median ratio best OpenTURNS / hybrid {statistics.median(ratios):.3g}"
              if hybrid and best and ratios else "no medians: no estimates"]
    decades: dict[int, list[dict]] = {}
    for r in rows:
        decades.setdefault(round(math.log10(r["true_p"])), []).append(r)
    cases: dict[str, list[dict]] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    lines += ["hybrid wins / events by true p: " + ", ".join(
                  f"~1e{k}: {sum(map(hybrid_wins, v))}/{len(v)}" for k, v in sorted(decades.items(), reverse=True)),
              "by case: " + ", ".join(f"{k} {sum(map(hybrid_wins, v))}/{len(v)}" for k, v in cases.items())]
    for method in METHODS:
        done = [(r, ot_error(r, method)) for r in rows if ot_error(r, method) is not None]
        spent = [r[f"{method}_evaluations"] / budget for r, _ in done]
        beaten = sum(r.get("relative_rmse") is not None and r["relative_rmse"] < e for r, e in done)
        lines.append(f"  {OT_LABELS[method]:<6} median relative error "
                     f"{statistics.median(e for _, e in done) if done else math.nan:.3g}, failed on "
                     f"{len(rows) - len(done)}, best on {sum(r.get('best_ot') == method for r in rows)}; "
                     f"evaluations / budget where it returned: median "
                     f"{statistics.median(spent) if spent else math.nan:.2f}, range "
                     f"{min(spent, default=math.nan):.2f}–{max(spent, default=math.nan):.2f}; the hybrid beats it on "
                     f"{beaten + len(rows) - len(done)} of {len(rows)}")
    notes = [f"  {r['case']} {r['event']}: {r['ot_note']}" for r in rows if r.get("ot_note")]
    if notes:
        lines += [f"OpenTURNS notes ({len(notes)} events):"] + notes
    lines.append(f"PNG: {png_path}")
    return "\n".join(lines)


def plot_openturns(rows: list[dict], path: Path, budget: int) -> None:
    """Left: the hybrid's relative RMSE against the best OpenTURNS method's relative error
    per event; right: every method's relative error against the true p."""
    from .openturns_methods import METHODS

    figure, (left, right) = subplots(path, 1, 2, figsize=(12, 5))
    both = [r for r in rows if r.get("relative_rmse") is not None and r.get("best_ot_rel_error") is not None]
    for method, marker in zip(METHODS, "osD^"):
        shown = [r for r in both if r["best_ot"] == method]
        left.scatter([r["best_ot_rel_error"] for r in shown], [r["relative_rmse"] for r in shown], s=22,
                     marker=marker, alpha=0.8, label=f"best: {OT_LABELS[method]} ({len(shown)})")
    values = [v for r in both for v in (r["best_ot_rel_error"], r["relative_rmse"]) if v > 0]
    if values:
        line = np.logspace(math.log10(min(values)) - 0.2, math.log10(max(values)) + 0.2, 10)
        left.plot(line, line, color="0.4", linewidth=1, label="equal (below: the hybrid wins)")
    left.set(xscale="log", yscale="log", xlabel="best OpenTURNS method: relative error",
             ylabel="hybrid: relative RMSE", title=f"per event, at ~{budget:,} model evaluations")
    left.legend(fontsize=8)
    p = [r["true_p"] for r in rows]
    for method, marker in zip(METHODS, "osD^"):
        right.scatter(p, [ot_error(r, method) or math.nan for r in rows], s=16, marker=marker, alpha=0.6,
                      label=OT_LABELS[method])
    right.scatter(p, [r.get("relative_rmse") or math.nan for r in rows], s=26, color="k", zorder=3,
                  label="hybrid (π-guided)")
    right.set(xscale="log", yscale="log", xlabel="true p", ylabel="relative error (RMSE for sampling methods)",
              title="every method against the true p")
    right.legend(fontsize=8)
    save(figure, path)
