"""hermite_cumulants: closed forms, exact Gauss–Hermite quadrature, Monte Carlo, tetrahedra bound."""
import itertools
import math

import numpy as np
import pytest
import torch

from explanations.hermite_cumulants import diagram_cumulants, hermite_cumulants
from explanations.moments import hermite_basis

F64 = torch.float64


def unit_rows(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, d, generator=generator, dtype=F64)
    return v / v.norm(dim=1, keepdim=True)


def sums(a: torch.Tensor, c: torch.Tensor, v: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """s = Σ_j a_j Σ_k c_jk h_k(v_j·ξ) for each ξ row and each row of a: [points, m]."""
    h = hermite_basis(xi @ v.T, c.shape[1] - 1)                    # [K+1, points, n]
    return torch.einsum("kqn,nk->qn", h, c) @ a.T


def cumulants_from_moments(weights: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """κ1..κ4 of s under the discrete law with these weights: [m, 4]."""
    mean = weights @ s
    centred = s - mean
    m2, m3, m4 = (weights @ centred ** p for p in (2, 3, 4))
    return torch.stack([mean, m2, m3, m4 - 3 * m2 ** 2], 1)


def quadrature_cumulants(a, c, v, nodes: int) -> torch.Tensor:
    """Exact for polynomials of degree ≤ 2·nodes - 1 per input coordinate (ξ ~ N(0, I_d))."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    d = v.shape[1]
    xi = torch.tensor(list(itertools.product(x, repeat=d)), dtype=F64)
    weights = torch.tensor([math.prod(p) for p in itertools.product(w / w.sum(), repeat=d)], dtype=F64)
    return cumulants_from_moments(weights, sums(a, c, v, xi))


def test_gaussian_case_closed_form():
    """K = 1: s is Gaussian, κ1 = a·c0, κ2 = aᵀ diag(c1) G diag(c1) a, κ3 = κ4 = 0."""
    g = torch.Generator().manual_seed(1)
    for n, d in ((7, 3), (4, 6), (5, 5)):
        v, c = unit_rows(n, d, g), torch.randn(n, 2, generator=g, dtype=F64)
        a = torch.randn(3, n, generator=g, dtype=F64)
        kappa, flops = hermite_cumulants(a, c, v)
        scaled = a * c[:, 1]
        gram = v @ v.T
        assert flops > 0
        torch.testing.assert_close(kappa[:, 0], a @ c[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kappa[:, 1], ((scaled @ gram) * scaled).sum(1), rtol=1e-12, atol=1e-12)
        assert kappa[:, 2:].abs().max() < 1e-12


def test_single_chi_square_unit():
    """g = h_2 = (u² - 1)/√2: κ = (0, 1, 2√2, 12); κ_r scales as a^r."""
    c = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    v = torch.tensor([[1.0]], dtype=F64)
    kappa, _ = hermite_cumulants(torch.tensor([[1.0], [-2.0]], dtype=F64), c, v)
    expected = torch.tensor([0.0, 1.0, 2 * math.sqrt(2), 12.0], dtype=F64)
    torch.testing.assert_close(kappa[0], expected, rtol=1e-14, atol=1e-14)
    powers = torch.tensor([-2.0, 4.0, -8.0, 16.0], dtype=F64)
    torch.testing.assert_close(kappa[1], expected * powers, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n, d, K", [(1, 1, 10), (2, 2, 8), (3, 3, 4), (3, 2, 10), (2, 3, 5), (6, 2, 6)])
def test_matches_exact_quadrature(n, d, K):
    """Tensor-product Gauss–Hermite in ξ ∈ R^d is exact for s⁴ (degree 4K): agreement to 1e-9.
    d < n (units sharing directions, every diagram shape with distinct units), d = n, d > n."""
    g = torch.Generator().manual_seed(100 * n + 10 * d + K)
    v = unit_rows(n, d, g)
    c = torch.randn(n, K + 1, generator=g, dtype=F64) * 0.7 ** torch.arange(K + 1)
    a = torch.randn(3, n, generator=g, dtype=F64)
    exact = quadrature_cumulants(a, c, v, nodes=2 * K + 1)
    kappa, _ = hermite_cumulants(a, c, v)
    scale = exact.abs().amax(0)
    assert ((kappa - exact).abs() / scale).max() < 1e-9


def test_lower_orders_are_prefixes():
    g = torch.Generator().manual_seed(7)
    v, c, a = unit_rows(5, 3, g), torch.randn(5, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    full, full_flops = hermite_cumulants(a, c, v, order=4)
    spent = []
    for order in (1, 2, 3):
        kappa, flops = hermite_cumulants(a, c, v, order=order)
        torch.testing.assert_close(kappa, full[:, :order], rtol=1e-12, atol=1e-12)
        spent.append(flops)
    assert spent[0] < spent[1] < spent[2] < full_flops


def sample_cumulants(s: torch.Tensor, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plug-in κ1..κ4 of the columns of s and their standard errors from the spread of batches."""
    uniform = lambda x: torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=F64)
    estimate = cumulants_from_moments(uniform(s), s)
    parts = torch.stack([cumulants_from_moments(uniform(p), p) for p in s.chunk(batches)])
    return estimate, parts.std(0) / math.sqrt(batches)


@pytest.mark.parametrize("n, K", [(3, 3), (4, 4), (6, 3), (5, 4)])
def test_matches_monte_carlo(n, K):
    """Random correlations and coefficients: κ3, κ4 within 5 standard errors of sampling."""
    g = torch.Generator().manual_seed(n * 10 + K)
    v = unit_rows(n, n, g)
    c = torch.randn(n, K + 1, generator=g, dtype=F64) * 0.6 ** torch.arange(K + 1)
    a = torch.randn(3, n, generator=g, dtype=F64)
    kappa, _ = hermite_cumulants(a, c, v)
    xi = torch.randn(400_000, n, generator=g, dtype=F64)
    estimate, error = sample_cumulants(sums(a, c, v, xi), batches=40)
    assert ((kappa[:, 2:] - estimate[:, 2:]).abs() <= 5 * error[:, 2:]).all()


def test_tetrahedra_bound_covers_left_out_diagrams():
    """Above `tetrahedra_up_to` κ4 omits the tetrahedra; the returned bound covers what is missing."""
    g = torch.Generator().manual_seed(11)
    n, K = 9, 7
    v = unit_rows(n, 3, g)
    c = torch.randn(n, K + 1, generator=g, dtype=F64) * 0.8 ** torch.arange(K + 1)
    a = torch.randn(4, n, generator=g, dtype=F64)
    exact = diagram_cumulants(a, c, v)
    truncated = diagram_cumulants(a, c, v, tetrahedra_up_to=n - 1)
    assert exact.tetrahedra_bound.abs().max() == 0
    torch.testing.assert_close(truncated.values[:, :3], exact.values[:, :3], rtol=1e-12, atol=1e-12)
    missing = (exact.values[:, 3] - truncated.values[:, 3]).abs()
    assert (missing > 0).all() and (missing <= truncated.tetrahedra_bound).all()


def test_rejects_bad_arguments():
    v, c, a = torch.ones(3, 1, dtype=F64), torch.ones(3, 4, dtype=F64), torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="order"):
        hermite_cumulants(a, c, v, order=5)
    with pytest.raises(ValueError, match="disagree"):
        hermite_cumulants(a, c[:2], v)
    with pytest.raises(ValueError, match="matrices"):
        hermite_cumulants(a[0], c, v)
