"""method="cumulant": skew-corrected propagation plus the output's third and fourth cumulants.

Up to the last hidden pre-activation z, π propagates means and covariances with the
third and fourth cumulants that the earlier activations create (`skew`), correcting every
activation's mean and covariance by the Edgeworth expansion (`edgeworth`; order ≥ 3, for
chains of affine maps and activations; residual networks are propagated as in
`gaussian`). Measured on 16 → 128³ → 1 (He init, x ~ N(0, I), 10⁷-sample references):
the mean's error drops from 0.0004–0.027 output sds (Gaussian) to 0.0003–0.0046 (ReLU),
at 887 sample-equivalents for the mean. The mean needs only the last pre-activation's
per-unit variance, κ3 and κ4, so it is computed apart from that layer's covariance (whose
cost the build adds); `mean_flops` is its cost.

The last nonlinearity is where most of the output's skew and kurtosis is made, so it is
treated exactly under π's Gaussian model of z, N(μ_z, Σ_z): with
u_j = (z_j - μ_j)/σ_j, correlation R = v vᵀ (rows of v unit vectors) and the Hermite
expansion f(μ_j + σ_j u) = Σ_k c_jk h_k(u), any combination s = a·y = Σ_j (a W_L)_j f(z_j)
+ a·b_L has joint cumulants given by the diagram formula (`hermite_cumulants`). π keeps
κ1, κ2 of s from Gaussian propagation (exact under the model) and takes κ3, κ4 from the
diagrams, truncated at Hermite degree K (default 6; the truncation drops diagrams with a
vertex of degree > K). Cost: the Gaussian build plus, per direction queried, the diagram
contractions (O(n³) for κ3, see `hermite_cumulants`).

Events: if π's Gaussian puts the event below 5e-2, or the event reads a detector whose
score is nonlinear in y (a moment-matched Gaussian of it can miss the tail by orders of
magnitude), the input-space structure decides (design points and the network's local
quadratics there, `structured`). Otherwise each halfspace atom a·v > t
gets a cumulant tail (`tails.log_upper_tail`, Cornish–Fisher) and atoms are joined by the
Gaussian copula of π (`tails.copula_probability`); atoms involving a learned detector's
score keep Gaussian marginals.

Accuracy of κ3, κ4 (measured against 2e6 samples on one hidden layer, where the
pre-activations are exactly Gaussian): κ3 within 1–4% at degree 4–8 for widths 6–128
(tanh, ReLU); κ4 is poor (20–100% off): the truncated series gives the cumulants of the
degree-K polynomial surrogate, whose fourth moment on coincident units drifts away from
the activation's as K grows (it diverges for K ≳ 10), and its diagrams cost O(n⁴) (the
tetrahedra). So the default order is 3 (κ4 = 0); order=4 adds κ4. The skew that deeper
layers carry into the output is not added to the output's κ3 (on 16 → 128³ → 1 ReLU:
π's output skew -0.03, sampling's 0.24). A network that does not end in activation →
affine has no last-layer non-Gaussianity to add: its κ3 = κ4 = 0 (e.g. linear networks,
exact). A network without any activation has a Gaussian output, which π holds exactly:
its events are π's Gaussian integrals.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections import Counter
from dataclasses import replace

import torch
from torch import Tensor

from .activations import activation
from .base import Explanation, moment_dtype
from .design import is_far
from .distributions import Gaussian
from .edgeworth import corrected_mean
from .estimate import Estimate
from .events import Event
from .gaussian import GaussianExplanation
from .graph import Act, Affine, Chain, Graph, iter_ops
from .guided import BULK_POINTS, BULK_REPLICATES, BULK_SHARE, GuidedSampling
from .hermite_cumulants import hermite_cumulants
from .moments import hermite_coefficients, split_deterministic, split_sd
from .montecarlo import detector_flops, draw_cost
from .mvn import MAX_UNION_CLAUSES, OrthantResult
from .pilot import PILOT_DRAWS, checkable, draw_pilot
from .propagate import (GaussianState, WeightProduct, finish_affine, propagate, propagate_skewed,
                        skewed_activation, sources_through_affine)
from .skew import third_fourth
from .structured import DESIGN_BUDGET, design_estimate
from .tails import copula_probability

DEFAULT_DEGREE = 6
CUMULANT_BUDGET = 2000   # sample-equivalents one cumulant marginal may cost; beyond, κ3 = κ4 = 0
BRACKET_CHECK = 0.25     # a copula answer whose error bound passes this share of it is checked by draws


def _upper_end(result: OrthantResult) -> float:
    """log(p + error bound) of an integral: for Boole's bracket of a union past
    inclusion–exclusion (`mvn.log_union`: max_i P(C_i), with Σ_i P(C_i) - max_i P(C_i) in
    its error) the bracket's upper end Σ_i P(C_i), capped at 1. The event is far only where
    that end is; the pilot then tests the lower end, so that only draws with fewer hits than
    the union's largest clause allows send it to the design path. "At least two of six
    outputs past their 10% quantiles" (p = 0.12 on a 16 → 64² → 6 GELU net) has a lower end
    under the 5e-2 gate, and had gone to the design path, found no design point beyond the
    unit ball, and read the copula's lower end at 11,350 sample-equivalents (-0.57 dex)."""
    if result.abs_error <= 0:
        return result.log_p
    return min(math.log(math.exp(result.log_p) + result.abs_error), 0.0)


