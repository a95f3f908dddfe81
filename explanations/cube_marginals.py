"""P[a_i·x + c_i ≥ 0] for each row i separately, x uniform on {-1, 1}^n: E[y_i] of Linear → Step.

The one-constraint case of `cube_smc` (same twisted SMC: normal-tail lookahead
G_j = Φ((s_j + h_j)/σ_j) with the continuity correction h_j = ½ min_{l>j} |a_l|, or the
signed root of Cramér's rate for a row that needs a large deviation (`cube_smc.tail_argument`),
the exact indicator once σ_j = 0, locally optimal ±1 proposals, systematic resampling at
ESS < N/2, p̂ = G_0 Π_j mean weight, unbiased), vectorised over k rows × `replicates`
independent runs so that a wide layer costs n tensor steps, not k·n.
Cost: ≈ 30 FLOPs per particle, row and coordinate (two Φ terms, the weights, the choice),
2 ROOT_FLOPS more on the rows with the signed root; a budget buys as many particles per
run as it pays for, at least MIN_PARTICLES (else `BudgetTooSmall`, naming the minimum).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.special import log_ndtr

from .cube_smc import MIN_PARTICLES, ROOT_FLOPS, deviating_rows, tail_argument
from .errors import BudgetTooSmall

FLOPS_PER_UPDATE = 30


def cube_marginal_log_probabilities(weight: Tensor, offset: Tensor, *, flops: float, replicates: int = 4,
                                    seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """log P[a_i·x + c_i ≥ 0] for every row i of weight [k, n]: (log p̂ [k], log p̂ of each
    replicate [k, replicates], FLOPs spent), with as many particles as `flops` affords (module
    docstring)."""
    k, n = weight.shape
    a = weight.to(torch.float64).repeat_interleave(replicates, dim=0)            # [B, n], B = k·replicates
    c = offset.to(torch.float64).repeat_interleave(replicates)
    squares = (a * a).flip(1).cumsum(1).flip(1)
    sigma = torch.cat([squares, squares.new_zeros(len(a), 1)], dim=1).clamp_min(0).sqrt()   # [B, n + 1]
    magnitude = torch.where(a != 0, a.abs(), math.inf).flip(1).cummin(1).values.flip(1)
    magnitude = torch.cat([magnitude, magnitude.new_full((len(a), 1), math.inf)], dim=1)
    shift = torch.where(torch.isfinite(magnitude), magnitude / 2, 0.0)
    top = a.abs().flip(1).cumsum(1).flip(1)
    top = torch.cat([top, top.new_zeros(len(a), 1)], dim=1)                     # Σ_{l>j} |a_l|
    deviating = deviating_rows(c + shift[:, 0], sigma[:, 0], top[:, 0])
    per_particle = n * (FLOPS_PER_UPDATE * len(a) + 2 * ROOT_FLOPS * int(deviating.sum()))
    particles = int(flops // per_particle)
    if particles < MIN_PARTICLES:
        raise BudgetTooSmall(f"a budget of {flops:.4g} FLOPs buys {particles} particles per run; the marginals "
                             f"need {MIN_PARTICLES} in each of {replicates} runs, {MIN_PARTICLES * per_particle:.4g} "
                             f"FLOPs for {k} rows of {n} inputs", MIN_PARTICLES * per_particle)
    generator = torch.Generator(device=a.device).manual_seed(seed)
    s = c[:, None].expand(len(a), particles).clone()

    def log_tail(s: Tensor, j: int) -> Tensor:
        """log P̃(remaining sum ≥ -s) with j coordinates set, or log 1[s ≥ 0] where σ = 0."""
        z = tail_argument((s + shift[:, j:j + 1]).T, sigma[:, j], top[:, j], deviating).T
        return torch.where(sigma[:, j:j + 1] > 0, log_ndtr(z), torch.where(s >= 0, 0.0, -math.inf))

    log_g = log_tail(s, 0)
    log_z = log_g[:, 0].clone()
    log_w = torch.zeros_like(s)
    for j in range(n):
        column = a[:, j:j + 1]
        plus = log_tail(s + column, j + 1)
        minus = log_tail(s - column, j + 1)
        both = torch.logaddexp(plus, minus)
        alive = (log_g > -math.inf) & (both > -math.inf)
        increment = torch.where(alive, both - math.log(2.0) - log_g, -math.inf)
        normalised = torch.nan_to_num(log_w - torch.logsumexp(log_w, 1, keepdim=True), nan=-math.inf)
        log_z = log_z + torch.logsumexp(normalised + increment, 1)
        log_w = log_w + increment
        pick_plus = torch.rand(s.shape, generator=generator, dtype=torch.float64, device=a.device).log() \
            < torch.nan_to_num(plus - both, nan=-math.inf)
        s = s + torch.where(pick_plus, column, -column)
        log_g = torch.where(pick_plus, plus, minus)
        log_w, s, log_g = _resample(log_w, s, log_g, generator)
    runs = log_z.view(k, replicates)
    log_p = torch.logsumexp(runs, 1) - math.log(replicates)
    return log_p, runs, particles * per_particle


def _resample(log_w: Tensor, s: Tensor, log_g: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Systematic resampling of the runs whose ESS fell below N/2."""
    n = log_w.shape[1]
    normalised = torch.nan_to_num(log_w - torch.logsumexp(log_w, 1, keepdim=True), nan=-math.inf)
    ess = torch.exp(-torch.logsumexp(2 * normalised, 1))
    low = (ess < n / 2) & torch.isfinite(ess)
    if not bool(low.any()):
        return log_w, s, log_g
    cumulative = torch.exp(normalised[low]).cumsum(1)
    cumulative[:, -1] = 1.0
    u = (torch.rand(int(low.sum()), 1, generator=generator, dtype=torch.float64, device=s.device)
         + torch.arange(n, dtype=torch.float64, device=s.device)) / n
    keep = torch.searchsorted(cumulative, u).clamp_max(n - 1)
    s, log_g, log_w = s.clone(), log_g.clone(), log_w.clone()
    s[low], log_g[low], log_w[low] = s[low].gather(1, keep), log_g[low].gather(1, keep), 0.0
    return log_w, s, log_g
