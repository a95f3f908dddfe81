"""The main job on an embedded default: π versus sampling at equal FLOPs.

A seeded random ReLU MLP (8 → 64 → 64 → 2, He-normal weights, small biases) on
x ~ N(0, I). π is built by Gaussian propagation and by method="auto" (which uses the
network's structure in input space for rare events), and "auto@3000" adds a budget of
3000 forward passes spent by importance sampling around π's design points; three fixed
events have true
probabilities near 1e-2, 1e-4 and 1e-6. For E[y] and each event the table shows each π's
estimate, cost in sample-equivalents and error, plain sampling with the FLOPs of the last
method, and a large sampling reference (one pass shared by all rows) with its 95% interval.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from explanations import Estimate, Gaussian, explain
from explanations.events import Above, All, Event
from explanations.montecarlo import draw_cost, mean_estimate, probability_estimate, tally

from .models import mlp

DEFAULT_WIDTHS = [8, 64, 64, 2]
METHODS = ("gaussian", "auto", "auto@3000")   # "@N": with a budget of N samples (guided IS)


@dataclass
class Row:
    name: str
    estimates: dict[str, Estimate]   # by method
    equal_flops: Estimate            # plain sampling with the FLOPs of the last method
    reference: Estimate
    index: int | None = None         # output index for expectation rows


def default_model() -> torch.nn.Sequential:
    return mlp(DEFAULT_WIDTHS, "relu", seed=0, bias_std=0.1)


def default_events() -> dict[str, Event]:
    """Three events on the default model. Thresholds were set from one 4·10⁸-sample run
    (seed 123, independent of the demo's reference) so that their true probabilities are
    about 1e-2, 1e-4 and 1e-6: the 99% quantile of y0; y1's conditional quantile given y0
    above its 99.8% quantile; the 10⁻⁶ upper quantile of y1."""
    return {
        "y0 > 1.162 (~1e-2)": Above(0, 1.162),
        "y0 > 1.746 & y1 > 6.847 (~1e-4)": All(Above(0, 1.746), Above(1, 6.847)),
        "y1 > 9.276 (~1e-6)": Above(1, 9.276),
    }


def run(reference: int = 5 * 10 ** 7, seed: int = 0, methods: tuple[str, ...] = METHODS,
        model: torch.nn.Module | None = None, events: dict[str, Event] | None = None) -> list[Row]:
    """The comparison table for `model` and `events` (the untrained default and its three
    fixed events unless given)."""
    model = model if model is not None else default_model()
    D = Gaussian.standard(DEFAULT_WIDTHS[0])
    built = {name: explain(model, D, name) for name in dict.fromkeys(m.partition("@")[0] for m in methods)}
    pis = {method: built[method.partition("@")[0]] for method in methods}
    budgets = {method: int(method.partition("@")[2]) if "@" in method else None for method in methods}
    graph, distribution = pis[methods[0]].graph, pis[methods[0]].distribution
    events = events if events is not None else default_events()
    unit = graph.flops_per_sample
    per_sample = draw_cost(graph, distribution)

    def equal(estimate: Estimate, event: Event | None) -> Estimate:
        n = max(1, int(estimate.flops // per_sample))
        counts = tally(graph, distribution, n, [event] if event else [], seed=seed + 1)
        return probability_estimate(counts.hits[0], counts, unit) if event else mean_estimate(counts, unit)

    started = time.perf_counter()
    big = tally(graph, distribution, reference, list(events.values()), seed=seed + 2, progress=True)
    elapsed = time.perf_counter() - started
    expectations = {m: pi.expectation(samples=budgets[m]) for m, pi in pis.items()}
    last = expectations[methods[-1]]
    rows = [Row(f"E[y{k}]", expectations, equal(last, None), mean_estimate(big, unit), k)
            for k in range(graph.n_outputs)]
    for i, (name, event) in enumerate(events.items()):
        estimates = {m: pi.probability(event, samples=budgets[m]) for m, pi in pis.items()}
        rows.append(Row(name, estimates, equal(estimates[methods[-1]], event),
                        probability_estimate(big.hits[i], big, unit)))
    print(f"model: {graph}\ninputs: N(0, I_{D.dim}); one forward pass = {unit:,} FLOPs;"
          f" reference: {reference:,} samples in {elapsed:.1f} s\n")
    print(format_table(rows, methods))
    return rows


def _show(estimate: Estimate, index: int | None) -> str:
    if index is not None:
        return f"{float(estimate.value[index]):+.5f}"
    if estimate.value > 0:
        return f"{estimate.value:.3e}"
    return f"1e{estimate.log10:.2f}" if math.isfinite(estimate.log10) else "0"


def _error(estimate: Estimate, reference: Estimate, index: int | None) -> str:
    """|π - ref| in output SDs for means, |log10(π/ref)| for probabilities."""
    if index is not None:
        sd = float(reference.details["std"][index])
        return f"{abs(float(estimate.value[index] - reference.value[index])) / sd:.4f} sd"
    if not math.isfinite(reference.log10):
        return "n/a"
    return f"{abs(estimate.log10 - reference.log10):.2f} dex"


def format_table(rows: list[Row], methods: tuple[str, ...]) -> str:
    """A plain-text table: each method's estimate, cost and error, then sampling at the
    last method's FLOPs and the reference."""
    header = ["quantity"]
    for m in methods:
        header += [f"π {m}", "cost [samples]", "error"]
    header += [f"sampling @ {methods[-1]} FLOPs", "reference", "95% interval"]
    lines = []
    for row in rows:
        line = [row.name]
        for m in methods:
            e = row.estimates[m]
            line += [_show(e, row.index), f"{e.sample_equivalents:,.0f}", _error(e, row.reference, row.index)]
        if row.index is not None:
            lo, hi = (float(v[row.index]) for v in row.reference.interval)
            interval = f"[{lo:+.5f}, {hi:+.5f}]"
        else:
            lo, hi = row.reference.interval
            interval = f"[{lo:.2e}, {hi:.2e}]"
        line += [f"{_show(row.equal_flops, row.index)} (N={row.equal_flops.samples:,})",
                 _show(row.reference, row.index), interval]
        lines.append(line)
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])
