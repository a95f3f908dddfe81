"""Tests of explanations.mvn against closed forms, dense quadrature and exact identities."""

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from explanations import mvn
from explanations.mvn import (
    OrthantResult,
    bivariate_normal_cdf,
    bivariate_normal_cdf_flops,
    log_bivariate_normal_cdf,
    log_orthant,
    log_union,
)

F64 = torch.float64
ndtr, log_ndtr, ndtri = torch.special.ndtr, torch.special.log_ndtr, torch.special.ndtri
RHOS = (0.1, 0.3, 0.5, 0.75, 0.9, 0.92, 0.925, 0.93, 0.95, 0.99, 0.999, 0.9999)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def plackett_increment(h: torch.Tensor, k: torch.Tensor, rho: torch.Tensor, panels: int) -> torch.Tensor:
    """∫₀^ρ φ₂(h, k; t) dt with t = sin θ, by composite 16-point Gauss–Legendre in θ."""
    x, w = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(16))
    edges = torch.linspace(0, 1, panels + 1, dtype=F64)
    width = edges[1:] - edges[:-1]
    nodes = (edges[:-1, None] + width[:, None] * (x + 1) / 2).reshape(-1)
    weights = (width[:, None] * w / 2).reshape(-1)
    theta_max = torch.asin(rho).unsqueeze(-1)
    theta = theta_max * nodes
    h, k = h.unsqueeze(-1), k.unsqueeze(-1)
    density = torch.exp(-(h * h - 2 * h * k * torch.sin(theta) + k * k) / (2 * torch.cos(theta) ** 2))
    return theta_max.squeeze(-1) * (weights * density).sum(-1) / (2 * math.pi)


def orthant_of_rows(mean, cov, a, b):
    """Mean and covariance of w = a v - b."""
    return a @ mean - b, a @ cov @ a.T


def bvn_orthant(m1, m2, s1, s2, rho) -> float:
    """P(w > 0) for a bivariate normal w, as Φ₂(m1/s1, m2/s2; ρ)."""
    return float(bivariate_normal_cdf(t(m1 / s1), t(m2 / s2), t(rho)))


class FlopCounter(TorchFunctionMode):
    """Counts torch operations by the module's flop convention while active."""

    ELEMENTWISE = {
        "add", "sub", "mul", "div", "neg", "pow", "__rsub__", "__and__", "__iand__", "__invert__",
        "add_", "sub_", "abs", "exp", "expm1", "log", "log1p", "sqrt", "sin", "asin", "logaddexp",
        "special_ndtr", "special_log_ndtr", "special_ndtri", "clamp", "clamp_min", "minimum", "where",
        "lt", "le", "gt", "ge", "outer", "isfinite",
    }  # fmt: skip
    REDUCTIONS = {"sum", "amax", "amin", "max", "argmin", "logsumexp", "std", "all", "any"}

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in self.ELEMENTWISE:
            self.flops += out.numel()
        elif name in self.REDUCTIONS:
            self.flops += args[0].numel()
        elif name in ("matmul", "__matmul__"):
            self.flops += 2 * args[0].numel() * (args[1].shape[-1] if args[1].ndim == 2 else 1)
        return out


# ---------------------------------------------------------------- bivariate_normal_cdf


def test_bvn_independent_is_product():
    h = torch.linspace(-6, 6, 25, dtype=F64)
    hh, kk = torch.meshgrid(h, h, indexing="ij")
    assert (bivariate_normal_cdf(hh, kk, 0.0) - ndtr(hh) * ndtr(kk)).abs().max() <= 1e-16


def test_bvn_at_origin_is_sheppard_formula():
    rho = torch.tensor([s * r for r in RHOS for s in (-1, 1)] + [0.0], dtype=F64)
    exact = 0.25 + torch.asin(rho) / (2 * math.pi)
    assert (bivariate_normal_cdf(0.0, 0.0, rho) - exact).abs().max() <= 1e-15


