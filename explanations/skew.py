"""Third and fourth cumulants carried through a chain, for Edgeworth-corrected moments.

Gaussian propagation treats each pre-activation vector z as jointly Gaussian. It is not:
every activation layer adds skew and kurtosis, and later layers inherit and mix them.
Measured on 16 → 128³ → 1 ReLU (He init, 2·10⁶ samples), the second and third hidden
pre-activations have skew ≈ 0.2 and excess kurtosis ≈ 0.3, and with exact μ, Σ of z the
Gaussian formulas still miss E[relu(z)] by 0.02 sd and Cov(relu(z)) by 20%; with the exact
third cumulants κ(z_i, z_i, z_j) and per-unit fourth cumulants in the Edgeworth correction
below the output mean error drops from 0.027 to 0.0006 sd (and 0.0030 → 0.0005 on the wide
256 → 256⁴ → 1 net). This module supplies those cumulants from the structure.

Sources. An activation layer with pre-activations z_s ~ N(μ, Σ) (π's model), standardized
g_k = (z_sk - μ_k)/σ_k with correlation ρ, expands as f(μ_k + σ_k g) = Σ_d b_kd He_d(g)
(probabilists' Hermite, b_kd = E[f He_d]/d!). A later pre-activation vector z depends on the
source's outputs through the linearised (Stein) map J = W_L diag(s_{L-1}) W_{L-1} ⋯ W_{s+1}
(s the slopes E[f′] of the layers in between), and C = J diag(b_1) ρ is Cov(z, g) under π.
By the diagram formula for Hermite polynomials of jointly Gaussian variables (Peccati &
Taqqu 2011, "Wiener Chaos: Moments, Cumulants and Diagrams", ch. 7), keeping the paths of
degrees (1, 2, 1) and (1, 2, 2, 1), the stars (1, 1, 1, 3) and the exact one- and two-unit
terms, each source contributes

    κ(z_i, z_j, z_l) ⊃ Σ_k w_k [A_ik A_jk B_lk + A_ik B_jk A_lk + B_ik A_jk A_lk]  over three
        families (A, B, w) = (C, J, 2 b_2), (J, C, δ), (J, J, ε):
        δ_k = E[(f - Ef)² g_k] - 4 b_1 b_2      (the exact linear-in-ρ two-unit term),
        ε_k = (κ3(f(z_k)) - 6 b_1² b_2 - 3 δ_k b_1)/3     (the exact one-unit term);
    κ4(z_i) ⊃ Σ_k 24 b_k3 J_ik C_ik³ + 48 Σ_{k,m} (b_k2 J_ik C_ik) ρ_km (b_m2 J_im C_im)
              + Σ_k (κ4(f(z_k)) - 24 b_1³ b_3 - 48 b_1² b_2²) J_ik⁴.
Dropped: triangles (2, 2, 2) and higher-degree paths (O(n⁴) or small), and the
interaction of inherited skew with later curvature beyond the slope. That includes the third
cumulants that inherited fourth cumulants make through a later activation's curvature,
½ κ(z_k, z_l, z_m, z_m) s_k s_l E f″_m + (2 more). Carried as three factored legs per
source, they brought κ3 much closer to sampling (36% → 19% off on 16 → 128³ ReLU). But the
mean got worse on three of four wide seeds and 3.4× worse on the foundation ReLU/GELU, at
+36% cost, because the short κ3 had been cancelling an error in the variance
(docs/notes/wide-mean.md; commit bfd4db0 holds the code). Measured against
sampling: T_ij = κ(z_i, z_i, z_j) within 7–13% at the first skewed layer, 20–30% two
layers later; κ4 within 20–40%.

Costs: a source costs 2·n·m·m to start (C) and 4·n·n′·m per later affine map (J, C);
T for all pairs costs 2 matmuls per source (4 n² m), per-unit κ3 and κ4 cost 2 m² n
(the chain term) plus O(n m).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.special import ndtr

from .activations import activation, normal_pdf
from .moments import hermite_basis, quadrature


@dataclass
class Source:
    """One activation layer's non-Gaussianity, as seen from the current layer."""
    jacobian: Tensor      # J [n, m]
    covariance: Tensor    # C [n, m] = Cov(z, g) under π
    b2: Tensor            # [m]
    b3: Tensor            # [m]
    pair: Tensor          # δ [m]
    single3: Tensor       # ε [m]
    single4: Tensor       # [m]
    correlation: Tensor   # ρ [m, m], or a factor V [m, r] with ρ = V Vᵀ when r < m

    def correlate(self, x: Tensor) -> tuple[Tensor, int]:
        """x ρ for x [n, m], and its FLOPs (through the factor when ρ is low-rank)."""
        n, m = x.shape
        v = self.correlation
        if v.shape[1] < m:
            return (x @ v) @ v.T, 4 * n * m * v.shape[1]
        return x @ v, 2 * n * m * m


