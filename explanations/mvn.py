"""Multivariate normal probabilities: bivariate CDF, orthants and unions of polyhedra.

Everything is computed in float64.

``bivariate_normal_cdf``
    Φ₂(h, k; ρ) = P(U < h, V < k) for a standard normal pair with correlation ρ,
    by the Drezner–Wesolowsky method as refined by Genz [G04, section 2.2]. It
    rests on Plackett's identity ∂Φ₂/∂ρ = φ₂(h, k; ρ), the bivariate density:

    * |ρ| < 0.925: Φ₂(h, k; ρ) = Φ(h)Φ(k) + ∫₀^ρ φ₂(h, k; t) dt. With t = sin θ,
      φ₂ dt = (2π)⁻¹ exp(-(h² - 2hk sin θ + k²) / (2cos²θ)) dθ, a smooth integrand
      on [0, asin ρ] that a 6, 12 or 20 point Gauss–Legendre rule (|ρ| < 0.3,
      < 0.75, otherwise) integrates to about 1e-15.
    * 0.925 ≤ |ρ| < 1: integrate from the other end. For ρ > 0,
      Φ₂(h, k; ρ) = Φ(min(h, k)) - ∫_ρ^1 φ₂ dt; for ρ < 0, Φ₂(h, k; ρ) =
      Φ(h) - Φ₂(h, -k; -ρ) reduces to that case. With s = √(1 - t²), a = √(1 - ρ²),
      β² = (h - k)² and q = hk,
      2π ∫_ρ^1 φ₂ dt = ∫₀^a f(s) ds,
      f(s) = exp(-β²/(2s²) - q/(1 + √(1 - s²))) / √(1 - s²).
      f is not smooth at s = 0 when β ≠ 0, so f is split into
      g(s) = exp(-(β²/s² + q)/2) (1 + c s² + c d s⁴), c = (4 - q)/8, d = (12 - q)/16,
      (f/g → 1 up to O(s⁶)), whose integral has a closed form through the
      recursion (2n+1) ∫ s^{2n} e^{-β²/2s²} = a^{2n+1} e^{-β²/2a²} - β² ∫ s^{2n-2} e^{-β²/2s²},
      plus the smooth remainder ∫₀^a (f - g) ds by 20-point Gauss–Legendre.
    * |ρ| = 1: the limits Φ(min(h, k)) (ρ = 1) and max(0, Φ(h) - Φ(-k)) (ρ = -1).

``log_orthant``
    log P(w > 0) for w ~ N(μ, Σ), by the separation of variables of Genz [G92]
    with the variable reordering of Genz & Bretz [GB09, section 4.1.3],
    integrated by randomised quasi-Monte Carlo and accumulated in log space.

``log_union``
    log P(∪ᵢ {A_i v > b_i}) for v ~ N(μ, Σ), by inclusion–exclusion over
    orthant probabilities.

Flop counts follow one convention throughout: every elementwise tensor
operation (arithmetic, comparison, ``where``/``clamp``/``min``/``max``, and each
transcendental such as exp, log, sqrt, sin, asin, Φ, log Φ, Φ⁻¹) counts one flop
per output element; a reduction counts one per input element; a matrix product
of [m, n] by [n, p] counts 2mnp; indexing, broadcasting and copies count nothing.

References
    [G92] A. Genz, "Numerical computation of multivariate normal probabilities",
          J. Comput. Graph. Statist. 1 (1992) 141–149.
    [G04] A. Genz, "Numerical computation of rectangular bivariate and trivariate
          normal and t probabilities", Statistics and Computing 14 (2004) 251–260.
    [GB09] A. Genz and F. Bretz, "Computation of Multivariate Normal and t
          Probabilities", Lecture Notes in Statistics 195, Springer (2009).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.special import log_ndtr, ndtr, ndtri

_F64 = torch.float64
_HIGH_RHO = 0.925  # |ρ| from which the high-correlation form is used [G04]
_CLAMP = 40.0  # Φ(-40) underflows float64: |h|, |k| beyond 40 act as ±∞
_BELOW_ONE = 1 - 2.0**-53  # largest float64 below 1
_REL_TOL = 1e-10  # variance treated as zero, relative to the largest variance
_LOG_TINY = math.log(torch.finfo(_F64).tiny)


def _gauss_legendre_table() -> tuple[Tensor, Tensor]:
    """Gauss–Legendre rules of 6, 12 and 20 points on [0, 1], zero-padded to 20."""
    nodes, weights = np.zeros((3, 20)), np.zeros((3, 20))
    for row, n in enumerate((6, 12, 20)):
        x, w = np.polynomial.legendre.leggauss(n)
        nodes[row, :n], weights[row, :n] = (x + 1) / 2, w / 2
    return torch.from_numpy(nodes), torch.from_numpy(weights)


_GL_NODES, _GL_WEIGHTS = _gauss_legendre_table()


def bivariate_normal_cdf(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """Φ₂(h, k; ρ) = P(U < h, V < k) for standard normals U, V with correlation ρ.

    Genz's (2004, section 2.2) form of the Drezner–Wesolowsky method, described
    in the module docstring; absolute error below 1e-15. Arguments broadcast
    against each other and may hold ±∞ in h and k; ρ must lie in [-1, 1].
    """
    h, k, rho = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=_F64) for t in (h, k, rho)))
    if not bool(((rho >= -1) & (rho <= 1)).all()):
        raise ValueError("rho must lie in [-1, 1]")
    h, k = h.clamp(-_CLAMP, _CLAMP), k.clamp(-_CLAMP, _CLAMP)
    r = rho.abs()
    negative = rho < 0
    # Φ₂ at ρ = ±1 (same sign as ρ), the starting point of the high-correlation form.
    perfect = torch.where(negative, (ndtr(h) - ndtr(-k)).clamp_min(0), ndtr(torch.minimum(h, k)))
    low = _bvn_asin(h, k, rho.clamp(-_HIGH_RHO, _HIGH_RHO))
    tail = _bvn_tail(h, torch.where(negative, -k, k), r.clamp(_HIGH_RHO, _BELOW_ONE))
    high = perfect + torch.where(negative, tail, -tail) / (2 * math.pi)
    return torch.where(r < _HIGH_RHO, low, torch.where(r < 1, high, perfect))


def _bvn_asin(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """Φ(h)Φ(k) + (2π)⁻¹ ∫₀^{asin ρ} exp(-(h² - 2hk sin θ + k²)/(2cos²θ)) dθ."""
    rule = (rho.abs() >= 0.3).long() + (rho.abs() >= 0.75).long()
    nodes, weights = _GL_NODES.to(h.device)[rule], _GL_WEIGHTS.to(h.device)[rule]
    theta_max = torch.asin(rho)
    sin_t = torch.sin(theta_max.unsqueeze(-1) * nodes)
    hk, hs = (h * k).unsqueeze(-1), ((h * h + k * k) / 2).unsqueeze(-1)
    integral = (weights * torch.exp((sin_t * hk - hs) / (1 - sin_t * sin_t))).sum(-1)
    return ndtr(h) * ndtr(k) + theta_max * integral / (2 * math.pi)


def _bvn_tail(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """2π ∫_ρ^1 φ₂(h, k; t) dt for ρ in [0.925, 1): ∫₀^a g in closed form plus ∫₀^a (f - g)."""
    q, beta2 = h * k, (h - k) ** 2
    a2 = (1 - rho) * (1 + rho)
    a, beta = a2.sqrt(), beta2.clamp_min(1e-300).sqrt()     # finite gradients where h = k (unused branch)
    c, d = (4 - q) / 8, (12 - q) / 16
    series_integral = a * torch.exp(-(beta2 / a2 + q) / 2) * (
        1 - c * (beta2 - a2) * (1 - d * beta2 / 5) / 3 + c * d * a2 * a2 / 5
    ) - beta * math.sqrt(2 * math.pi) * torch.exp(log_ndtr(-beta / a) - q / 2) * (
        1 - c * beta2 * (1 - d * beta2 / 5) / 3
    )
    s2 = (a.unsqueeze(-1) * _GL_NODES[2].to(h.device)) ** 2
    root = torch.sqrt(1 - s2)
    q, beta2, c, d = (t.unsqueeze(-1) for t in (q, beta2, c, d))
    f = torch.exp(-beta2 / (2 * s2) - q / (1 + root)) / root
    g = torch.exp(-(beta2 / s2 + q) / 2) * (1 + c * s2 * (1 + d * s2))
    return series_integral + a * ((f - g) * _GL_WEIGHTS[2].to(h.device)).sum(-1)


_DIRECT_FLOOR = 1e-8          # above it log Φ₂ is the log of `bivariate_normal_cdf` (relative error < 1e-7)
_BVN_ABS_ERROR = 1e-15        # `bivariate_normal_cdf`'s absolute error [G04]
_BVN_REL_ERROR = 1e-7         # log Φ₂'s relative error below _DIRECT_FLOOR (tests/test_mvn.py)
_PANEL_FLOPS = 20 * 16        # a 20-node panel of `_log_bvn_small`: 14 elementwise operations a node
                              # (node, integrand with its log Φ, log weight) and 2 for the logsumexp
_TAIL_REACH = 12.0            # the log-integrand falls by ≥ 72 this far from its maximum
_NEWTON_STEPS = 60


def log_bivariate_normal_cdf(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """log Φ₂(h, k; ρ), differentiable in h, k and ρ, also where Φ₂ underflows float64 or
    lies below the absolute error (1e-15) of `bivariate_normal_cdf`.

    Where Φ₂ ≥ 1e-8: the log of `bivariate_normal_cdf`. Below (made for a few elements: a
    Python loop over them), with h ≤ k by symmetry and σ = √(1 - ρ²),
        Φ₂(h, k; ρ) = ∫_{-∞}^{h} φ(u) Φ((k - ρu)/σ) du,
    whose log-integrand f(u) = log φ(u) + log Φ((k - ρu)/σ) is concave with
    -1/σ² ≤ f'' ≤ -1 (f'' = -1 - (ρ/σ)² λ(z)(z + λ(z)), λ = φ/Φ the inverse Mills ratio,
    0 < λ(z)(z + λ(z)) < 1). Its maximiser u* on (-∞, h] (Newton on f') and the scale
    w = min(1/√(-f''(u*)), 1/f'(u*)) set 20-point Gauss–Legendre panels whose edges lie at
    u* ± w·2^j up to ±12 (beyond, f has fallen by more than 72 nats), summed in log space.
    ρ = ±1: the limits log Φ(min(h, k)) and log(Φ(h) - Φ(-k)) (-inf where h ≤ -k)."""
    return _log_bvn(h, k, rho)[0]


def _log_bvn(h: Tensor, k: Tensor, rho: Tensor) -> tuple[Tensor, int]:
    """`log_bivariate_normal_cdf` and its flops: `bivariate_normal_cdf_flops` for every
    element, and _PANEL_FLOPS per Gauss–Legendre panel of the elements below _DIRECT_FLOOR."""
    h, k, rho = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=_F64) for t in (h, k, rho)))
    if not bool(((rho >= -1) & (rho <= 1)).all()):
        raise ValueError("rho must lie in [-1, 1]")
    direct = bivariate_normal_cdf(h, k, rho)
    flops = bivariate_normal_cdf_flops(direct.numel()) + 2 * direct.numel()
    small = (direct < _DIRECT_FLOOR).flatten().tolist()
    logs = torch.log(direct.clamp_min(_DIRECT_FLOOR)).flatten()
    if not any(small):
        return logs.reshape(h.shape), flops
    flat = [t.flatten() for t in (h, k, rho)]
    values = []
    for i, tiny in enumerate(small):
        if not tiny:
            values.append(logs[i])
            continue
        value, panels = _log_bvn_small(flat[0][i], flat[1][i], flat[2][i])
        values.append(value)
        flops += panels * _PANEL_FLOPS
    return torch.stack(values).reshape(h.shape), flops


def _log_bvn_small(h: Tensor, k: Tensor, rho: Tensor) -> tuple[Tensor, int]:
    """`log_bivariate_normal_cdf` for one element below _DIRECT_FLOOR (its docstring), and the
    number of panels it summed. Beside the panels around u*, edges at u₀ = k/ρ ± (σ/|ρ|)·2^j
    resolve the step that Φ((k - ρu)/σ) takes there over a width σ/|ρ| (near ρ = -1 the mass
    can sit in a window of 1e-7)."""
    if float(h.detach()) > float(k.detach()):
        h, k = k, h
    r, top, right = float(rho.detach()), float(h.detach()), float(k.detach())
    if top == -math.inf:
        return torch.full_like(h, -math.inf), 0
    if abs(r) == 1 or right == math.inf:
        return (log_ndtr(h) if r > 0 or right == math.inf else _log_prob_between(-k, h)), 0
    sigma = torch.sqrt((1 - rho) * (1 + rho))

    def log_integrand(u: Tensor) -> Tensor:
        return -u * u / 2 - 0.5 * math.log(2 * math.pi) + log_ndtr((k - rho * u) / sigma)

    s = float(sigma.detach())

    def slope_and_curvature(u: float) -> tuple[float, float]:
        z = (right - r * u) / s
        mills = math.sqrt(2 / math.pi) / float(torch.special.erfcx(torch.tensor(-z / math.sqrt(2), dtype=_F64)))
        spread = min(max(mills * (z + mills), 0.0), 1.0)      # in (0, 1); rounding can leave it outside
        return -u - r / s * mills, 1 + (r / s) ** 2 * spread

    u = top
    slope, curvature = slope_and_curvature(u)
    if slope < 0:                                      # the maximum lies inside (-∞, h): Newton on f'
        for _ in range(_NEWTON_STEPS):
            u = min(u + slope / curvature, top)
            slope, curvature = slope_and_curvature(u)
            if abs(slope) <= 1e-12 * curvature:
                break
    scale = min(1 / math.sqrt(curvature), 1 / slope if slope > 0 else math.inf)
    reach = [scale * 2.0 ** j for j in range(80) if scale * 2.0 ** j < _TAIL_REACH] + [_TAIL_REACH]
    points = {u - d for d in reach} | {u + d for d in reach} | {u}
    if r != 0:
        step, width = right / r, s / abs(r)
        points |= {step} | {step + sign * width * 2.0 ** j for j in range(80) for sign in (-1, 1)
                            if width * 2.0 ** j < 2 * _TAIL_REACH}
    inner = sorted(p for p in points if u - _TAIL_REACH <= p < top)
    edges = [torch.tensor(p, dtype=_F64, device=h.device) for p in inner] + [h]
    nodes, weights = _GL_NODES[2].to(h.device), _GL_WEIGHTS[2].to(h.device)
    terms = [log_integrand(a + (b - a) * nodes) + torch.log((b - a) * weights)
             for a, b in zip(edges[:-1], edges[1:])]
    return torch.logsumexp(torch.cat(terms), 0), len(terms)


def bivariate_normal_cdf_flops(numel: int) -> int:
    """Flops of one ``bivariate_normal_cdf`` call on ``numel`` broadcast elements.

    Counted with the module's convention (one per elementwise output, one per
    reduced input element, comparisons and transcendentals included). Every
    branch is evaluated for every element: 98 whole-tensor operations, plus 35
    per node of the 20-node Gauss–Legendre grid (10 for the arcsine form, on
    its zero-padded grid, and 25 for the high-correlation form), 798 in all.
    """
    return numel * (98 + 35 * 20)


@dataclass(frozen=True)
class OrthantResult:
    """A log-probability with its error estimate and cost.

    ``abs_error`` estimates the absolute error of p = exp(log_p) itself (not of
    its log): three standard errors across randomised QMC replicates, or 0.0
    when p was computed in closed form. ``flops`` counts the work done.
    ``relative_se`` is one standard error of p̂ relative to p̂ and ``replicates``
    the number of independent randomised replicates it comes from: kept apart
    from ``abs_error`` because p̂ · relative_se underflows with p̂ below about
    1e-308 while the ratio does not. ``log_orthant`` and the halfspace solvers
    fill them (0.0 and 0 where p is exact; relative_se nan where no spread is
    known: every replicate 0, or no replicates at all); other producers leave
    the defaults and carry their error in ``abs_error`` only.
    """

    log_p: float
    abs_error: float
    flops: int
    relative_se: float = 0.0
    replicates: int = 0


@dataclass(frozen=True)
class _Step:
    """Constraints on the j-th latent variable y_j of the separation of variables.

    Row i reads prefix_i · y_{<j} + coef_i y_j < bound_i: an upper bound on y_j
    where coef_i > 0 and a lower bound where coef_i < 0. The first row is the
    pivot's own (coef > 0), the others are rows that depend on y_{≤j} only.
    """

    prefix: Tensor  # [rows, j]
    coef: Tensor  # [rows]
    bound: Tensor  # [rows]


def log_orthant(
    mean: Tensor, cov: Tensor, *, points: int = 4096, replicates: int = 8, seed: int = 0
) -> OrthantResult:
    """log P(w_i > 0 for all i) for w ~ N(mean, cov) in k dimensions.

    With x = -(w - mean) ~ N(0, cov) the event is x < mean. Components whose
    variance is at most 1e-10 times the largest are deterministic: w_i = mean_i,
    so they drop out if mean_i > 0 and make p = 0 otherwise. The rest are
    standardised, z = D⁻¹x ~ N(0, R), c = D⁻¹mean, so p = P(z < c); k = 1 is then
    exact, p = Φ(c), and k = 2 is closed-form, p = Φ₂(c_1, c_2; R_12)
    (`log_bivariate_normal_cdf`; abs_error 1e-15, or 1e-7·p below p = 1e-8; 0 at |R_12| = 1).

    For k ≥ 2, z = L y with y ~ N(0, I) and L a Cholesky factor of R pivoted by
    Genz & Bretz's rule [GB09, 4.1.3]: the next variable is the one with the
    smallest expected conditional probability, later bounds being shifted by the
    truncated means E[y_j | y_j < b̂_j] = -φ(b̂_j)/Φ(b̂_j) of the earlier ones.
    Separation of variables [G92] then writes p as an integral over the unit cube:
    y_j is confined to (a_j(y_{<j}), b_j(y_{<j})), whose probability is
    e_j = Φ(b_j) - Φ(a_j), and y_j = Φ⁻¹(Φ(a_j) + u_j e_j) for u_j ∈ (0, 1), so
    p = ∫ e_1 e_2 ⋯ e_r du_1 ⋯ du_{r-1}. Each log e_j is computed stably from log Φ
    (Φ⁻¹ is taken of the smaller of q and 1 - q, both formed in log space), and
    the mean of exp(Σ_j log e_j) over points is taken by logsumexp, so p far below
    1e-300 does not underflow.

    Singular R is supported: the factorisation stops pivoting once every
    remaining conditional variance is below 1e-10. A row whose conditional
    variance drops below that after pivot j is a linear combination of
    y_0 … y_j; its constraint ℓ·y_{<j} + ℓ_j y_j < c_i becomes an upper (ℓ_j > 0)
    or lower (ℓ_j < 0) bound on y_j, so duplicated, scaled or sign-flipped rows,
    and general linear dependencies, are integrated exactly rather than sampled.
    The factorisation ignores conditional standard deviations below 1e-5 in
    standardised units; that is the approximation made for nearly dependent rows.
    When only one independent variable remains (r = 1), p is exact.

    The integral uses randomised QMC: ``replicates`` independently scrambled
    Sobol sequences (torch's linear matrix scramble with digital shift, seeds
    drawn from a ``torch.Generator`` seeded with ``seed``) of ``points`` points
    each, shifted to the centres of their 2⁻³⁰ cells so that no coordinate is 0.
    ``abs_error`` is three standard errors of the replicate means: 0.0 when p
    is exact (k = 1, r = 1, a deterministic zero) or the integrand is constant
    (independent components), and, being absolute, it underflows with p below
    about 1e-308; ``relative_se`` (one standard error over p̂, with
    ``replicates``) does not. Conditional factors below about 1e-300 on their
    own lose accuracy (Φ⁻¹ is evaluated no lower than the smallest normal
    float64).
    ``flops`` counts the factorisation and the sampling, not input validation.

    Raises ValueError on non-finite input, mismatched shapes, a non-symmetric or
    non-PSD covariance (negative conditional variance below -1e-10, or residual
    covariance above 1e-5, relative), or ``points < 1`` / ``replicates < 2``.
    """
    mean, cov = _check_gaussian(mean, cov)
    if points < 1 or replicates < 2:
        raise ValueError(f"need points >= 1 and replicates >= 2, got {points} and {replicates}")
    var = cov.diagonal()
    tol = _REL_TOL * float(var.max().clamp_min(0))
    if bool((var < -tol).any()):
        raise ValueError("cov is not positive semi-definite: negative variance")
    fixed = var <= tol
    if bool((cov[fixed].abs() > math.sqrt(tol * float(var.max()))).any()):
        raise ValueError("cov is not positive semi-definite: a zero-variance row has covariances")
    if bool((mean[fixed] <= 0).any()):
        return OrthantResult(-math.inf, 0.0, 0)
    sd = var[~fixed].sqrt()
    c = mean[~fixed] / sd
    n = c.numel()
    if n <= 1:
        return OrthantResult(float(log_ndtr(c).sum()), 0.0, 3 * n)
    if n == 2:
        rho = cov[~fixed][:, ~fixed][0, 1] / (sd[0] * sd[1])
        if float(1 - rho * rho) < -_REL_TOL:
            raise ValueError("cov is not positive semi-definite: negative conditional variance")
        rho = rho.clamp(-1, 1)
        log_p, flops = _log_bvn(c[0], c[1], rho)
        p = math.exp(float(log_p))
        error = 0.0 if float(rho.abs()) == 1 else _BVN_ABS_ERROR if p >= _DIRECT_FLOOR else _BVN_REL_ERROR * p
        return OrthantResult(float(log_p), error, flops + 14)
    steps, factor_flops = _sov_factor(cov[~fixed][:, ~fixed] / sd.outer(sd), c)
    flops = 2 * n * (n + 1) + factor_flops
    if len(steps) == 1:
        log_e = _log_prob_between(*_step_limits(steps[0], c.new_zeros(1, 0)))
        return OrthantResult(float(log_e), 0.0, flops + _step_flops(steps[0], False, 1))
    log_p, abs_error, relative_se, qmc_flops = _sov_qmc(steps, points, replicates, seed)
    return OrthantResult(log_p, abs_error, flops + qmc_flops, relative_se, replicates)


def _check_gaussian(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Validated float64 copies of a mean [k] and a symmetrised covariance [k, k]."""
    mean, cov = torch.as_tensor(mean, dtype=_F64), torch.as_tensor(cov, dtype=_F64)
    if mean.ndim != 1 or mean.numel() == 0 or cov.shape != (mean.numel(), mean.numel()):
        raise ValueError(f"need mean [k] and cov [k, k], got {tuple(mean.shape)} and {tuple(cov.shape)}")
    if not (bool(mean.isfinite().all()) and bool(cov.isfinite().all())):
        raise ValueError("mean and cov must be finite")
    scale = float(cov.diagonal().abs().max())
    if float((cov - cov.T).abs().max()) > math.sqrt(_REL_TOL) * scale:
        raise ValueError("cov is not symmetric")
    return mean, (cov + cov.T) / 2


def _sov_factor(corr: Tensor, c: Tensor) -> tuple[list[_Step], int]:
    """Pivoted Cholesky z = L y of a correlation matrix, as SOV steps, and its flops.

    Pivots follow Genz & Bretz's smallest-expected-probability rule; rows whose
    conditional variance falls below 1e-10 are attached to the step that made
    them dependent (see ``log_orthant``).
    """
    k = c.numel()
    chol = torch.zeros_like(corr)
    var = corr.diagonal().clone()  # conditional variances given the pivots so far
    y_mean = c.new_zeros(k)  # truncated means of the pivots' latent y
    active = torch.ones(k, dtype=torch.bool, device=c.device)
    steps, flops = [], 0
    for j in range(k):
        if not bool(active.any()):
            break
        expected = (c - chol[:, :j] @ y_mean[:j]) / var.clamp_min(_REL_TOL).sqrt()
        pivot = int(torch.where(active, expected, math.inf).argmin())
        active[pivot] = False
        chol[pivot, j] = var[pivot].sqrt()
        rest = int(active.sum())
        chol[active, j] = (corr[active, pivot] - chol[active, :j] @ chol[pivot, :j]) / chol[pivot, j]
        var[active] -= chol[active, j] ** 2
        if bool((var < -_REL_TOL).any()):
            raise ValueError("cov is not positive semi-definite: negative conditional variance")
        dependent = active & (var < _REL_TOL)
        active &= ~dependent
        rows = torch.cat([c.new_tensor([pivot], dtype=torch.long), dependent.nonzero().flatten()])
        steps.append(_Step(chol[rows, :j], chol[rows, j], c[rows]))
        b = expected[pivot]
        y_mean[j] = -torch.exp(-b * b / 2 - math.log(2 * math.pi) / 2 - log_ndtr(b))
        flops += 2 * (k + rest) * j + 13 * k + 4 * rest + 9
    if float((corr - chol @ chol.T).abs().max()) > math.sqrt(_REL_TOL):
        raise ValueError("cov is not positive semi-definite: residual covariance after pivoting")
    return steps, flops + 2 * k**3 + 3 * k * k


def _sov_qmc(steps: list[_Step], points: int, replicates: int, seed: int) -> tuple[float, float, float, int]:
    """Randomised-QMC estimate of log p, 3 standard errors of p, one standard error
    relative to p (nan when every replicate is 0), and the flops used."""
    dim, device = len(steps) - 1, steps[0].coef.device
    seeds = torch.randint(0, 2**62, (replicates,), generator=torch.Generator().manual_seed(seed))
    u = torch.cat(
        [
            torch.quasirandom.SobolEngine(dim, scramble=True, seed=int(s)).draw(points, dtype=_F64)
            for s in seeds
        ]
    ).to(device) + 2.0 ** -(torch.quasirandom.SobolEngine.MAXBIT + 1)
    y = torch.zeros(points * replicates, dim, dtype=_F64, device=device)
    log_f = torch.zeros(points * replicates, dtype=_F64, device=device)
    for j, step in enumerate(steps):
        lower, upper = _step_limits(step, y[:, :j])
        log_e = _log_prob_between(lower, upper)
        log_f += log_e
        if j < dim:
            y[:, j] = _draw_between(lower, upper, log_e, u[:, j])
    log_means = torch.logsumexp(log_f.view(replicates, points), dim=1) - math.log(points)
    log_p = float(torch.logsumexp(log_means, dim=0)) - math.log(replicates)
    n = len(log_f)
    flops = sum(_step_flops(s, j < dim, n) for j, s in enumerate(steps)) + n + 5 * replicates
    if log_p == -math.inf:
        return log_p, 0.0, math.nan, flops
    rel_se = float(torch.exp(log_means - log_p).std()) / math.sqrt(replicates)
    return log_p, 3 * rel_se * math.exp(log_p), rel_se, flops


def _step_limits(step: _Step, y_before: Tensor) -> tuple[Tensor, Tensor]:
    """Lower and upper limits on y_j given the earlier draws y_before [n, j]."""
    limit = (step.bound - y_before @ step.prefix.T) / step.coef
    lower = torch.where(step.coef < 0, limit, -math.inf).amax(dim=-1)
    upper = torch.where(step.coef > 0, limit, math.inf).amin(dim=-1)
    return lower, upper


def _step_flops(step: _Step, sampled: bool, n: int) -> int:
    """Flops of one SOV step over n points: limits, log e_j and its sum, and the draw if ``sampled``."""
    rows, j = step.prefix.shape
    return n * (rows * (2 * j + 6) + 21 + 20 * sampled) + 2 * rows


def _log_prob_between(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)), or -inf where a ≥ b, without cancellation or underflow.

    The interval is reflected to the side where its upper end satisfies
    a + b ≤ 0, so that Φ(a) ≤ Φ(b) ≤ 1 - Φ(a) and the difference is taken
    between log Φ values rather than probabilities near 1.
    """
    reflect = a + b > 0
    lo, hi = torch.where(reflect, -b, a), torch.where(reflect, -a, b)
    log_hi = log_ndtr(hi)
    return torch.where(a < b, log_hi + _log1mexp(log_ndtr(lo) - log_hi), -math.inf)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x ≤ 0, accurate at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _draw_between(a: Tensor, b: Tensor, log_e: Tensor, u: Tensor) -> Tensor:
    """y = Φ⁻¹(q), q = Φ(a) + u e, e = Φ(b) - Φ(a): the inverse-CDF draw of N(0, 1) on (a, b).

    q and 1 - q = Φ(-b) + (1 - u) e are both formed in log space; Φ⁻¹ is applied
    to the smaller one, so neither end of the distribution loses precision.
    """
    log_q = torch.logaddexp(log_ndtr(a), torch.log(u) + log_e)
    log_1mq = torch.logaddexp(log_ndtr(-b), torch.log1p(-u) + log_e)
    return torch.where(
        log_q < log_1mq,
        ndtri(log_q.clamp_min(_LOG_TINY).exp()),
        -ndtri(log_1mq.clamp_min(_LOG_TINY).exp()),
    )


MAX_UNION_CLAUSES = 12     # inclusion–exclusion's 2ⁿ - 1 terms, at most


def log_union(
    mean: Tensor,
    cov: Tensor,
    clauses: list[tuple[Tensor, Tensor]],
    *,
    max_clauses: int = MAX_UNION_CLAUSES,
    points: int = 4096,
    replicates: int = 8,
    seed: int = 0,
    bracket_beyond: bool = False,
) -> OrthantResult:
    """log P(v ∈ C_1 ∪ … ∪ C_n) for v ~ N(mean, cov), C_i = {v : A_i v > b_i}.

    Each clause is a pair (A_i [m_i, d], b_i [m_i]); all its rows must hold.
    Inclusion–exclusion: P(∪ C_i) = Σ_{S ≠ ∅} (-1)^{|S|+1} P(∩_{i∈S} C_i), and an
    intersection is an orthant: w = A_S v - b_S ~ N(A_S mean - b_S, A_S cov A_Sᵀ)
    with A_S, b_S the clauses' rows stacked, identical rows merged, evaluated by
    ``log_orthant`` (identical intersections are evaluated once). The odd and
    even terms are summed separately in log space, P₊ and P₋, and
    log p = log P₊ + log(1 - P₋/P₊), so a union of rare events keeps its relative
    precision. ``abs_error`` is the sum of the terms' errors.

    If P₊ - P₋ does not exceed that error, the difference carries no
    information; the result is then max_i P(C_i), a lower bound on the union,
    with ``abs_error`` = Σ_i P(C_i) - max_i P(C_i) + the clauses' own errors,
    since the union always lies between max_i P(C_i) and Σ_i P(C_i).

    A single clause is ``log_orthant`` of its rows. More than ``max_clauses``
    clauses (2ⁿ - 1 terms) raise ValueError, or with ``bracket_beyond`` give that
    bracket directly from the n clauses alone (Boole's inequalities; enough where only
    the order of magnitude is needed, as in the sampled estimates' bulk test). Where
    every clause is one row, the union's complement is one orthant,
    P(∪ {a_i·v > b_i}) = 1 - P(a_i·v ≤ b_i for all i), and its n-row integral replaces
    the bracket wherever it resolves the union (1 - P beyond 3 times its error: a common
    union, such as "any of 12 outputs past its 1% quantile", at 7.7e-2 where Boole's
    lower end read 1e-2); a rarer union keeps the bracket.
    """
    mean, cov = _check_gaussian(mean, cov)
    if not clauses:
        raise ValueError("log_union needs at least one clause")
    bracket = len(clauses) > max_clauses
    if bracket and not bracket_beyond:
        raise ValueError(
            f"{len(clauses)} clauses need {2 ** len(clauses) - 1} inclusion-exclusion terms, more than "
            f"max_clauses={max_clauses} allows; pass samples=N to estimate the union by sampling instead"
        )
    rows = [_clause_rows(a, b, mean.numel()) for a, b in clauses]
    cache: dict[bytes, OrthantResult] = {}
    flops = 0
    terms = []  # (sign, result) per nonempty subset, or per clause for the bracket
    masks = [1 << i for i in range(len(rows))] if bracket else range(1, 2 ** len(rows))
    for mask in masks:
        chosen = [rows[i] for i in range(len(rows)) if mask >> i & 1]
        stacked = torch.unique(torch.cat(chosen), dim=0)
        key = stacked.cpu().numpy().tobytes()
        if key not in cache:
            a, b = stacked[:, :-1], stacked[:, -1]
            cache[key] = log_orthant(
                a @ mean - b, a @ cov @ a.T, points=points, replicates=replicates, seed=seed
            )
            m, d = a.shape
            flops += cache[key].flops + _transform_flops(m, d)
        terms.append((1 if len(chosen) % 2 else -1, cache[key]))
    if len(terms) == 1:
        return OrthantResult(terms[0][1].log_p, terms[0][1].abs_error, flops)
    if bracket:
        return _complement(rows, mean, cov, points, replicates, seed, _boole([t for _, t in terms], flops))
    log_plus = _logsumexp([t.log_p for sign, t in terms if sign > 0])
    log_minus = _logsumexp([t.log_p for sign, t in terms if sign < 0])
    error = sum(t.abs_error for _, t in terms)
    if log_minus < log_plus:
        log_p = log_plus + _log1mexp(torch.tensor(log_minus - log_plus, dtype=_F64)).item()
        if log_p > (math.log(error) if error > 0 else -math.inf):
            return OrthantResult(log_p, error, flops)
    return _boole([terms[(1 << i) - 1][1] for i in range(len(rows))], flops)


def orthant_flops_bound(k: int, points: int, replicates: int) -> int:
    """Upper bound on `log_orthant`'s FLOPs for k rows: the pivoted factor and the QMC
    steps (one row is log Φ in closed form, no QMC)."""
    n = points * replicates if k > 1 else 1
    return n * (2 * k * k + 47 * k + 1) + 6 * k ** 3 + 22 * k * k + 13 * k + 5 * replicates


def union_flops_bound(rows: list[int], d: int, points: int, replicates: int, extra: int = 0,
                      bracket: bool = False) -> int:
    """Upper bound on `log_union`'s FLOPs for clauses of `rows` rows each in a d-wide
    Gaussian (plus `extra` rows and dimensions on every term): every inclusion–exclusion
    term with all its rows, or with `bracket` the clauses alone (Boole's bracket) and,
    for single-row clauses, their complement's orthant."""
    masks = [1 << i for i in range(len(rows))] if bracket else range(1, 2 ** len(rows))
    total = 0
    if bracket and len(rows) > 1 and all(c == 1 for c in rows):
        m = len(rows) + extra
        total += orthant_flops_bound(m, points, replicates) + _transform_flops(m, d + extra)
    for mask in masks:
        m = sum(c for i, c in enumerate(rows) if mask >> i & 1) + extra
        total += orthant_flops_bound(m, points, replicates) + _transform_flops(m, d + extra)
    return total


def _transform_flops(m: int, d: int) -> int:
    """FLOPs of an orthant's Gaussian from m rows A in d dimensions: A mean - b and A cov Aᵀ."""
    return 2 * m * d * (d + m + 1)


def _complement(rows: list[Tensor], mean: Tensor, cov: Tensor, points: int, replicates: int, seed: int,
                boole: OrthantResult) -> OrthantResult:
    """`log_union`'s answer past its clause limit: for single-row clauses, 1 - P(every row
    ≤ its threshold) where that orthant's error leaves the difference resolved; else, or
    for clauses of several rows, Boole's bracket `boole` (its FLOPs are counted either way)."""
    if any(r.shape[0] != 1 for r in rows):
        return boole
    stacked = torch.unique(torch.cat(rows), dim=0)
    a, b = stacked[:, :-1], stacked[:, -1]
    inside = log_orthant(b - a @ mean, a @ cov @ a.T, points=points, replicates=replicates, seed=seed)
    m, d = a.shape
    flops = boole.flops + inside.flops + _transform_flops(m, d)
    outside = -math.expm1(inside.log_p)
    if outside > 3 * inside.abs_error:
        return OrthantResult(math.log(outside), inside.abs_error, flops)
    return OrthantResult(boole.log_p, boole.abs_error, flops)


def _boole(singles: list[OrthantResult], flops: int) -> OrthantResult:
    """max_i P(C_i) ≤ P(∪ C_i) ≤ Σ_i P(C_i) (Boole): the lower end, with the bracket's width
    and the clauses' own errors as ``abs_error``."""
    best = max(singles, key=lambda t: t.log_p)
    spread = sum(math.exp(t.log_p) for t in singles) - math.exp(best.log_p)
    return OrthantResult(best.log_p, spread + sum(t.abs_error for t in singles), flops)


def _clause_rows(a: Tensor, b: Tensor, d: int) -> Tensor:
    """A clause as validated float64 rows [A | b] of shape [m, d + 1]."""
    a, b = torch.as_tensor(a, dtype=_F64), torch.as_tensor(b, dtype=_F64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != d or b.shape != (a.shape[0],):
        raise ValueError(f"a clause needs A [m, {d}] and b [m], got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (bool(a.isfinite().all()) and bool(b.isfinite().all())):
        raise ValueError("clause A and b must be finite")
    return torch.cat([a, b.unsqueeze(1)], dim=1)


def _logsumexp(values: list[float]) -> float:
    """log Σ exp(values) for a nonempty list of floats."""
    return float(torch.logsumexp(torch.tensor(values, dtype=_F64), dim=0))
