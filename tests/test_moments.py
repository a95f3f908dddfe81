"""Activation moments against closed forms and dense 2-D quadrature."""
import math

import numpy as np
import pytest
import torch

from explanations.activations import activation
from explanations.moments import activation_moments, hermite_moments, quadrature, relu_moments

F64 = torch.float64
# ELU's f″ jumps at 0, which the production quadrature's panels do not straddle: ≤ 7e-6 measured
QUADRATURE_ERROR = {"elu:1.0": 1e-5}


def dense_pair_moments(kind, mean, cov):
    """E[f(z_i)], Cov(f(z_i), f(z_j)) of a 2-vector by a 1600×1600 product rule on
    z = μ + L u (L the Cholesky factor), 8× finer than production: a smooth-f reference."""
    f = activation(kind).fn
    u, w = quadrature(mean, panels=200, per_panel=8)
    L = torch.linalg.cholesky(cov)
    u1, u2 = torch.meshgrid(u, u, indexing="ij")
    ww = torch.outer(w, w)
    f1 = f(mean[0] + L[0, 0] * u1)
    f2 = f(mean[1] + L[1, 0] * u1 + L[1, 1] * u2)
    m = torch.stack([(ww * f1).sum(), (ww * f2).sum()])
    c12 = (ww * f1 * f2).sum() - m[0] * m[1]
    v = torch.stack([(ww * f1 * f1).sum(), (ww * f2 * f2).sum()]) - m * m
    return m, torch.tensor([[v[0], c12], [c12, v[1]]], dtype=F64)


