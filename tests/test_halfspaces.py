"""Intersections of halfspaces: Step, BooleanCube, the Gaussian and cube estimators, CNF."""
import itertools
import math

import pytest
import torch
from torch import nn

from explanations import BooleanCube, Gaussian, InvalidDistribution, InvalidEvent, Step, compile_model, explain
from explanations import cube_smc
from explanations.cnf import random_cnf
from explanations.cube_smc import cube_log_probability
from explanations.events import Above, All, Any, Below
from explanations.graph import Act
from explanations.halfspaces import (Halfspaces, exact_cube_log_probability, from_network,
                                     gaussian_log_probability, hermite_log_probability)
from explanations.mvn import bivariate_normal_cdf


def halfspaces(a, b, strict=None):
    a = torch.as_tensor(a, dtype=torch.float64)
    strict = torch.zeros(a.shape[0], dtype=torch.bool) if strict is None else torch.as_tensor(strict)
    return Halfspaces(a, -torch.as_tensor(b, dtype=torch.float64), strict)


def step_net(a, c):
    a = torch.as_tensor(a, dtype=torch.float64)
    linear = nn.Linear(a.shape[1], a.shape[0]).double()
    with torch.no_grad():
        linear.weight.copy_(a)
        linear.bias.copy_(torch.as_tensor(c, dtype=torch.float64))
    return nn.Sequential(linear, Step())


def every_point(n):
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=torch.float64)


