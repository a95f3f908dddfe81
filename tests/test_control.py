"""expectation(samples=N): π.predict as a control variate — exactness, variance, coverage, cost."""
import math
import numpy as np

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import Above, Detector
from explanations.montecarlo import draw_cost
from train.models import mlp


def test_linear_network_is_exact_with_a_zero_width_interval():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2)).double()
    D = Gaussian(torch.arange(5.0, dtype=torch.float64), torch.eye(5, dtype=torch.float64) * 2)
    pi = explain(model, D, "gaussian")
    estimate = pi.expectation(samples=1000)
    truth = model(D.mean[None])[0].detach()
    assert torch.allclose(estimate.value, truth, atol=1e-9)
    lo, hi = estimate.interval
    assert float((hi - lo).max()) < 1e-6
    assert estimate.method == "gaussian+control"


@pytest.mark.parametrize("method", ["gaussian", "cumulant"])
def test_control_variate_agrees_with_a_large_reference_and_shrinks_the_variance(method):
    model = mlp([16, 64, 64, 1], "relu", seed=0)
    D = Gaussian.standard(16)
    pi = explain(model, D, method)
    controlled = pi.expectation(samples=20_000)
    reference = explain(model, D, "sampling").expectation(samples=2_000_000)
    se = lambda e: float(e.interval[1][0] - e.interval[0][0]) / (2 * 1.96)
    assert abs(float(controlled.value[0] - reference.value[0])) < 4.5 * math.hypot(se(controlled), se(reference))
    ratio = float(controlled.details["variance_ratio"][0])
    assert ratio < 0.5                                   # measured 0.37: predict carries 63% of Var(y)
    plain_se = float(reference.details["std"][0]) / math.sqrt(20_000)
    assert se(controlled) == pytest.approx(plain_se * math.sqrt(ratio), rel=0.05)


def test_intervals_cover_the_truth():
    """60 independent runs of N = 500 on a small net: the 95% intervals cover a 4·10⁶-sample
    reference in ≥ 51 of them (binomial: P[< 51 | 95%] < 0.2%)."""
    model = mlp([6, 16, 16, 1], "relu", seed=2, bias_std=0.3)
    D = Gaussian.standard(6)
    truth = float(explain(model, D, "sampling").expectation(samples=4_000_000).value[0])
    covered = 0
    for seed in range(60):
        lo, hi = explain(model, D, "gaussian", seed=seed).expectation(samples=500).interval
        covered += float(lo[0]) <= truth <= float(hi[0])
    assert covered >= 51


def test_cost_counts_draws_forward_passes_predictions_and_the_mean():
    model = mlp([8, 32, 2], "gelu", seed=1)
    D = Gaussian.standard(8)
    pi = explain(model, D, "gaussian")
    estimate = pi.expectation(samples=1000)
    expected = 1000 * (draw_cost(pi.graph, D) + pi.predict_flops) + 10 * 1000 * 2 + pi.build_flops
    assert estimate.flops == expected and estimate.samples == 1000


def test_too_few_samples_is_a_clear_error():
    pi = explain(mlp([4, 8, 1], "relu"), Gaussian.standard(4), "gaussian")
    with pytest.raises(ValueError, match="≥ 3"):
        pi.expectation(samples=2)


@pytest.mark.parametrize("method", ["gaussian", "cumulant", "sampling"])
@pytest.mark.parametrize("samples", [0, -5, 1.5, True])
def test_a_sample_count_that_is_not_one_is_a_clear_error(method, samples):
    """Before: samples=0 divided by zero and samples=-5 returned p = 0 on the guided path."""
    pi = explain(mlp([4, 8, 1], "relu"), Gaussian.standard(4), method)
    with pytest.raises(ValueError, match="samples must be"):
        pi.probability(Above(0, 3.0), samples=samples)
    with pytest.raises(ValueError, match="samples must be"):
        pi.expectation(samples=samples)


