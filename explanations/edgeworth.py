"""Edgeworth-corrected mean and covariance of f(z) when z is slightly non-Gaussian.

With κ_abc the third and κ4 the fourth cumulants of z (first order in both), the Edgeworth
expansion of z's density around N(μ, Σ), integrated by parts, gives for smooth F
(McCullagh 1987, "Tensor Methods in Statistics", ch. 5):
    E[F(z)] ≈ E_G[F] + (1/6) Σ_abc κ_abc E_G[∂_abc F] + (1/24) Σ_a κ4_a E_G[∂_a⁴ F].
For the mean and covariance of h = f(z) (elementwise f), with T_ij = κ(z_i, z_i, z_j),
to order 1/n (κ3 ~ n^-1/2, κ4 and κ3² ~ n^-1 for sums of n weakly dependent terms):
    E h_i     += δ_i = κ3_i/6 E[f‴(z_i)] + κ4_i/24 E[f⁗(z_i)] + κ3_i²/72 E[f⁽⁶⁾(z_i)]
    Var h_i   += (the same with f² for f) - 2 E[h_i] δ_i - δ_i²
    Cov h_ij  += ½ T_ij E[f″_i f′_j] + ½ T_ji E[f′_i f″_j]
                 + κ3_i/6 (E[f‴_i f_j] - E[f‴_i] E[f_j]) + (i ↔ j)
(per-unit κ4 only: the mixed fourth cumulants and the κ3κ3 pair terms are not carried). Gaussian expectations:
ReLU in closed form (f″ = δ, f‴ = δ′, by conditioning z_j on z_i = 0); smooth activations
by Hermite series, E[f^(p)(z_i) f^(q)(z_j)] = Σ_k D^p_ik D^q_jk ρ_ij^k with
D^p_ik = c_{i,k+p} √((k+p)!/k!) / σ_i^p (derivatives shift the normalised Hermite
coefficients c of `moments.hermite_coefficients`).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.special import ndtr

from .activations import ACTIVATIONS, normal_pdf
from .moments import HERMITE_DEGREE, ActivationMoments, hermite_basis, quadrature, split_deterministic

_RHO_LIMIT = 1 - 1e-9


def _derivative_expectations(kind: str, mean: Tensor, sd: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per unit: E[f^(m)(z)] and E[(f²)^(m)(z)] for m = 0..6 ([n, 7] each, Gaussian z), the
    normalised Hermite coefficients (ReLU: only c_0 = E f, its series does not converge
    for f″ = δ) and FLOPs. ReLU: f^(m) = δ^(m-2), E δ^(k)(z) = (-1)^k He_k(a) φ(a)/σ^(k+1);
    smooth f: E[g^(m)] = √(m!) g_m / σ^m with g_m the normalised Hermite coefficients of g."""
    n = mean.shape[0]
    orders = torch.arange(7, dtype=mean.dtype, device=mean.device)
    if kind == "relu":
        a = mean / sd
        pdf = normal_pdf(a)
        he = hermite_basis(a, 4) * torch.exp(torch.lgamma(orders[:5] + 1)).sqrt()[:, None]    # He_0..He_4 at a
        delta = lambda k: (-1) ** k * he[k] * pdf / sd ** (k + 1)
        cdf = ndtr(a)
        first = sd * (a * cdf + pdf)
        second = sd * sd * ((a * a + 1) * cdf + a * pdf)
        f = torch.stack([first, cdf] + [delta(k) for k in range(5)], dim=1)               # relu, H, δ, δ′, …
        square = torch.stack([second, 2 * first, 2 * cdf] + [2 * delta(k) for k in range(4)], dim=1)
        return f, square, first[:, None], 60 * n
    u, w = quadrature(mean)                      # f evaluated once for both series
    values = ACTIVATIONS[kind].fn(mean[:, None] + sd[:, None] * u[None, :])
    weighted = values * w
    basis = hermite_basis(u, HERMITE_DEGREE)
    coefficients = weighted @ basis.T                                             # [n, K+1]
    square = (values * weighted) @ basis[:7].T                                    # [n, 7]
    flops = n * u.shape[0] * (ACTIVATIONS[kind].flops + 2 * HERMITE_DEGREE + 20)
    scale = torch.exp(torch.lgamma(orders + 1)).sqrt() / sd[:, None] ** orders
    return coefficients[:, :7] * scale, square * scale, coefficients, flops