def relu_pair_by_conditioning(mean, cov):
    """E[z1⁺], E[z2⁺], E[z1⁺ z2⁺] as 1-D integrals over z1 > 0 (composite Gauss–Legendre,
    16k nodes), using only the 1-D fact E[w⁺] = m Φ(m/s) + s φ(m/s) for w ~ N(m, s²)."""
    s1, s2 = cov[0, 0].sqrt(), cov[1, 1].sqrt()
    rho = cov[0, 1] / (s1 * s2)
    x, w = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.legendre.leggauss(8))
    top = mean[0] + 12 * s1
    edges = torch.linspace(0, float(top), 2001, dtype=F64)
    half = (edges[1] - edges[0]) / 2
    z1 = (edges[:-1, None] + half * (x + 1)).reshape(-1)
    weights = (half * w).repeat(2000) * torch.exp(-0.5 * ((z1 - mean[0]) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
    m = mean[1] + rho * s2 * (z1 - mean[0]) / s1
    s = s2 * torch.sqrt(1 - rho * rho)
    conditional = m * torch.special.ndtr(m / s) + s * torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
    def relu_mean(mu, sd):
        return mu * torch.special.ndtr(mu / sd) + sd * torch.exp(-0.5 * (mu / sd) ** 2) / math.sqrt(2 * math.pi)
    return relu_mean(mean[0], s1), relu_mean(mean[1], s2), (weights * z1 * conditional).sum()


def pair(rho, s1=1.3, s2=0.7):
    return torch.tensor([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]], dtype=F64)


def test_single_relu_unit_closed_form():
    # z ~ N(0, σ²): E relu = σ/√(2π), Var = σ²(1/2 - 1/(2π)).
    out = relu_moments(torch.zeros(1, dtype=F64), torch.tensor([[4.0]], dtype=F64))
    assert out.mean.item() == pytest.approx(2 / math.sqrt(2 * math.pi), rel=1e-14)
    assert out.cov.item() == pytest.approx(4 * (0.5 - 1 / (2 * math.pi)), rel=1e-14)
    assert out.slope.item() == pytest.approx(0.5, rel=1e-14)


@pytest.mark.parametrize("mu", [(0.0, 0.0), (0.8, -0.4), (-2.0, 1.5)])
@pytest.mark.parametrize("rho", [-0.999, -0.6, 0.0, 0.3, 0.8, 0.95, 0.9999])
def test_relu_pair_covariance_is_exact(mu, rho):
    mean, cov = torch.tensor(mu, dtype=F64), pair(rho)
    out = relu_moments(mean, cov)
    m1, m2, second = relu_pair_by_conditioning(mean, cov)
    torch.testing.assert_close(out.mean, torch.stack([m1, m2]), atol=1e-13, rtol=0)
    assert out.cov[0, 1].item() == pytest.approx((second - m1 * m2).item(), abs=1e-10)


def leaky_pair_by_conditioning(mean, cov, leak):
    """E f(z1), E f(z2), E[f(z1) f(z2)] for f(z) = max(z, 0) + c min(z, 0): 1-D integrals over z1
    on either side of the kink (composite Gauss–Legendre), using only E[f(w)] for w ~ N(m, s²),
    c m + (1 - c)(m Φ(m/s) + s φ(m/s))."""
    s1, s2 = cov[0, 0].sqrt(), cov[1, 1].sqrt()
    rho = cov[0, 1] / (s1 * s2)
    x, w = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.legendre.leggauss(8))
    f = lambda z: torch.where(z > 0, z, leak * z)
    def expected(m, s):
        return leak * m + (1 - leak) * (m * torch.special.ndtr(m / s) + s * torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi))
    total = 0
    for low, high in ((float(mean[0] - 12 * s1), 0.0), (0.0, float(mean[0] + 12 * s1))):
        if high <= low:
            continue
        edges = torch.linspace(low, high, 2001, dtype=F64)
        half = (edges[1] - edges[0]) / 2
        z1 = (edges[:-1, None] + half * (x + 1)).reshape(-1)
        weights = (half * w).repeat(2000) * torch.exp(-0.5 * ((z1 - mean[0]) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
        m = mean[1] + rho * s2 * (z1 - mean[0]) / s1
        total = total + (weights * f(z1) * expected(m, s2 * torch.sqrt(1 - rho * rho))).sum()
    return expected(mean[0], s1), expected(mean[1], s2), total


@pytest.mark.parametrize("leak", [0.01, 0.2, -0.3])
@pytest.mark.parametrize("mu", [(0.0, 0.0), (0.8, -0.4), (-2.0, 1.5)])
@pytest.mark.parametrize("rho", [-0.95, 0.0, 0.6, 0.999])
def test_leaky_relu_moments_are_exact(leak, mu, rho):
    mean, cov = torch.tensor(mu, dtype=F64), pair(rho)
    out = relu_moments(mean, cov, f"leaky_relu:{leak!r}")
    m1, m2, second = leaky_pair_by_conditioning(mean, cov, leak)
    torch.testing.assert_close(out.mean, torch.stack([m1, m2]), atol=1e-13, rtol=0)
    assert out.cov[0, 1].item() == pytest.approx((second - m1 * m2).item(), abs=1e-10)
    sd = cov.diagonal().sqrt()
    torch.testing.assert_close(out.slope, leak + (1 - leak) * torch.special.ndtr(mean / sd), atol=1e-15, rtol=0)


def test_relu_pair_zero_mean_matches_arc_cosine_kernel():
    # Cho & Saul: E[relu(u)relu(v)] = (sin θ + (π - θ) cos θ)/(2π), cos θ = ρ.
    for rho in (-0.9, -0.2, 0.4, 0.99):
        out = relu_moments(torch.zeros(2, dtype=F64), pair(rho, 1.0, 1.0))
        theta = math.acos(rho)
        second = (math.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi)
        assert out.cov[0, 1].item() == pytest.approx(second - 1 / (2 * math.pi), abs=1e-13)


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "tanh", "sigmoid", "silu", "mish", "softplus:2.0", "elu:1.0"])
@pytest.mark.parametrize("rho", [-0.9, 0.0, 0.5, 0.97])
def test_smooth_activations_by_hermite_series(kind, rho):
    mean, cov = torch.tensor([0.3, -0.5], dtype=F64), pair(rho)
    out = hermite_moments(kind, mean, cov)
    ref_mean, ref_cov = dense_pair_moments(kind, mean, cov)
    torch.testing.assert_close(out.mean, ref_mean, atol=QUADRATURE_ERROR.get(kind, 1e-10), rtol=0)
    error = (out.cov - ref_cov).abs().max().item()
    assert error <= out.truncation + QUADRATURE_ERROR.get(kind, 1e-10)
    assert error < 1e-4


