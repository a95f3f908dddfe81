"""Tails from cumulants against closed forms."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import Above
from explanations.mvn import log_union
from explanations.tails import copula_probability, log_upper_tail

F64 = torch.float64


@pytest.mark.parametrize("method", ["cornish-fisher", "saddlepoint"])
def test_gaussian_cumulants_give_the_normal_tail(method):
    for x in (-3.0, 0.5, 2.0, 7.0, 20.0):
        expected = torch.special.log_ndtr(torch.tensor(-(x - 1.0) / 2.0, dtype=F64)).item()
        assert log_upper_tail((1.0, 4.0, 0.0, 0.0), x, method) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("shape, worst", [(16.0, 0.07), (64.0, 0.02), (256.0, 0.01)])
def test_cornish_fisher_on_gamma_tails(shape, worst):
    # Gamma(a, 1) has κ_n = a (n-1)!; its tail is the regularised upper incomplete gamma.
    kappa = (shape, shape, 2 * shape, 6 * shape)
    for log10_p in (-3, -5, -8):
        lo, hi = shape, shape + 60 * math.sqrt(shape)
        for _ in range(200):                         # the exact quantile by bisection
            mid = (lo + hi) / 2
            tail = torch.special.gammaincc(torch.tensor(shape, dtype=F64), torch.tensor(mid, dtype=F64)).item()
            lo, hi = (mid, hi) if tail > 10.0 ** log10_p else (lo, mid)
        estimate = log_upper_tail(kappa, (lo + hi) / 2) / math.log(10)
        assert abs(estimate - log10_p) <= worst


def test_skew_moves_the_tail_the_right_way():
    # Positive skew fattens the upper tail and thins the lower one (P(s < -x) = P(-s > x)).
    upper = log_upper_tail((0.0, 1.0, 0.5, 0.0), 2.0)
    lower = log_upper_tail((0.0, 1.0, -0.5, 0.0), 2.0)
    normal = log_upper_tail((0.0, 1.0, 0.0, 0.0), 2.0)
    assert lower < normal < upper


def test_copula_reduces_to_the_gaussian_integral_without_higher_cumulants():
    cov = torch.tensor([[1.0, 0.6, 0.2], [0.6, 2.0, -0.3], [0.2, -0.3, 1.5]], dtype=F64)
    mean = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    clauses = [(torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)),
               (torch.tensor([[0.0, 0.0, 1.0]], dtype=F64), torch.tensor([2.5], dtype=F64))]
    gaussian = lambda a: torch.stack([a @ mean, a @ cov @ a, a.new_zeros(()), a.new_zeros(())])
    copula = copula_probability(clauses, cov, gaussian)
    direct = log_union(mean, cov, clauses)
    assert abs(math.exp(copula.log_p) - math.exp(direct.log_p)) <= 3 * (copula.abs_error + direct.abs_error) + 1e-12


def test_single_atom_is_exactly_its_marginal():
    kappa = torch.tensor([0.0, 1.0, 0.5, 0.4], dtype=F64)
    a = torch.tensor([[1.0]], dtype=F64)
    result = copula_probability([(a, torch.tensor([4.0], dtype=F64))], torch.eye(1, dtype=F64), lambda _: kappa)
    assert result.log_p == log_upper_tail(kappa, 4.0)


@pytest.mark.parametrize("kappa", [(0.0, 1.0, -1.0, 0.0), (0.0, 1.0, 0.0, -1.0), (0.0, 1.0, 1.5, 3.0), (4.0, 4.0, 8.0, 24.0)])
def test_tails_never_rise_with_the_threshold(kappa):
    xs = torch.linspace(-6.0, 12.0, 721).tolist()
    values = [log_upper_tail(kappa, x) for x in xs]
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:]))


def test_the_lower_tail_continues_below_the_cornish_fisher_branch():
    """P(s > x) → 1 as x falls, continuously and without rising: below the branch's lower
    end the lower tail is the mirrored upper tail. Before, it stayed at Φ(-z_lo) (0.977 for
    these cumulants), and a certain event came out at 0.94–0.98."""
    k = (0.0, 1.0, 1.0, 0.5)
    xs = [x / 100 for x in range(-1000, 1000)]
    tails = [math.exp(log_upper_tail(k, x)) for x in xs]
    assert all(b <= a + 1e-12 for a, b in zip(tails, tails[1:]))
    assert max(abs(b - a) for a, b in zip(tails, tails[1:])) < 0.01
    assert tails[0] > 1 - 1e-12 and math.exp(log_upper_tail(k, -1000.0)) == 1.0


@pytest.mark.parametrize("method", ["gaussian", "cumulant", "polynomial", "auto"])
def test_a_certain_event_has_probability_one(method):
    """y = relu(x0) + relu(x1) ≥ 0, so P(y > -1000) = 1."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        model[2].weight.fill_(1.0), model[2].bias.zero_()
    assert explain(model, Gaussian.standard(2), method).probability(Above(0, -1000.0)).value == pytest.approx(1.0, abs=1e-9)
