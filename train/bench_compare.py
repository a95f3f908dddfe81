"""`pitrack bench compare TAILS.csv [TAILS.csv …]`: several `bench tails` tables side by side.

A zero-sample estimate moves with π's seed (its searches and fits: a median standard
deviation of about 0.06 dex per event over seeds 0–2 at stop 20), so a change to an
estimator is judged on several seeds and against the same seeds before it, event by event.
Each (file, method) is one column; events are matched by (case, event) and kept where
SUMMARY_RANGE holds the truth. Per column, the signed error e = log10(p̂/p) gives
    median |e|, worst |e|, #{|e| > 0.5}, mean e (a bias shows here, not in |e|), max cost;
and, against the first column, the events better and worse by more than MOVED dex in |e|
(the count stop 20's notes used). Below, one line per event with every column's e, flagged
where any |e| exceeds FLAGGED. An estimate of 0 reads e = -inf and counts as the worst; a
query that failed (no estimate) is left out and counted in its column's line.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .bench_tails import SUMMARY_RANGE
from .tables import read_csv

REQUIRED = ["case", "event", "method", "true_p", "estimate_log10", "sample_equivalents"]
MOVED = 0.02            # dex: a smaller change in |e| is not counted as better or worse
FLAGGED = 0.5           # dex: an event with any |e| above this is marked


def read_tables(paths: list[Path]) -> tuple[dict[str, dict[tuple[str, str], dict]], dict[str, int]]:
    """Per column "file: method", the events of SUMMARY_RANGE with their signed error and
    cost, and the count of its events there that failed (no estimate: left out of the
    figures, and named in the column's line); ValueError for a file that is not a bench
    tails CSV."""
    lo, hi = SUMMARY_RANGE
    columns: dict[str, dict[tuple[str, str], dict]] = {}
    failed: dict[str, int] = {}
    for path in paths:
        for row in read_csv(path, REQUIRED, "bench tails CSV"):
            p, label = float(row["true_p"]), f"{path}: {row['method']}"
            if not lo <= p <= hi:
                continue
            column = columns.setdefault(label, {})
            if row["estimate_log10"] == "":
                failed[label] = failed.get(label, 0) + 1
                continue
            column[row["case"], row["event"]] = {"error": float(row["estimate_log10"]) - math.log10(p),
                                                 "cost": float(row["sample_equivalents"]), "p": p}
    return columns, failed


def summary(label: str, events: dict[tuple[str, str], dict], first: dict[tuple[str, str], dict],
            failed: int = 0) -> str:
    """One column's line (module docstring)."""
    errors = [abs(e["error"]) for e in events.values()] or [math.nan]
    line = (f"  {label}: {len(events)} events" + (f" ({failed} failed, left out)" if failed else "")
            + f"  median {statistics.median(errors):.4f}  worst {max(errors):.2f}  "
            f"> {FLAGGED}: {sum(x > FLAGGED for x in errors)}  "
            f"mean error {statistics.fmean([e['error'] for e in events.values()] or [math.nan]):+.3f}  "
            f"max cost {max([e['cost'] for e in events.values()] or [math.nan]):,.0f}")
    if events is first:
        return line
    shared = [key for key in events if key in first]
    change = [abs(events[k]["error"]) - abs(first[k]["error"]) for k in shared]
    return line + (f"  vs the first: {sum(c < -MOVED for c in change)} better, "
                   f"{sum(c > MOVED for c in change)} worse of {len(shared)}")


def compare(paths: list[Path]) -> str:
    """The report of the module docstring for the bench tails CSVs in `paths`."""
    columns, failed = read_tables(paths)
    if not columns:
        return "no events with " + f"{SUMMARY_RANGE[0]:g} ≤ p ≤ {SUMMARY_RANGE[1]:g} in " + ", ".join(map(str, paths))
    labels = list(columns)
    first = columns[labels[0]]
    lines = [f"|log10 p̂/p| over events with {SUMMARY_RANGE[0]:g} ≤ p ≤ {SUMMARY_RANGE[1]:g}; columns:"]
    lines += [summary(f"[{i}] {label}", columns[label], first, failed.get(label, 0)) for i, label in enumerate(labels)]
    keys = list(dict.fromkeys(key for label in labels for key in columns[label]))
    lines.append(f"signed error per event (* where one is beyond {FLAGGED} dex):")
    width = max(len(f"{case} {event}") for case, event in keys)
    for key in keys:
        errors = [columns[label][key]["error"] if key in columns[label] else math.nan for label in labels]
        flag = "*" if any(abs(e) > FLAGGED for e in errors) else " "
        p = next(columns[label][key]["p"] for label in labels if key in columns[label])
        lines.append(f"{flag} {f'{key[0]} {key[1]}':<{width}}  p {p:.1e}  " + "  ".join(f"{e:+6.2f}" for e in errors))
    return "\n".join(lines)
