"""The zero-sample tail estimate that uses input-space structure (see `design`).

`design_estimate(pi, event)`: find the event's design points through the compiled graph
(and any detector graphs), fit the network's least-squares quadratic of the mode's clause
margins around each, integrate each quadratic's clause over its mode's Voronoi cell
(`quadratic`), and add the cells. Detector scores are margins like the outputs: the fit
runs through the detector's graph, so a detector with an activation inside (an event
that is a band in y) is seen as it bends near the mode.
FLOPs: every forward pass of the search and the fits costs one sample-equivalent and every
backward pass two (the usual reverse-mode bound), plus the regressions and the line
integrals. The whole estimate aims at DESIGN_BUDGET sample-equivalents of the network: the
search starts no descent past SEARCH_SHARE of it (each clause its part, and its first
descent always), the fits take what they need of all but DRAWS_RESERVE of it, the line
integrals share what they leave (each at most DOUBLING_SHARE times its fit; at least 32
lines a replicate), and importance draws take the rest (`_with_draws`). The budget is
sampling's horizon: 10⁴ draws see an event of 10⁻³ about ten times, so a zero-sample
estimate that cost more would be beaten by plain sampling where it is least needed.
The bulk test (`cumulant`) takes at most BULK_SHARE of it (12 clauses on a 4 → 8 → 6 net
had cost 2.6·10⁶ sample-equivalents; now 9,900 in all).

Wide inputs: where the search leaves too little for each clause's nearest fit and
smallest integral (`_fits_afforded`; from d ≈ 48 on a d → 16 → 1 net), importance draws
around the modes answer alone (`_drawn_alone`; ReLU at d = 64 and p = 1e-4, π's seeds
0–1: fitted, 11,884 sample-equivalents and -0.35, -0.43 dex; drawn, +0.01, +0.05 at
9,920–9,985).
Near the bulk, where the nearest mode lies within DRAWN_BELOW of the origin, importance
draws come first, with half of what the search leaves (from π's seed + NEAR_SEED): a local
quadratic, fitted within ½ of a mode on a set that bends within a unit of it, is not the
model there, and the event is common enough for the draws to see it. Where they see it,
the rest of the budget buys more of them and they answer alone (`_drawn_alone`); where
they see nothing (a patch 0.3 wide, p = 1e-4), the quadratics answer with the rest, and the
first draws' defensive ones join the pilot that tests them (`_with_draws`).
`scripts/fuzz_zero_sample.py` seeds 21–24 (220 small nets): a tanh threshold at 1e-3 +0.50,
+0.73 and a tanh detector at 1e-4 +0.32 → ±0.12 (±0.18 over π's seeds 0–5); trials beyond
0.3 dex or 10⁴ 8 → 4. Tail benchmark seeds 0–4, the 87 event-runs it moves (p = 5e-5 …
1e-2): RMS 0.095 → 0.103 dex, the worst 0.40 → 0.49 (r12 Below at 5e-5, whose draws read
-0.41 and -0.49 on two seeds), the worst per seed unchanged but on seed 3 (0.47 → 0.49).

What the integrals leave buys importance draws around the kept modes (`importance`),
joined with the quadratics by inverse variance (`_with_draws`). QUADRATIC_SPREAD_DEX =
0.25 is the root mean square of the quadratics' log10 error on the tail benchmark
(`pitrack bench tails --methods auto --seed S`, S = 0–4: 535 event-runs with
5e-9 ≤ p ≤ 2e-3, median 0.085, worst 1.5); on those runs the draws' was 0.138 against
0.211: the draws measure the network where the quadratics misread a thin wedge or a horn
(on a linear network the quadratics are exact). DRAWS_RESERVE = 0.2 of the budget is kept
for the draws (the benchmark's 85 events with 1e-8 ≤ p ≤ 1e-3, seeds 0–4: beyond 0.5 dex
2, 4, 6, 3, 6 before the join, 2, 2, 4, 2, 2 with it and this reserve). A saturating
network's one-row modes give most of their draws (1 - DRAWS_SHAPED_SPLIT) to the
component shaped to their quadratic (`shaping`), so a needle's draws see hits (r12 Below
at 5e-5, seeds 2 and 3: +0.74 and +0.62 dex → -0.35 and -0.02). Degenerate runs (Kong's
effective hits under 10, or one weight over half of Σw) join too, never alone, their
spread widened by DEGENERATE_WIDENING = 1.5: the smallest of 1.0, 1.5, 2.0 that left the
log10 RMS no larger on π's seeds 0–9 (on seeds 10–19, events beyond 0.5 dex 31 → 19).
The measurements behind these rules, and the variants tried: docs/notes/experiments.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.special import log_ndtr

from .activations import activation
from .design import MAX_MODES, ClauseSearch, Mode, find_modes, is_new, whitened_cross
from .distributions import Gaussian
from .events import Event
from .graph import Act, Graph, iter_ops
from .importance import Weighted, importance_draw_flops, importance_sampling, with_finite_modes
from .montecarlo import Z95
from .mvn import OrthantResult
from .observed import clause_margins, clause_rows, fold_flops, observe_flops, observer
from .pilot import Pilot
from .quadratic import (DOUBLING_SHARE, LINE_RANGE, SCALE, Quadratic, fit, fit_flops_bound, line_flops,
                        log_cell_probability, pairs, widened, widening_flops)
from .shaping import shape_flops, with_shape

if TYPE_CHECKING:
    from .gaussian import GaussianExplanation

NEAR = 1.0     # a mode nearer the origin than this is no tail: the local quadratic is not the model
DRAWN_BELOW = 2.0   # nearer modes than this: importance draws first (module docstring),
NEAR_SEED = 5       # from π's seed + this
DESIGN_BUDGET = 10_000              # sample-equivalents a zero-sample design estimate aims at
WIDE_STARTS, WIDE_ITERATIONS = 16, 5   # starts per clause and descent steps of a wide search
POLISH_ITERATIONS = 10                  # further descent steps for each kept mode (`_polished`)
NARROW = 0.25                           # a mode's second fit, where its first holds (almost) nothing of the
NARROW_BELOW = 1e-6                     # event (under NARROW_BELOW × Φ(-β)), at NARROW × SCALE
KEPT_MODES = 6                          # the nearest modes integrated, as the budget allows (`_kept`)
SEARCH_SHARE = 0.3                   # of a budget: no descent begun past it
DRAWS_MIN = 200                      # importance draws worth making with what the budget leaves,
DRAWS_GRAIN = 64                     # in multiples of this (`_with_draws`),
DRAWS_RESERVE = 0.2                  # and the share of the budget the fits and integrals leave them
DRAWS_SHAPED_SPLIT = 0.25            # a shaped mode's share that its unit component keeps in them
QUADRATIC_SPREAD_DEX = 0.25          # the quadratics' error, root mean square (`_with_draws`)
DRAWS_OUTLIER_Z = 3.0                # beyond it apart, the quadratics are an outlier
DEGENERATE_WIDENING = 1.5            # a degenerate run's spread, times its own (`_with_draws`)
TINY = 1e-300                        # below it an interval's ends are not written reliably


def log_chi2_tail(dim: int, beta: float) -> float:
    """log P(χ²_dim ≥ β²) = log Q(dim/2, β²/2), with the leading asymptotic term
    (dim/2 - 1) log(β²/2) - β²/2 - log Γ(dim/2) where Q underflows."""
    a, x = torch.tensor(dim / 2, dtype=torch.float64), torch.tensor(beta * beta / 2, dtype=torch.float64)
    q = torch.special.gammaincc(a, x).item()
    if q > 0:
        return math.log(q)
    return float((a - 1) * torch.log(x) - x - torch.lgamma(a))


@dataclass
class Search:
    """The design points of an event and what was needed to find them."""
    modes: list[Mode]
    observe: Callable[[Tensor], Tensor]     # ξ batch → v = (y, detector scores)
    clauses: list[tuple[Tensor, Tensor]]    # {v : A v > b}
    margins: list[Callable[[Tensor], Tensor]]   # per clause: ξ batch → A v(ξ) - b (`clause_margins`)
    distribution: Gaussian                  # D in float64
    flops: int
    forwards: int
    backwards: int
    observe_flops: int                      # one ξ → v: the input map, the network, the detectors
    linear_growth: bool                     # every activation of the network and detectors grows
                                            # linearly (`grows_linearly`)


def search(pi: GaussianExplanation, event: Event, starts: int = 3, max_modes: int = MAX_MODES,
           effort: float = math.inf, iterations: int = 10, limit: float = math.inf,
           fill: bool = False, rays: bool = False) -> Search:
    """Find the event's design points through the compiled graph and detector graphs
    (`design.find_modes`: `starts` per clause, at most `max_modes`, descents of at most
    `iterations` steps begun while under `effort` forward-pass equivalents, no pass past
    `limit` of them, and with `fill` pushed starts wherever the pilot cloud's feasible
    points give fewer than `starts` directions)."""
    detectors = event.detectors()
    dtype = torch.float64          # bisections and finite differences need it, whatever π's dtype
    like = pi.mean.to(dtype)
    clauses = [clause_rows(c, detectors, pi.graph.n_outputs, like) for c in event.dnf()]
    D = pi.distribution.to(dtype=dtype)
    observe, unit = observer(pi.graph, D, detectors, dtype)

    batch_margins = clause_margins(observe, clauses)
    guesses = linear_guesses(pi, clauses, D)
    with torch.inference_mode(False), torch.enable_grad():      # the search needs autograd
        modes, forwards, backwards = find_modes(batch_margins, D.dim, seed=pi.seed, dtype=dtype,
                                                device=like.device, guesses=guesses, starts=starts,
                                                max_modes=max_modes, effort=effort, iterations=iterations,
                                                limit=limit, fill=fill, rays=rays)
    growth = grows_linearly([pi.graph] + [d.score_graph() for d in detectors])
    return Search(modes, observe, clauses, batch_margins, D, (forwards + 2 * backwards) * unit
                  + fold_flops(pi.graph, D), forwards, backwards, unit, growth)


def grows_linearly(graphs: list[Graph]) -> bool:
    """Do `graphs` have activations, each growing linearly on one side at least
    (|f(±20)| > 10: ReLU, GELU, SiLU, ELU, softplus; not tanh, sigmoid, clamps or steps)?
    Then the output grows linearly along rays far out, and its level sets open into cones.
    (Without activations the level sets are hyperplanes, which a refit cannot improve.)"""
    probe = torch.tensor([-20.0, 20.0], dtype=torch.float64)
    kinds = [op.kind for graph in graphs for op in iter_ops(graph.chain) if isinstance(op, Act)]
    return bool(kinds) and all(float(activation(kind).fn(probe).abs().max()) > 10 for kind in kinds)


def linear_guesses(pi: GaussianExplanation, clauses: list[tuple[Tensor, Tensor]], D: Gaussian
                   ) -> list[Tensor | None]:
    """Per clause on y alone, the min-norm ξ with A(μ_y + Cov(y, ξ) ξ) = b: the design point
    of π's statistically linearised network (its slopes averaged over D, unlike a gradient
    taken at one point). None for clauses on detector scores or without π's cross-covariance."""
    cross = getattr(pi, "cross", None)
    n = pi.mean.shape[0]
    if cross is None:
        return [None] * len(clauses)
    slope = whitened_cross(cross.to(D.mean.dtype), D).T                 # Cov(y, ξ): [outputs, d]
    mean = pi.mean.to(D.mean.dtype)
    guesses = []
    for a, b in clauses:
        if a.shape[1] > n and bool(a[:, n:].any()):
            guesses.append(None)
            continue
        g, h = a[:, :n] @ slope, b - a[:, :n] @ mean
        guesses.append(g.T @ torch.linalg.lstsq(g @ g.T, h[:, None]).solution[:, 0])
    return guesses