def test_bvn_perfect_correlation_limits():
    h = torch.linspace(-7, 7, 29, dtype=F64)
    hh, kk = torch.meshgrid(h, h, indexing="ij")
    assert torch.equal(bivariate_normal_cdf(hh, kk, 1.0), ndtr(torch.minimum(hh, kk)))
    # ρ = -1: V = -U, so the event is -k < U < h.
    assert torch.equal(bivariate_normal_cdf(hh, kk, -1.0), (ndtr(hh) - ndtr(-kk)).clamp_min(0))
    # Continuous into the limits: Φ₂ moves by O(√(1 - |ρ|)).
    for rho in (1.0, -1.0):
        near = bivariate_normal_cdf(hh, kk, rho * (1 - 1e-13))
        assert (near - bivariate_normal_cdf(hh, kk, rho)).abs().max() < 1e-6


def test_bvn_symmetries():
    g = torch.Generator().manual_seed(0)
    h, k = torch.randn(2, 500, generator=g, dtype=F64) * 3
    rho = torch.rand(500, generator=g, dtype=F64) * 2 - 1
    assert (bivariate_normal_cdf(h, k, rho) - bivariate_normal_cdf(k, h, rho)).abs().max() <= 1e-15
    # P(U < h, V < k) + P(U < h, V > k) = Φ(h), and P(U < h, V > k) = Φ₂(h, -k; -ρ).
    total = bivariate_normal_cdf(h, k, rho) + bivariate_normal_cdf(h, -k, -rho)
    assert (total - ndtr(h)).abs().max() <= 1e-15


def test_bvn_infinite_arguments():
    inf = math.inf
    k = t(-2.0, 0.0, 1.5)
    for rho in (-1.0, -0.99, 0.0, 0.5, 0.95, 1.0):
        assert torch.allclose(bivariate_normal_cdf(inf, k, rho), ndtr(k), rtol=0, atol=1e-16)
        assert torch.allclose(bivariate_normal_cdf(k, inf, rho), ndtr(k), rtol=0, atol=1e-16)
        assert torch.equal(bivariate_normal_cdf(-inf, k, rho), torch.zeros(3, dtype=F64))
        assert float(bivariate_normal_cdf(inf, inf, rho)) == 1.0


def test_bvn_matches_plackett_integral():
    """Φ₂(h, k; ρ) - Φ₂(h, k; 0) = ∫₀^ρ φ₂ dt (Plackett), by dense quadrature, on a grid."""
    grid = torch.linspace(-6, 6, 17, dtype=F64)
    rho = torch.tensor([s * r for r in RHOS for s in (-1, 1)], dtype=F64)
    h, k, rho = torch.meshgrid(grid, grid, rho, indexing="ij")
    reference = plackett_increment(h, k, rho, panels=60)
    assert (reference - plackett_increment(h, k, rho, panels=30)).abs().max() < 1e-15  # converged
    error = (bivariate_normal_cdf(h, k, rho) - bivariate_normal_cdf(h, k, 0.0) - reference).abs()
    assert error.max() < 1e-14


