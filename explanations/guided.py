"""Design-guided sampling: the `samples=N` / `flops=F` budget of explanations with a
Gaussian summary of the outputs (gaussian, cumulant, polynomial).

Importance sampling from a defensive mixture around the design points, its weights
truncated (`importance`: the mixture, the weights, the interval, the degeneracy flag).
On a network that saturates (tanh, sigmoid), the design point of a one-row clause also
gets a component shaped to the set's curvature there (`shaping`: deep tanh networks'
failure sets are needles that a unit component seldom hits), fitted before the pilot for
at most SHAPE_SHARE of the budget (details["shaped_modes"], details["shaping_flops"]).

The search behind the mixture. A part of the event that no design point describes is
visited only by the defensive and broad components: the estimate is then low, with an
interval as narrow as the hits near the known modes make it. For events π's bulk model
puts below WIDE_SEARCH_BELOW = 1e-2 (nearer the bulk, plain sampling's ~100 hits in 10⁴
draws leave its cost unpaid), a sampling budget therefore pays for a wide search
(`structured.search`, as the zero-sample design estimate's): WIDE_STARTS = 16 starts per
clause, descents of WIDE_ITERATIONS = 5 steps (more, shorter descents find more of the
modes at the same cost), up to SEARCH_MODES = 8 modes, its starts filled (`fill`), a
descent after each clause's first begun only while the search has spent under
SEARCH_SHARE = 30% of the budget (3 starts, 10 steps and 4 modes in a Tracker's
catastrophe penalty). Measured on `pitrack bench sampling` (106 events at 10⁴
sample-equivalents, seeds 0–19) against 6 starts of 10 steps: median relative RMSE
0.162 → 0.134.

Choosing the sampler. A pilot of PILOT_SHARE of the draws (at least PILOT_MIN; none below
2·PILOT_MIN draws, where importance sampling takes them all) runs the importance sampler
first. Where its effective number of hits reaches PILOT_HITS, or PILOT_MODE_HITS of its
hits were drawn by the components at the design points, the rest of the draws run it
again and make the estimate; otherwise, or without a design point, the failure region
is not where the design points say (scattered islands in rough, deep networks) and the
rest of the budget runs subset simulation (`splitting`), which needs no picture of the
region. The mode hits keep runs whose modes are right but whose few pilot hits have
unequal weights (`pitrack bench sampling`, seeds 0–39: with the fill, events with relative
RMSE above 0.3, 34 → 30). The pilot chooses and adapts: it is charged but not pooled, so
it adds no bias to the estimate that follows (details["unbiased"] stays unbiased). Its
hits outside every mode's tangent halfspace mark parts of the event the search missed;
descents from them add their design points to the main run's mixture (`adaptation`;
details["adapted_modes"] and details["adaptation_flops"]), for at most ADAPT_SHARE of what
the pilot leaves of the budget, and never so much that fewer than PILOT_MIN draws remain.

Events on a detector with an activation inside. π's bulk Gaussian of such a score can put
a 1e-4 event above 5e-2 (`cumulant`), and design-guided sampling is worse than plain
sampling on common events (MSE ratio 0.2–0.9 at p = 0.2–0.5, measured on
`pitrack bench detectors`' nets). So where the bulk calls the event common, a plain pilot
of DETECTOR_PILOT = 200 draws decides: fewer than DETECTOR_PILOT_HITS = 4 hits (p̂ < 2%)
sends the rest of the budget to design-guided sampling (its search bounded by
SEARCH_SHARE of the budget, the pilot's rate sizing subset simulation's levels; plain
sampling if a FLOP budget then buys fewer than 2·PILOT_MIN draws), otherwise to plain
sampling. The pilot is charged and counted in `samples`, not pooled: each branch keeps
its own bias given the pilot (none for importance and plain sampling, O(1/N) for subset
simulation), so the choice adds none. details["detector_pilot_hits"] records it.
Cost: what π spent before (its build, the bulk test, the search: `spent`), plus per
draw d normal variates, the input map and one forward pass (and the detectors), and for
importance sampling K d-dimensional dot products for the weight (and a d × d quadratic form
per shaped component).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .adaptation import ADAPT_SHARE, adapted
from .design import is_far
from .estimate import Estimate
from .events import Event
from .importance import importance_draw_flops, importance_sampling, with_finite_modes
from .montecarlo import draw_cost, draws_within, tally
from .mvn import MAX_UNION_CLAUSES, OrthantResult, log_union, union_flops_bound
from .observed import clause_rows, observe_flops, observed
from .quadratic import fit
from .shaping import SHAPE_SHARE, shape_flops, with_shape
from .splitting import LEVEL_PROBABILITY, SIZED_LEVELS, clause_margin, subset_simulation
from .structured import SEARCH_SHARE, WIDE_ITERATIONS, WIDE_STARTS, Search, fit_cost, search, takes_shape

SEARCH_MODES, WIDE_SEARCH_BELOW = 8, 1e-2
PILOT_SHARE, PILOT_MIN, PILOT_HITS, PILOT_MODE_HITS = 0.1, 200, 3.0, 3
DETECTOR_PILOT, DETECTOR_PILOT_HITS = 200, 4
MIN_LEVELS = 4          # subset simulation sizes its levels for at least p0^4 (1e-4), at most p0^10
BULK_POINTS, BULK_REPLICATES, BULK_SHARE = 256, 2, 0.25


def guided_probability(pi: "GuidedSampling", event: Event, found: Search, samples: int | None,
                       flops: float | None, spent: int, log_guess: float) -> Estimate:
    """P(event) by importance sampling around the design points `found`, or by subset
    simulation where a pilot finds that proposal useless (module docstring). With a FLOP
    budget instead of `samples`, `spent` (π's part, the search included) is paid first and
    the rest buys draws; `log_guess` (π's log P) sizes the subset-simulation levels."""
    d = found.distribution.dim
    found = with_finite_modes(found)
    k = len(found.modes)
    generator = torch.Generator().manual_seed(pi.seed)
    unit = pi.graph.flops_per_sample
    details = {"modes": [m.beta for m in found.modes], "search_flops": found.flops, "shaped_modes": 0,
               "shaping_flops": 0}
    if k:
        room = SHAPE_SHARE * (flops if flops is not None else samples * unit)
        if flops is not None:       # the draws keep their minimum, at the dearest weights
            room = min(room, flops - spent - 2 * PILOT_MIN * importance_draw_flops(found, shaped=k))
        found, cost, count = shaped(found, generator, room)
        spent += cost
        details.update(shaped_modes=count, shaping_flops=cost)
    importance_draw = importance_draw_flops(found)
    if samples is None:
        samples = draws_within(flops, spent, importance_draw if k else found.observe_flops + d)
    pilot = max(PILOT_MIN, round(PILOT_SHARE * samples)) if k and samples >= 2 * PILOT_MIN else 0
    if k:
        trial = importance_sampling(event, found, pilot, generator, pi.graph.n_outputs, keep_points=True)
        spent += pilot * importance_draw
        details.update(pilot_effective_hits=trial.effective_hits, pilot_mode_hits=trial.mode_hits)
        if trial.effective_hits >= PILOT_HITS or trial.mode_hits >= PILOT_MODE_HITS or not pilot:
            rest = samples - pilot
            if trial.hits:
                left = rest * importance_draw if flops is None else flops - spent   # the main run's part
                limit = min(ADAPT_SHARE * left, left - PILOT_MIN * importance_draw) / found.observe_flops
                found, cost, added = adapted(found, trial, limit)
                spent += cost
                importance_draw = importance_draw_flops(found)
                rest = rest if flops is None else draws_within(flops, spent, importance_draw)
                details.update(adapted_modes=added, adaptation_flops=cost, modes=[m.beta for m in found.modes])
            run = importance_sampling(event, found, rest, generator, pi.graph.n_outputs)
            return Estimate.probability(
                run.log_p(), interval=run.interval(),
                flops=spent + run.samples * importance_draw, samples=pilot + run.samples,
                method=f"{pi.method}+design-IS", flops_per_sample=unit,
                details={**details, "standard_error": math.exp(run.log_p()) * run.relative_error(),
                         "effective_hits": run.effective_hits, "degenerate": run.degenerate,
                         "unbiased": math.exp(run.log_p(cut=False)), "cut_weights": run.weights_cut})
        if trial.hits:
            log_guess = min(log_guess, trial.log_p(cut=False))
    wanted = log_guess / math.log(LEVEL_PROBABILITY)      # +inf where π calls the event impossible
    levels = max(MIN_LEVELS, math.ceil(wanted)) if math.isfinite(wanted) else SIZED_LEVELS
    result = subset_simulation(clause_margin(found.observe, found.clauses), d, samples - pilot, levels,
                               generator, found.distribution.mean.dtype, found.distribution.mean.device)
    p = result.p
    return Estimate.probability(
        math.log(p) if p > 0 else -math.inf, interval=result.interval,
        flops=spent + result.evaluations * (found.observe_flops + d), samples=pilot + result.evaluations,
        method=f"{pi.method}+subset-simulation", flops_per_sample=unit,
        details={**details, "coefficient_of_variation": result.cov,
                 "coefficient_of_variation_bound": result.cov_bound, "levels": result.levels,
                 "reached": result.reached, "degenerate": not result.reached or result.beyond_plan})


class GuidedSampling:
    """Mixin for explanations with a Gaussian summary of the outputs (`mean`, `cov`, `dtype`,
    and `cross` = Cov(x, y) where known): the bulk test and the sampled probabilities."""

    mean: Tensor
    cov: Tensor
    design: bool = True      # use the input-space structure for events far from the bulk

    def _bulk(self, event: Event, points: int = 4096, replicates: int = 8, bracket: bool = False,
              cap: float = math.inf, refuse: bool = True) -> tuple[Tensor, Tensor, list, OrthantResult | None, int]:
        """π's Gaussian summary of v = (y, detector scores), the event's clause rows, the
        event's probability under that Gaussian (intersections by `points` × `replicates`
        quasi-random points; with `bracket`, unions too large for inclusion–exclusion get
        Boole's bracket, `mvn.log_union`), and the FLOPs of the summary. With a `cap` on
        the integral's FLOPs (`mvn.union_flops_bound`, before it runs): Boole's bracket where
        inclusion–exclusion would pass it, and no integral (None) where the bracket would too,
        or without `refuse` the bracket regardless (its cost is linear in the clauses)."""
        detectors = event.detectors()
        mean, cov, flops = observed(self.mean, self.cov, detectors)
        rows = [clause_rows(c, detectors, self.mean.shape[0], mean) for c in event.dnf()]
        limit = {} if cap == math.inf else self._bulk_limit([a.shape[0] for a, _ in rows], mean.numel(),
                                                            points, replicates, cap)
        if limit is None and refuse:
            return mean, cov, rows, None, flops
        limit = {"max_clauses": 0} if limit is None else limit
        return mean, cov, rows, log_union(mean, cov, rows, points=points, replicates=replicates, seed=self.seed,
                                          bracket_beyond=bracket or bool(limit), **limit), flops

    @staticmethod
    def _bulk_limit(sizes: list[int], width: int, points: int, replicates: int, cap: float) -> dict | None:
        """`log_union`'s clause limit under a FLOP cap on the integral: none where
        inclusion–exclusion fits (up to MAX_UNION_CLAUSES), 0 (Boole's bracket) where only the
        bracket does, None where neither does. The 2ⁿ-term bound is taken only where
        inclusion–exclusion could run at all."""
        if len(sizes) <= MAX_UNION_CLAUSES and union_flops_bound(sizes, width, points, replicates) <= cap:
            return {}
        return {"max_clauses": 0} if union_flops_bound(sizes, width, points, replicates, bracket=True) <= cap else None

    def _sampled_probability(self, event: Event, samples: int | None, flops: float | None,
                             spent: int = 0) -> Estimate:
        """With a sampling budget: `guided_probability` (module docstring) for events π's
        Gaussian summary puts below 5e-2 (or a plain pilot finds rare, for events on
        nonlinear detectors); plain sampling otherwise, and when a FLOP budget is
        more than half spent on π's build and the bulk test. π's part (its build, the bulk
        test, the search) is charged to the estimate. The bulk test needs an order of
        magnitude, not digits: intersections get BULK_POINTS × BULK_REPLICATES quasi-random
        points instead of the zero-sample estimate's 4096 × 8 (on a 4 → 32 → 2 network the
        full integral costs 4,600 sample-equivalents), and a union of more clauses than
        inclusion–exclusion takes gets Boole's bracket max_i P(C_i) ≤ P(∪) ≤ Σ_i P(C_i).
        Under a FLOP budget the bulk integral may take BULK_SHARE of what π's build leaves:
        the bracket where inclusion–exclusion would take more (a 6-clause union once took
        1,435 sample-equivalents of a 1,000 budget, and the call raised), plain sampling
        where even the bracket would. (An event on detectors first pays their Gaussian
        summary, outside that share: a budget of a few dozen sample-equivalents can then
        buy no draw, and the call raises.)"""
        cap = math.inf if flops is None else (flops - spent - self.build_flops) * BULK_SHARE
        *_, bulk, summary = self._bulk(event, BULK_POINTS, BULK_REPLICATES, bracket=True, cap=cap)
        spent += self.build_flops + summary + (bulk.flops if bulk is not None else 0)
        if bulk is None:                        # the bulk test alone would pass its share of the budget
            return super()._sampled_probability(event, samples, flops, spent)
        affordable = flops is None or spent <= flops / 2       # else the budget goes to draws
        pilot_fits = (samples >= 2 * DETECTOR_PILOT if samples is not None else
                      spent + 2 * DETECTOR_PILOT * draw_cost(self.graph, self.distribution) <= flops / 2)
        if (self.design and affordable and pilot_fits and not is_far(bulk.log_p)
                and event.reads_nonlinear_detector()):
            return self._detector_pilot(event, samples, flops, spent)
        if self.design and affordable and is_far(bulk.log_p):
            return self._guided(event, samples, flops, spent, bulk.log_p)
        return super()._sampled_probability(event, samples, flops, spent)

    def _guided(self, event: Event, samples: int | None, flops: float | None, spent: int,
                log_guess: float) -> Estimate:
        """`guided_probability` after the design search, which is wide for events guessed
        below WIDE_SEARCH_BELOW and starts no descent past SEARCH_SHARE of the budget; under
        a FLOP budget it makes no pass that would leave fewer than 2·PILOT_MIN draws, so the
        whole estimate stays within the budget. Where the search leaves a FLOP budget fewer
        than 2·PILOT_MIN draws, plain sampling spends what is left."""
        budget = flops / self.graph.flops_per_sample if flops is not None else samples
        options: dict = {"effort": SEARCH_SHARE * budget}
        if flops is not None:           # a FLOP budget is a cap: the search leaves the draws their minimum
            options["limit"] = ((flops - spent - 2 * PILOT_MIN * draw_cost(self.graph, self.distribution))
                                / observe_flops(self.graph, self.distribution, event))
        if log_guess < math.log(WIDE_SEARCH_BELOW):
            options.update(starts=WIDE_STARTS, max_modes=SEARCH_MODES, iterations=WIDE_ITERATIONS, fill=True)
        found = search(self, event, **options)
        spent += found.flops
        if flops is not None and flops - spent < 2 * PILOT_MIN * draw_cost(self.graph, self.distribution):
            return super()._sampled_probability(event, samples, flops, spent)
        return guided_probability(self, event, found, samples, flops, spent, log_guess)

    def _detector_pilot(self, event: Event, samples: int | None, flops: float | None, spent: int) -> Estimate:
        """The plain pilot of the module docstring for an event on a nonlinear detector that
        π's bulk calls common; its draws are charged and counted, not pooled."""
        pilot = tally(self.graph, self.distribution, DETECTOR_PILOT, [event], seed=self.seed + 1)
        hits, spent = pilot.hits[0], spent + pilot.flops
        rest = samples - DETECTOR_PILOT if samples is not None else None
        if hits < DETECTOR_PILOT_HITS:
            estimate = self._guided(event, rest, flops, spent, math.log((hits + 0.5) / DETECTOR_PILOT))
        else:
            estimate = super()._sampled_probability(event, rest, flops, spent)
        return replace(estimate, samples=estimate.samples + DETECTOR_PILOT,
                       details={**estimate.details, "detector_pilot_hits": hits})


def shaped(found: Search, generator: torch.Generator, limit: float) -> tuple[Search, int, int]:
    """`found` with shaped components (`shaping`) on the modes that take one
    (`structured.takes_shape`), nearest first while the fits' FLOPs stay within `limit`; the
    FLOPs spent and the modes shaped."""
    modes, spent, count = list(found.modes), 0, 0
    for i in sorted(range(len(modes)), key=lambda j: modes[j].beta):
        mode = modes[i]
        if not takes_shape(found, mode):
            continue
        d = mode.point.shape[0]
        if spent + fit_cost(found, mode) + shape_flops(d) > limit:
            break
        local = fit(found.margins[mode.clause], mode.point, generator)
        spent += local.cost(found.observe_flops) + shape_flops(d)
        modes[i] = with_shape(mode, local)
        count += modes[i].shape is not None
    return replace(found, modes=modes), spent, count