@dataclass(frozen=True)
class UnitTerms:
    """Hermite data of f(μ + σ g), g ~ N(0, 1), per unit."""
    b1: Tensor
    b2: Tensor
    b3: Tensor
    pair_exact: Tensor    # E[(f - Ef)² g]
    kappa3: Tensor
    kappa4: Tensor
    flops: int


def relu_raw_moments(a: Tensor, sd: Tensor, pdf: Tensor, cdf: Tensor) -> list[Tensor]:
    """E[(z⁺)^k], k = 1..4, for z ~ N(aσ, σ²): σ^k (P_k(a) Φ(a) + Q_k(a) φ(a)) with (P, Q) as in
    `relu_terms`; pdf = φ(a), cdf = Φ(a). At -a with 1 - Φ(a) they are E[(z⁻)^k]."""
    return [sd * (a * cdf + pdf), sd ** 2 * ((a * a + 1) * cdf + a * pdf),
            sd ** 3 * ((a ** 3 + 3 * a) * cdf + (a * a + 2) * pdf),
            sd ** 4 * ((a ** 4 + 6 * a * a + 3) * cdf + (a ** 3 + 5 * a) * pdf)]


def relu_terms(mean: Tensor, sd: Tensor, leak: float = 0.0) -> UnitTerms:
    """Closed forms for the ReLU family f = c z + (1 - c) z⁺ = z⁺ - c z⁻ (c = `leak`), a = μ/σ.
    Raw moments: E[(z⁺)^k] = σ^k (P_k(a) Φ(a) + Q_k(a) φ(a)) with
    (P, Q) = (a, 1), (a² + 1, a), (a³ + 3a, a² + 2), (a⁴ + 6a² + 3, a³ + 5a), E[(z⁻)^k] the same
    at -a, and E f^k = E[(z⁺)^k] + (-c)^k E[(z⁻)^k] (z⁺ z⁻ = 0). Hermite coefficients
    (Stein: b_d = σ^d E[f^(d)]/d!): b_1 = σ(c + (1 - c)Φ), b_2 = (1 - c)σφ/2,
    b_3 = -(1 - c)σaφ/6; and E[(f - m₁)² g] = σ E[(f²)′] - 2 m₁ σ E f′
    = 2σ(E z⁺ - c² E z⁻) - 2σ m₁ (c + (1 - c)Φ)."""
    a = mean / sd
    pdf, cdf = normal_pdf(a), ndtr(a)
    up = relu_raw_moments(a, sd, pdf, cdf)
    if leak:
        down = relu_raw_moments(-a, sd, pdf, 1 - cdf)
        up = [up[k] + (-leak) ** (k + 1) * down[k] for k in range(4)]
    m1, m2, m3, m4 = up
    variance = m2 - m1 * m1
    kappa3 = m3 - 3 * m1 * m2 + 2 * m1 ** 3
    kappa4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4 - 3 * variance ** 2
    slope = leak + (1 - leak) * cdf
    return UnitTerms(sd * slope, (1 - leak) * sd * pdf / 2, -(1 - leak) * sd * a * pdf / 6,
                     2 * sd * (m1 + (leak - leak * leak) * down[0] if leak else m1) - 2 * sd * m1 * slope,
                     kappa3, kappa4, 100 * mean.shape[0])


