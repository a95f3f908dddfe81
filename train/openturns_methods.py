"""OpenTURNS reliability methods on a network's event, at a budget of model evaluations.

The optional baseline of `pitrack bench sampling --openturns`; needs the extra
(`pip install -e .[openturns]`, OpenTURNS ≥ 1.20; tested with 1.27). The event is the
limit state g(ξ) > 0 of `train.limit_state` in whitened input space ξ ~ N(0, I_d)
(standard normal, so OpenTURNS' iso-probabilistic transform is the identity), as an
`ot.PythonFunction` evaluated in batches by torch (float64) with its gradient by autograd,
and `ot.ThresholdEvent(CompositeRandomVector(g, RandomVector(Normal(d))), Greater(), 0)`.
Every point evaluated is counted (`LimitState.evaluations`: one per point, three per
gradient, finite-difference Hessians included) and each method is charged what it used.

- FORM (Hasofer & Lind, J. Eng. Mech. 100, 1974; Rackwitz & Fiessler, Computers &
  Structures 9, 1978): the design point ξ* = argmin |ξ| subject to g(ξ) = 0, found by
  sequential quadratic programming (NLopt's SLSQP, Kraft 1988, `ot.NLopt("LD_SLSQP")`,
  with the autograd gradient) from the origin, at most B calls; p = Φ(-|ξ*|).
  OpenTURNS' Abdo–Rackwitz iteration, its SQP and Cobyla stall at the kinks of ReLU nets
  (the design point they return is off the limit state and FORM raises): in a trial on
  r01, r02, r06 and r07 (17 events) Abdo–Rackwitz failed on 14, SLSQP on none.
- SORM (Breitung, J. Eng. Mech. 110, 1984): the same design search, then the main
  curvatures κ_i of g = 0 at ξ* from OpenTURNS' centred finite-difference Hessian (step
  1e-4), p = Φ(-β) Π (1 + βκ_i)^(-1/2). Breitung's formula rather than Hohenbichler's: it
  is the asymptotic result for β → ∞, the regime of rare events (β ≈ 2.3–5.6 here), and
  needs no further approximation. It is undefined where a curvature is below -1/β
  (recorded as a failure). On ReLU nets the Hessian sees the kinks (curvatures of tens),
  so SORM's p̂ collapses or is undefined; larger steps (1e-2 to 0.3) did not make it
  usable there (trial on 9 nets), so OpenTURNS' default step is kept.
- Subset sampling (Au & Beck, Prob. Eng. Mech. 16, 2001; `ot.SubsetSampling`): levels
  of conditional probability 0.1, N points per level (plain sampling, then modified
  Metropolis chains from the previous level's seeds).
- Cross-entropy importance sampling (Rubinstein, Eur. J. Oper. Res. 99, 1997; Rubinstein
  & Kroese 2004; `ot.StandardSpaceCrossEntropyImportanceSampling`): a normal proposal with
  a diagonal covariance, refitted to the ρ = 0.1 elite draws of each level, then the
  importance-sampling estimate with the last proposal; N points per level.

Budget of the stochastic methods: each level costs N evaluations and the number of
levels depends on p, so N = round(B / levels) with the level count averaged over three
uncharged pilot runs at N = B/10 per event and method (seeded apart from the repeats):
OpenTURNS is given the number of levels for free, and the evaluations actually used are
reported (their mean over the repeats; a run whose level count differs from the pilots'
uses more or less than B). A run is stopped at 5B evaluations (recorded as a failure).
FORM and SORM are deterministic: one run each, relative error |p̂ - p|/p, evaluations as
used (SORM is charged its own design search). The stochastic ones: R runs seeded
r = 0 … R-1 (`ot.RandomGenerator.SetSeed`), relative RMSE √(mean_r (p̂_r - p)²)/p over
the runs that returned an estimate (failed runs are listed in the note; with fewer than
half returning, the method has no error on that event). The best method of an event is
the one with the smallest relative error, picked with the truth (an oracle choice, in
OpenTURNS' favour). OpenTURNS' own work (Markov chains, proposal fits) is not charged.

Run: `pip install -e .[openturns]`, then `pitrack bench sampling --openturns` (outputs
`out/bench_sampling.csv`, `out/bench_sampling_openturns.png`). Measured on the zoo's 106
events at B = 10⁴, R = 20 (OpenTURNS 1.27; 7 minutes here): medians of relative error
cross-entropy IS 0.23, subset 0.58, SORM 0.80 (undefined on 37 events), FORM 4.4; how the
hybrid compares is in the README ("Against OpenTURNS at equal model evaluations").
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import openturns as ot
import torch

from explanations.distributions import Gaussian
from explanations.events import Event
from explanations.graph import Graph

from .limit_state import STOPPED, LimitState

ANALYTICAL = ("form", "sorm")
STOCHASTIC = ("subset", "cross_entropy")
METHODS = ANALYTICAL + STOCHASTIC
CONDITIONAL_PROBABILITY = 0.1       # subset sampling: P(F_i | F_i-1)
ELITE_QUANTILE = 0.1                # cross-entropy: the elite fraction ρ
PILOT_FRACTION = 10                 # pilot runs have B / 10 points per level
PILOT_RUNS = 3
PILOT_SEED = 1_000_003
RUNAWAY = 5                         # a run is stopped at 5B evaluations
COLUMNS = ([f"{m}_{c}" for m in ANALYTICAL for c in ("p", "rel_error", "evaluations")]
           + [f"{m}_{c}" for m in STOCHASTIC for c in ("rel_rmse", "evaluations", "level_size")]
           + ["ot_repeats", "best_ot", "best_ot_rel_error", "ot_seconds", "ot_note"])


@dataclass
class Run:
    """One run of a method: p̂ (None if it failed), the evaluations it used, a note."""
    p: float | None
    evaluations: int
    note: str = ""


def threshold_event(limit: LimitState) -> ot.ThresholdEvent:
    """{g(ξ) > 0} for ξ ~ N(0, I_d) as an OpenTURNS event (module docstring)."""
    def values(points) -> np.ndarray:
        return limit(torch.as_tensor(np.asarray(points), dtype=torch.float64)).numpy()[:, None]

    def gradient(point) -> np.ndarray:
        return limit.gradient(torch.as_tensor(np.asarray(point), dtype=torch.float64)).numpy()[:, None]

    function = ot.PythonFunction(limit.dim, 1, func_sample=values, gradient=gradient)
    inputs = ot.RandomVector(ot.Normal(limit.dim))
    return ot.ThresholdEvent(ot.CompositeRandomVector(function, inputs), ot.Greater(), 0.0)


def _charged(limit: LimitState, budget: int, body: Callable[[ot.ThresholdEvent], tuple[float, str]]) -> Run:
    """Run `body` on a fresh meter capped at RUNAWAY × budget; failures become notes."""
    limit.evaluations, limit.limit = 0, RUNAWAY * budget
    try:
        p, note = body(threshold_event(limit))
    except Exception as error:           # OpenTURNS raises its errors as RuntimeError, TypeError,
        if STOPPED in str(error):        # ... and wraps those raised in g (BudgetExceeded)
            return Run(None, limit.evaluations, f"stopped at {RUNAWAY}× the budget")
        return Run(None, limit.evaluations, f"failed: {str(error).splitlines()[0][:160]}")
    finally:
        limit.limit = None
    if not math.isfinite(p):
        return Run(None, limit.evaluations, "failed: non-finite estimate")
    return Run(p, limit.evaluations, note)


def _solver(dim: int, budget: int) -> ot.NLopt:
    solver = ot.NLopt("LD_SLSQP")
    solver.setMaximumCallsNumber(budget)
    solver.setStartingPoint(ot.Point(dim, 0.0))
    return solver


def _convergence(result: ot.OptimizationResult) -> str:
    return "" if result.getStatus() == ot.OptimizationResult.SUCCESS else \
        f"design search: {result.getStatusMessage() or 'status ' + str(result.getStatus())}"


def approximation(kind: str, limit: LimitState, budget: int) -> Run:
    """FORM at the SLSQP design point, or SORM by Breitung's formula with its FORM search
    charged to it (module docstring); `kind` is "form" or "sorm"."""
    def body(event: ot.ThresholdEvent) -> tuple[float, str]:
        algorithm = (ot.FORM if kind == "form" else ot.SORM)(_solver(limit.dim, budget), event)
        algorithm.run()
        result = algorithm.getResult()
        p = result.getEventProbability() if kind == "form" else result.getEventProbabilityBreitung()
        return p, _convergence(result.getOptimizationResult())
    return _charged(limit, budget, body)


def _simulation(kind: str, event: ot.ThresholdEvent, level_size: int) -> ot.EventSimulation:
    if kind == "subset":
        algorithm = ot.SubsetSampling(event)
        algorithm.setConditionalProbability(CONDITIONAL_PROBABILITY)
    else:
        algorithm = ot.StandardSpaceCrossEntropyImportanceSampling(event, ELITE_QUANTILE)
    algorithm.setMaximumOuterSampling(1)
    algorithm.setBlockSize(level_size)
    return algorithm


def simulate(kind: str, limit: LimitState, budget: int, level_size: int, seed: int) -> tuple[Run, int]:
    """One seeded run of "subset" or "cross_entropy" with `level_size` points per level,
    and the number of levels it took."""
    steps = [0]

    def body(event: ot.ThresholdEvent) -> tuple[float, str]:
        ot.RandomGenerator.SetSeed(seed)
        algorithm = _simulation(kind, event, level_size)
        algorithm.run()
        steps[0] = algorithm.getStepsNumber()
        return algorithm.getResult().getProbabilityEstimate(), ""
    return _charged(limit, budget, body), steps[0]


def level_size(kind: str, limit: LimitState, budget: int) -> int:
    """N = round(B / levels), the levels averaged over uncharged pilot runs (module docstring)."""
    levels = [simulate(kind, limit, budget, max(budget // PILOT_FRACTION, 1), PILOT_SEED + i)[1]
              for i in range(PILOT_RUNS)]
    return max(round(budget / max(statistics.fmean(levels), 1)), 1)


def compare(graph: Graph, distribution: Gaussian, event: Event, p: float, budget: int, repeats: int) -> dict:
    """The COLUMNS of one event with true probability p: every method at a budget of
    `budget` evaluations, the stochastic ones `repeats` times; the best by relative error."""
    started = time.perf_counter()
    limit = LimitState(graph, distribution, event)
    row: dict = {"ot_repeats": repeats}
    errors, notes = {}, []
    for name in ANALYTICAL:
        run = approximation(name, limit, budget)
        row[f"{name}_p"], row[f"{name}_evaluations"] = run.p, run.evaluations
        if run.p is not None:
            errors[name] = row[f"{name}_rel_error"] = abs(run.p - p) / p
        if run.note:
            notes.append(f"{name}: {run.note}")
    for name in STOCHASTIC:
        size = level_size(name, limit, budget)
        runs = [simulate(name, limit, budget, size, seed)[0] for seed in range(repeats)]
        row[f"{name}_level_size"] = size
        row[f"{name}_evaluations"] = statistics.fmean(r.evaluations for r in runs)
        done = [r.p for r in runs if r.p is not None]
        failed = [r.note for r in runs if r.p is None]
        if failed:
            notes.append(f"{name}: {len(failed)}/{repeats} failed ({failed[0]})")
        if 2 * len(done) >= repeats:
            errors[name] = row[f"{name}_rel_rmse"] = math.sqrt(statistics.fmean((q - p) ** 2 for q in done)) / p
    if errors:
        row["best_ot"] = min(errors, key=errors.get)
        row["best_ot_rel_error"] = errors[row["best_ot"]]
    row["ot_seconds"] = time.perf_counter() - started
    row["ot_note"] = "; ".join(notes)
    return row