def _mean_shifts(f: Tensor, square: Tensor, kappa3: Tensor, kappa4: Tensor) -> tuple[Tensor, Tensor]:
    """δE[f] and δE[f²] from the Edgeworth expansion to order 1/n:
    κ3/6 E[g‴] + κ4/24 E[g⁗] + κ3²/72 E[g^(6)] for g = f, f²."""
    shift = lambda d: kappa3 / 6 * d[:, 3] + kappa4 / 24 * d[:, 4] + kappa3 ** 2 / 72 * d[:, 6]
    return shift(f), shift(square)


def corrected_mean(kind: str, mean: Tensor, sd: Tensor, kappa3: Tensor, kappa4: Tensor) -> tuple[Tensor, int]:
    """E[f(z_i)] for z_i with mean, sd, κ3, κ4: the Gaussian value plus the per-unit
    Edgeworth correction; and FLOPs."""
    f, square, coefficients, flops = _derivative_expectations(kind, mean, sd)
    return coefficients[:, 0] + _mean_shifts(f, square, kappa3, kappa4)[0], flops + 10 * mean.shape[0]


def _shifted(coefficients: Tensor, sd: Tensor, p: int) -> Tensor:
    """D^p_ik = c_{i,k+p} √((k+p)!/k!) / σ_i^p, k = 0..K-p."""
    k = torch.arange(coefficients.shape[1] - p, dtype=sd.dtype, device=sd.device)
    factor = torch.exp(torch.lgamma(k + p + 1) - torch.lgamma(k + 1)).sqrt()
    return coefficients[:, p:] * factor / sd[:, None] ** p


def _mehler(left: Tensor, right: Tensor, rho: Tensor, start: int) -> Tensor:
    """Σ_{k ≥ start} left_ik right_jk ρ_ij^k, by Horner in ρ."""
    degree = min(left.shape[1], right.shape[1]) - 1
    series = torch.zeros_like(rho)
    for k in range(degree, start - 1, -1):
        series = series * rho + torch.outer(left[:, k], right[:, k])
    return series * rho ** start if start else series


def corrected_moments(kind: str, mean: Tensor, cov: Tensor, third: Tensor, fourth: Tensor,
                      base: ActivationMoments) -> ActivationMoments:
    """`base` (Gaussian moments of f(z)) plus the Edgeworth corrections of the module docstring
    (none on deterministic units, `moments.split_deterministic`)."""
    n = mean.shape[0]
    _, deterministic, sd = split_deterministic(mean, cov)
    keep = (~deterministic).to(mean.dtype)
    third, fourth = third * torch.outer(keep, keep), fourth * keep
    kappa3 = third.diagonal()
    f, square, coefficients, flops = _derivative_expectations(kind, mean, sd)
    shift, square_shift = _mean_shifts(f, square, kappa3, fourth)
    variance_shift = square_shift - 2 * base.mean * shift - shift ** 2
    rho = (cov / torch.outer(sd, sd)).clamp(-_RHO_LIMIT, _RHO_LIMIT)
    if kind == "relu":
        a = mean / sd
        density = normal_pdf(a) / sd                                  # p_i(0)
        density_slope = a * normal_pdf(a) / sd ** 2                   # p_i′(0)
        s = torch.sqrt((1 - rho) * (1 + rho))
        u = (a[None, :] - rho * a[:, None]) / s                       # z_j | z_i = 0, standardised at 0
        above = ndtr(u)
        curvature_slope = density[:, None] * above                    # E[δ(z_i) 1(z_j > 0)]
        conditional_mean = sd[None, :] * s * (u * above + normal_pdf(u))
        beta = rho * sd[None, :] / sd[:, None]
        # E[δ′(z_i) relu(z_j)] - E[δ′(z_i)] E[relu(z_j)] = -(p′(0)(m_j(0) - E relu_j) + p(0) m_j′(0))
        skew_pair = -(density_slope[:, None] * (conditional_mean - base.mean[None, :])
                      + density[:, None] * beta * above)
        flops += 40 * n * n
    else:
        d0, d1, d2, d3_ = (_shifted(coefficients, sd, p) for p in range(4))
        curvature_slope = _mehler(d2, d1, rho, 0)                     # E[f″_i f′_j]
        skew_pair = _mehler(d3_, d0, rho, 1)                          # E[f‴_i f_j] - E[f‴_i] E[f_j]
        flops += 6 * HERMITE_DEGREE * n * n
    pair_shift = (third * curvature_slope / 2 + kappa3[:, None] / 6 * skew_pair) * keep[None, :]
    pair_shift = pair_shift + pair_shift.T
    pair_shift.diagonal().copy_(variance_shift)
    cov_out = base.cov + pair_shift
    cov_out.diagonal().clamp_(min=0)
    return ActivationMoments(base.mean + shift, cov_out, base.slope, base.flops + flops + 8 * n * n,
                             base.truncation)