def test_numpy_sample_counts_are_accepted():
    pi = explain(mlp([4, 8, 1], "relu"), Gaussian.standard(4), "sampling")
    assert pi.probability(Above(0, 0.0), samples=np.int64(100)).samples == 100


def test_flop_budgets_pay_the_explanation_first_and_never_overspend():
    model = mlp([8, 32, 32, 1], "relu", seed=4)
    D = Gaussian.standard(8)
    pi = explain(model, D, "cumulant")
    unit = pi.flops_per_sample
    mean = pi.expectation(flops=5_000 * unit)
    assert mean.flops <= 5_000 * unit and mean.samples > 3_000 and mean.method == "cumulant+control"
    threshold = float(pi.expectation().value[0]) + 6 * float(pi.cov[0, 0]) ** 0.5
    rare = pi.probability(Above(0, threshold), flops=20_000 * unit)
    # the pilot picks design-IS or subset simulation (p ≈ 1e-24 here, the pilot's hits are
    # borderline); either way the search is paid from the same budget
    assert rare.method in ("cumulant+design-IS", "cumulant+subset-simulation")
    assert rare.details["search_flops"] < rare.flops <= 20_000 * unit
    common = pi.probability(Above(0, float(pi.expectation().value[0])), flops=2_000 * unit)
    assert common.method == "sampling" and common.flops <= 2_000 * unit
    with pytest.raises(ValueError, match="buys 0 draws"):
        pi.probability(Above(0, threshold), flops=10 * unit)
    with pytest.raises(ValueError, match="not both"):
        pi.probability(Above(0, threshold), samples=10, flops=1e9)
    with pytest.raises(ValueError, match="positive"):
        pi.expectation(flops=-1.0)
    short = pi.build_flops + 2.5 * (mean.flops - pi.build_flops) / mean.samples   # too little for 3 controlled draws
    plain = pi.expectation(flops=short)
    assert plain.method == "sampling" and plain.flops <= short


def test_a_search_that_finds_nothing_is_still_paid_for():
    """An event beyond what the network can reach: the design search fails, subset
    simulation spends what is left of the budget without reaching it, and the estimate's
    FLOPs include the search."""
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    pi = explain(model, Gaussian.standard(4), "cumulant")
    bound = float(model[4].weight.detach().abs().sum() + model[4].bias.detach().abs().sum())   # |y| ≤ Σ|w|+|b|
    budget = 5_000 * pi.flops_per_sample
    estimate = pi.probability(Above(0, bound + 1.0), flops=budget)
    assert estimate.method == "cumulant+subset-simulation" and estimate.value == 0.0
    assert not estimate.details["reached"] and estimate.details["degenerate"]
    assert estimate.details["search_flops"] > 0
    assert pi.build_flops + estimate.details["search_flops"] < estimate.flops <= budget
    assert estimate.samples < (budget - pi.build_flops) / pi.flops_per_sample


def test_plain_sampling_charges_the_detectors_it_evaluates():
    """A detector as large as the model doubles a draw's cost; before, its forward passes
    were not counted, so a FLOP budget bought twice the draws it paid for."""
    model = mlp([4, 32, 2], "relu", seed=3)
    detector = Detector(nn.Sequential(nn.Linear(2, 48), nn.ReLU(), nn.Linear(48, 1)), threshold=0.0)
    pi = explain(model, Gaussian.standard(4), "sampling")
    per_draw = draw_cost(pi.graph, pi.distribution) + detector.graph.flops_per_sample
    estimate = pi.probability(detector, flops=1e6)
    assert estimate.flops == estimate.samples * per_draw <= 1e6 < (estimate.samples + 1) * per_draw


def test_a_mean_from_one_draw_has_no_interval():
    """One draw has no variance: the interval is None, not a zero-width one."""
    from explanations.graph import Affine, Graph
    graph = Graph((Affine(torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)),), 2)
    estimate = explain(graph, Gaussian.standard(2), "sampling").expectation(samples=1)
    assert estimate.interval is None and estimate.samples == 1