def design_estimate(pi: GaussianExplanation, event: Event, budget: float = DESIGN_BUDGET,
                    pilot: Pilot | None = None) -> tuple[OrthantResult | None, dict]:
    """log P(event) from the local quadratics at the design points (`quadratic`), each
    mode's own clause integrated over its Voronoi cell, with every FLOP spent in the
    result, and details; None in place of the result if no design point was found, or one
    within NEAR of the origin (the event is then no tail, and a quadratic fitted within ½ of
    one point does not describe it: four modes at β ≈ 0.1 put ArgMax(0) at p = 0.55 as 0.33),
    with the search's FLOPs in details["search_flops"] for the caller's fallback to charge.
    `budget`: sample-equivalents of the network for the whole estimate (module docstring);
    where what the search leaves pays for no clause's nearest fit, or the nearest mode lies
    within DRAWN_BELOW of the origin, the estimate is `_drawn_alone`'s (details["fits"]).

    The search is wide (WIDE_STARTS starts per clause, descents of WIDE_ITERATIONS steps,
    its starts filled: `design.find_modes`' `fill`), as the sampled estimators' is, makes no
    pass past 1 - DRAWS_RESERVE of the budget (each clause's pilot cloud and first descent
    had run regardless: "at least two of six outputs past their 3% quantiles", 15 clauses on
    a 4 → 8³ → 6 ReLU net, searched for 24,000 sample-equivalents of 10⁴); where the caller
    has nothing left (π's build alone spent the budget, so the estimate passes it anyway),
    each clause still gets its cloud and first descent, and FORM answers (`_drawn_alone`).
    Up to KEPT_MODES modes are kept and polished (`_polished`; tail benchmark, seeds 0–4:
    events beyond 0.5 dex 4, 4, 7, 7, 5 → 2, 4, 6, 3, 6 with 16 starts in place of 10).
    The event lies outside the ball |ξ| < β_min (β_min the smallest mode's distance, if the
    search found the global minimum), so the estimate is capped at P(χ²_dim ≥ β_min²); and
    each mode's cell is integrated outside the mode's own ball, |ξ| ≥ β - 1/β: ξ* is where
    a descent of |ξ| over the event stopped, so the event near it lies outside that ball
    (a paraboloid whose tangent curvatures κ keep βκ < 1 never enters it), and a quadratic
    bent further toward the origin is not trusted back to a nearer mode's radius (with
    β_min for every cell, r11 at p = 1e-8 read +0.43 dex).
    A mode whose quadratic holds less than NARROW_BELOW of FORM's Φ(-β) of its cell's event
    (at s = ½ a quadratic can smooth away a narrower region) is refitted at s/4, then s/16
    (NARROW; the refits draw their own designs, so the other modes' fits are unchanged), the
    first fit that holds more taken (details["narrow_modes"]; a review's small nets with
    patches of event 0.1–0.3 wide: +2.2 to +2.9 dex → -0.05, +0.15 and +0.69).
    Where the event is still empty, the quadratic is moved to pass through the mode's own
    margins, and where that too holds nothing its tangent hyperplanes are integrated (FORM in
    the cell, an overestimate; details["anchored_modes"]); these fallbacks integrate at the
    fewest lines, and the second refit leaves room for the first of them (`_narrowed`).
    `pilot`: plain draws of the event already made (the caller's), which test the
    quadratics with the draws' defensive ones (`_with_draws`)."""
    allowed = budget * pi.graph.flops_per_sample
    passes = allowed / observe_flops(pi.graph, pi.distribution, event)
    limit = (1 - DRAWS_RESERVE) * passes if budget > 0 else math.inf
    found = search(pi, event, starts=WIDE_STARTS, iterations=WIDE_ITERATIONS, max_modes=2 ** 31, fill=True,
                   rays=True, effort=SEARCH_SHARE * passes, limit=limit)     # `_kept` picks the modes
    fitting_allowed = allowed * (1 - DRAWS_RESERVE)                  # the fits' and integrals' part
    candidates = _kept(found.modes)
    if candidates and NEAR <= candidates[0].beta < DRAWN_BELOW:
        near = replace(found, modes=candidates)
        first, _, spent = _draws(pi, event, near, found.flops, (found.flops + allowed) / 2, NEAR_SEED)
        if first is not None and first.hits:
            return _drawn_alone(pi, event, replace(near, flops=spent), allowed, "near the bulk", first)
        if first is not None:           # no hit: the quadratics, with the rest, tested by its plain draws too
            found = replace(found, flops=spent)
            pilot = _plain_draws(first, pilot)
    if candidates and candidates[0].beta >= NEAR and not _fits_afforded(candidates, found, fitting_allowed):
        return _drawn_alone(pi, event, replace(found, modes=candidates), allowed, "over budget")
    modes, polish_passes = _polished(candidates, found, fitting_allowed)
    D, flops = found.distribution, found.flops + polish_passes * found.observe_flops
    if not modes or modes[0].beta < NEAR:
        return None, {"search_flops": flops}
    fits = [fit_cost(found, mode) for mode in modes]                  # one fit each: the integrals' scale
    widen = _affordable_refits(modes, found, fitting_allowed - flops)
    fittings = [_fitting_cost(found, mode, w) for mode, w in zip(modes, widen)]
    share = max(fitting_allowed - flops - sum(fittings), 0.0) / len(modes)     # each integral's part of what is left
    spends = [min(DOUBLING_SHARE * one_fit, share) for one_fit in fits]
    generator = torch.Generator().manual_seed(pi.seed)
    narrow_generator = torch.Generator().manual_seed(pi.seed + 1)     # refits leave the fits' draws alone
    forwards, backwards = found.forwards + polish_passes, found.backwards
    log_probabilities, numerical_error, anchored_modes, narrow_modes, fitted = [], 0.0, 0, 0, []
    for i, (mode, refit) in enumerate(zip(modes, widen)):
        local = fit(found.margins[mode.clause], mode.point, generator)
        if refit:
            local = widened(local, found.margins[mode.clause], mode.point, generator)
        fitting = local.cost(found.observe_flops)
        spend = spends[i]
        others = [m.point for m in modes if m is not mode]
        radius = mode.beta - 1 / mode.beta      # the ball its cell's event avoids, less the search's
                                                # slack (the density falls e-fold in 1/β)
        result = log_cell_probability(local, mode.point, others, radius, spend, pi.seed)
        room = fitting_allowed - flops - fitting - result.flops - sum(fittings[i + 1:]) - sum(spends[i + 1:])
        result, extra, narrowed = _narrowed(found, mode, result, others, radius, room, narrow_generator, pi.seed)
        flops, forwards, backwards = flops + extra[0], forwards + extra[1], backwards + extra[2]
        narrow_modes += narrowed
        if result.log_p == -math.inf:        # nor the narrow one: anchored at the mode's margins
            with torch.no_grad():
                value = found.margins[mode.clause](mode.point[None])[0].clamp_min(0)
            forwards, flops = forwards + 1, flops + found.observe_flops
            fewest = _fewest_lines(found, mode, len(others))                  # a rescue (`_narrowed`)
            for curvature in (local.curvature, torch.zeros_like(local.curvature)):   # anchored, then tangent
                flops += result.flops                                              # the integral given up
                anchored = Quadratic(value, local.slope, curvature, 1, 0, 0)
                result = log_cell_probability(anchored, mode.point, others, radius, fewest, pi.seed)
                if result.log_p > -math.inf:
                    break
            anchored_modes += 1
        log_probabilities.append(result.log_p)
        fitted.append(local)
        numerical_error += result.abs_error
        forwards, backwards = forwards + local.forwards, backwards + local.backwards
        flops += fitting + result.flops
    combined = torch.logsumexp(torch.tensor(log_probabilities, dtype=torch.float64), 0).item()
    cap = log_chi2_tail(D.dim, modes[0].beta)
    details = {"modes": [m.beta for m in modes], "mode_log10": [lp / math.log(10) for lp in log_probabilities],
               "chi2_cap_log10": cap / math.log(10), "capped": combined > cap,
               "forward_passes": forwards, "backward_passes": backwards, "anchored_modes": anchored_modes,
               "narrow_modes": narrow_modes}
    drawn, shaping = _shaped_for_draws(replace(found, modes=modes), fitted, flops, allowed)
    result = OrthantResult(min(combined, cap), numerical_error, flops + shaping)
    return _with_draws(pi, event, drawn, result, allowed, details, pilot)


