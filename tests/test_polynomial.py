"""PolynomialExplanation: the Hermite surrogate of a 2-layer network."""
import itertools
import math

import numpy as np
import pytest
import torch

from explanations.distributions import Gaussian
from explanations.graph import Act, Affine, Graph
from explanations.polynomial import PolynomialExplanation

F64 = torch.float64
ACTIVATIONS = ("tanh", "gelu", "relu", "leaky_relu:0.1", "silu", "softplus:1.0", "elu:1.0", "mish")
DIRECTION = torch.tensor([1.0, -0.5], dtype=F64)


def network(kind: str, inputs: int = 6, hidden: int = 32, outputs: int = 2, seed: int = 3) -> tuple[Graph, Gaussian]:
    """A random 2-layer network and a correlated Gaussian input with nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, inputs, generator=g, dtype=F64) / math.sqrt(inputs)
    b1 = 0.5 * torch.randn(hidden, generator=g, dtype=F64)
    w2 = torch.randn(outputs, hidden, generator=g, dtype=F64) / math.sqrt(hidden)
    b2 = torch.randn(outputs, generator=g, dtype=F64)
    m = torch.randn(inputs, inputs, generator=g, dtype=F64)
    cov = m @ m.T / inputs + 0.2 * torch.eye(inputs, dtype=F64)
    mean = 0.3 * torch.randn(inputs, generator=g, dtype=F64)
    return Graph((Affine(w1, b1), Act(kind), Affine(w2, b2)), inputs), Gaussian(mean, cov)


def draw(distribution: Gaussian, n: int, seed: int) -> torch.Tensor:
    return distribution.sample(n, torch.Generator().manual_seed(seed))


def cumulants_from_moments(weights: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """κ1..κ4 of s under the discrete law with these weights."""
    mean = weights @ s
    centred = s - mean
    m2, m3, m4 = (weights @ centred ** p for p in (2, 3, 4))
    return torch.stack([mean, m2, m3, m4 - 3 * m2 ** 2])


def sample_cumulants(s: torch.Tensor, batches: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Plug-in κ1..κ4 of a sample and their standard errors from the spread of batches."""
    uniform = lambda x: torch.full_like(x, 1.0 / x.shape[0])
    parts = torch.stack([cumulants_from_moments(uniform(p), p) for p in s.chunk(batches)])
    return cumulants_from_moments(uniform(s), s), parts.std(0) / math.sqrt(batches)


def test_rejects_other_structures():
    graph, distribution = network("tanh")
    first, act, second = graph.chain
    deeper = Graph((first, act, second, Act("relu"), Affine(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))), 6)
    with pytest.raises(ValueError, match="Affine → tanh → Affine → relu → Affine"):
        PolynomialExplanation(deeper, distribution)
    with pytest.raises(ValueError, match="got Affine$"):
        PolynomialExplanation(Graph((first,), 6), distribution)


def test_expectation_matches_the_network_for_tanh():
    graph, distribution = network("tanh")
    pi = PolynomialExplanation(graph, distribution, degree=10)
    y = graph(draw(distribution, 400_000, seed=1))
    error = y.std(0) / math.sqrt(y.shape[0])
    estimate = pi.expectation()
    assert ((estimate.value - y.mean(0)).abs() <= 5 * error).all()
    assert estimate.flops == pi.build_flops > 0 and estimate.method == "polynomial"


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_predict_averages_to_expectation(kind):
    graph, distribution = network(kind)
    pi = PolynomialExplanation(graph, distribution, degree=10)
    p = pi.predict(draw(distribution, 100_000, seed=2))
    assert p.shape == (100_000, 2)
    assert ((p.mean(0) - pi.expectation().value).abs() <= 5 * p.std(0) / math.sqrt(p.shape[0])).all()


