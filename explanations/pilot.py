"""A plain pilot that checks a zero-sample answer which claims an event is common.

π's Gaussian summary (or its cumulant copula) can call an event common when it is rare:
on the short, bounded side of a skewed output, or near a final tanh's bound, the moments
put mass where the network has none (relu 2 → 8 → 8 → 1: P(y > 0.375) = 1e-4, π's
Gaussian 0.16 and its Cornish–Fisher tail 0.39). Such a claim is checkable for a few
forward passes: n draws from D with h hits contradict a claimed p where
    P(Binomial(n, p) ≤ h) = Σ_{k ≤ h} C(n, k) p^k (1 - p)^(n-k) < CONTRADICTION,
summed in log space. Only claims with n·p ≥ log(1/CONTRADICTION) can be contradicted
(zero hits then have probability (1 - p)^n ≤ e^{-np} below the level), so a pilot is
drawn only for those (`checkable`): with PILOT_DRAWS, p ≥ 0.018. A contradicted answer is
not returned as it is: the caller tries the input-space structure, and where that finds
nothing, returns the draws' own h/n with its 95% Wilson interval (without a hit, the
interval's upper end).
The copula's final answer is checked both ways (`contradicts(..., both_ways=True)`: or
P(Binomial(n, p) ≥ h) < CONTRADICTION, the claim too low), since a union past
inclusion–exclusion reads Boole's lower end max_i P(C_i): "at least two of six outputs past
their 10% quantiles" (15 two-row clauses on a 4 → 8 → 6 ReLU net, p = 0.16) read 0.064.
The routing test stays one-way: a pilot that sees more hits than π's summary claims
leaves the event common, where the copula is the better answer. Where the design path
runs after a contradiction, the pilot goes with it: pooled with the design draws'
defensive ones, it tests the local quadratics' claim too (`structured._with_draws`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributions import Gaussian
from .events import Event
from .graph import Graph
from .montecarlo import tally, wilson_interval

PILOT_DRAWS = 256       # 2.6% of a zero-sample query's 10⁴ sample-equivalents
CONTRADICTION = 1e-2    # the binomial tail below which the pilot rejects a claimed p: at 1e-3, an 8 → 256⁴ → 1
                        # tanh net's P(y > 1.93) = 1e-3, which the copula reads 5e-3, stood against 2 hits
                        # in 1,773 draws (tail 6.6e-3) and 8 in 3,924 (3.5e-3), +0.70 dex on two seeds in three


@dataclass(frozen=True)
class Pilot:
    """h hits of an event in n plain draws, and their FLOPs."""
    hits: int
    draws: int
    flops: int

    def contradicts(self, log_p: float, both_ways: bool = False) -> bool:
        """Is P(Binomial(n, p) ≤ h) < CONTRADICTION for p = exp(log_p) (the claim too high)?
        With `both_ways`, or P(Binomial(n, p) ≥ h) < CONTRADICTION (the claim too low)."""
        p = math.exp(log_p)
        if p >= 1:
            return self.hits < self.draws
        if p <= 0:
            return both_ways and self.hits > 0
        too_high = _log_binomial_sum(self.draws, log_p, range(self.hits + 1)) < math.log(CONTRADICTION)
        return too_high or both_ways and (
            _log_binomial_sum(self.draws, log_p, range(self.hits, self.draws + 1)) < math.log(CONTRADICTION))

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson's 95% interval for h/n."""
        return wilson_interval(self.hits, self.draws)


def _log_binomial_sum(n: int, log_p: float, counts: range) -> float:
    """log Σ_{k ∈ counts} C(n, k) p^k (1 - p)^(n-k), summed in log space (float64, one
    vectorised pass: the upper tail of n ≈ 10⁴ draws has that many terms)."""
    k = torch.arange(counts.start, counts.stop, dtype=torch.float64)
    terms = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
             + k * log_p + (n - k) * math.log1p(-math.exp(log_p)))
    return float(torch.logsumexp(terms, 0))


def checkable(log_p: float, draws: int = PILOT_DRAWS) -> bool:
    """Could `draws` plain draws contradict a claimed p (module docstring)?"""
    return draws * math.exp(log_p) >= math.log(1 / CONTRADICTION)


def draw_pilot(graph: Graph, distribution: Gaussian, event: Event, seed: int, draws: int = PILOT_DRAWS,
               before: Pilot | None = None) -> Pilot:
    """`draws` plain draws of the event (`montecarlo.tally`), pooled with `before` (draws of
    another seed) where given."""
    counts = tally(graph, distribution, draws, [event], seed=seed, progress=False)
    if before is None:
        return Pilot(counts.hits[0], draws, counts.flops)
    return Pilot(before.hits + counts.hits[0], before.draws + draws, before.flops + counts.flops)
