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
net at p = 1e-2 and 1e-3 was put at 3e-4 and 3e-7 that way). A detector with an
activation inside is not Gaussian even at the mode (its event can be a band in y), so
there the event is evaluated exactly on y drawn from π's local model, reweighted by the
tilt (`_sampled_tilt`; no draws of the network).
FLOPs: every forward pass of the search costs one sample-equivalent and every backward
pass two (the usual reverse-mode bound), plus the rebuilt explanations, the regression
of the scores on y and the multivariate normal integrals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine
from torch.special import ndtri

from .design import MAX_MODES, Mode, find_modes, shifted, whitened_cross
from .distributions import Gaussian
from .events import Event
from .montecarlo import detector_flops
from .mvn import OrthantResult, log_union
from .observed import clause_margins, clause_rows, observed, observer

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
           effort: float = math.inf, iterations: int = 10, limit: float = math.inf) -> Search:
    """Find the event's design points through the compiled graph and detector graphs
    (`design.find_modes`: `starts` per clause, at most `max_modes`, descents of at most
    `iterations` steps begun while under `effort` forward-pass equivalents, and no pass
    past `limit` of them)."""
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
                                                limit=limit)
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
    if not modes:
        return None
    exact = event.reads_nonlinear_detector()
    log_probabilities, numerical_error = [], 0.0
    for mode in modes:
        local = rebuild(shifted(D, mode))
        mean, cov = local.mean.to(D.mean.dtype), local.cov.to(D.mean.dtype)        # π's dtype → float64
        cross = whitened_cross(local.cross.to(D.mean.dtype), D)                    # Cov(ξ, y) at the mode
        others = [m.point for m in modes if m is not mode]
        result = _sampled_tilt(event, mode.point, others, mean, cov, cross, pi.seed) if exact else None
        if result is None or not math.isfinite(result.log_p):
            flops += result.flops if result is not None else 0        # paid for, then fallen back from
            result = _gaussian_tilt(event, clauses, mode.point, others, mean, cov, cross, pi.seed)
        log_probabilities.append(result.log_p)
        numerical_error += result.abs_error
        flops += local.build_flops + result.flops
    combined = torch.logsumexp(torch.tensor(log_probabilities, dtype=torch.float64), 0).item()
    cap = log_chi2_tail(D.dim, modes[0].beta)
    details = {"modes": [m.beta for m in modes], "mode_log10": [lp / math.log(10) for lp in log_probabilities],
               "chi2_cap_log10": cap / math.log(10), "capped": combined > cap,
               "forward_passes": forwards, "backward_passes": backwards}
    return OrthantResult(min(combined, cap), numerical_error, flops), details


def _gaussian_tilt(event: Event, clauses: list[tuple[Tensor, Tensor]], point: Tensor, others: list[Tensor],
                   mean: Tensor, cov: Tensor, cross: Tensor, seed: int) -> OrthantResult:
    """P(event ∩ the mode's Voronoi cell) under π's local joint Gaussian of (ξ, v) at the
    design point ξ* = `point`, v = (y, detector scores), tilted back to ξ ~ N(0, I) (module
    docstring); the cell's rows (ξ* - ξ*_j)·ξ > (|ξ*|² - |ξ*_j|²)/2 join v. FLOPs included."""
    detectors = event.detectors()
    v_mean, v_cov, flops = observed(mean, cov, detectors)                      # v at the mode
    n_y = mean.shape[0]
    if detectors:     # Cov(ξ, score) = Cov(ξ, y) Σ_y⁺ Cov(y, score): exact for jointly Gaussian (ξ, y)
        regression = cross @ torch.linalg.pinv(cov, hermitian=True)
        cross = torch.cat([cross, regression @ v_cov[:n_y, n_y:]], dim=1)
        flops += 10 * n_y ** 3 + 2 * point.shape[0] * n_y * (n_y + len(detectors))
    v_mean = v_mean - cross.T @ point                                          # tilted back
    cell = clauses
    if others:
        d = torch.stack([point - q for q in others])
        h = torch.stack([(point @ point - q @ q) / 2 for q in others])
        cross_wv = d @ cross
        v_mean = torch.cat([v_mean, v_mean.new_zeros(len(others))])
        v_cov = torch.cat([torch.cat([v_cov, cross_wv.T], dim=1), torch.cat([cross_wv, d @ d.T], dim=1)])
        eye = torch.eye(len(others), dtype=d.dtype, device=d.device)
        cell = [(torch.cat([torch.cat([a, a.new_zeros(a.shape[0], len(others))], dim=1),
                            torch.cat([d.new_zeros(len(others), a.shape[1]), eye], dim=1)]),
                 torch.cat([b, h])) for a, b in clauses]
    result = log_union(v_mean, v_cov, cell, points=QMC_POINTS, replicates=QMC_REPLICATES, seed=seed)
    return OrthantResult(result.log_p, result.abs_error, result.flops + flops)


