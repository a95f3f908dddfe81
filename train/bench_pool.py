"""`pitrack bench pool RUNS.csv [RUNS.csv …]`: the runs of several `bench sampling` calls as one.

Twenty repeats leave an event's relative RMSE uncertain by a factor of about 1 ± √(2/R)
for Gaussian errors (twice the sd of a mean of R squared errors, halved by the root), and
more for heavy-tailed ones, so a count of events above 0.3 moves by several
between seed sets with nothing changed (29 and 35 at the same commit for seeds 0–19 and 20–39).
Pooling the runs CSVs of `--first-seed 0` and `--first-seed 20` gives 40 repeats per event.
Per event, over every pooled run r:
    relative RMSE = √(mean_r (p̂_r - p)²) / p,    coverage = #{low_r ≤ p ≤ high_r} / #runs,
with the RMSE's 95% bootstrap interval over the runs (`bench_sampling.mse_summary`; none
under 10 runs), and the report gives the counts above 0.3 (and how many of them are above
it beyond the runs' noise: the interval's lower end above 0.3) and 0.5, the median and
worst, the coverage, the
same split by the network's activation (where the case is in the zoo), and the per-sampler
lines of `bench sampling`. A run (case, event, seed) found in two files is refused: the same
seed twice would count one draw as two.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from .bench_sampling import mse_summary, sampler_lines
from .bench_tails import zoo
from .tables import read_csv

REQUIRED = ["case", "event", "seed", "true_p", "value", "log10", "covered", "sampler"]


def read_runs(paths: list[Path]) -> list[dict]:
    """The rows of runs CSVs written by `bench sampling`, typed; ValueError on a run seen twice."""
    runs, seen = [], {}
    for path in paths:
        for row in read_csv(path, REQUIRED, "bench sampling runs CSV"):
            key = (row["case"], row["event"], int(row["seed"]))
            if key in seen:
                raise ValueError(f"{path}: run {key} is already in {seen[key]}; pool distinct seed sets "
                                 "(bench sampling --first-seed)")
            seen[key] = path
            runs.append({**row, "seed": key[2], "true_p": float(row["true_p"]), "value": float(row["value"]),
                         "log10": float(row["log10"]), "covered": row["covered"] == "True"})
    return runs


def per_event(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Relative RMSE with its bootstrap interval's lower end, coverage and repeats of each
    (case, event) over its pooled runs."""
    events: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        events[run["case"], run["event"]].append(run)
    pooled = {}
    for key, mine in events.items():
        p = mine[0]["true_p"]
        mse, low, _ = mse_summary([r["value"] for r in mine], p)
        pooled[key] = {"relative_rmse": math.sqrt(mse) / p, "relative_rmse_low": math.sqrt(low) / p,
                       "covered": sum(r["covered"] for r in mine), "repeats": len(mine)}
    return pooled


def summary(label: str, events: dict[tuple[str, str], dict]) -> str:
    """One line: events, counts above 0.3 (and above it beyond noise) and 0.5, median and worst
    relative RMSE, coverage."""
    errors = [e["relative_rmse"] for e in events.values()]
    covered = sum(e["covered"] for e in events.values()) / sum(e["repeats"] for e in events.values())
    beyond = sum(e["relative_rmse_low"] > 0.3 for e in events.values())
    return (f"  {label:<10} {len(errors):>4} events  > 0.3: {sum(x > 0.3 for x in errors):>3} "
            f"(beyond noise {beyond:>3})  "
            f"> 0.5: {sum(x > 0.5 for x in errors):>3}  median {statistics.median(errors):.3f}  "
            f"worst {max(errors):.2f}  coverage {covered:.1%}")


def pool(paths: list[Path]) -> str:
    """The report of the module docstring for the runs in `paths`."""
    runs = read_runs(paths)
    if not runs:
        return "no runs in " + ", ".join(map(str, paths))
    events = per_event(runs)
    repeats = sorted({e["repeats"] for e in events.values()})
    activation = {case.name: case.activation for case in zoo() + zoo(quick=True)}
    lines = [f"pooled {len(runs)} runs from {len(paths)} file(s); repeats per event: "
             f"{', '.join(map(str, repeats))}", "relative RMSE per event, and 95% interval coverage:",
             summary("all", events)]
    for kind in sorted({activation.get(case, "other") for case, _ in events}):
        lines.append(summary(kind, {k: e for k, e in events.items() if activation.get(k[0], "other") == kind}))
    return "\n".join(lines + sampler_lines(runs))