def test_log_bvn_far_in_the_tail_against_closed_forms_and_plackett():
    """log Φ₂ where Φ₂ underflows or its absolute error would swamp it: ρ = 0 is log Φ(h) +
    log Φ(k); ∂Φ₂/∂ρ = φ₂(h, k; ρ) (Plackett) and ∂Φ₂/∂h = φ(h) Φ((k - ρh)/σ) are closed
    forms for its gradient; ρ = ±1 are the limits."""
    for h, k in ((-10.0, -12.0), (-30.0, -5.0), (-3.0, -40.0)):
        value = log_bivariate_normal_cdf(t(h), t(k), t(0.0))
        assert float(value) == pytest.approx(float(log_ndtr(t(h)) + log_ndtr(t(k))), rel=1e-12)
    for h, k, rho in ((-6.0, -6.0, -0.9), (-6.0, -5.0, -0.6), (-8.0, -7.0, 0.5), (-20.0, -3.0, 0.3),
                      (-6.0, -6.0, -0.999), (-4.0, 2.0, -0.95)):
        x = [torch.tensor(v, dtype=F64, requires_grad=True) for v in (h, k, rho)]
        value = log_bivariate_normal_cdf(*x)
        value.backward()
        s2 = 1 - rho * rho
        log_density = -(h * h - 2 * rho * h * k + k * k) / (2 * s2) - math.log(2 * math.pi * math.sqrt(s2))
        along_h = float(log_ndtr(t((k - rho * h) / math.sqrt(s2)))) - h * h / 2 - 0.5 * math.log(2 * math.pi)
        assert float(x[2].grad) == pytest.approx(math.exp(log_density - float(value.detach())), rel=1e-8)
        assert float(x[0].grad) == pytest.approx(math.exp(along_h - float(value.detach())), rel=1e-8)
    assert float(log_bivariate_normal_cdf(t(-50.0), t(-60.0), t(1.0))) == float(log_ndtr(t(-60.0)))
    assert float(log_bivariate_normal_cdf(t(-50.0), t(-60.0), t(-1.0))) == -math.inf
    assert float(log_bivariate_normal_cdf(t(-30.0), t(40.0), t(-1.0))) == pytest.approx(float(log_ndtr(t(-30.0))))


def test_log_bvn_at_its_edges():
    """Infinite limits, ρ a hair from -1 (a window 1e-7 wide holds all the mass:
    Φ₂(-6, 6.0000001; ρ) → Φ(-6) - Φ(-6.0000001) ≈ φ(6)·1e-7), and arguments whose inverse
    Mills ratio cancels in float64: these had raised a math domain error or returned NaN."""
    inf = math.inf
    assert float(log_bivariate_normal_cdf(t(-inf), t(0.0), t(0.5))) == -inf
    assert float(log_bivariate_normal_cdf(t(-30.0), t(inf), t(0.5))) == pytest.approx(float(log_ndtr(t(-30.0))))
    window = math.log(1e-7) - 18 - 0.5 * math.log(2 * math.pi)
    assert float(log_bivariate_normal_cdf(t(-6.0), t(6.0000001), t(-1 + 1.1e-16))) == pytest.approx(window, abs=2e-3)
    for h, k, rho in ((-10.0, -3.0, -1 + 1e-12), (-40.0, -40.0, -0.999999), (-6.0, 5.9, -1 + 1e-16)):
        value = float(log_bivariate_normal_cdf(t(h), t(k), t(rho)))
        assert -math.inf < value < float(log_bivariate_normal_cdf(t(h), t(k), t(-0.99)))


def test_log_bvn_agrees_with_the_linear_form_where_both_hold():
    """Where 1e-12 < Φ₂ < 1e-8 both forms apply (the linear one to 1e-15 absolute); above
    1e-8 log Φ₂ is the linear form's log; symmetric in h and k."""
    g = torch.Generator().manual_seed(0)
    h, k = -(torch.rand(2, 600, generator=g, dtype=F64) * 6 + 1)
    rho = torch.rand(600, generator=g, dtype=F64) * 2 - 1
    linear = bivariate_normal_cdf(h, k, rho)
    both = (linear > 1e-12) & (linear < 1e-8)
    assert both.sum() > 20
    small = torch.stack([mvn._log_bvn_small(a, b, r)[0] for a, b, r in zip(h[both], k[both], rho[both])])
    assert ((small - linear[both].log()).abs() <= 1e-15 / linear[both] + 1e-9).all()
    logs = log_bivariate_normal_cdf(h, k, rho)
    assert torch.equal(logs[linear >= 1e-8], linear[linear >= 1e-8].log())
    assert torch.allclose(logs, log_bivariate_normal_cdf(k, h, rho), rtol=1e-12, atol=0)