def _sampled_tilt(event: Event, point: Tensor, others: list[Tensor], mean: Tensor, cov: Tensor,
                  cross: Tensor, seed: int) -> OrthantResult:
    """The same probability with the event evaluated exactly on y instead of through a
    Gaussian of the detector scores (for detectors with activations inside). Under π's
    local model ξ = ξ* + u, y = μ + Bᵀu + e with u ~ N(0, I), e ~ N(0, Σ - BᵀB), B = Cov(ξ, y),
        P = E[1_E(y) 1_cell(ξ) φ(ξ)/φ(ξ - ξ*)],   φ(ξ)/φ(ξ - ξ*) = exp(-ξ*·u - |ξ*|²/2),
    over QMC_REPLICATES scrambled Sobol sets of QMC_POINTS (u, e) each. Measured on 54
    events of 2→4→1 ReLU/tanh/GELU detectors (p = 1e-2..1e-4): median |log10 p̂/p| 0.14 →
    0.11 and worst 2.7 → 2.0 against `_gaussian_tilt`. FLOPs: per point the detectors'
    forward passes, the Gaussian map and the weight; -inf if no point lands in the event."""
    d, n = cross.shape
    residual = cov - cross.T @ cross
    values, vectors = torch.linalg.eigh((residual + residual.T) / 2)
    factor = vectors * values.clamp_min(0).sqrt()
    logs = []
    for replicate in range(QMC_REPLICATES):
        sobol = SobolEngine(d + n, scramble=True, seed=seed + replicate)
        z = ndtri(sobol.draw(QMC_POINTS, dtype=torch.float64).clamp(1e-15, 1 - 1e-15)).to(point.device)
        u, e = z[:, :d], z[:, d:]
        inside = event.evaluate(mean + u @ cross + e @ factor.T)
        for q in others:
            inside &= (point + u) @ (point - q) > (point @ point - q @ q) / 2
        log_w = torch.where(inside, -(u @ point) - point @ point / 2, -math.inf)
        logs.append(torch.logsumexp(log_w, 0) - math.log(QMC_POINTS))
    logs = torch.stack(logs)
    spread = 3 * float(logs.exp().std()) / math.sqrt(QMC_REPLICATES)
    # per point: d + n normal variates, y (2(d + n)n + n), the weight (2d + 2), the cells
    # (2d per other mode), the detectors' passes and the event's rows (2n per row)
    rows = sum(len(clause) for clause in event.dnf())
    per_point = ((d + n) + 2 * (d + n) * n + n + 2 * d + 2 + 2 * d * len(others)
                 + detector_flops([event]) + 2 * n * rows)
    return OrthantResult(float(torch.logsumexp(logs, 0)) - math.log(QMC_REPLICATES), spread,
                         10 * n ** 3 + 2 * d * n * n + QMC_REPLICATES * QMC_POINTS * per_point)


