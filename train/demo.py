"""The main job on an embedded default: π versus sampling at equal FLOPs.

A seeded random ReLU MLP (8 → 64 → 64 → 2, He-normal weights, small biases) on
x ~ N(0, I). π is built by Gaussian propagation; three fixed events have true
probabilities near 1e-2, 1e-4 and 1e-6. For E[y] and each event the table shows π's estimate
and cost in sample-equivalents, plain sampling with the same FLOPs, and a large sampling
reference (one pass shared by all rows) with its 95% interval.
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


@dataclass
class Row:
    name: str
    pi: Estimate
    equal_flops: Estimate
    reference: Estimate
    index: int | None = None   # output index for expectation rows


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


def run(reference: int = 5 * 10 ** 7, seed: int = 0) -> list[Row]:
    model = default_model()
    D = Gaussian.standard(DEFAULT_WIDTHS[0])
    pi = explain(model, D, "gaussian")
    events = default_events()
    unit = pi.flops_per_sample
    per_sample = draw_cost(pi.graph, pi.distribution)

    def equal(estimate: Estimate, event: Event | None) -> Estimate:
        n = max(1, int(estimate.flops // per_sample))
        counts = tally(pi.graph, pi.distribution, n, [event] if event else [], seed=seed + 1)
        return probability_estimate(counts.hits[0], counts, unit) if event else mean_estimate(counts, unit)

    started = time.perf_counter()
    big = tally(pi.graph, pi.distribution, reference, list(events.values()), seed=seed + 2, progress=True)
    elapsed = time.perf_counter() - started
    expectation = pi.expectation()
    rows = [Row(f"E[y{k}]", expectation, equal(expectation, None), mean_estimate(big, unit), k)
            for k in range(pi.graph.n_outputs)]
    for i, (name, event) in enumerate(events.items()):
        estimate = pi.probability(event)
        rows.append(Row(name, estimate, equal(estimate, event), probability_estimate(big.hits[i], big, unit)))
    print(f"model: {pi.graph}\ninputs: N(0, I_{D.dim}); one forward pass = {unit:,} FLOPs;"
          f" reference: {reference:,} samples in {elapsed:.1f} s\n")
    print(format_table(rows))
    return rows


def _show(estimate: Estimate, index: int | None) -> str:
    if index is not None:
        return f"{float(estimate.value[index]):+.5f}"
    if estimate.value > 0:
        return f"{estimate.value:.3e}"
    return f"1e{estimate.log10:.2f}" if math.isfinite(estimate.log10) else "0"


def format_table(rows: list[Row]) -> str:
    """A plain-text table; 'error' is |π - ref| in output SDs for means, |log10(π/ref)| for events."""
    header = ["quantity", "π (gaussian)", "π cost [samples]", "sampling @ equal FLOPs",
              "reference", "reference 95% interval", "π error"]
    lines = []
    for row in rows:
        if row.index is not None:
            sd = float(row.reference.details["std"][row.index])
            error = abs(float(row.pi.value[row.index] - row.reference.value[row.index])) / sd
            error_text = f"{error:.4f} sd"
            lo, hi = (float(v[row.index]) for v in row.reference.interval)
            interval = f"[{lo:+.5f}, {hi:+.5f}]"
        else:
            ref = row.reference.log10
            error_text = f"{abs(row.pi.log10 - ref):.2f} dex" if math.isfinite(ref) else "n/a (no hits)"
            lo, hi = row.reference.interval
            interval = f"[{lo:.2e}, {hi:.2e}]"
        lines.append([row.name, _show(row.pi, row.index), f"{row.pi.sample_equivalents:,.0f}",
                      f"{_show(row.equal_flops, row.index)} (N={row.equal_flops.samples:,})",
                      _show(row.reference, row.index), interval, error_text])
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])