@pytest.mark.parametrize("kind", ["gelu", "tanh", "sigmoid", "silu", "mish", "softplus:0.5", "elu:1.0"])
def test_stein_slope_is_the_mean_derivative(kind):
    mean, cov = torch.tensor([0.4, -1.1], dtype=F64), pair(0.2)
    out = activation_moments(kind, mean, cov)
    u, w = quadrature(mean, panels=200, per_panel=8)
    d = activation(kind).derivative
    sd = cov.diagonal().sqrt()
    expected = torch.stack([(w * d(mean[i] + sd[i] * u)).sum() for i in range(2)])
    torch.testing.assert_close(out.slope, expected, atol=QUADRATURE_ERROR.get(kind, 1e-10), rtol=0)


def test_relu_slope_is_the_probability_of_being_active():
    mean, cov = torch.tensor([0.4, -1.1], dtype=F64), pair(0.2)
    expected = torch.special.ndtr(mean / cov.diagonal().sqrt())
    torch.testing.assert_close(relu_moments(mean, cov).slope, expected, atol=1e-15, rtol=0)


def test_deterministic_units_pass_through():
    mean = torch.tensor([1.5, -0.5, 0.2], dtype=F64)
    cov = torch.zeros(3, 3, dtype=F64)
    cov[2, 2] = 1.0
    for kind in ("relu", "leaky_relu:0.1", "tanh", "silu"):
        out = activation_moments(kind, mean, cov)
        f, d = activation(kind).fn, activation(kind).derivative
        torch.testing.assert_close(out.mean[:2], f(mean[:2]))
        torch.testing.assert_close(out.slope[:2], d(mean[:2]))
        assert out.cov[:2].abs().max() == 0 and out.cov[:, :2].abs().max() == 0
        assert out.cov[2, 2] > 0 and torch.isfinite(out.cov).all()


@pytest.mark.parametrize("kind", ["relu", "leaky_relu:0.1", "gelu", "tanh"])
def test_pairs_with_zero_covariance_are_independent_and_cost_nothing(kind):
    """A block-diagonal Σ gives block-diagonal moments equal to each block's own, with exact
    zeros between blocks, and the pair formula runs on the blocks' pairs only."""
    g = torch.Generator().manual_seed(3)
    blocks = []
    for _ in range(3):
        root = torch.randn(4, 4, dtype=F64, generator=g)
        blocks.append(root @ root.T + 0.1 * torch.eye(4, dtype=F64))
    cov = torch.block_diag(*blocks)
    mean = torch.randn(12, dtype=F64, generator=g)
    whole = activation_moments(kind, mean, cov)
    for b in range(3):
        part = slice(4 * b, 4 * b + 4)
        alone = activation_moments(kind, mean[part], cov[part, part])
        torch.testing.assert_close(whole.mean[part], alone.mean, rtol=0, atol=1e-15)
        torch.testing.assert_close(whole.cov[part, part], alone.cov, rtol=0, atol=1e-15)
    off_blocks = torch.block_diag(*[torch.ones(4, 4, dtype=torch.bool)] * 3).logical_not()
    assert bool((whole.cov[off_blocks] == 0).all())
    dense = activation_moments(kind, mean, cov + 1e-3 * (torch.ones(12, 12, dtype=F64) - torch.eye(12, dtype=F64)))
    assert whole.flops < dense.flops


def test_gradients_flow_through_the_moments_even_at_zero_covariance():
    """A live graph's moments differentiate in the weights; a pair with Σ_ij = 0 at the current
    weights still has d E[f_i f_j]/d Σ_ij ≠ 0, which the independence shortcut would drop."""
    from torch import nn
    from explanations import Gaussian, compile_model, explain
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.7, -0.4]]))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    D = Gaussian.standard(4)
    explain(compile_model(model, live=True), D, "gaussian").cov.sum().backward()

    def variance(step: float) -> float:
        with torch.no_grad():
            model[0].weight[0, 2] += step
            value = float(explain(compile_model(model), D, "gaussian").cov.sum())
            model[0].weight[0, 2] -= step
        return value

    central = (variance(1e-5) - variance(-1e-5)) / 2e-5
    assert abs(float(model[0].weight.grad[0, 2]) - central) < 1e-6 and abs(central) > 0.1