def _fits_afforded(modes: list[Mode], found: Search, allowed: float) -> bool:
    """Do `allowed` FLOPs pay for the search and, for each clause's nearest mode, the fit and
    the smallest integral that `_polished` keeps it for?"""
    walls = len(modes) - 1
    return found.flops + sum(_reserve(found, m, walls) for m in _nearest_per_clause(modes).values()) <= allowed


def _drawn_alone(pi: GaussianExplanation, event: Event, found: Search, allowed: float, why: str,
                 before: Weighted | None = None) -> tuple[OrthantResult, dict]:
    """P(event) from importance draws around the modes alone, with what `allowed` leaves past
    the search, where not even each clause's nearest fit fits, or the nearest mode lies
    within DRAWN_BELOW (module docstring), pooled with the run made `before` where given:
    their estimate, unbiased where the run is degenerate (as `_with_draws` joins it);
    details["fits"] says `why`. Where the draws see no hit (or none fit), FORM's union
    bound Σ_c Φ(-β_c) over each clause's nearest mode, capped by P(χ²_d ≥ β_min²) as the
    quadratics are, and by the upper end of the run's interval where its defensive draws
    contradict it (`Pilot.contradicts`: a needle 10⁻³ wide at β = 1.5 had read Φ(-1.5),
    +2.9 dex, against no hit in 1,800 plain draws)."""
    modes = [m.beta for m in found.modes]
    run, draws, flops = _draws(pi, event, found, found.flops, allowed)
    if before is not None:
        run, draws = before if run is None else run.pooled(before), draws + before.samples
    details = {"modes": modes, "forward_passes": found.forwards, "backward_passes": found.backwards,
               "fits": f"{why}: importance draws alone", "importance_draws": draws}
    if run is None or not run.hits:
        nearest = torch.tensor([m.beta for m in _nearest_per_clause(found.modes).values()], dtype=torch.float64)
        form = min(float(torch.logsumexp(log_ndtr(-nearest), 0)), log_chi2_tail(found.distribution.dim, modes[0]))
        if run is not None and _plain_draws(run, None).contradicts(form):
            form = math.log(run.interval()[1])
        return OrthantResult(form, 0.0, flops), {**details, "form": True}
    details.update(importance_effective_hits=run.effective_hits, importance_interval=run.interval())
    return OrthantResult(run.log_p(cut=not run.degenerate), 0.0, flops), details


