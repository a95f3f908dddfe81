"""Importance sampling around design points: the sampler of `guided` (the `samples=N` /
`flops=F` budget) and of the zero-sample design estimate's last draws (`structured`).

In whitened input space (x = μ + F ξ, ξ ~ N(0, I)) draw from the
defensive mixture (Hesterberg 1995)
    q = α0 N(0, I) + α_b N(0, s²I) + (1 - α0 - α_b) Σ_k a_k N(ξ*_k, I),
α0 = 0.2, α_b = 0.1, s = 2, ξ*_k the design points of `structured.search`; the broad
component N(0, s²I) reaches failure regions the search missed. The modes share their part
half evenly and half by FORM's mass Φ(-β_k) (β_k = |ξ*_k|, MODE_MASS_SHARE = ½):
a_k = ½/K + ½ Φ(-β_k)/Σ_j Φ(-β_j), so a mode one unit of β farther out (e^{-β} less mass)
does not take an equal share of the draws, and none gets less than half of one. A mode
with a curvature-shaped component (`shaping`: N(c_k, S_k) for a needle-shaped set) gives
it a quarter of its share a_k, its unit component keeping SHAPED_SPLIT = ¾ (the
zero-sample draws pass `shaped_split`: `structured.DRAWS_SHAPED_SPLIT`). Measured
on `pitrack bench sampling` against equal shares: relative RMSE above 0.3 on 35 → 29 and
37 → 35 events (seeds 0–19, 20–39), median 0.134 → 0.124 and 0.133 → 0.116. The weight
    w(ξ) = φ(ξ)/q(ξ) = 1 / (α0 + α_b s^{-d} e^{|ξ|²(1 - 1/s²)/2} + Σ_k α_k e^{ξ*_k·ξ - |ξ*_k|²/2}) ≤ 1/α0
is computed in log space (a shaped component adds α'_k |S_k|^{-1/2} e^{|ξ|²/2 - (ξ - c_k)ᵀS_k⁻¹(ξ - c_k)/2}). The unbiased estimate is (1/N) Σ_i 1_C(ξ_i) w_i; the estimate itself truncates the hits' weights at τ
(`truncation`: Σ_hits min(w_i, τ) = ½√n τ for n hits), p̂ = (1/N) Σ_i 1_C(ξ_i) min(w_i, τ),
which cuts the rare weight from a part of the event the mixture does not cover (one run
in 20 at 304× the truth, before) at a bias of at most the mass above τ
(`Weighted.weights_cut` counts them). Its standard error comes from the sample
variance of the truncated weights. The effective number of hits n = p̂²/se² (for equal
weights and small p, the number of hits) gives the interval, Garwood's for n counts
scaled to p̂ (`montecarlo.effective_count_interval`): the small-sample correction that
p̂ ± 1.96 se lacks when few weights carry the estimate; where weights were cut it is
joined with the unbiased estimate's. Kong's (Σ_hits w)²/Σ_hits w² (1992) of the weights
as drawn is `Weighted.effective_hits`; fewer than DEGENERATE_HITS = 10, or one weight carrying
over half of Σw, flags the run as degenerate, and its
interval's upper end is then at least Wilson's on the defensive draws alone, which are
plain samples of D (`Weighted.interval`); with no hit, [0, that end]. The defensive
component bounds the variance by p/α0 - p², at most 1/α0 = 5 times plain sampling's;
near the design points it is orders of magnitude smaller (a halfspace at distance β:
relative variance O(β) per draw instead of 1/p).
Cost per draw (`importance_draw_flops`): d normal variates, the input map, one forward
pass and the detectors (`Search.observe_flops`), and for the weight K d-dimensional dot
products and the mixture's log-sum-exp; with shaped components, a quadratic form
(ξ - c_k)ᵀS_k⁻¹(ξ - c_k) each and a d × d factor for the draws they make.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .events import Event
from .montecarlo import effective_count_interval, wilson_interval
from .truncation import log_cap, truncated

if TYPE_CHECKING:
    from .structured import Search

DEFENSIVE, BROAD, BROAD_SCALE, MODE_MASS_SHARE = 0.2, 0.1, 2.0, 0.5
SHAPED_SPLIT = 0.75          # a shaped mode's share that its unit component keeps (`shaping`)
DEGENERATE_HITS = 10


def with_finite_modes(found: Search) -> Search:
    """`found` without modes whose |ξ*|²/2 overflows float64 (the weights would be NaN)."""
    finite = [m for m in found.modes if math.isfinite(m.beta * m.beta)]
    return found if len(finite) == len(found.modes) else replace(found, modes=finite)


def importance_draw_flops(found: Search, shaped: int | None = None) -> int:
    """FLOPs of one draw from the mixture around `found`'s modes, its forward pass and weight,
    with `shaped` shaped components (default: those of `found`'s modes)."""
    d, k = found.distribution.dim, len(found.modes)
    shaped = sum(m.shape is not None for m in found.modes) if shaped is None else shaped
    quadratic_forms = shaped * (2 * d * d + 4 * d + 4) + (2 * d * d if shaped else 0)
    return found.observe_flops + d + 2 * k * d + 4 * k + quadratic_forms


@dataclass
class Weighted:
    """One importance-sampling run: the log-weights of its hits, the hits of its defensive
    draws, and the hits drawn by its mode components (the pilot's test of `guided`).
    The estimate truncates the weights (`truncation`); the sums stay in log space, since
    weights of events far in a tail underflow float64, and their squares sooner."""
    samples: int
    log_weights: Tensor       # log w of each hit (float64, CPU)
    defensive: int = 0        # draws from the defensive component N(0, I) …
    defensive_hits: int = 0   # … and how many of them hit
    mode_hits: int = 0        # hits drawn by the components at the design points
    hit_points: Tensor | None = None       # ξ of each hit, in the order of `log_weights` (if kept)
    log_cap: float = field(init=False)     # log τ of the truncation (+inf: none)
    weights_cut: int = field(init=False)   # how many weights it cuts
    sums: dict = field(init=False)         # cut (bool) → (log Σ w, log Σ w²) of the hits

    def __post_init__(self) -> None:
        self.log_cap = log_cap(self.log_weights)
        self.weights_cut = int((self.log_weights > self.log_cap).sum())
        self.sums = {cut: _log_sums(truncated(self.log_weights, self.log_cap) if cut else self.log_weights)
                     for cut in (False, True)}

    @property
    def hits(self) -> int:
        return self.log_weights.numel()

    def log_p(self, cut: bool = True) -> float:
        """log p̂: the truncated estimate, or (`cut=False`) the unbiased one."""
        return self.sums[cut][0] - math.log(self.samples)

    def relative_error(self, cut: bool = True) -> float:
        """se/p̂, from the sample variance: √((N Σw²/(Σw)² - 1)/(N - 1))."""
        if self.hits == 0:
            return math.inf
        log_total, log_squares = self.sums[cut]
        ratio = math.exp(min(log_squares - 2 * log_total + math.log(self.samples), 700.0))
        return math.sqrt(max(ratio - 1, 0.0) / max(self.samples - 1, 1))

    @property
    def effective_hits(self) -> float:
        """Kong's (Σ_hits w)²/Σ_hits w², of the weights as drawn."""
        log_total, log_squares = self.sums[False]
        return math.exp(2 * log_total - log_squares) if self.hits else 0.0

    @property
    def degenerate(self) -> bool:
        """Fewer than DEGENERATE_HITS effective hits, or one weight over half of Σw (as drawn)."""
        return (self.effective_hits < DEGENERATE_HITS
                or float(self.log_weights.max()) > self.sums[False][0] - math.log(2))

    def garwood(self, cut: bool = True) -> tuple[float, float]:
        """Garwood's 95% interval for p̂²/se² effective hits, scaled to p̂ (truncated, or
        `cut=False` unbiased), without the defensive draws' bound of `interval`."""
        error = self.relative_error(cut)
        effective = error ** -2 if error > 0 else self.effective_hits
        return effective_count_interval(self.log_p(cut), effective)

    def pooled(self, other: "Weighted") -> "Weighted":
        """This run and `other` (another stream from the same mixture) as one run."""
        points = None if self.hit_points is None or other.hit_points is None else \
            torch.cat([self.hit_points, other.hit_points])
        return Weighted(self.samples + other.samples, torch.cat([self.log_weights, other.log_weights]),
                        self.defensive + other.defensive, self.defensive_hits + other.defensive_hits,
                        self.mode_hits + other.mode_hits, points)

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
        low, high = self.garwood(cut=True)
        if self.weights_cut:
            unbiased = self.garwood(cut=False)
            low, high = min(low, unbiased[0]), max(high, unbiased[1])
        return low, max(high, plain) if self.degenerate else high


def _log_sums(log_w: Tensor) -> tuple[float, float]:
    """log Σ w and log Σ w² (-∞ for no weight)."""
    if not log_w.numel():
        return -math.inf, -math.inf
    return float(torch.logsumexp(log_w, 0)), float(torch.logsumexp(2 * log_w, 0))


def importance_sampling(event: Event, found: Search, samples: int, generator: torch.Generator,
                        n_outputs: int, batch: int = 1 << 14, keep_points: bool = False,
                        shaped_split: float = SHAPED_SPLIT) -> Weighted:
    """The hits' log-weights over `samples` draws from the defensive mixture (module
    docstring), a shaped mode's unit component keeping `shaped_split` of its share; with
    `keep_points`, their ξ too (a pilot's, for `adaptation`)."""
    points = torch.stack([m.point for m in found.modes])                    # [K, d]
    half_norms = (points * points).sum(1) / 2
    k, d = points.shape
    form = torch.special.log_ndtr(-torch.tensor([m.beta for m in found.modes], dtype=torch.float64))
    share = MODE_MASS_SHARE * torch.softmax(form, 0) + (1 - MODE_MASS_SHARE) / k     # Σ = 1
    shaped = [i for i, m in enumerate(found.modes) if m.shape is not None]
    if shaped:                  # a shaped mode's unit component keeps `shaped_split` of its share
        index = torch.tensor(shaped)
        kept = share.clone()
        kept[index] *= shaped_split
        share = torch.cat([kept, share[index] * (1 - shaped_split)])
        shapes = [found.modes[i].shape for i in shaped]
        centers = torch.stack([s.center for s in shapes])                       # [S, d]
        factors = torch.stack([s.factor for s in shapes])                       # [S, d, d]
        precisions = torch.stack([s.precision for s in shapes])
        log_dets = points.new_tensor([s.log_det_precision for s in shapes])
    log_mix = torch.cat([points.new_tensor([math.log(DEFENSIVE), math.log(BROAD)]),
                         (math.log(1 - DEFENSIVE - BROAD) + share.log()).to(points)])
    shifts = torch.cat([points.new_zeros(2, d), points, points.new_zeros(len(shaped), d)])
    hit_weights, hit_points = [], []
    done = defensive = defensive_hits = mode_hits = 0
    with torch.no_grad():
        while done < samples:
            size = min(batch, samples - done)
            component = torch.multinomial(log_mix.exp().cpu(), size, replacement=True, generator=generator)
            xi = torch.randn(size, d, generator=generator, dtype=points.dtype).to(points.device)
            component = component.to(points.device)
            scale = torch.where(component == 1, BROAD_SCALE, 1.0).to(points.dtype)
            xi = xi * scale[:, None] + shifts[component]
            if shaped:
                drawn = component >= 2 + k                                      # from a shaped component
                which = component[drawn] - 2 - k
                xi[drawn] = centers[which] + torch.einsum("nij,nj->ni", factors[which], xi[drawn])
            squares = (xi * xi).sum(1)
            broad = squares * (1 - BROAD_SCALE ** -2) / 2 - d * math.log(BROAD_SCALE)
            exponents = [xi.new_zeros(size, 1), broad[:, None], xi @ points.T - half_norms]
            if shaped:                  # log N(ξ; c, S) - log φ(ξ)
                offsets = xi[:, None, :] - centers                              # [n, S, d]
                quadratic = torch.einsum("nsi,sij,nsj->ns", offsets, precisions, offsets)
                exponents.append((squares[:, None] - quadratic + log_dets) / 2)
            exponents = torch.cat(exponents, dim=1)
            log_w = -torch.logsumexp(exponents + log_mix, dim=1)
            hit = event.evaluate(found.observe(xi)[:, :n_outputs])
            hit_weights.append(log_w[hit].to(torch.float64).cpu())
            if keep_points:
                hit_points.append(xi[hit])
            plain = component == 0
            defensive += int(plain.sum())
            defensive_hits += int((hit & plain).sum())
            mode_hits += int((hit & (component >= 2)).sum())
            done += size
    log_weights = torch.cat(hit_weights) if hit_weights else torch.empty(0, dtype=torch.float64)
    return Weighted(samples, log_weights, defensive, defensive_hits, mode_hits,
                    (torch.cat(hit_points) if hit_points else points.new_zeros(0, d)) if keep_points else None)