def test_bvn_broadcasts_and_validates():
    out = bivariate_normal_cdf(torch.zeros(3, 1, dtype=torch.float32), t(0.0, 1.0, 2.0, 3.0), 0.5)
    assert out.shape == (3, 4) and out.dtype == F64
    assert math.isnan(float(bivariate_normal_cdf(math.nan, 0.0, 0.5)))  # NaN in h or k propagates
    assert math.isnan(float(bivariate_normal_cdf(0.0, math.nan, 0.99)))
    for bad in (1.5, -1.0001, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            bivariate_normal_cdf(0.0, 0.0, bad)


def test_bvn_flops_match_counted_operations():
    h = torch.linspace(-3, 3, 11, dtype=F64)
    with FlopCounter() as counter:
        bivariate_normal_cdf(h.unsqueeze(1), h, t(0.2, 0.8, 0.97, -1.0).unsqueeze(1).unsqueeze(1))
    assert counter.flops == bivariate_normal_cdf_flops(4 * 11 * 11)


# ---------------------------------------------------------------- log_orthant


def test_orthant_one_dimension_is_exact():
    for mean, var in ((0.3, 2.0), (-30.0, 1.0), (5.0, 0.25)):
        result = log_orthant(t(mean), t(var).reshape(1, 1))
        assert result.log_p == float(log_ndtr(t(mean / math.sqrt(var))))
        assert result.abs_error == 0.0


@pytest.mark.parametrize(
    "m1, m2, s1, s2, rho",
    [
        (0.3, -0.5, 1.0, 1.0, 0.4),
        (1.0, -1.0, 2.0, 0.5, -0.9),
        (0.0, 0.0, 1.0, 3.0, 0.99),
        (-5.8, -5.8, 1.0, 1.0, 0.5),  # p ≈ 2.0e-12
    ],
)
def test_orthant_bivariate_matches_cdf(m1, m2, s1, s2, rho):
    cov = t(s1 * s1, rho * s1 * s2, rho * s1 * s2, s2 * s2).reshape(2, 2)
    result = log_orthant(t(m1, m2), cov)
    exact = bvn_orthant(m1, m2, s1, s2, rho)
    error = abs(math.exp(result.log_p) - exact)
    assert error < 1e-3 * exact
    assert error <= result.abs_error


def test_orthant_deep_tail_with_negative_correlation():
    # Φ₂(0.5, -4; -0.9), where bivariate_normal_cdf has only its absolute accuracy. Reference:
    # ∫_{-∞}^{-4} φ(x) Φ((0.5 + 0.9x)/√0.19) dx, evaluated with mpmath at 30 digits.
    exact = 3.98304972119547288e-18
    result = log_orthant(t(1.0, -2.0), t(4.0, -0.9, -0.9, 0.25).reshape(2, 2))
    error = abs(math.exp(result.log_p) - exact)
    assert error < 1e-6 * exact
    assert error <= result.abs_error


@pytest.mark.parametrize("correlations", [(0.5, 0.5, 0.5), (0.3, -0.4, 0.6), (0.9, 0.8, 0.75)])
def test_orthant_trivariate_at_origin(correlations):
    r12, r13, r23 = correlations
    cov = t(1, r12, r13, r12, 1, r23, r13, r23, 1).reshape(3, 3)
    result = log_orthant(torch.zeros(3, dtype=F64), cov)
    exact = 1 / 8 + sum(math.asin(r) for r in correlations) / (4 * math.pi)
    error = abs(math.exp(result.log_p) - exact)
    assert error < 1e-4 * exact
    assert error <= result.abs_error


@pytest.mark.parametrize("k", [4, 6])
def test_orthant_equicorrelated_half_is_one_over_k_plus_one(k):
    cov = (torch.ones(k, k, dtype=F64) + torch.eye(k, dtype=F64)) * 3.0  # correlation 1/2
    result = log_orthant(torch.zeros(k, dtype=F64), cov)
    error = abs(math.exp(result.log_p) - 1 / (k + 1))
    assert error < 1e-4 / (k + 1)
    assert error <= result.abs_error


def test_orthant_independent_components_are_exact():
    mean, sd = t(0.5, -1.0, 2.0, -3.0, 0.1), t(1.0, 2.0, 0.5, 1.5, 3.0)
    result = log_orthant(mean, torch.diag(sd * sd))
    assert result.log_p == pytest.approx(float(log_ndtr(mean / sd).sum()), rel=1e-14)
    assert result.abs_error == 0.0
    # A deep tail, p ≈ 1e-20, and one far below the float64 range, p ≈ exp(-986).
    for mean in (t(-6.0, -5.0, -1.0), t(-22.0, -22.0, -22.0, -22.0)):
        result = log_orthant(mean, torch.eye(mean.numel(), dtype=F64))
        exact = float(log_ndtr(mean).sum())
        assert abs(result.log_p - exact) < 1e-6  # relative error of p
    assert result.log_p < -980


def test_orthant_duplicated_and_scaled_rows_change_nothing():
    """Rows that repeat others (up to a positive scale) add no latent variable: three and
    four such rows over (w1, w2) integrate the same two variables on the same points, and
    agree with the exact two-row orthant (closed form) within their error."""
    mean, cov = t(0.3, -0.5), t(1.0, 0.4, 0.4, 2.0).reshape(2, 2)
    base = log_orthant(mean, cov)
    assert base.abs_error <= 1e-15
    a = t(1, 0, 0, 1, 1, 0, 0, 3).reshape(4, 2)  # rows: w1, w2, w1 again, 3·w2
    expanded = log_orthant(*orthant_of_rows(mean, cov, a, torch.zeros(4, dtype=F64)))
    three = log_orthant(*orthant_of_rows(mean, cov, a[:3], torch.zeros(3, dtype=F64)))
    assert expanded.log_p == pytest.approx(three.log_p, abs=1e-12)
    assert expanded.abs_error == pytest.approx(three.abs_error, rel=1e-6)
    assert abs(math.exp(expanded.log_p) - math.exp(base.log_p)) <= expanded.abs_error


def test_orthant_opposite_rows_give_an_exact_interval():
    # w = (v, 1 - v) > 0 with v ~ N(0.3, 1): P(0 < v < 1) = Φ(0.7) - Φ(-0.3), one latent variable.
    result = log_orthant(t(0.3, 0.7), t(1.0, -1.0, -1.0, 1.0).reshape(2, 2))
    assert result.log_p == pytest.approx(math.log(float(ndtr(t(0.7)) - ndtr(t(-0.3)))), abs=1e-14)
    assert result.abs_error == 0.0
    empty = log_orthant(t(-0.3, -0.7), t(1.0, -1.0, -1.0, 1.0).reshape(2, 2))
    assert empty.log_p == -math.inf


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_orthant_linearly_dependent_row(sign):
    """v1, v2 > 0 and sign·(v1 + v2 - 1) > 0 for independent v_i ~ N(m_i, 1), vs 1-D quadrature."""
    m1, m2 = 0.4, -0.2
    a = t(1, 0, 0, 1, sign, sign).reshape(3, 2)
    w_mean, w_cov = orthant_of_rows(t(m1, m2), torch.eye(2, dtype=F64), a, t(0.0, 0.0, sign))
    result = log_orthant(w_mean, w_cov)
    # Given v1 = x in (0, 1), v2 must lie above 1 - x (sign +1) or in (0, 1 - x) (sign -1).
    x, w = (torch.from_numpy(z) for z in np.polynomial.legendre.leggauss(40))
    x, w = (x + 1) / 2, w / 2
    density = torch.exp(-((x - m1) ** 2) / 2) / math.sqrt(2 * math.pi)
    if sign > 0:
        inside = (density * ndtr(x - 1 + m2) * w).sum() + ndtr(t(m1 - 1)) * ndtr(t(m2))
    else:
        inside = (density * (ndtr(1 - x - m2) - ndtr(t(-m2))) * w).sum()
    error = abs(math.exp(result.log_p) - float(inside))
    assert error < 1e-4 * float(inside)
    assert error <= result.abs_error


def test_orthant_zero_variance_components_are_constraints():
    mean, cov = t(0.3, -0.5), t(1.0, 0.4, 0.4, 2.0).reshape(2, 2)
    padded = torch.zeros(3, 3, dtype=F64)
    padded[:2, :2] = cov
    base = log_orthant(mean, cov)
    assert log_orthant(torch.cat([mean, t(0.1)]), padded) == base  # always satisfied
    for fixed in (0.0, -0.1):  # never satisfied
        assert log_orthant(torch.cat([mean, t(fixed)]), padded).log_p == -math.inf
    assert log_orthant(t(1.0), torch.zeros(1, 1, dtype=F64)).log_p == 0.0


def test_orthant_is_seeded():
    mean, cov = t(0.1, 0.2, -0.3), t(1.0, 0.5, 0.2, 0.5, 1.0, 0.3, 0.2, 0.3, 1.0).reshape(3, 3)
    first, again = log_orthant(mean, cov, seed=3), log_orthant(mean, cov, seed=3)
    other = log_orthant(mean, cov, seed=4)
    assert first == again
    assert first.log_p != other.log_p
    assert abs(math.exp(first.log_p) - math.exp(other.log_p)) <= first.abs_error + other.abs_error


@pytest.mark.parametrize(
    "mean, cov, message",
    [
        (t(float("nan"), 0.0), torch.eye(2, dtype=F64), "finite"),
        (t(0.0, 0.0), t(1.0, math.inf, math.inf, 1.0).reshape(2, 2), "finite"),
        (t(0.0, 0.0, 0.0), torch.eye(2, dtype=F64), r"\[k, k\]"),
        (t(0.0, 0.0), torch.eye(2, dtype=F64).reshape(1, 4), r"\[k, k\]"),
        (t(0.0, 0.0), t(1.0, 0.5, 0.0, 1.0).reshape(2, 2), "symmetric"),
        (t(0.0, 0.0), t(1.0, 2.0, 2.0, 1.0).reshape(2, 2), "semi-definite"),
        (t(0.0, 0.0), t(-1.0, 0.0, 0.0, 1.0).reshape(2, 2), "semi-definite"),
        (t(0.0, 0.0), t(0.0, 0.5, 0.5, 1.0).reshape(2, 2), "semi-definite"),
        (t(0.0, 0.0, 0.0), t(1, 1, 1, 1, 1, -1, 1, -1, 1).reshape(3, 3), "semi-definite"),
    ],
)
def test_orthant_rejects_bad_input(mean, cov, message):
    with pytest.raises(ValueError, match=message):
        log_orthant(mean, cov)


def test_orthant_rejects_bad_sampling_sizes():
    for points, replicates in ((0, 8), (16, 1)):
        with pytest.raises(ValueError, match="replicates"):
            log_orthant(t(0.0, 0.0), torch.eye(2, dtype=F64), points=points, replicates=replicates)


def test_orthant_flops_match_counted_operations():
    mean, cov = t(0.1, 0.2, -0.3, 0.0), torch.eye(4, dtype=F64) + 0.4
    with FlopCounter() as counter:
        result = log_orthant(mean, cov, points=512, replicates=4)
    # Input validation is not counted; everything else is.
    assert 0 < counter.flops - result.flops < 0.01 * counter.flops


# ---------------------------------------------------------------- log_union


def single_row_union(mean, cov, rows) -> float:
    """Inclusion–exclusion for two single-row clauses a_i v > b_i, via bivariate_normal_cdf."""
    (a1, b1), (a2, b2) = rows
    m = (float(a1 @ mean - b1), float(a2 @ mean - b2))
    s = (math.sqrt(float(a1 @ cov @ a1)), math.sqrt(float(a2 @ cov @ a2)))
    rho = float(a1 @ cov @ a2) / (s[0] * s[1])
    singles = float(ndtr(t(m[0] / s[0])) + ndtr(t(m[1] / s[1])))
    return singles - bvn_orthant(m[0], m[1], s[0], s[1], rho)


@pytest.mark.parametrize(
    "rows",
    [
        ((t(1.0, 0.0), 0.3), (t(0.0, 1.0), -0.2)),  # overlapping
        ((t(1.0, 1.0), 2.5), (t(1.0, -1.0), 2.5)),  # nearly disjoint
        ((t(2.0, -1.0), -4.0), (t(-1.0, 3.0), 3.0)),  # one likely, one unlikely
    ],
)
def test_union_of_two_clauses_matches_inclusion_exclusion(rows):
    mean, cov = t(0.2, -0.1), t(1.5, 0.6, 0.6, 1.0).reshape(2, 2)
    clauses = [(a.unsqueeze(0), t(b)) for a, b in rows]
    result = log_union(mean, cov, clauses)
    exact = single_row_union(mean, cov, rows)
    error = abs(math.exp(result.log_p) - exact)
    assert error < 1e-4 * exact
    assert error <= result.abs_error + 1e-15


def test_union_of_disjoint_clauses_is_a_sum():
    mean, cov = t(0.2, -0.1), t(1.5, 0.6, 0.6, 1.0).reshape(2, 2)
    clauses = [(t(1.0, 0.0).reshape(1, 2), t(1.0)), (t(-1.0, 0.0).reshape(1, 2), t(1.0))]
    result = log_union(mean, cov, clauses)
    sd = math.sqrt(1.5)
    exact = float(ndtr(t((0.2 - 1) / sd)) + ndtr(t((-0.2 - 1) / sd)))
    assert result.log_p == pytest.approx(math.log(exact), abs=1e-14)
    assert result.abs_error == 0.0


def test_union_of_identical_clauses_is_the_clause():
    mean, cov = t(0.2, -0.1, 0.4), t(1.5, 0.6, 0.1, 0.6, 1.0, -0.2, 0.1, -0.2, 2.0).reshape(3, 3)
    clause = (t(1.0, 0.0, 1.0, 0.0, 1.0, -1.0).reshape(2, 3), t(0.1, -0.3))
    alone = log_orthant(*orthant_of_rows(mean, cov, *clause))
    union = log_union(mean, cov, [clause, clause, clause])
    assert union.log_p == pytest.approx(alone.log_p, abs=1e-12)
    assert union.abs_error >= alone.abs_error
    assert union.flops > alone.flops


def test_union_of_rare_independent_tails_keeps_relative_precision():
    threshold = float(-ndtri(t(1e-10)))
    clauses = [(t(1.0, 0.0).reshape(1, 2), t(threshold)), (t(0.0, 1.0).reshape(1, 2), t(threshold))]
    result = log_union(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), clauses)
    assert math.exp(result.log_p) == pytest.approx(2e-10 - 1e-20, rel=1e-6)


