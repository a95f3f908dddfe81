"""The zero-sample tail estimate that uses input-space structure (see `design`).

`design_estimate(pi, event, rebuild)`: find the event's design points through the
compiled graph (and any detector graphs), rebuild π's Gaussian model at each (shifted
input distribution), evaluate the event under each exponentially tilted Gaussian, and
combine the modes. Tilting: under ξ ~ N(ξ*, I) π's local model makes (ξ, v) jointly
Gaussian, v = (y, detector scores) with the scores propagated from y's local law; then
∫ 1_E(v) φ(ξ) dξ = P(v ∈ E) for v ~ N(μ_v - Cov(v, ξ) ξ*, Σ_v) (the exponential tilt
moves a Gaussian's mean by its covariance with the tilt direction). Detectors are taken
at the mode, where the event's boundary is, not pushed through from the tilted law:
a detector's hidden ReLU near its kink has a much heavier upper tail than a
moment-matched Gaussian of its output (measured: a 2→4→1 ReLU detector on a residual
net at p = 1e-2 and 1e-3 was put at 3e-4 and 3e-7 that way). FLOPs: every forward pass of the search costs one sample-equivalent and every
backward pass two (the usual reverse-mode bound), plus the rebuilt explanations and the
multivariate normal integrals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .design import MAX_MODES, Mode, find_modes, shifted, whitened_cross
from .distributions import Gaussian
from .events import Event
from .mvn import OrthantResult, log_union
from .observed import clause_rows, observed, observer

if TYPE_CHECKING:
    from .gaussian import GaussianExplanation

QMC_POINTS, QMC_REPLICATES = 1024, 4   # per cell integral: its error is far below the model's


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
    distribution: Gaussian                  # D in float64
    flops: int
    forwards: int
    backwards: int
    observe_flops: int                      # one ξ → v: the input map, the network, the detectors


def search(pi: GaussianExplanation, event: Event, starts: int = 3, max_modes: int = MAX_MODES,
           effort: float = math.inf, iterations: int = 10) -> Search:
    """Find the event's design points through the compiled graph and detector graphs
    (`design.find_modes`: `starts` per clause, at most `max_modes`, descents of at most
    `iterations` steps begun while under `effort` forward-pass equivalents)."""
    detectors = event.detectors()
    dtype = torch.float64          # bisections and finite differences need it, whatever π's dtype
    like = pi.mean.to(dtype)
    clauses = [clause_rows(c, detectors, pi.graph.n_outputs, like) for c in event.dnf()]
    D = pi.distribution.to(dtype=dtype)
    observe, unit = observer(pi.graph, D, detectors, dtype)

    batch_margins = [(lambda xi, a=a, b=b: observe(xi) @ a.T - b) for a, b in clauses]
    guesses = linear_guesses(pi, clauses, D)
    with torch.inference_mode(False), torch.enable_grad():      # the search needs autograd
        modes, forwards, backwards = find_modes(batch_margins, D.dim, seed=pi.seed, dtype=dtype,
                                                device=like.device, guesses=guesses, starts=starts,
                                                max_modes=max_modes, effort=effort, iterations=iterations)
    observe_flops = unit + 2 * D.dim * D.dim + D.dim
    return Search(modes, observe, clauses, D, (forwards + 2 * backwards) * unit, forwards, backwards, observe_flops)


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


def design_estimate(pi: GaussianExplanation, event: Event,
                    rebuild: Callable[[Gaussian], GaussianExplanation]) -> tuple[OrthantResult, dict] | None:
    """log P(event) from tilted Gaussians at the design points, with every FLOP spent in
    the result, and details; None if no design point was found (the caller falls back).

    The event lies outside the ball |ξ| < β_min (β_min the smallest mode's distance, if the
    search found the global minimum), so the estimate is capped at P(χ²_dim ≥ β_min²):
    a tilted Gaussian at a saturated mode (small local slope) can otherwise overshoot."""
    found = search(pi, event)
    modes, clauses, D, flops = found.modes, found.clauses, found.distribution, found.flops
    forwards, backwards = found.forwards, found.backwards
    detectors = event.detectors()
    if not modes:
        return None
    log_probabilities, numerical_error = [], 0.0
    for mode in modes:
        local = rebuild(shifted(D, mode))
        local_mean, local_cov = local.mean.to(D.mean.dtype), local.cov.to(D.mean.dtype)   # π's dtype → float64
        cross_v = whitened_cross(local.cross.to(D.mean.dtype), D)    # Cov(ξ, y) at the mode
        v_mean, v_cov, query = observed(local_mean, local_cov, detectors)   # v = (y, scores) at the mode
        n_y = local_mean.shape[0]
        if detectors:     # Cov(ξ, score) = Cov(ξ, y) Σ_y⁺ Cov(y, score): exact for jointly Gaussian (ξ, y)
            regression = cross_v @ torch.linalg.pinv(local_cov, hermitian=True)
            cross_v = torch.cat([cross_v, regression @ v_cov[:n_y, n_y:]], dim=1)
        v_mean = v_mean - cross_v.T @ mode.point                      # tilted back to ξ ~ N(0, I)
        others = [m.point for m in modes if m is not mode]
        if others:
            # Restrict to mode k's Voronoi cell in ξ: rows (ξ*_k - ξ*_j)·ξ > (|ξ*_k|² - |ξ*_j|²)/2,
            # jointly Gaussian with v under the tilt (ξ ~ N(0, I)).
            d = torch.stack([mode.point - q for q in others])
            h = torch.stack([(mode.point @ mode.point - q @ q) / 2 for q in others])
            cross_wv = d @ cross_v
            v_mean = torch.cat([v_mean, v_mean.new_zeros(len(others))])
            v_cov = torch.cat([torch.cat([v_cov, cross_wv.T], dim=1),
                               torch.cat([cross_wv, d @ d.T], dim=1)])
            cell = [(torch.cat([torch.cat([a, a.new_zeros(a.shape[0], len(others))], dim=1),
                                torch.cat([d.new_zeros(len(others), a.shape[1]), torch.eye(len(others), dtype=d.dtype, device=d.device)], dim=1)]),
                     torch.cat([b, h])) for a, b in clauses]
        else:
            cell = clauses
        result = log_union(v_mean, v_cov, cell, points=QMC_POINTS, replicates=QMC_REPLICATES, seed=pi.seed)
        log_probabilities.append(result.log_p)
        numerical_error += result.abs_error
        flops += local.build_flops + query + result.flops
    combined = torch.logsumexp(torch.tensor(log_probabilities, dtype=torch.float64), 0).item()
    cap = log_chi2_tail(D.dim, modes[0].beta)
    details = {"modes": [m.beta for m in modes], "mode_log10": [lp / math.log(10) for lp in log_probabilities],
               "chi2_cap_log10": cap / math.log(10), "capped": combined > cap,
               "forward_passes": forwards, "backward_passes": backwards}
    return OrthantResult(min(combined, cap), numerical_error, flops), details