def _draws(pi: GaussianExplanation, event: Event, found: Search, spent: float, allowed: float,
           seed_offset: int = 3) -> tuple[Weighted | None, int, float]:
    """Importance draws around `found`'s modes (`importance`) with what `allowed` leaves past
    `spent`, in multiples of DRAWS_GRAIN, where that buys DRAWS_MIN of them, drawn from
    π's seed + `seed_offset`; the run (None where it does not), the draws made and the
    FLOPs spent in all."""
    found = with_finite_modes(found)
    per_draw = importance_draw_flops(found)
    draws = int((allowed - spent) // (per_draw * DRAWS_GRAIN)) * DRAWS_GRAIN if found.modes else 0
    if draws < DRAWS_MIN:
        return None, 0, spent
    generator = torch.Generator().manual_seed(pi.seed + seed_offset)
    run = importance_sampling(event, found, draws, generator, pi.graph.n_outputs, shaped_split=DRAWS_SHAPED_SPLIT)
    return run, draws, spent + draws * per_draw


def _plain_draws(run: Weighted, pilot: Pilot | None) -> Pilot:
    """The run's defensive draws, plain draws of D, pooled with `pilot`'s."""
    before = pilot or Pilot(0, 0, 0)
    return Pilot(run.defensive_hits + before.hits, run.defensive + before.draws, 0)


def _shaped_for_draws(found: Search, fitted: list[Quadratic], spent: float, allowed: float) -> tuple[Search, int]:
    """The kept modes with the shaped components of their fitted quadratics (`shaping`, on
    the modes that take one: `takes_shape`), and the FLOPs of the shapes' algebra, where what
    `allowed` leaves past `spent` pays for it and DRAWS_MIN draws at the shaped draws' cost;
    else the modes as they are, and 0. (The algebra is O(d³) a mode: in 64 and more inputs
    on a small network it costs more than the draws it would shape.)"""
    needles = [takes_shape(found, mode) for mode in found.modes]
    cost = sum(needles) * shape_flops(found.distribution.dim)
    if not cost or allowed - spent - cost < DRAWS_MIN * importance_draw_flops(found, shaped=sum(needles)):
        return found, 0
    modes = [with_shape(mode, local) if needle else mode for mode, local, needle in zip(found.modes, fitted, needles)]
    return replace(found, modes=modes), cost


def _with_draws(pi: GaussianExplanation, event: Event, found: Search, result: OrthantResult, allowed: float,
                details: dict, pilot: Pilot | None = None) -> tuple[OrthantResult, dict]:
    """The quadratics' `result` joined with importance draws around the kept modes
    (`importance`) where what `allowed` leaves buys DRAWS_MIN of them (module docstring),
    made in multiples of DRAWS_GRAIN: a search a few passes longer (float32 margins cross
    their boundary a pass later or sooner) then leaves the same draws, where one draw more
    or less would have drawn another random stream.
    In log space, with the draws' spread s_d from their own 95% interval (Garwood's, for
    their effective hits: s_d = log(high/low)/3.92) and the quadratics' s_q =
    QUADRATIC_SPREAD_DEX (measured), the inverse-variance mean
        log p̂ = (log p̂_q / s_q² + log p̂_d / s_d²) / (1/s_q² + 1/s_d²),
    with the interval log p̂ ± 1.96 (1/s_q² + 1/s_d²)^{-1/2}; where the two differ by more
    than DRAWS_OUTLIER_Z (s_q² + s_d²)^{1/2} the quadratics are an outlier of their own
    heavy-tailed errors and the draws answer alone, with their interval. A degenerate run
    (`Weighted.degenerate`) joins with its unbiased estimate (the truncated one reads low
    where few weights carry it) and DEGENERATE_WIDENING times the spread of its own Garwood
    interval (not `Weighted.interval`'s, whose upper end the defensive draws' bound takes
    out of reach), and never answers alone; a run without hits leaves the quadratics. The
    draws are charged either way; details["importance_draws"] says how many were made,
    and where they count, details["importance_interval"] holds the interval,
    details["draws_weight"] their weight and details["quadratics_log10"] the quadratics'
    answer. (Far below float64's
    range, where the interval cannot be written, the quadratics stay.)
    The run's defensive draws are plain draws of D; pooled with the caller's `pilot`, they
    test the quadratics as `pilot.Pilot.contradicts` tests a claim: where they saw too few
    hits for the quadratics' p, the draws answer alone, degenerate or not, with
    `Weighted.interval` (without a hit, its upper end; details["plain_contradicts"]). The
    quadratics of a cell that opens wide over a thin, bent set read high
    (`scripts/fuzz_zero_sample.py` seed 23, trial 1: tails of a 4 → 8⁴ → 2 tanh net at
    p = 4e-4 read 10^-1.3, where 256 pilot draws and 192 defensive ones saw no hit)."""
    run, draws, flops = _draws(pi, event, found, result.flops, allowed)
    if run is None:
        return result, details
    details = {**details, "importance_draws": draws, "importance_effective_hits": run.effective_hits}
    plain = _plain_draws(run, pilot)
    if plain.draws and plain.contradicts(result.log_p):
        low, high = run.interval()
        log_drawn = run.log_p(cut=not run.degenerate) if run.hits else math.log(high)
        details.update(importance_interval=(low, high), draws_weight=1.0, plain_contradicts=True,
                       quadratics_log10=result.log_p / math.log(10))
        return OrthantResult(log_drawn, 0.0, flops), details
    low, high = run.garwood(cut=False) if run.degenerate else run.interval()
    if not run.hits or low < TINY:
        return replace(result, flops=flops), details
    log_drawn = run.log_p(cut=not run.degenerate)
    drawn_spread = math.log(high / low) / (2 * Z95) * (DEGENERATE_WIDENING if run.degenerate else 1.0)
    quadratic_spread = QUADRATIC_SPREAD_DEX * math.log(10)
    if not run.degenerate and abs(result.log_p - log_drawn) > DRAWS_OUTLIER_Z * math.hypot(quadratic_spread, drawn_spread):
        weight, log_p, interval = 1.0, log_drawn, (low, high)
    else:
        weight = quadratic_spread ** 2 / (quadratic_spread ** 2 + drawn_spread ** 2)
        log_p = weight * log_drawn + (1 - weight) * result.log_p
        spread = quadratic_spread * drawn_spread / math.hypot(quadratic_spread, drawn_spread)
        interval = (math.exp(log_p - Z95 * spread), math.exp(log_p + Z95 * spread))
    details.update(importance_interval=interval, draws_weight=weight, quadratics_log10=result.log_p / math.log(10))
    return OrthantResult(log_p, 0.0, flops), details


def _narrowed(found: Search, mode: Mode, first: OrthantResult, others: list[Tensor], radius: float,
              room: float, generator: torch.Generator, seed: int) -> tuple[OrthantResult, tuple[int, int, int], bool]:
    """Where the mode's quadratic holds less than NARROW_BELOW of Φ(-β) of its cell's event
    (none, or a sliver), the quadratic refitted at NARROW·SCALE, then NARROW²·SCALE, and the
    first refit whose integral holds more taken (`design_estimate`'s docstring), each only
    where `room` FLOPs pay for its fit and its integral, which takes the fewest lines
    (LINE_RANGE[0]: a rescue, on budgets already shared out); the second refit, while the
    event is still empty, only where room is left too for the anchored fallback's integral
    that follows if it holds nothing either (without it, the L1 ball's estimate with both
    refits empty cost 11,100–11,200 sample-equivalents of the 10⁴). Returns the result, the
    (FLOPs, forward passes, backward passes) spent beyond `first` (the integral given up
    included), and whether a refit was taken."""
    smoothed = float(log_ndtr(torch.tensor(-mode.beta, dtype=torch.float64))) + math.log(NARROW_BELOW)
    smallest = _fewest_lines(found, mode, len(others))
    result, flops, forwards, backwards = first, 0, 0, 0
    for second_refit, scale in enumerate((SCALE * NARROW, SCALE * NARROW ** 2)):
        fallback = smallest if second_refit and result.log_p == -math.inf else 0.0    # the anchored integral
        if result.log_p >= smoothed or flops + fit_cost(found, mode) + smallest + fallback > room:
            break
        narrow = fit(found.margins[mode.clause], mode.point, generator, scale)
        flops += narrow.cost(found.observe_flops)
        forwards, backwards = forwards + narrow.forwards, backwards + narrow.backwards
        second = log_cell_probability(narrow, mode.point, others, radius, smallest, seed)
        if second.log_p > result.log_p:                                    # the integral given up is charged
            return second, (flops + result.flops, forwards, backwards), True
        flops += second.flops
    return result, (flops, forwards, backwards), False


def fit_cost(found: Search, mode: Mode) -> float:
    """FLOPs of `quadratic.fit` at `mode`, at most: its points' forward passes and one
    backward pass per row, and the regression."""
    d, rows = found.distribution.dim, mode_rows(found, mode)
    points = 2 * pairs(d)
    return (points + 2 * points * rows) * found.observe_flops + fit_flops_bound(d, rows)


def _reserve(found: Search, mode: Mode, walls: int) -> float:
    """FLOPs a kept mode needs at least: its fit and its integral at the fewest lines."""
    return fit_cost(found, mode) + _fewest_lines(found, mode, walls)


def _fewest_lines(found: Search, mode: Mode, walls: int) -> int:
    """FLOPs of the mode's cell integral at its fewest lines (LINE_RANGE[0]), `walls` the
    other modes' cell walls."""
    return line_flops(found.distribution.dim, mode_rows(found, mode), walls, LINE_RANGE[0])


def mode_rows(found: Search, mode: Mode) -> int:
    """The margin rows (halfspaces) of the mode's clause."""
    return found.clauses[mode.clause][0].shape[0]


def _widens(found: Search, mode: Mode) -> bool:
    """Is the mode's quadratic refitted where its cell's mass lies (`quadratic.widened`)?
    For a single-row clause of a network whose activations grow linearly (tail benchmark,
    π's seeds 0–2: 59 events better and 31 worse by more than 0.02 dex); on tanh nets and
    wedges the refit moved events by 0.4–1.3 dex: a saturating network's curvature is not a
    cone's, and a wedge's faces are already linear."""
    return found.linear_growth and mode_rows(found, mode) == 1


def takes_shape(found: Search, mode: Mode) -> bool:
    """Does the mode's mixture component take a shaped partner (`shaping`)? A single-row
    clause of a network whose activations saturate, at a finite positive distance: its set is
    a needle, where a cone's (`_widens`) is not."""
    return (not found.linear_growth and mode_rows(found, mode) == 1 and mode.beta > 0
            and math.isfinite(mode.beta))


def _affordable_refits(modes: list[Mode], found: Search, left: float) -> list[bool]:
    """Which modes are widened (`_widens`), as far as `left` FLOPs pay for every mode's fits
    and smallest integral: the farthest modes lose their refit first. Modes come before
    refits (`_polished` reserves one fit a mode; reserving two dropped a mode at
    d = 32, and an Any event read +1.0 dex)."""
    walls = len(modes) - 1
    smallest = sum(_fewest_lines(found, m, walls) for m in modes)
    widen = [_widens(found, mode) for mode in modes]
    for i in reversed(range(len(modes))):
        if sum(_fitting_cost(found, m, w) for m, w in zip(modes, widen)) + smallest <= left:
            break
        widen[i] = False
    return widen


def _fitting_cost(found: Search, mode: Mode, widen: bool) -> float:
    """FLOPs of the mode's quadratic at most: one fit, or two and the change of coordinates
    where it is widened."""
    if not widen:
        return fit_cost(found, mode)
    return 2 * fit_cost(found, mode) + widening_flops(found.distribution.dim, mode_rows(found, mode))


def _polished(candidates: list[Mode], found: Search, allowed: float) -> tuple[list[Mode], int]:
    """The candidate modes the budget pays for, each descended POLISH_ITERATIONS steps
    further, merged where they meet (`design.is_new`, within a clause), nearest first; and
    the passes spent (forward-pass equivalents). A candidate is polished and kept while the
    search, the polishing so far and the kept modes' fits and smallest integrals leave room
    in `allowed` FLOPs for its own polishing (as the mean so far), fit and smallest
    integral; each clause's nearest mode is kept regardless. The wide search's descents are
    short, to find many modes for their cost; the quadratic is fitted at its mode and
    integrated from it, so the kept few are taken to the design point (on a linear wedge in
    d = 3, a 5-step descent stopped at |ξ| = 11.2 beside the design point at 9.9, and the
    second cell it made cut the wedge)."""
    nearest = _nearest_per_clause(candidates)
    walls = len(candidates) - 1
    polished, passes, reserved, tried = [], 0, 0.0, 0
    for mode in candidates:
        reserve = _reserve(found, mode, walls)                                  # refits come after modes
        polish = passes / tried * found.observe_flops if tried else 0.0      # as the polishing so far
        if (found.flops + passes * found.observe_flops + reserved + reserve + polish > allowed
                and nearest[mode.clause] is not mode):
            continue
        tried += 1
        descent = ClauseSearch(found.margins[mode.clause])
        with torch.inference_mode(False), torch.enable_grad():
            point = descent.descend(mode.point, POLISH_ITERATIONS)
        passes += descent.forwards + 2 * descent.backwards
        point = mode.point if point is None or float(point.norm()) > mode.beta else point
        if is_new(point, [m for m in polished if m.clause == mode.clause]):    # each clause keeps its own
            polished.append(Mode(point, float(point.norm()), mode.clause))
            reserved += reserve
    return sorted(polished, key=lambda m: m.beta), passes


def _kept(modes: list[Mode]) -> list[Mode]:
    """The KEPT_MODES nearest modes (`find_modes` sorts them) and each clause's nearest: every
    mode integrates its own clause only, so a clause without a mode would be left out of a
    union (a 12-clause union of halfspaces read 0.47 dex low when four modes were kept)."""
    nearest = _nearest_per_clause(modes)
    return [m for i, m in enumerate(modes) if i < KEPT_MODES or nearest[m.clause] is m]


def _nearest_per_clause(modes: list[Mode]) -> dict[int, Mode]:
    """Each clause's first mode in `modes` (sorted by β: its nearest)."""
    nearest: dict[int, Mode] = {}
    for mode in modes:
        nearest.setdefault(mode.clause, mode)
    return nearest