def psd_projected(cov: Tensor, flops: Counter) -> Tensor:
    """`cov` with its negative eigenvalues set to 0, the nearest positive semi-definite matrix
    in the Frobenius norm (Higham 1988), and itself where it is PSD; ≈ 10k³ FLOPs for the
    eigendecomposition, counted in `flops`. The Edgeworth corrections keep each entry to
    first order but not the matrix PSD: a review's gelu 2 → 8 → 8 → 2 (bias sd 0.3, seed 3)
    had corr(y0, y1) = 1.046, and every two-output event raised."""
    values, vectors = torch.linalg.eigh(cov)
    flops["psd projection"] += 10 * cov.shape[0] ** 3
    if bool((values >= 0).all()):
        return cov
    return (vectors * values.clamp_min(0)) @ vectors.T


class CumulantExplanation(GuidedSampling, Explanation):
    """An explanation that knows κ1..κ4 of any linear combination of the outputs.

    Subclasses set `mean`, `cov` (π's Gaussian summary of y), `dtype`, count their build in
    `self.flops`, and implement `_cumulants` and `_diagram_size`; probabilities then
    follow generically.
    """

    mean: Tensor
    cov: Tensor
    exact = False    # is π's Gaussian the output's law (a network without activations)?

    def cumulants(self, direction: Tensor) -> Tensor:
        """κ1..κ4 of direction·y under π: a [4] tensor."""
        return self._cumulants(direction)[0]

    @abstractmethod
    def _cumulants(self, direction: Tensor) -> tuple[Tensor, int]:
        """κ1..κ4 of direction·y under π, and the FLOPs spent."""

    @abstractmethod
    def _diagram_size(self) -> tuple[int, int, int]:
        """(units, Hermite degree, order) of the diagram contractions behind `_cumulants`."""

    def _affordable(self) -> bool:
        """Do the diagram contractions fit CUMULANT_BUDGET sample-equivalents per marginal?
        Their cost is ≈ (K²/4)·2n³ for κ3, about K times more with κ4 (`hermite_cumulants`)."""
        n, degree, order = self._diagram_size()
        estimate = degree ** 2 / 4 * 2 * n ** 3 * (degree if order >= 4 else 1)
        return estimate <= CUMULANT_BUDGET * self.flops_per_sample

    def _probability(self, event: Event, paid: int) -> Estimate:
        """If π's Gaussian summary puts the event below 5e-2, or the event reads a detector
        whose score is nonlinear in y, the design-point estimate of `structured` with what
        π's build and the summary left of DESIGN_BUDGET (where that pays for no fit, its
        draws alone, or FORM: `structured._drawn_alone`); otherwise cumulant marginals
        joined by π's Gaussian copula. The summary's probability is a test, not the answer:
        like the sampled estimators' it takes BULK_POINTS × BULK_REPLICATES quasi-random
        points (4096 × 8 had cost half the budget), and at most BULK_SHARE of what π's build
        leaves of DESIGN_BUDGET: a union whose inclusion–exclusion would take more gets the
        bracket of `mvn.log_union` (for single-row clauses the complement's one orthant), and
        where even that would, the design path runs untested (12 clauses on a 4 → 8 → 6 net
        had cost 2.6·10⁶ sample-equivalents). The copula's union takes as many points as the
        budget leaves (`_copula_integral`). Its cumulant marginals, one per direction read by
        no detector, are taken where one fits CUMULANT_BUDGET (`_affordable`) and, for
        several directions, where at the first one's cost (computed to learn it, and charged
        either way) all of them fit in half of what is left; else every atom takes its
        Gaussian marginal, and what the budget leaves buys plain draws that check the
        answer, as the copula's fallback's are (8 clauses on that net, p = 5.7e-2, had cost
        15,166 sample-equivalents; checked, 9,999 and -0.01 dex). Where π is `exact` and the
        event reads no nonlinear detector, the answer is π's Gaussian integral. A claim that
        the event is common is checked by plain draws (`pilot`): the summary's, by
        PILOT_DRAWS of them, and if they contradict it the design path runs after all
        (P(y > 0.375) = 1e-4 on a ReLU 2 → 8 → 8 → 1 net: read 0.39 by the copula, now
        2.8e-4); the copula's where the search found no design point beyond the unit ball,
        by as many more draws as DESIGN_BUDGET leaves, as is a union the copula could only
        bracket (its width over BRACKET_CHECK of the answer: Boole's lower end). Where the
        draws contradict the answer, too high or too low, what the budget leaves buys more of
        them, and their own estimate h/n is
        returned with its 95% Wilson interval (`+pilot`), or, without a hit, the interval's
        upper end. The draws only check a design estimate's path, so it keeps samples = 0
        and says how many were made (details["pilot_draws"]); they go on to test its
        quadratics (`structured._with_draws`). Where the design estimate's
        own importance draws answer (`structured._with_draws`), the method says
        `+design+draws`, and the estimate carries their 95% interval and counts them in
        `samples`."""
        if self.exact and not event.reads_nonlinear_detector():
            exact = self._exact_probability(event)
            if exact is not None:
                return exact
        cap = BULK_SHARE * max(self._left(paid), 0.0)
        mean, cov, rows, bulk, flops = self._bulk(event, BULK_POINTS, BULK_REPLICATES, bracket=True, cap=cap,
                                                  refuse=False)   # a test
        n = self.mean.shape[0]
        spent = [flops + bulk.flops]
        pilot = None
        rare = is_far(_upper_end(bulk)) or event.reads_nonlinear_detector()   # a union's bracket: both ends
        if self.design and not rare and self._draws_left(event, sum(spent) + paid) >= PILOT_DRAWS:
            pilot = draw_pilot(self.graph, self.distribution, event, self.seed + 1)
            spent.append(pilot.flops)
            rare = pilot.contradicts(bulk.log_p)
        fallback = {}
        if self.design and rare:
            left = DESIGN_BUDGET - (self.build_flops + paid + sum(spent)) / self.flops_per_sample
            result, details = design_estimate(self, event, max(left, 0.0), pilot)
            if result is not None:
                drawn = {"pilot_draws": pilot.draws, "pilot_hits": pilot.hits} if pilot else {}
                interval = details.pop("importance_interval", None)     # the design's draws answered
                estimate = self._estimate(result, sum(spent), f"{self.method}+design" + ("+draws" if interval else ""),
                                          {**details, **drawn, "bulk_log10": bulk.log_p / math.log(10)})
                return replace(estimate, interval=interval, samples=details["importance_draws"]) if interval else estimate
            spent.append(details["search_flops"])
            fallback = {"design": "no design point beyond the origin's unit ball; cumulant copula used"}

        computed: dict[tuple, Tensor] = {}

        def cumulant_marginal(a: Tensor) -> Tensor:
            key = tuple(a.tolist())
            if key not in computed:
                computed[key], cost = self._cumulants(a[:n])
                spent.append(cost)
            return computed[key]

        directions = {tuple(row.tolist()): row for a, _ in rows for row in a if not bool(row[n:].any())}
        affordable, priced_out = self._affordable(), False
        if affordable and len(directions) > 1:          # the first one's cost prices them all
            left = self._left(paid + sum(spent))
            cumulant_marginal(next(iter(directions.values())))
            priced_out = len(directions) * spent[-1] > left / 2
            affordable = not priced_out

        def marginal(a: Tensor) -> Tensor:
            if bool(a[n:].any()) or not affordable:    # a detector's score, or over budget: Gaussian
                return torch.stack([a @ mean, a @ cov @ a, a.new_zeros(()), a.new_zeros(())])
            return cumulant_marginal(a)

        points, max_clauses = self._copula_integral(rows, paid + sum(spent))
        result = copula_probability(rows, cov, marginal, seed=self.seed, points=points, max_clauses=max_clauses)
        details = {"cumulants": "used" if affordable else "over budget", **fallback}
        draws = self._draws_left(event, sum(spent) + paid + result.flops)
        bracketed = result.abs_error > BRACKET_CHECK * math.exp(result.log_p)   # Boole's bracket
        checking = ((fallback or priced_out or bracketed)
                    and checkable(result.log_p, draws + (pilot.draws if pilot else 0)))
        contradicted = pilot is not None and pilot.contradicts(result.log_p, both_ways=True)
        if self.design and draws and (checking or contradicted):
            drawn = pilot.flops if pilot else 0        # the draws decide: what the budget leaves buys more
            pilot = draw_pilot(self.graph, self.distribution, event, self.seed + 2, draws, pilot)
            spent.append(pilot.flops - drawn)
        if pilot is not None and pilot.contradicts(result.log_p, both_ways=True):
            low, high = pilot.interval
            answer = OrthantResult(math.log(pilot.hits / pilot.draws if pilot.hits else high), 0.0, result.flops)
            estimate = self._estimate(answer, sum(spent), f"{self.method}+pilot",
                                      {**details, "pilot_hits": pilot.hits,
                                       "contradicted_log10": result.log_p / math.log(10)})
            return replace(estimate, interval=(low, high), samples=pilot.draws)
        return self._estimate(result, sum(spent), details=details)

    def _copula_integral(self, rows: list[tuple[Tensor, Tensor]], spent: float) -> tuple[int, int]:
        """Quasi-random points per replicate and inclusion–exclusion's clause limit for the
        copula's union: inclusion–exclusion at the most points (4096 down to 64) where it
        fits in what DESIGN_BUDGET leaves past π's build and `spent` (Boole's lower end had
        read a union of two-row clauses 0.16–0.27 dex low where 64 points would have
        fitted), else the bracket at the most points that fit (`mvn.log_union`: for
        single-row clauses the complement's one orthant), at 64 points regardless."""
        sizes = [a.shape[0] for a, _ in rows]
        limits = {points: self._bulk_limit(sizes, sum(sizes), points, 8, self._left(spent))
                  for points in (4096, 1024, 256, 64)}
        expanded = [points for points, limit in limits.items() if limit == {}]
        bracketed = [points for points, limit in limits.items() if limit is not None]
        if expanded:                    # inclusion–exclusion at fewer points before the bracket at more
            return expanded[0], MAX_UNION_CLAUSES
        return (bracketed[0] if bracketed else 64), 0

    def _draws_left(self, event: Event, spent: float) -> int:
        """Plain draws of the event that DESIGN_BUDGET leaves after π's build and `spent`."""
        unit = draw_cost(self.graph, self.distribution) + detector_flops([event])
        return max(int(self._left(spent) // unit), 0)

    def _left(self, spent: float) -> float:
        """FLOPs that DESIGN_BUDGET leaves after π's build and `spent` (negative: overspent)."""
        return DESIGN_BUDGET * self.flops_per_sample - self.build_flops - spent

    def _exact_probability(self, event: Event) -> Estimate | None:
        """π's Gaussian integral of the event, at the most quasi-random points (4096 down to
        64 per replicate, for orthants of three rows or more) that DESIGN_BUDGET leaves after
        π's build; None where even 64 do not fit (a review: three-row intersections on 3 → 4 → 4
        cost 65,559 sample-equivalents at 4096 × 8)."""
        detectors = event.detectors()
        sizes, width = [len(c) for c in event.dnf()], self.graph.n_outputs + len(detectors)
        cap = self._left(0)
        for points in (4096, 1024, 256, 64):
            if self._bulk_limit(sizes, width, points, 8, cap) == {}:
                _, _, _, result, flops = self._bulk(event, points)
                return self._estimate(result, flops, details={"exact": "a network without activations: y is Gaussian"})
        return None


class CumulantPropagation(CumulantExplanation, GaussianExplanation):
    """Gaussian propagation with exact last-layer κ3, κ4 (module docstring)."""

    method = "cumulant"

    def __init__(self, graph: Graph, distribution: Gaussian, *, order: int = 3, degree: int = DEFAULT_DEGREE,
                 design: bool = True, dtype: torch.dtype | str = torch.float64, seed: int = 0) -> None:
        if order not in (2, 3, 4):
            raise ValueError(f"order must be 2, 3 or 4, got {order!r}")
        Explanation.__init__(self, graph, distribution, seed=seed)
        dtype = moment_dtype(dtype)
        self.order, self.degree, self.dtype, self.design = order, degree, dtype, design
        chain = graph.to(dtype=dtype).chain
        self.exact = not any(isinstance(op, Act) for op in iter_ops(chain))
        x = self.distribution.to(dtype=dtype)
        state = GaussianState(x.mean, x.cov, x.cov)
        self.last = None
        self.mean_flops = None
        if len(chain) >= 2 and isinstance(chain[-1], Affine) and isinstance(chain[-2], Act):
            if order >= 3 and len(chain) >= 3 and isinstance(chain[-3], Affine):
                z, h = self._skewed_hidden(chain, state, x.factor)
            else:
                z = propagate(chain[:-2], state, self.flops)
                h = propagate(chain[-2:-1], z, self.flops)
            self.last = chain[-1]
            self._last_layer(chain[-2].kind, z)
            self.penultimate = h
            state = propagate(chain[-1:], h, self.flops)
        else:
            state = propagate(chain, state, self.flops)
        mean = self.mean if self.mean_flops is not None else None
        self._finish(state)
        self.cov = psd_projected(self.cov, self.flops)
        if mean is not None:
            self.mean = mean

    def _skewed_hidden(self, chain: Chain, state: GaussianState,
                       input_factor: Tensor) -> tuple[GaussianState, GaussianState]:
        """Propagate with skew (`propagate_skewed`) to the last activation's output, in two
        separate computations: the mean of y, which needs only the per-unit κ3, κ4 and
        variances of the last pre-activation z (its cost is `mean_flops`); then z's full
        covariance with the Edgeworth-corrected Cov(f(z)). Returns the states of z and f(z)."""
        hidden, act, out = chain[-3], chain[-2], chain[-1]
        h, sources, pending = propagate_skewed(chain[:-3], state, self.flops, input_factor)
        weight = hidden.weight
        sources_through_affine(weight, sources, pending, self.flops)
        product = WeightProduct(weight, self.flops)
        weighted = product @ h.cov
        mean_z, var_z = weight @ h.mean + hidden.bias, (weighted * weight).sum(dim=1)
        third, fourth, cost = third_fourth(sources, mean_z, full=False)
        _, deterministic, sd = split_sd(mean_z, var_z)
        mean_h, cost_mean = corrected_mean(act.kind, mean_z, sd, third, fourth)
        mean_h = torch.where(deterministic, activation(act.kind).fn(mean_z), mean_h)
        m, n = weight.shape
        self.mean = out.weight @ mean_h + out.bias
        self.flops["skew mean"] += 4 * m * n + cost + cost_mean + 2 * out.weight.numel()
        self.mean_flops = self.build_flops
        z = finish_affine(hidden, h, weighted, self.flops, product)         # W Σ_h is reused
        return z, skewed_activation(act.kind, z, sources, self.flops)

    def _expectation(self) -> Estimate:
        """μ_y; its cost is `mean_flops` where the skew path computed the mean separately."""
        estimate = super()._expectation()
        if self.mean_flops is None:
            return estimate
        return replace(estimate, flops=self.mean_flops, details={**estimate.details, "build_flops": self.build_flops})

    def _last_layer(self, kind: str, z: GaussianState) -> None:
        """Hermite coefficients and unit directions of the last hidden layer."""
        sd, deterministic, sd_safe = split_deterministic(z.mean, z.cov)
        self.coefficients, _, flops = hermite_coefficients(kind, z.mean, sd_safe, self.degree)
        self.coefficients[deterministic, 1:] = 0
        correlation = z.cov / torch.outer(sd_safe, sd_safe)
        values, vectors = torch.linalg.eigh((correlation + correlation.T) / 2)
        directions = vectors * values.clamp_min(0).sqrt()
        norms = directions.norm(dim=1, keepdim=True)
        self.directions = torch.where(norms > 0, directions / norms.clamp_min(1e-300), directions)
        n = z.mean.shape[0]
        self.flops["last-layer expansion"] += flops + 10 * n ** 3

    def _diagram_size(self) -> tuple[int, int, int]:
        return (self.last.n_in if self.last is not None else 0), self.degree, self.order

    def _cumulants(self, direction: Tensor) -> tuple[Tensor, int]:
        direction = direction.to(self.dtype)
        n = self.mean.shape[0]
        gaussian = torch.stack([direction @ self.mean, direction @ self.cov @ direction])
        if self.last is None or self.order == 2:
            return torch.cat([gaussian, gaussian.new_zeros(2)]), 2 * n * n + 2 * n
        weights = (direction @ self.last.weight)[None, :]
        kappa, flops = hermite_cumulants(weights, self.coefficients, self.directions, order=self.order)
        higher = kappa[0, 2:self.order]
        return torch.cat([gaussian, higher, gaussian.new_zeros(4 - self.order)]), flops + 2 * n * n