def test_union_falls_back_to_the_largest_clause_when_cancellation_is_within_error(monkeypatch):
    # Stubbed terms: P(v1 > 0) = 0.10 and P(v2 > 0) = 0.08 exactly, P(both) = 0.17 ± 0.05,
    # so P₊ - P₋ = 0.01 is within the error and the union is only known to lie in [0.10, 0.18].
    def stub_orthant(mean, cov, **_):
        if mean.numel() == 2:
            return OrthantResult(math.log(0.17), 0.05, 10)
        return OrthantResult(math.log(0.10 if float(cov[0, 0]) == 1.0 else 0.08), 0.0, 10)

    monkeypatch.setattr(mvn, "log_orthant", stub_orthant)
    clauses = [(t(1.0, 0.0).reshape(1, 2), t(0.0)), (t(0.0, 1.0).reshape(1, 2), t(0.0))]
    result = log_union(torch.zeros(2, dtype=F64), torch.diag(t(1.0, 2.0)), clauses)
    assert result.log_p == math.log(0.10)
    assert result.abs_error == pytest.approx(0.08)


def test_union_beyond_max_clauses_gives_boole_bracket_when_asked():
    """Nested wedges {v0 > t_i, v1 > -40}: the union is the widest one, P = Φ(-min t) =
    max_i P(C_i), the lower end of Boole's bracket, with the bracket's width as its error."""
    thresholds = [2.0 + 0.1 * i for i in range(13)]
    clauses = [(t(1.0, 0.0, 0.0, 1.0).reshape(2, 2), t(x, -40.0)) for x in thresholds]
    result = log_union(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), clauses, bracket_beyond=True)
    singles = [float(torch.special.ndtr(t(-x))) for x in thresholds]
    assert result.log_p == pytest.approx(math.log(singles[0]), rel=1e-9)
    assert result.abs_error == pytest.approx(sum(singles) - singles[0], rel=1e-6)


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_a_union_of_many_single_row_clauses_is_one_minus_its_complements_orthant(shift):
    """Past the clause limit, halfspaces {v_i > t_i} of a correlated 14-dimensional Gaussian
    are read as 1 - P(v_i ≤ t_i for all i): against 4·10⁶ draws (p ≈ 0.14 and 0.018;
    tolerance 4 standard errors of the draws plus the integral's own error), where Boole's
    lower end would read max_i P(C_i) (a third of the union or less); nested halfspaces
    {v0 > t_i} read exactly Φ(-min t)."""
    generator = torch.Generator().manual_seed(4)
    factor = torch.randn(14, 14, generator=generator, dtype=F64) / 4 + torch.eye(14, dtype=F64)
    cov = factor @ factor.T
    sd = cov.diagonal().sqrt()
    thresholds = 2.5 * sd + shift * sd
    clauses = [(torch.eye(14, dtype=F64)[i:i + 1], thresholds[i:i + 1]) for i in range(14)]
    result = log_union(torch.zeros(14, dtype=F64), cov, clauses, bracket_beyond=True)
    draws = torch.randn(4_000_000, 14, generator=generator, dtype=F64) @ factor.T
    truth = float((draws > thresholds).any(dim=1).double().mean())
    error = 4 * math.sqrt(truth * (1 - truth) / 4e6) + result.abs_error
    assert abs(math.exp(result.log_p) - truth) <= error
    assert math.exp(result.log_p) > 2 * float(torch.special.ndtr(-(thresholds / sd)).max())
    nested = [(t(1.0, 0.0).reshape(1, 2), t(2.0 + 0.1 * i)) for i in range(13)]
    widest = log_union(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), nested, bracket_beyond=True)
    assert widest.log_p == pytest.approx(math.log(float(torch.special.ndtr(t(-2.0)))), rel=1e-9)


def test_union_rejects_too_many_clauses_and_bad_clauses():
    mean, cov = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    clause = (t(1.0, 0.0).reshape(1, 2), t(0.0))
    with pytest.raises(ValueError, match=r"13 clauses.*samples=N"):
        log_union(mean, cov, [clause] * 13)
    with pytest.raises(ValueError, match=r"3 clauses.*max_clauses=2"):
        log_union(mean, cov, [clause] * 3, max_clauses=2)
    with pytest.raises(ValueError, match="at least one"):
        log_union(mean, cov, [])
    with pytest.raises(ValueError, match="clause needs"):
        log_union(mean, cov, [(t(1.0, 0.0, 0.0).reshape(1, 3), t(0.0))])
    with pytest.raises(ValueError, match="finite"):
        log_union(mean, cov, [(t(1.0, math.nan).reshape(1, 2), t(0.0))])
