"""Design-guided sampling: the `samples=N` / `flops=F` budget of explanations with a
Gaussian summary of the outputs (gaussian, cumulant, polynomial).

Importance sampling. In whitened input space (x = μ + F ξ, ξ ~ N(0, I)) draw from the
defensive mixture (Hesterberg 1995)
    q = α0 N(0, I) + α_b N(0, s²I) + (1 - α0 - α_b) Σ_k a_k N(ξ*_k, I),
α0 = 0.2, α_b = 0.1, s = 2, ξ*_k the design points of `structured.search`; the broad
component N(0, s²I) reaches failure regions the search missed. The modes share their part
half evenly and half by FORM's mass Φ(-β_k) (β_k = |ξ*_k|, MODE_MASS_SHARE = ½):
a_k = ½/K + ½ Φ(-β_k)/Σ_j Φ(-β_j), so a mode one unit of β farther out (e^{-β} less mass)
does not take an equal share of the draws, and none gets less than half of one. Measured
on `pitrack bench sampling` against equal shares: relative RMSE above 0.3 on 35 → 29 and
37 → 35 events (seeds 0–19, 20–39), median 0.134 → 0.124 and 0.133 → 0.116. The weight
    w(ξ) = φ(ξ)/q(ξ) = 1 / (α0 + α_b s^{-d} e^{|ξ|²(1 - 1/s²)/2} + Σ_k α_k e^{ξ*_k·ξ - |ξ*_k|²/2}) ≤ 1/α0
is computed in log space. The unbiased estimate (1/N) Σ_i 1_C(ξ_i) w_i is reported as
details["unbiased"]; the estimate itself truncates the hits' weights at τ
(`truncation`: Σ_hits min(w_i, τ) = ½√n τ for n hits), p̂ = (1/N) Σ_i 1_C(ξ_i) min(w_i, τ),
which cuts the rare weight from a part of the event the mixture does not cover (one run
in 20 at 304× the truth, before) at a bias of at most the mass above τ
(details["cut_weights"] counts the weights cut). Its standard error comes from the sample
variance of the truncated weights. The effective number of hits n = p̂²/se² (for equal
weights and small p, the number of hits) gives the interval, Garwood's for n counts
scaled to p̂ (`montecarlo.effective_count_interval`): the small-sample correction that
p̂ ± 1.96 se lacks when few weights carry the estimate; where weights were cut it is
joined with the unbiased estimate's. Kong's (Σ_hits w)²/Σ_hits w² (1992) of the weights
as drawn is reported as details["effective_hits"]; fewer than 10, or one weight carrying
over half of Σw, flags the estimate as degenerate (details["degenerate"]), and its
interval's upper end is then at least Wilson's on the defensive draws alone, which are
plain samples of D (`Weighted.interval`); with no hit, [0, that end]. The defensive
component bounds the variance by p/α0 - p², at most 1/α0 = 5 times plain sampling's;
near the design points it is orders of magnitude smaller (a halfspace at distance β:
relative variance O(β) per draw instead of 1/p).

The search behind the mixture. A part of the event that no design point describes is
visited only by the defensive and broad components: the estimate is then low, with an
interval as narrow as the hits near the known modes make it. A sampling budget therefore
pays for a wide search (`structured`, as the zero-sample design estimate's): WIDE_STARTS =
10 starts per clause (3 in a Tracker's catastrophe penalty), descents of WIDE_ITERATIONS =
5 steps (10 there: the mixture needs a point near each failure mode, not the exact design
point, so more, shorter descents find more of the modes at the same cost), up to
SEARCH_MODES = 8 modes (4 there), a descent
after each clause's first begun only while the search has spent under SEARCH_SHARE = 30%
of the budget, for events π's bulk model puts below WIDE_SEARCH_BELOW = 1e-2 (nearer the
bulk, plain sampling's ~100 hits in 10⁴ draws leave the wider search's cost unpaid: on r16
at p = 9.6e-3 a 6-start search brought the MSE ratio to plain sampling from 1.5 to 0.9
over 60 repeats). Measured on `pitrack bench sampling` (106 events at 10⁴ sample-
equivalents, seeds 0–19 and 20–39) against 6 starts of 10 steps: median relative RMSE
0.162 → 0.134 and 0.163 → 0.133; against the zero-sample search, coverage of the
importance-sampling runs 88.5% → 89–91%. The wide search fills its starts (`search`'s
`fill`): where fewer of its pilot cloud's points are feasible than it has starts, the
cloud's best infeasible points are pushed in and descended from (`design._clause_modes`).
On r07 Below at p = 1e-6 (8 → 128³ → 1 ReLU) the cloud often held one feasible point,
and 4 runs in 20 missed the modes at β ≈ 3.6 that hold most of the mass (0.001–0.4 of
the truth); with the fill every run finds them.

Choosing the sampler. A pilot of PILOT_SHARE of the draws (at least PILOT_MIN; none below
2·PILOT_MIN draws, where importance sampling takes them all) runs the importance sampler
first. Where its effective number of hits reaches PILOT_HITS, or PILOT_MODE_HITS of its
hits were drawn by the components at the design points, the rest of the draws run it
again and make the estimate; otherwise, or without a design point, the failure region
is not where the design points say (scattered islands in rough, deep networks) and the
rest of the budget runs subset simulation (`splitting`), which needs no picture of the
region. Kong's effective count alone sent runs whose modes were right but whose few
pilot hits had unequal weights (effective hits 1.3–2.9 at p = 1e-8 on a ReLU net; their
main runs, where taken, had 8–27) to subset simulation, which did worse there; the hits
at the modes tell those from the scattered islands of tanh nets, where the pilot's one
or two hits come from the defensive or broad component. Measured on `pitrack bench
sampling` (seeds 0–39 pooled, 40 repeats an event), events with relative RMSE above 0.3
and the median: before both, 34 and 0.130; the fill alone 34 and 0.142 (its extra
modes thin the pilot's hits, and more runs go to subset simulation); the mode hits alone
35 and 0.115; both 30 and 0.117. A PILOT_HITS of 1 instead (any hit) with the fill gave
29 and 0.117, but put r06 Any at p = 1e-6 (16 → 64² → 2 tanh) from 0.92 to 2.40. The
pilot only chooses: it is charged but not
pooled, so it adds no bias to the estimate that follows (details["unbiased"] stays unbiased).

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
importance sampling K d-dimensional dot products for the weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .design import is_far
from .estimate import Estimate
from .events import Event
from .montecarlo import draw_cost, draws_within, effective_count_interval, tally, wilson_interval
from .mvn import MAX_UNION_CLAUSES, OrthantResult, log_union, union_flops_bound
from .observed import clause_rows, observe_flops, observed
from .splitting import LEVEL_PROBABILITY, SIZED_LEVELS, clause_margin, subset_simulation
from .structured import SEARCH_SHARE, WIDE_ITERATIONS, WIDE_STARTS, Search, search
from .truncation import log_cap, truncated

DEFENSIVE, BROAD, BROAD_SCALE, MODE_MASS_SHARE = 0.2, 0.1, 2.0, 0.5
SEARCH_MODES, WIDE_SEARCH_BELOW = 8, 1e-2
PILOT_SHARE, PILOT_MIN, PILOT_HITS, PILOT_MODE_HITS = 0.1, 200, 3.0, 3
DEGENERATE_HITS = 10
DETECTOR_PILOT, DETECTOR_PILOT_HITS = 200, 4
MIN_LEVELS = 4          # subset simulation sizes its levels for at least p0^4 (1e-4), at most p0^10
BULK_POINTS, BULK_REPLICATES, BULK_SHARE = 256, 2, 0.25


@dataclass
class Weighted:
    """One importance-sampling run: the log-weights of its hits, the hits of its defensive
    draws, and the hits drawn by its mode components (the pilot's test, module docstring).
    The estimate truncates the weights (`truncation`); the sums stay in log space, since
    weights of events far in a tail underflow float64, and their squares sooner."""
    samples: int
    log_weights: Tensor       # log w of each hit (float64, CPU)
    defensive: int = 0        # draws from the defensive component N(0, I) …
    defensive_hits: int = 0   # … and how many of them hit
    mode_hits: int = 0        # hits drawn by the components at the design points
    log_cap: float = field(init=False)     # log τ of the truncation (+inf: none)
    cut: int = field(init=False)           # how many weights it cuts

    def __post_init__(self) -> None:
        self.log_cap = log_cap(self.log_weights)
        self.cut = int((self.log_weights > self.log_cap).sum())

    @property
    def hits(self) -> int:
        return self.log_weights.numel()

    def _sums(self, cut: bool) -> tuple[float, float]:
        """log Σ w and log Σ w² over the hits, of the truncated weights if `cut`."""
        if not self.hits:
            return -math.inf, -math.inf
        log_w = truncated(self.log_weights, self.log_cap) if cut else self.log_weights
        return float(torch.logsumexp(log_w, 0)), float(torch.logsumexp(2 * log_w, 0))

    def log_p(self, cut: bool = True) -> float:
        """log p̂: the truncated estimate, or (`cut=False`) the unbiased one."""
        return self._sums(cut)[0] - math.log(self.samples)

    def relative_error(self, cut: bool = True) -> float:
        """se/p̂, from the sample variance: √((N Σw²/(Σw)² - 1)/(N - 1))."""
        if self.hits == 0:
            return math.inf
        log_total, log_squares = self._sums(cut)
        ratio = math.exp(min(log_squares - 2 * log_total + math.log(self.samples), 700.0))
        return math.sqrt(max(ratio - 1, 0.0) / max(self.samples - 1, 1))

    @property
    def effective_hits(self) -> float:
        """Kong's (Σ_hits w)²/Σ_hits w², of the weights as drawn."""
        log_total, log_squares = self._sums(cut=False)
        return math.exp(2 * log_total - log_squares) if self.hits else 0.0

    @property
    def degenerate(self) -> bool:
        """Fewer than DEGENERATE_HITS effective hits, or one weight over half of Σw (as drawn)."""
        return (self.effective_hits < DEGENERATE_HITS
                or float(self.log_weights.max()) > self._sums(cut=False)[0] - math.log(2))

    def _garwood(self, cut: bool) -> tuple[float, float]:
        error = self.relative_error(cut)
        effective = error ** -2 if error > 0 else self.effective_hits
        return effective_count_interval(self.log_p(cut), effective)

    def interval(self) -> tuple[float, float]:
        """Garwood's for p̂²/se² effective hits, of the truncated estimate joined with the
        unbiased one's where weights were cut (truncation moves p̂ down, and the joined
        interval is never narrower than the unbiased estimate's own). The defensive draws
        are plain samples of D, so Wilson's interval on their hits bounds P on its own: a
        degenerate run's upper end is at least that interval's, and a run without a hit
        gets [0, that upper end]."""
        plain = wilson_interval(self.defensive_hits, self.defensive)[1] if self.defensive else 1.0
        if self.hits == 0:
            return 0.0, plain
        low, high = self._garwood(cut=True)
        if self.cut:
            unbiased = self._garwood(cut=False)
            low, high = min(low, unbiased[0]), max(high, unbiased[1])
        return low, max(high, plain) if self.degenerate else high


def importance_sampling(event: Event, found: Search, samples: int, generator: torch.Generator,
                        n_outputs: int, batch: int = 1 << 14) -> Weighted:
    """The hits' log-weights over `samples` draws from the defensive mixture (module docstring)."""
    points = torch.stack([m.point for m in found.modes])                    # [K, d]
    half_norms = (points * points).sum(1) / 2
    k, d = points.shape
    form = torch.special.log_ndtr(-torch.tensor([m.beta for m in found.modes], dtype=torch.float64))
    share = MODE_MASS_SHARE * torch.softmax(form, 0) + (1 - MODE_MASS_SHARE) / k     # Σ = 1
    log_mix = torch.cat([points.new_tensor([math.log(DEFENSIVE), math.log(BROAD)]),
                         (math.log(1 - DEFENSIVE - BROAD) + share.log()).to(points)])
    hit_weights = []
    done = defensive = defensive_hits = mode_hits = 0
    with torch.no_grad():
        while done < samples:
            size = min(batch, samples - done)
            component = torch.multinomial(log_mix.exp().cpu(), size, replacement=True, generator=generator)
            xi = torch.randn(size, d, generator=generator, dtype=points.dtype).to(points.device)
            component = component.to(points.device)
            scale = torch.where(component == 1, BROAD_SCALE, 1.0).to(points.dtype)
            shift = torch.cat([points.new_zeros(2, d), points])[component]
            xi = xi * scale[:, None] + shift
            broad = (xi * xi).sum(1) * (1 - BROAD_SCALE ** -2) / 2 - d * math.log(BROAD_SCALE)
            exponents = torch.cat([xi.new_zeros(size, 1), broad[:, None], xi @ points.T - half_norms], dim=1)
            log_w = -torch.logsumexp(exponents + log_mix, dim=1)
            hit = event.evaluate(found.observe(xi)[:, :n_outputs])
            hit_weights.append(log_w[hit].to(torch.float64).cpu())
            plain = component == 0
            defensive += int(plain.sum())
            defensive_hits += int((hit & plain).sum())
            mode_hits += int((hit & (component >= 2)).sum())
            done += size
    log_weights = torch.cat(hit_weights) if hit_weights else torch.empty(0, dtype=torch.float64)
    return Weighted(samples, log_weights, defensive, defensive_hits, mode_hits)


def guided_probability(pi: "GuidedSampling", event: Event, found: Search, samples: int | None,
                       flops: float | None, spent: int, log_guess: float) -> Estimate:
    """P(event) by importance sampling around the design points `found`, or by subset
    simulation where a pilot finds that proposal useless (module docstring). With a FLOP
    budget instead of `samples`, `spent` (π's part, the search included) is paid first and
    the rest buys draws; `log_guess` (π's log P) sizes the subset-simulation levels."""
    d = found.distribution.dim
    finite = [m for m in found.modes if math.isfinite(m.beta * m.beta)]   # |ξ*|²/2 must fit float64
    found = found if len(finite) == len(found.modes) else replace(found, modes=finite)
    k = len(found.modes)
    importance_draw = found.observe_flops + d + 2 * k * d + 4 * k
    if samples is None:
        samples = draws_within(flops, spent, importance_draw if k else found.observe_flops + d)
    generator = torch.Generator().manual_seed(pi.seed)
    unit = pi.graph.flops_per_sample
    details = {"modes": [m.beta for m in found.modes], "search_flops": found.flops}
    pilot = max(PILOT_MIN, round(PILOT_SHARE * samples)) if k and samples >= 2 * PILOT_MIN else 0
    if k:
        trial = importance_sampling(event, found, pilot, generator, pi.graph.n_outputs)
        spent += pilot * importance_draw
        details.update(pilot_effective_hits=trial.effective_hits, pilot_mode_hits=trial.mode_hits)
        if trial.effective_hits >= PILOT_HITS or trial.mode_hits >= PILOT_MODE_HITS or not pilot:
            run = importance_sampling(event, found, samples - pilot, generator, pi.graph.n_outputs)
            return Estimate.probability(
                run.log_p(), interval=run.interval(),
                flops=spent + run.samples * importance_draw, samples=pilot + run.samples,
                method=f"{pi.method}+design-IS", flops_per_sample=unit,
                details={**details, "standard_error": math.exp(run.log_p()) * run.relative_error(),
                         "effective_hits": run.effective_hits, "degenerate": run.degenerate,
                         "unbiased": math.exp(run.log_p(cut=False)), "cut_weights": run.cut})
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
              cap: float = math.inf) -> tuple[Tensor, Tensor, list, OrthantResult | None, int]:
        """π's Gaussian summary of v = (y, detector scores), the event's clause rows, the
        event's probability under that Gaussian (intersections by `points` × `replicates`
        quasi-random points; with `bracket`, unions too large for inclusion–exclusion get
        Boole's bracket, `mvn.log_union`), and the FLOPs of the summary. With a `cap` on
        the integral's FLOPs (`mvn.union_flops_bound`, before it runs): Boole's bracket where
        inclusion–exclusion would pass it, and no integral (None) where the bracket would too."""
        detectors = event.detectors()
        mean, cov, flops = observed(self.mean, self.cov, detectors)
        rows = [clause_rows(c, detectors, self.mean.shape[0], mean) for c in event.dnf()]
        limit = {} if cap == math.inf else self._bulk_limit([a.shape[0] for a, _ in rows], mean.numel(),
                                                            points, replicates, cap)
        if limit is None:
            return mean, cov, rows, None, flops
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