def test_student_t_quantile_against_closed_forms_and_sampling():
    """ν = 1: tan(π(q - ½)); ν = 2: t² = 2α²/(1 - α²), α = 2q - 1; and for 4 normal replicates
    the interval mean ± t·s/2 covers 95% of 400,000 simulated sets (normal 1.96: 86%)."""
    from explanations.montecarlo import Z95, student_t_quantile
    for q in (0.9, 0.975, 0.995):
        alpha = 2 * q - 1
        assert student_t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
        assert student_t_quantile(q, 2) == pytest.approx(math.sqrt(2 * alpha ** 2 / (1 - alpha ** 2)), rel=1e-10)
    assert abs(student_t_quantile(0.975, 200) - student_t_quantile(0.975, 201)) < 1e-4     # the two forms meet
    assert student_t_quantile(0.975, 10 ** 6) == pytest.approx(Z95, rel=1e-5)
    x = torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratio = x.mean(1).abs() / (x.std(1) / 2)
    assert float((ratio <= student_t_quantile(0.975, 3)).double().mean()) == pytest.approx(0.95, abs=0.0015)
    assert float((ratio <= Z95).double().mean()) < 0.87
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="degrees of freedom"):
            student_t_quantile(0.975, bad)


def test_a_flop_budget_takes_the_control_variate_only_where_pi_predicts_it_pays():
    """π's own 1 - ρ² (`residual_fraction`) against the measured one, and the choice it makes:
    at 1,000 sample-equivalents the cumulant build (919) left the control variate 78 draws
    against plain sampling's 996, and 8× its squared error; at 5,000 (build 18%) it pays."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    D = Gaussian.standard(10)
    x = D.sample(200_000, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        y = model(x.float()).double()
    for method in ("gaussian", "cumulant"):
        pi = explain(model, D, method)
        c = pi.predict(x).double()
        measured = torch.stack([1 - torch.corrcoef(torch.stack([y[:, k], c[:, k]]))[0, 1] ** 2 for k in range(2)])
        assert torch.allclose(pi.residual_fraction(), measured, atol=0.03)
    pi = explain(model, D, "cumulant")
    unit = pi.flops_per_sample
    assert pi.expectation(flops=1_000 * unit).method == "sampling"
    assert pi.expectation(flops=3_000 * unit).method == "sampling"                 # build 31% of F
    assert pi.expectation(flops=5_000 * unit).method == "cumulant+control"
    assert pi.expectation(samples=100).method == "cumulant+control"         # a count of draws: always


def test_the_polynomial_residual_fraction_bounds_the_measured_one():
    model = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 2))
    D = Gaussian.standard(6)
    x = D.sample(200_000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x.float()).double()
    pi = explain(model, D, "polynomial")
    measured = ((y - pi.predict(x).double()).var(0) / y.var(0))
    assert (pi.residual_fraction() >= 0.9 * measured).all() and (pi.residual_fraction() < 1e-3).all()


def test_a_build_over_a_quarter_of_the_budget_leaves_it_to_plain_sampling():
    """On a narrow deep net π's own 1 - ρ² read 0.0 where 0.44 was measured (π's Var(y) 18%
    short), and with the build at 45–75% of F the control variate had 1.8–3.3× plain
    sampling's squared error (review); the build-share rule bounds that loss."""
    torch.manual_seed(408)
    layers, width = [], 6
    for _ in range(4):
        layers += [nn.Linear(width, 8), nn.GELU()]
        width = 8
    model = nn.Sequential(*layers, nn.Linear(8, 1)).double()
    pi = explain(model, Gaussian.standard(6), "cumulant")
    unit = pi.flops_per_sample
    assert pi.build_flops > 0.25 * 2_000 * unit and pi.expectation(flops=2_000 * unit).method == "sampling"
    assert pi.expectation(flops=50 * pi.build_flops).method == "cumulant+control"
