"""Subset simulation: the sampled tail estimate where design-point importance sampling fails.

Au & Beck, "Estimation of small failure probabilities in high dimensions by subset
simulation", Probabilistic Engineering Mechanics 16 (2001). In whitened input space
(x = μ + F ξ, ξ ~ N(0, I)) the event is {g(ξ) > 0} with the margin
    g(ξ) = max over clauses of min over rows of (A v(ξ) - b),   v = (y, detector scores),
so P(event) = Π_l P(g > c_l | g > c_{l-1}) over levels c_1 < c_2 < … < c_L = 0. Level 1
draws N points from N(0, I); c_l is the (1 - p0) quantile of the current N margins
(p0 = 0.1), and the p0·N points above it seed p0·N Markov chains of 1/p0 states each
that sample N(0, I) restricted to {g > c_l}: preconditioned Crank–Nicolson proposals
ξ' = ρ ξ + √(1 - ρ²) η, η ~ N(0, I), accepted iff g(ξ') > c_l (the proposal keeps N(0, I)
invariant, so this is Metropolis–Hastings for the restricted law; Cotter et al.,
Statistical Science 28, 2013). ρ is fixed within a level and moved between levels toward
an acceptance rate of 0.44 (Papaioannou et al., Probabilistic Engineering Mechanics 41,
2015). When c_l reaches 0,
    p̂ = p0^{L-1} · #{g > 0}/N.
Its squared coefficient of variation is δ² = Σ_l δ_l², δ_l² = (1 - P_l)/(P_l N) · (1 + γ_l), γ_l
the lag-weighted autocorrelation of the level indicator along the chains (Au & Beck, eqs.
27–29; γ_1 = 0 for independent draws), if the levels' estimates were uncorrelated. They
are not: each level's chains start from the last level's points, and where chains miss
failure islands every later level inherits the miss. Au & Beck bound the correlated case
by δ̄ = Σ_l δ_l (all levels fully correlated), and the 95% interval is Garwood's for
1/δ̄² effective counts, scaled to p̂ (`montecarlo.effective_count_interval`). Measured on
`pitrack bench sampling` (452 subset-simulation runs, rough deep networks mostly):
ln(p/p̂)/√ln(1 + δ²) has mean 0.45 and sd 1.74 instead of 0 and 1, and the δ interval
covered 82.7% of the runs; δ̄ is about √L δ for L similar levels. On a halfspace, where
chains mix, δ̄ is about twice the actual error, so there the interval is conservative.
p̂ is biased by O(1/N). δ is reported as `cov`, δ̄ as `cov_bound`.
Budget left once c_l reaches 0 lengthens the last level's chains. If the budget runs out before c_l reaches 0,
p̂ = 0, details["reached"] = False, and the interval is Wilson's for no hit among the first
level's N_1 independent draws: the later levels' products p0^{l} rest on chains that may
have missed the event's region, so they bound nothing (measured: runs stuck 9 levels down
an ArgMax event's wrong side reported [0, 2e-13] for p = 1.2e-6).
Cost: per point one margin evaluation (the input map, the network, the detectors) plus d
normal variates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .montecarlo import effective_count_interval, wilson_interval

LEVEL_PROBABILITY = 0.1
TARGET_ACCEPTANCE = 0.44
SIZED_LEVELS = 10       # level sizes plan for at most p0^10: a tinier hint (π's log P far out,
                        # or -inf) would leave the first level a handful of draws


@dataclass
class SplittingResult:
    p: float
    level_covs: list[float]     # δ_l of each level that has one
    levels: list[float]         # c_1 … c_L
    evaluations: int            # margin evaluations spent
    reached: bool               # did the last level hold points with g > 0?
    per_level: int              # N
    first_level: int            # N_1, the independent draws of level 1

    @property
    def cov(self) -> float:
        """δ = √Σ_l δ_l²: the coefficient of variation if the levels were independent."""
        return math.sqrt(sum(c * c for c in self.level_covs))

    @property
    def cov_bound(self) -> float:
        """δ̄ = Σ_l δ_l: Au & Beck's bound for fully correlated levels."""
        return sum(self.level_covs)

    @property
    def beyond_plan(self) -> bool:
        """More levels than the level sizes plan for (SIZED_LEVELS): the later levels ran on
        what was left, and δ̄ no longer bounds the error (a run 58 levels down reported
        [10^-84, 10^-55] for P ≈ 10^-50, measured by a review)."""
        return len(self.levels) > SIZED_LEVELS

    @property
    def interval(self) -> tuple[float, float]:
        """Garwood's for 1/δ̄² counts; without a point past g = 0, Wilson's for no hit in the
        first level's draws (module docstring); beyond the plan, the upper end is at least
        that Wilson bound, which the first level's independent draws give on their own."""
        if not self.reached:
            return wilson_interval(0, self.first_level)
        low, high = effective_count_interval(math.log(self.p), self.cov_bound ** -2 if self.cov_bound > 0 else math.inf)
        return low, max(high, wilson_interval(0, self.first_level)[1]) if self.beyond_plan else high


def event_margin(v: Tensor, clauses: list[tuple[Tensor, Tensor]]) -> Tensor:
    """max over clauses {v : A v > b} of min over rows of A v - b, for v [batch, ·]: positive
    exactly where the event holds."""
    return torch.stack([(v @ a.T - b).min(dim=1).values for a, b in clauses], dim=1).max(dim=1).values


