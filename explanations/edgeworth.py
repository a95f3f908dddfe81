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

from .activations import activation, normal_pdf
from .moments import HERMITE_DEGREE, ActivationMoments, hermite_basis, quadrature, rho_limit, split_deterministic
from .skew import relu_raw_moments

_RHO_GAP = 1e-9


def _derivative_expectations(kind: str, mean: Tensor, sd: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per unit: E[f^(m)(z)] and E[(f²)^(m)(z)] for m = 0..6 ([n, 7] each, Gaussian z), the
    normalised Hermite coefficients (ReLU family: only c_0 = E f, its series does not converge
    for f″ = δ) and FLOPs. ReLU: f^(m) = δ^(m-2), E δ^(k)(z) = (-1)^k He_k(a) φ(a)/σ^(k+1); leaky
    ReLU f = c z + (1 - c) z⁺ and f² = (z⁺)² + c²(z⁻)² are combinations of these;
    smooth f: E[g^(m)] = √(m!) g_m / σ^m with g_m the normalised Hermite coefficients of g."""
    n = mean.shape[0]
    orders = torch.arange(7, dtype=mean.dtype, device=mean.device)
    leak = activation(kind).leak
    if leak is not None:                      # f = c z + (1 - c) z⁺, f² = (z⁺)² + c² (z⁻)²
        a = mean / sd
        pdf, cdf = normal_pdf(a), ndtr(a)
        he = hermite_basis(a, 4) * torch.exp(torch.lgamma(orders[:5] + 1)).sqrt()[:, None]    # He_0..He_4 at a
        delta = lambda k: (-1) ** k * he[k] * pdf / sd ** (k + 1)
        up_first, up_second = relu_raw_moments(a, sd, pdf, cdf)[:2]
        down_first, down_second = relu_raw_moments(-a, sd, pdf, 1 - cdf)[:2]
        c2 = leak * leak
        f = torch.stack([leak * mean + (1 - leak) * up_first, leak + (1 - leak) * cdf]
                        + [(1 - leak) * delta(k) for k in range(5)], dim=1)             # f, f′, f″ = (1 - c)δ, …
        square = torch.stack([up_second + c2 * down_second, 2 * (up_first - c2 * down_first),
                              2 * (c2 + (1 - c2) * cdf)] + [2 * (1 - c2) * delta(k) for k in range(4)], dim=1)
        return f, square, f[:, :1], 80 * n
    u, w = quadrature(mean)                      # f evaluated once for both series
    values = activation(kind).fn(mean[:, None] + sd[:, None] * u[None, :])
    weighted = values * w
    basis = hermite_basis(u, HERMITE_DEGREE)
    coefficients = weighted @ basis.T                                             # [n, K+1]
    square = (values * weighted) @ basis[:7].T                                    # [n, 7]
    flops = n * u.shape[0] * (activation(kind).flops + 2 * HERMITE_DEGREE + 20)
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
    limit = rho_limit(cov.dtype, _RHO_GAP)
    rho = (cov / torch.outer(sd, sd)).clamp(-limit, limit)
    leak = activation(kind).leak
    if leak is not None:                 # f = c z + (1 - c) z⁺: f″ = (1 - c) δ, f‴ = (1 - c) δ′
        a = mean / sd
        density = normal_pdf(a) / sd                                  # p_i(0)
        density_slope = a * normal_pdf(a) / sd ** 2                   # p_i′(0)
        s = torch.sqrt((1 - rho) * (1 + rho))
        u = (a[None, :] - rho * a[:, None]) / s                       # z_j | z_i = 0, standardised at 0
        above = ndtr(u)
        curvature_slope = (1 - leak) * density[:, None] * (leak + (1 - leak) * above)   # E[f″_i f′_j]
        conditional_mean = sd[None, :] * s * (u * above + normal_pdf(u))
        relu_mean = sd * (a * ndtr(a) + normal_pdf(a))
        beta = rho * sd[None, :] / sd[:, None]
        # Cov(δ′(z_i), h(z_j)) = -(p′(0)(m_h(0) - E h) + p(0) m_h′(0)), m_h(t) = E[h(z_j) | z_i = t]:
        # for h = z⁺, m_h(0) is conditional_mean and m_h′(0) = β P(z_j > 0 | z_i = 0); for h = z,
        # m_h(0) - μ_j = -β μ_i and m_h′ = β
        relu_pair = -(density_slope[:, None] * (conditional_mean - relu_mean[None, :])
                      + density[:, None] * beta * above)
        linear_pair = beta * (density_slope * mean - density)[:, None]
        skew_pair = (1 - leak) * (leak * linear_pair + (1 - leak) * relu_pair)
        flops += 50 * n * n
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