def quadrature_terms(kind: str, mean: Tensor, sd: Tensor) -> UnitTerms:
    """The same quantities by composite Gauss–Legendre quadrature over g (`moments.quadrature`)."""
    u, w = quadrature(mean)
    act = activation(kind)
    values = act.fn(mean[:, None] + sd[:, None] * u[None, :])                     # [n, Q]
    he = hermite_basis(u, 3) * torch.tensor([1.0, 1.0, math.sqrt(2), math.sqrt(6)],
                                            dtype=u.dtype, device=u.device)[:, None]
    b = (values * w) @ he.T / torch.tensor([1.0, 1.0, 2.0, 6.0], dtype=u.dtype, device=u.device)
    centred = values - b[:, :1]
    square = centred * centred
    variance = square @ w
    flops = mean.shape[0] * u.shape[0] * (act.flops + 20)
    return UnitTerms(b[:, 1], b[:, 2], b[:, 3], (square * u) @ w, (square * centred) @ w,
                     (square * square) @ w - 3 * variance ** 2, flops)


def start_source(kind: str, mean: Tensor, cov: Tensor, sd: Tensor, deterministic: Tensor,
                 factor: Tensor | None, weight: Tensor) -> tuple[Source, int]:
    """The source made by activation `kind` on z ~ N(mean, cov), seen after the next affine
    map `weight` [n′, n]: J = W, C = W diag(b_1) ρ. `sd` is safe for division (1 where a unit
    is `deterministic`: such units add nothing). `factor` F with cov = F Fᵀ (or None) keeps
    ρ low-rank (first layers of networks wider than their input)."""
    leak = activation(kind).leak
    terms = relu_terms(mean, sd, leak) if leak is not None else quadrature_terms(kind, mean, sd)
    keep = (~deterministic).to(mean.dtype)
    b1, b2, b3 = terms.b1 * keep, terms.b2 * keep, terms.b3 * keep
    correlation = cov / torch.outer(sd, sd) if factor is None else factor / sd[:, None]
    pair = (terms.pair_exact - 4 * terms.b1 * terms.b2) * keep
    single3 = (terms.kappa3 - 6 * b1 ** 2 * b2 - 3 * pair * b1) / 3 * keep
    single4 = (terms.kappa4 - 24 * b1 ** 3 * b3 - 48 * (b1 * b2) ** 2) * keep
    n = mean.shape[0]
    source = Source(weight, weight, b2, b3, pair, single3, single4, correlation)
    source.covariance, flops = source.correlate(weight * b1)
    return source, terms.flops + flops + 4 * n * n + 20 * n


def through_affine(source: Source, weight: Tensor) -> int:
    """J ← W J, C ← W C; returns the FLOPs."""
    source.jacobian = weight @ source.jacobian
    source.covariance = weight @ source.covariance
    n_out, n = weight.shape
    return 4 * n_out * n * source.jacobian.shape[1]


def through_activation(source: Source, slope: Tensor) -> int:
    """Linearised inheritance, J ← diag(s) J, C ← diag(s) C."""
    source.jacobian = slope[:, None] * source.jacobian
    source.covariance = slope[:, None] * source.covariance
    return 2 * source.jacobian.numel()


def third_fourth(sources: list[Source], like: Tensor, full: bool) -> tuple[Tensor, Tensor, int]:
    """T with T_ij = κ(z_i, z_i, z_j) (only its diagonal κ3 unless `full`), per-unit κ4, FLOPs."""
    n = like.shape[0]
    third = like.new_zeros(n, n) if full else like.new_zeros(n)
    fourth = like.new_zeros(n)
    flops = 0
    for s in sources:
        J, C = s.jacobian, s.covariance
        m = J.shape[1]
        w_path = 2 * s.b2
        if full:
            # Σ_k w_k (A_ik² B_jk + 2 A_ik B_ik A_jk) over the three families, grouped by right factor
            jj, cj = J * J, C * J
            to_c = jj * s.pair + cj * (2 * w_path)
            to_j = jj * (3 * s.single3) + cj * (2 * s.pair) + (C * C) * w_path
            third = third + to_c @ C.T + to_j @ J.T
            flops += 4 * n * n * m + 12 * n * m
        else:
            third = third + ((C * C * J) * (3 * w_path) + (J * J * C) * (3 * s.pair)
                             + J ** 3 * (3 * s.single3)).sum(1)
            flops += 16 * n * m
        chain = J * C * s.b2
        linked, cost = s.correlate(chain)
        fourth = fourth + (24 * J * C ** 3 * s.b3 + 48 * linked * chain + J ** 4 * s.single4).sum(1)
        flops += cost + 16 * n * m
    return third, fourth, flops
