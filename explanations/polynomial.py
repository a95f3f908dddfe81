"""method="polynomial": the Hermite surrogate of a 2-layer network y = W2 f(W1 x + b1) + b2.

Inputs x ~ N(μ, Σ) are written x = μ + L ξ with ξ ~ N(0, I_d) and L Lᵀ = Σ (the
distribution's `factor`). With A = W1 L, the pre-activations are z_j = m_j + σ_j u_j,
    m = W1 μ + b1,   σ_j = ‖A_j‖,   u_j = v_j·ξ,   v_j = A_j / σ_j,
so u is exactly jointly Gaussian, each u_j ~ N(0, 1), with correlations ρ = v vᵀ.
Each activation is replaced by its L²(N(0, 1)) projection on polynomials of degree ≤ K,
    f(m_j + σ_j u) ≈ Σ_{k≤K} c_jk h_k(u),   c_jk = E[f(m_j + σ_j u) h_k(u)],   h_k = He_k/√k!
(Gauss–Legendre quadrature, `moments.hermite_coefficients`), and the network by
    P(ξ) = b2 + Σ_j W2_:j Σ_k c_jk h_k(v_j·ξ),
a polynomial of degree K in ξ whose degree-k part is Σ_j W2_:j c_jk h_k(v_j·ξ): sums of
rank-one terms (v_j, c_jk), kept factored, never expanded into d^k tensors. A unit with
σ_j = 0 is the constant f(m_j).

expectation():  E[P] = b2 + W2 c_:0 (E h_k(u) = 0 for k ≥ 1). c_j0 = E f(z_j) is not
                truncated, so this is also the exact mean of the network (up to quadrature).
cov:            Cov(P) = W2 S W2ᵀ, S_ij = Σ_{k=1..K} c_ik c_jk ρ_ij^k (Mehler; ρ_ii = 1).
predict(x):     P at ξ = L⁺(x - μ) (ξ = x - μ for N(0, I)); for Σ of full rank u_j = (z_j - m_j)/σ_j
                exactly, so P(ξ) is the truncated network at x. E_D[predict] = expectation().
cumulants(a):   κ1..κ4 of a·P(ξ) by the diagram formula (`hermite_cumulants`) with unit
                weights a W2, plus a·b2 in κ1; with more than `tetrahedra_up_to` hidden units
                κ4 leaves out the tetrahedral diagrams (O(n⁴); see `hermite_cumulants`).
                These are the surrogate's cumulants: κ1, κ2 converge to the network's as K
                grows, κ3 and κ4 need not, as a truncated Hermite series need not converge in
                L³, L⁴ (its high-degree terms put large values where |u| ≫ 1): on tanh, the
                surrogate's κ4 is -0.053, -0.046, 0.36, 5.1, 74 at K = 4, 6, 8, 10, 12 against
                the network's -0.12. So cumulants use the degree-≤`cumulant_degree` part (6).
probability(e): as every CumulantExplanation: design points and local quadratics for events
                π's Gaussian summary puts below 5e-2, cumulant marginals and a Gaussian copula
                otherwise.
truncation_error: per output, a bound on the RMS error ‖y - P‖_{L²(D)}. With r_j = f - f_K,
                E r_j = 0 and E r_j² = T_j = E f(z_j)² - Σ_{k≤K} c_jk² (Parseval), and by Mehler
                E[r_i r_j] = Σ_{k>K} c_ik c_jk ρ_ij^k, |·| ≤ |ρ_ij|^{K+1} √(T_i T_j) (Cauchy–Schwarz), so
                    E (y_o - P_o)² ≤ Σ_ij |W2_oi| |W2_oj| |ρ_ij|^{K+1} √(T_i T_j).
                The bound is that square root (T from quadrature, E f² included).
FLOPs (convention of `hermite_cumulants`): build = coefficients n·Q·(f + 2K + 6) (Q = 180
quadrature nodes) + 2nd² (A, skipped for N(0, I)) + 2n²d (Gram) + 3Kn² (S) + 2on² + 2o²n
(cov) + 8n² + 2on² (truncation) + 10d³ + 2nd² (L⁺ for predict, skipped for N(0, I));
cumulants: 2on + 2o plus the diagram contractions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import moment_dtype
from .cumulant import CumulantExplanation
from .distributions import Gaussian
from .estimate import Estimate
from .graph import Act, Affine, Graph
from .hermite_cumulants import TETRAHEDRA_UP_TO, hermite_cumulants
from .moments import hermite_basis, hermite_coefficients

DEFAULT_DEGREE = 8
CUMULANT_DEGREE = 6   # κ3, κ4 from the degree-≤6 part: higher degrees drift (module docstring)


class PolynomialExplanation(CumulantExplanation):
    """Degree-K Hermite surrogate of affine → activation → affine (module docstring)."""

    method = "polynomial"

    @classmethod
    def check_structure(cls, graph: Graph) -> None:
        ops = graph.chain
        if [type(op) for op in ops] != [Affine, Act, Affine]:
            found = " → ".join(op.kind if isinstance(op, Act) else type(op).__name__ for op in ops)
            raise ValueError(f"method 'polynomial' needs Affine → Act → Affine, got {found or 'an empty chain'}")

    def __init__(self, graph: Graph, distribution: Gaussian, *, degree: int = DEFAULT_DEGREE,
                 cumulant_degree: int = CUMULANT_DEGREE, tetrahedra_up_to: int = TETRAHEDRA_UP_TO,
                 design: bool = True, dtype: torch.dtype | str = torch.float64, seed: int = 0) -> None:
        if not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be a positive integer, got {degree!r}")
        super().__init__(graph, distribution, seed=seed)
        dtype = moment_dtype(dtype)
        self.degree, self.tetrahedra_up_to, self.dtype = degree, tetrahedra_up_to, dtype
        self.cumulant_degree, self.design = min(cumulant_degree, degree), design
        first, act, second = graph.to(dtype=dtype).chain
        x = self.distribution.to(dtype=dtype)
        self.kind, self.w2, self.b2 = act.kind, second.weight, second.bias
        n, d = first.weight.shape

        projection = first.weight if x.is_standard else first.weight @ x.factor      # A = W1 L
        self.hidden_mean = first.weight @ x.mean + first.bias                         # m
        sd = projection.norm(dim=1)
        scale = torch.maximum(sd.max(), self.hidden_mean.abs().max()).clamp_min(1e-300)
        deterministic = sd <= 1e-12 * scale
        sd = torch.where(deterministic, torch.zeros_like(sd), sd)
        self.directions = projection / torch.where(deterministic, torch.ones_like(sd), sd)[:, None]  # v
        self.flops["pre-activations"] += (0 if x.is_standard else 2 * n * d * d) + 2 * n * d + 3 * n * d

        self.coefficients, square, flops = hermite_coefficients(self.kind, self.hidden_mean, sd, degree)
        self.coefficients[deterministic, 1:] = 0
        self.flops["hermite coefficients"] += flops

        correlation = (self.directions @ self.directions.T).clamp(-1.0, 1.0)
        correlation.fill_diagonal_(1.0)
        series = torch.zeros_like(correlation)
        for k in range(degree, 0, -1):                                   # Horner in ρ: S = Σ_k c_k c_kᵀ ρ^k
            series = (series + torch.outer(self.coefficients[:, k], self.coefficients[:, k])) * correlation
        self.mean = self.b2 + self.w2 @ self.coefficients[:, 0]
        cov = self.w2 @ series @ self.w2.T
        self.cov = (cov + cov.T) / 2
        o = self.w2.shape[0]
        self.flops["covariance"] += 2 * n * n * d + 3 * degree * n * n + 2 * o * n * n + 2 * o * o * n + 2 * o * n

        tail = (square - (self.coefficients ** 2).sum(1)).clamp_min(0).sqrt()          # √T_j
        weights = self.w2.abs() * tail                                                  # [o, n]
        envelope = correlation.abs() ** (degree + 1)
        self.truncation_error = torch.einsum("oi,ij,oj->o", weights, envelope, weights).clamp_min(0).sqrt()
        self.flops["truncation error"] += 8 * n * n + 2 * o * n * n

        # Cov(x, y) by Stein's lemma: Cov(ξ, g_j(u_j)) = v_j c_j1, so Cov(ξ, y) = (v ⊙ c_:1)ᵀ W2ᵀ
        # and Cov(x, y) = L Cov(ξ, y); the design-point estimate tilts with it.
        cross_xi = (self.directions * self.coefficients[:, 1:2]).T @ self.w2.T
        self.cross = cross_xi if x.is_standard else x.factor @ cross_xi
        self.flops["cross-covariance"] += 2 * n * d * o + (0 if x.is_standard else 2 * d * d * o)
        self.input_mean = x.mean
        if x.is_standard:
            self.readout = self.directions.T                              # u = (x - μ) vᵀ
        else:
            self.readout = torch.linalg.pinv(x.factor).T @ self.directions.T   # u = (x - μ) (v L⁺)ᵀ
            self.flops["predict setup"] += 10 * d ** 3 + 2 * n * d * d

    def residual_fraction(self) -> Tensor:
        """ε²/(Var(P) + ε²) per output, ε the truncation error's bound on ‖y - P‖ and Var(P)
        the surrogate's variance (the remainder beyond degree K is orthogonal to P); 0 for
        outputs with neither."""
        error = self.truncation_error ** 2
        total = self.cov.diagonal() + error
        return torch.where(total > 0, error / total.clamp_min(1e-300), torch.zeros_like(total)).to(torch.float64)

    @property
    def predict_flops(self) -> int:
        """The surrogate per row: readout 2dn, Hermite recurrence and sum 6Kn, head 2nm."""
        d, n = self.readout.shape
        return d + 2 * d * n + 6 * self.degree * n + 2 * n * self.w2.shape[0] + self.w2.shape[0]

    def predict(self, x: Tensor) -> Tensor:
        x = self._inputs(x)
        u = (x.to(self.dtype) - self.input_mean) @ self.readout                      # [batch, n]
        hidden = (hermite_basis(u, self.degree) * self.coefficients.T[:, None, :]).sum(0)        # Σ_k c_jk h_k(u_j)
        y = hidden @ self.w2.T + self.b2
        return y.to(x.dtype) if x.is_floating_point() else y

    def _expectation(self) -> Estimate:
        return Estimate(self.mean.clone(), None, None, self.build_flops, 0, self.method, self.flops_per_sample,
                        {"cov": self.cov.clone(), "truncation_error": self.truncation_error.clone()})

    def _diagram_size(self) -> tuple[int, int, int]:
        return self.w2.shape[1], self.cumulant_degree, 4

    def _cumulants(self, direction: Tensor) -> tuple[Tensor, int]:
        direction = torch.as_tensor(direction, dtype=self.dtype, device=self.mean.device)
        if direction.shape != self.mean.shape:
            raise ValueError(f"direction must have shape {tuple(self.mean.shape)}, got {tuple(direction.shape)}")
        weights = (direction @ self.w2)[None, :]
        kappa, flops = hermite_cumulants(weights, self.coefficients[:, :self.cumulant_degree + 1],
                                         self.directions, order=4,
                                         tetrahedra_up_to=self.tetrahedra_up_to)
        shift = torch.zeros_like(kappa[0])
        shift[0] = direction @ self.b2
        o, n = self.w2.shape
        return kappa[0] + shift, flops + 2 * o * n + 2 * o