def clause_margin(observe: Callable[[Tensor], Tensor], clauses: list[tuple[Tensor, Tensor]]
                  ) -> Callable[[Tensor], Tensor]:
    """g(ξ) of the module docstring: the event margin of v(ξ) = observe(ξ)."""
    return lambda xi: event_margin(observe(xi), clauses)


def _indicator_gamma(inside: Tensor) -> float:
    """γ of Au & Beck (eq. 29) from the level indicator of each chain: inside [steps, chains]."""
    steps, chains = inside.shape
    x = inside.to(torch.float64)
    p = float(x.mean())
    variance = p - p * p
    if steps < 2 or variance <= 0:
        return 0.0
    gamma = 0.0
    for lag in range(1, steps):
        covariance = float((x[lag:] * x[:-lag]).mean()) - p * p
        gamma += 2 * (1 - lag / steps) * covariance / variance
    return max(gamma, 0.0)


def subset_simulation(margin: Callable[[Tensor], Tensor], dim: int, budget: int, levels_hint: int,
                      generator: torch.Generator, dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu") -> SplittingResult:
    """P(g(ξ) > 0) for ξ ~ N(0, I_dim) within `budget` margin evaluations.

    The first level has N_1 = budget / (min(levels_hint, SIZED_LEVELS) + 1) points. Later levels size
    themselves from what is left: with thresholds c_{l-1} < c_l < 0, about
    ⌈-c_l / (c_l - c_{l-1})⌉ more levels remain (linear extrapolation; the thresholds of a
    light tail bunch up, so this overestimates and leaves budget for the last level), and
    the next level gets the rest divided by that count plus one, as p0·N_l chains of equal
    length."""
    p0 = LEVEL_PROBABILITY
    levels_hint = min(levels_hint, SIZED_LEVELS)
    per_level = min(budget, max(round(budget / (levels_hint + 1)), round(2 / p0)))
    first_level = per_level

    def normal(rows: int) -> Tensor:
        return torch.randn(rows, dim, generator=generator, dtype=dtype).to(device)

    def walk(start: Tensor, start_values: Tensor, threshold: float, steps: int, scale: float
             ) -> tuple[Tensor, Tensor, float]:
        """`steps` pCN moves of every chain from `start` within {g > threshold}: the states
        [steps, chains, dim], their margins [steps, chains] and the acceptance rate."""
        states, values, accepted = [start], [start_values], 0
        rho = math.sqrt(1 - scale * scale)
        with torch.no_grad():
            for _ in range(steps):
                proposal = rho * states[-1] + scale * normal(len(start))
                proposed = margin(proposal)
                accept = proposed > threshold
                accepted += int(accept.sum())
                states.append(torch.where(accept[:, None], proposal, states[-1]))
                values.append(torch.where(accept, proposed, values[-1]))
        return torch.stack(states[1:]), torch.stack(values[1:]), accepted / max(steps * len(start), 1)

    with torch.no_grad():
        points = normal(per_level)
        values = margin(points)
    spent, estimate, level_covs, levels = per_level, 1.0, [], []
    scale = 0.6                                # √(1 - ρ²): the pCN step
    chain_states = chain_values = None         # the current level's chains, [steps, chains, ...]
    while True:
        chains = max(round(p0 * per_level), 1)
        order = torch.argsort(values, descending=True)
        threshold = float(values[order[chains - 1]])
        left = budget - spent
        remaining = (math.ceil(-threshold / (threshold - levels[-1])) if levels and threshold > levels[-1]
                     else levels_hint - len(levels))
        length = (left // (max(remaining, 1) + 1)) // chains
        if threshold > 0 or length < 2:                                   # the last level: g > 0
            if chain_states is not None and left >= chain_values.shape[1]:
                # what is left lengthens the chains that estimate P(g > 0 | g > c_{L-1})
                _, more_values, _ = walk(chain_states[-1], chain_values[-1], levels[-1],
                                         left // chain_values.shape[1], scale)
                spent += more_values.numel()
                chain_values = torch.cat([chain_values, more_values])
                values = chain_values.reshape(-1)
                per_level = values.numel()
            hits = int((values > 0).sum())
            level_p = hits / per_level
            levels.append(0.0)
            if hits:
                gamma = _indicator_gamma(chain_values > 0) if chain_values is not None else 0.0
                level_covs.append(math.sqrt((1 - level_p) / (level_p * per_level) * (1 + gamma)))
            return SplittingResult(estimate * level_p, level_covs, levels, spent, hits > 0, per_level, first_level)
        if chain_values is not None:      # this level's P = p0 from the previous level's chains
            level_covs.append(math.sqrt((1 - p0) / (p0 * per_level) * (1 + _indicator_gamma(chain_values > threshold))))
        else:
            level_covs.append(math.sqrt((1 - p0) / (p0 * per_level)))
        levels.append(threshold)
        estimate *= chains / per_level
        seeds, seed_values = points[order[:chains]], values[order[:chains]]
        moved_states, moved_values, rate = walk(seeds, seed_values, threshold, length - 1, scale)
        spent += moved_values.numel()
        scale = min(max(scale * math.exp(rate - TARGET_ACCEPTANCE), 0.05), 1.0)
        chain_states = torch.cat([seeds[None], moved_states])
        chain_values = torch.cat([seed_values[None], moved_values])
        points, values = chain_states.reshape(-1, dim), chain_values.reshape(-1)
        per_level = values.numel()