@pytest.mark.parametrize("kind, degree", [("tanh", 10), ("gelu", 8), ("relu", 8)])
def test_cumulants_are_exact_for_the_surrogate(kind, degree):
    """cumulants() against the surrogate integrated exactly: with 2 correlated inputs,
    x = μ + L ξ and P(ξ) a polynomial of degree ≤ 10, Gauss–Hermite with 30 nodes per
    coordinate is exact for P⁴ (degree ≤ 40 ≤ 59)."""
    graph, distribution = network(kind, inputs=2)
    pi = PolynomialExplanation(graph, distribution, degree=degree, cumulant_degree=degree)
    nodes, weights = np.polynomial.hermite_e.hermegauss(30)
    xi = torch.tensor(list(itertools.product(nodes, repeat=2)), dtype=F64)
    w = torch.tensor([a * b for a, b in itertools.product(weights / weights.sum(), repeat=2)], dtype=F64)
    x = distribution.mean + xi @ distribution.factor.T
    exact = cumulants_from_moments(w, pi.predict(x) @ DIRECTION)
    kappa = pi.cumulants(DIRECTION)
    assert ((kappa - exact).abs() <= 1e-9 * exact.abs().max()).all()
    _, flops = pi._cumulants(DIRECTION)
    assert flops > 0


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_cumulants_match_sampled_surrogate(kind):
    """κ1..κ4 of direction·predict(x), x ~ D, within 5 standard errors. Degree 4: at degree 10
    the polynomial's fourth moment is carried by |u| > 5, which 10⁶ draws do not reach
    (exactness at degree 10 is the quadrature test above)."""
    graph, distribution = network(kind)
    pi = PolynomialExplanation(graph, distribution, degree=4)
    kappa = pi.cumulants(DIRECTION)
    estimate, error = sample_cumulants(pi.predict(draw(distribution, 300_000, seed=4)) @ DIRECTION)
    assert ((kappa - estimate).abs() <= 5 * error).all()
    torch.testing.assert_close(kappa[:2], torch.stack([DIRECTION @ pi.mean, DIRECTION @ pi.cov @ DIRECTION]),
                               rtol=1e-10, atol=1e-12)


def test_predict_converges_with_degree_for_tanh():
    graph, distribution = network("tanh")
    x = draw(distribution, 50_000, seed=5)
    y = graph(x)
    errors = [((PolynomialExplanation(graph, distribution, degree=k).predict(x) - y) ** 2).mean().sqrt()
              for k in (2, 6, 12)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2]


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_truncation_error_bounds_the_measured_error(kind):
    graph, distribution = network(kind)
    x = draw(distribution, 100_000, seed=6)
    y = graph(x)
    for degree in (2, 6, 10):
        pi = PolynomialExplanation(graph, distribution, degree=degree)
        squared = (pi.predict(x) - y) ** 2
        error = squared.std(0) / math.sqrt(x.shape[0])
        assert (squared.mean(0) - 5 * error <= pi.truncation_error ** 2).all()


def test_dead_unit_is_a_constant():
    """A hidden unit with a zero weight row is the constant f(b1_j): no NaN, exact mean."""
    graph, distribution = network("gelu")
    first, act, second = graph.chain
    weight = first.weight.clone()
    weight[0] = 0.0
    graph = Graph((Affine(weight, first.bias), act, second), 6)
    pi = PolynomialExplanation(graph, distribution, degree=6)
    assert torch.isfinite(pi.cumulants(DIRECTION)).all() and torch.isfinite(pi.cov).all()
    y = graph(draw(distribution, 400_000, seed=7))
    assert ((pi.expectation().value - y.mean(0)).abs() <= 5 * y.std(0) / math.sqrt(y.shape[0])).all()


def test_standard_input():
    """For N(0, I), ξ = x: the surrogate at degree 12 is within its truncation error of M."""
    graph, _ = network("tanh")
    distribution = Gaussian.standard(6)
    pi = PolynomialExplanation(graph, distribution, degree=12)
    x = draw(distribution, 20_000, seed=8)
    rms = ((pi.predict(x) - graph(x)) ** 2).mean(0).sqrt()
    assert (rms <= 1.1 * pi.truncation_error).all() and (rms < 0.05).all()


def test_cross_covariance_matches_gaussian_propagation():
    # One hidden layer: Stein's lemma gives the same Cov(x, y) in both explanations.
    from explanations.gaussian import GaussianExplanation
    graph, distribution = network("tanh")
    poly = PolynomialExplanation(graph, distribution, degree=6)
    gauss = GaussianExplanation(graph, distribution)
    torch.testing.assert_close(poly.cross, gauss.cross, rtol=1e-9, atol=1e-12)