def test_step_and_cube_compile_and_sample():
    model = step_net(torch.randn(3, 5), torch.zeros(3))
    graph = compile_model(model)
    assert isinstance(graph.chain[1], Act) and graph.chain[1].kind == "step"
    x = torch.randn(50, 5, dtype=torch.float64)
    assert torch.equal(graph.forward(x), model(x))
    cube = BooleanCube(5)
    draws = cube.sample(4000, generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    assert draws.mean(0).abs().max() < 4 / math.sqrt(4000)
    with pytest.raises(InvalidDistribution, match="positive integer"):
        BooleanCube(0)
    with pytest.raises(InvalidDistribution, match="expects a Gaussian"):
        explain(model, cube, method="gaussian")
    assert explain(model, cube, method="auto").method == "auto:halfspaces"
    assert explain(model, Gaussian.standard(5), method="auto").method == "auto:halfspaces"
    relu = nn.Sequential(nn.Linear(5, 2), nn.ReLU())
    assert explain(relu, cube, method="auto").method == "auto:sampling"
    with pytest.raises(Exception, match="Linear → Step"):
        explain(relu, cube, method="halfspaces")


def test_gaussian_closed_forms():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    b = torch.tensor([0.0, 1.0, -0.5, 2.0], dtype=torch.float64)
    orthogonal = gaussian_log_probability(halfspaces(q[:4], b), Gaussian.standard(6))
    assert orthogonal.log_p == pytest.approx(float(torch.special.log_ndtr(-b).sum()), abs=1e-9)
    a = torch.randn(2, 4, dtype=torch.float64)
    two = gaussian_log_probability(halfspaces(a, [0.3, -0.2]), Gaussian.standard(4))
    norms = a.norm(dim=1)
    rho = float(a[0] @ a[1] / (norms[0] * norms[1]))
    exact = bivariate_normal_cdf(-0.3 / norms[0], 0.2 / norms[1], torch.tensor(rho, dtype=torch.float64))
    assert abs(math.exp(two.log_p) - float(exact)) <= two.abs_error    # three QMC standard errors
    # a slab a·x ∈ [-1, 1] (two dependent rows), and an empty set
    v = torch.randn(1, 3, dtype=torch.float64)
    v = v / v.norm()
    slab = gaussian_log_probability(halfspaces(torch.cat([v, -v]), [-1.0, -1.0]), Gaussian.standard(3))
    assert math.exp(slab.log_p) == pytest.approx(math.erf(1 / math.sqrt(2)), rel=1e-12)
    empty = gaussian_log_probability(halfspaces(torch.cat([v, -v]), [1.0, 1.0]), Gaussian.standard(3))
    assert empty.log_p == -math.inf


def test_gaussian_more_constraints_than_dimensions_matches_sampling():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    h = halfspaces(a, torch.full((12,), -1.0))
    estimate = math.exp(gaussian_log_probability(h, Gaussian.standard(3)).log_p)
    draws = 400_000
    p = float(h.contains(torch.randn(draws, 3, generator=generator, dtype=torch.float64)).double().mean())
    assert abs(estimate - p) < 4 * math.sqrt(p * (1 - p) / draws)


def test_general_gaussian_input():
    generator = torch.Generator().manual_seed(2)
    mean = torch.randn(4, generator=generator, dtype=torch.float64)
    root = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    D = Gaussian(mean, root @ root.T + 0.5 * torch.eye(4, dtype=torch.float64))
    h = halfspaces(torch.randn(3, 4, generator=generator, dtype=torch.float64), [0.5, 0.0, -0.5])
    estimate = math.exp(gaussian_log_probability(h, D).log_p)
    draws = 400_000
    p = float(h.contains(D.sample(draws, generator=generator)).double().mean())
    assert abs(estimate - p) < 4 * math.sqrt(p * (1 - p) / draws)


def test_hermite_projection_is_exact_for_orthogonal_halfspaces():
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    b = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    result = hermite_log_probability(halfspaces(q[:3], b), Gaussian.standard(5))
    assert result.log_p == pytest.approx(float(torch.special.log_ndtr(-b).sum()), abs=1e-12)


@pytest.mark.parametrize("k, b, weights", [(5, 0.0, "normal"), (3, 1.2, "normal"), (8, 0.0, "sign"),
                                           (20, -1.0, "normal")])
def test_cube_smc_matches_enumeration(k, b, weights):
    n = 12
    generator = torch.Generator().manual_seed(k)
    a = torch.randn(k, n, generator=generator, dtype=torch.float64)
    if weights == "sign":
        a = a.sign()
    a = a / a.norm(dim=1, keepdim=True)
    h = halfspaces(a, torch.full((k,), b))
    exact = math.exp(exact_cube_log_probability(h))
    result = cube_log_probability(h, particles=256, replicates=8, seed=0)
    se = result.relative_se * math.exp(result.log_p)
    assert exact > 0
    assert abs(math.exp(result.log_p) - exact) <= 5 * se + 1e-12


def test_cube_smc_is_unbiased_with_few_particles(monkeypatch):
    monkeypatch.setattr(cube_smc, "EXACT_BLOCK", 1)          # sample all but the last coordinate
    monkeypatch.setattr(cube_smc, "EXACT_SUPPORT", 1)
    a = torch.tensor([[1.0, 1, 1, 0, 0, 1], [0, 1, -1, 1, 1, 0], [1, 0, 0, -1, 1, 1]], dtype=torch.float64)
    h = halfspaces(a, [1.0, 0.0, 1.0])
    exact = math.exp(exact_cube_log_probability(h))
    values = torch.tensor([math.exp(cube_log_probability(h, particles=4, replicates=2, seed=s).log_p)
                           for s in range(250)])
    assert abs(float(values.mean()) - exact) < 4 * float(values.std()) / math.sqrt(len(values)) + 1e-12


def test_events_with_ties_and_strict_inequalities_on_the_cube():
    n = 10
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(-1, 2, (4, n), generator=generator).to(torch.float64)
    model = step_net(a, torch.tensor([0.0, 1.0, 0.0, -1.0]))
    event = All(Above(0, 0.5), Below(1, 0.5), Above(2, 0.0), Below(3, 0.7))
    x = every_point(n)
    exact = float(event.evaluate(model(x)).double().mean())
    pi = explain(model, BooleanCube(n), method="auto", budget=4000)
    estimate = pi.probability(event)
    assert estimate.method == "auto:halfspaces" and estimate.samples == 0
    assert estimate.value == pytest.approx(exact, rel=0.1)
    assert estimate.interval[0] <= exact <= estimate.interval[1] or abs(estimate.value - exact) < 0.02 * exact
    graph = compile_model(model)
    assert from_network(graph, All(Above(0, 1.5))).empty
    assert from_network(graph, All(Above(0, -1.0), Above(1, 0.5))).k == 1
    with pytest.raises(InvalidEvent, match="union"):
        pi.probability(Any(Above(0, 0.5), Above(1, 0.5)))
    assert pi.probability(Above(0, 1.5)).value == 0.0


def test_expectation_and_predict():
    generator = torch.Generator().manual_seed(4)
    a = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    c = torch.tensor([0.5, -0.3, 0.0], dtype=torch.float64)
    model = step_net(a, c)
    gaussian = explain(model, Gaussian.standard(8), method="halfspaces").expectation()
    assert torch.allclose(gaussian.value, torch.special.ndtr(c / a.norm(dim=1)), atol=1e-12)
    cube = explain(model, BooleanCube(8), method="halfspaces", budget=3000)
    exact = model(every_point(8)).mean(0)
    assert torch.allclose(cube.expectation().value, exact, atol=0.03)
    x = BooleanCube(8).sample(5)
    assert torch.equal(cube.predict(x), model(x))


def test_cnf_network_is_the_formula():
    formula = random_cnf(10, 30, seed=5)
    assert all(len(set(row.tolist())) == 3 for row in formula.variables)
    x = every_point(10)
    literals = formula.signs[None] * x[:, formula.variables]           # [points, m, 3]
    satisfied = (literals > 0).any(dim=2).all(dim=1)
    assert torch.equal(formula.event().evaluate(formula.network()(x)), satisfied)
    exact = float(satisfied.double().mean())
    estimate = explain(formula.network(), BooleanCube(10), method="auto").probability(formula.event())
    assert estimate.value == pytest.approx(exact, rel=0.15)
    assert estimate.sample_equivalents < 1e4


def test_step_graph_round_trips_through_storage(tmp_path):
    import h5py
    from storage import read_graph, write_graph
    graph = compile_model(step_net(torch.randn(3, 4), torch.randn(3)))
    with h5py.File(tmp_path / "g.h5", "w") as handle:
        write_graph(handle.create_group("g"), graph)
    with h5py.File(tmp_path / "g.h5", "r") as handle:
        back = read_graph(handle["g"])
    x = torch.randn(20, 4, dtype=torch.float64)
    assert back.chain[1].kind == "step" and torch.equal(back.forward(x), graph.forward(x))
