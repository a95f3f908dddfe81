"""Curvature-shaped mixture components at the design points (`explanations.shaping`)."""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torch.special import ndtr

from explanations import Gaussian, explain
from explanations.events import Above, All, Below
from explanations.guided import PILOT_MIN, PILOT_SHARE, guided_probability, shaped
from explanations.importance import (BROAD, BROAD_SCALE, DEFENSIVE, SHAPED_SPLIT, importance_draw_flops,
                                     importance_sampling)
from explanations.quadratic import Quadratic
from explanations.shaping import MAX_SHIFT, MIN_TANGENT_VARIANCE, SHAPE_SHARE, Shape, shape_flops, shape_of
from explanations.design import Mode
from explanations.structured import DRAWS_SHAPED_SPLIT, fit_cost, search

F64 = torch.float64


def _rotation(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))[0]


def test_the_shape_is_breitungs_tangent_law_of_the_quadratic():
    """q(u) = c + λ e·u - ½ λ Σ κ_i (a_i·u)²: tangent variances clamp(1/(1 + βκ_i), 0.01, 1)
    along a_i (1 where 1 + βκ ≤ 0), unit variance along e, centre ξ* + t̄ e with t̄ the
    surface's mean offset -c/λ + ½ Σ κ_i σ_i² plus 1/(β + that offset)."""
    d, beta, rise, value = 5, 2.5, 0.4, -0.1
    rotation = _rotation(d, 0)
    e, axes = rotation[:, 0], rotation[:, 1:]
    kappa = torch.tensor([3.0, 0.8, 0.0, -1.0], dtype=F64)          # the last: 1 + βκ < 0
    curvature = -rise * (axes * kappa) @ axes.T
    local = Quadratic(torch.tensor([value], dtype=F64), (rise * e)[None], curvature[None], 1, 0, 0)
    shape = shape_of(local, Mode(beta * e, beta, 0))
    variance = torch.tensor([1 / 8.5, 1 / 3.0, 1.0, 1.0], dtype=F64)
    covariance = torch.outer(e, e) + (axes * variance) @ axes.T
    torch.testing.assert_close(shape.factor @ shape.factor.T, covariance)
    torch.testing.assert_close(shape.precision, torch.linalg.inv(covariance))
    assert shape.log_det_precision == pytest.approx(-float(torch.logdet(covariance)))
    offset = -value / rise + 0.5 * float((kappa * variance).sum())
    torch.testing.assert_close(shape.center, (beta + offset + 1 / (beta + offset)) * e)
    # a needle narrower than the floor is floored, and a far surface offset is capped
    sharp = Quadratic(torch.tensor([-5.0], dtype=F64), (rise * e)[None], (-rise * 1e4 * axes @ axes.T)[None], 1, 0, 0)
    narrow = shape_of(sharp, Mode(beta * e, beta, 0))
    torch.testing.assert_close(narrow.factor @ narrow.factor.T,
                               torch.outer(e, e) + MIN_TANGENT_VARIANCE * axes @ axes.T)
    torch.testing.assert_close(narrow.center, (beta + MAX_SHIFT) * e)
    falling = Quadratic(torch.tensor([0.0], dtype=F64), (-rise * e)[None], curvature[None], 1, 0, 0)
    assert shape_of(falling, Mode(beta * e, beta, 0)) is None
    broken = Quadratic(torch.tensor([math.nan], dtype=F64), (rise * e)[None], curvature[None], 1, 0, 0)
    assert shape_of(broken, Mode(beta * e, beta, 0)) is None


def test_a_slope_that_leans_off_the_ray_moves_the_centre_across_it():
    """Off the design point the slope B has a tangent part: the tangent law's mean is
    μ_i = β b_i σ_i² along the axes (b = B_T/λ), and the surface's mean offset takes
    -b·μ + ½ Σ κ_i (μ_i² + σ_i²)."""
    d, beta, rise = 4, 3.0, 0.5
    rotation = _rotation(d, 2)
    e, axes = rotation[:, 0], rotation[:, 1:]
    kappa = torch.tensor([2.0, 0.5, 0.1], dtype=F64)
    lean = torch.tensor([0.2, -0.1, 0.0], dtype=F64)                  # b on the axes
    curvature = -rise * (axes * kappa) @ axes.T
    slope = rise * (e + axes @ lean)
    shape = shape_of(Quadratic(torch.tensor([0.0], dtype=F64), slope[None], curvature[None], 1, 0, 0),
                     Mode(beta * e, beta, 0))
    variance = 1 / (1 + beta * kappa)
    mean = beta * lean * variance
    offset = -float(lean @ mean) + 0.5 * float((kappa * (mean ** 2 + variance)).sum())
    torch.testing.assert_close(shape.center, (beta + offset + 1 / (beta + offset)) * e + axes @ mean)
    torch.testing.assert_close(shape.factor @ shape.factor.T, torch.outer(e, e) + (axes * variance) @ axes.T)


@pytest.fixture
def halfspace():
    """y = ξ in d = 3, {ξ₁ > 3}: P = Φ(-3); its search's one mode at (3, 0, 0)."""
    model = nn.Linear(3, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, dtype=F64))
        model.bias.zero_()
    pi = explain(model, Gaussian.standard(3), method="gaussian")
    event = Above(0, 3.0)
    found = search(pi, event)
    assert len(found.modes) == 1 and found.modes[0].beta == pytest.approx(3.0, abs=1e-6)
    return pi, event, found, float(ndtr(torch.tensor(-3.0, dtype=F64)))


def _needle(mode: Mode) -> Shape:
    """An arbitrary shaped component: tangent variances 0.05 and 0.3, centre moved by 0.4."""
    d = mode.point.shape[0]
    rotation = _rotation(d, 1)
    rotation[:, 0] = mode.point / mode.beta
    basis = torch.linalg.qr(rotation)[0]
    basis = basis * torch.sign(basis[:, 0] @ rotation[:, 0])
    variance = torch.tensor([1.0, 0.05, 0.3], dtype=F64)
    covariance = (basis * variance) @ basis.T
    return Shape(mode.point + 0.4 * basis[:, 0], torch.linalg.cholesky(covariance), torch.linalg.inv(covariance),
                 -float(variance.log().sum()))


@pytest.mark.parametrize("split", [SHAPED_SPLIT, DRAWS_SHAPED_SPLIT])
def test_weights_are_the_mixture_density_ratio_and_the_estimate_is_unbiased(halfspace, split):
    """With a shaped component beside the unit one, each hit's weight is φ(ξ)/q(ξ) for q the
    whole mixture (its densities from torch.distributions), and the unbiased estimate holds
    Φ(-3) within 4 standard errors, at the guided sampler's split and at the zero-sample
    draws' (`structured.DRAWS_SHAPED_SPLIT`)."""
    pi, event, found, truth = halfspace
    mode = found.modes[0]
    with_shape = replace(found, modes=[replace(mode, shape=_needle(mode))])
    run = importance_sampling(event, with_shape, 20_000, torch.Generator().manual_seed(0), 3, keep_points=True,
                              shaped_split=split)
    xi = run.hit_points
    eye = torch.eye(3, dtype=F64)
    shape = with_shape.modes[0].shape
    parts = [(DEFENSIVE, MultivariateNormal(torch.zeros(3, dtype=F64), eye)),
             (BROAD, MultivariateNormal(torch.zeros(3, dtype=F64), BROAD_SCALE ** 2 * eye)),
             ((1 - DEFENSIVE - BROAD) * split, MultivariateNormal(mode.point, eye)),
             ((1 - DEFENSIVE - BROAD) * (1 - split), MultivariateNormal(shape.center, shape.factor @ shape.factor.T))]
    log_q = torch.logsumexp(torch.stack([math.log(a) + law.log_prob(xi) for a, law in parts]), 0)
    log_phi = MultivariateNormal(torch.zeros(3, dtype=F64), eye).log_prob(xi)
    torch.testing.assert_close(run.log_weights, log_phi - log_q)
    assert run.mode_hits > 0.5 * run.hits
    unbiased = math.exp(run.log_p(cut=False))
    assert abs(unbiased - truth) <= 4 * unbiased * run.relative_error(cut=False)


def _tanh_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for n_in, n_out in ((4, 48), (48, 48)):
        linear = nn.Linear(n_in, n_out)
        nn.init.normal_(linear.weight, std=2.0 / math.sqrt(n_in))
        layers += [linear, nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(48, 2)).double()


def test_only_one_row_clauses_of_saturating_networks_are_shaped_and_the_fits_are_charged():
    """A tanh network's one-row event gets shaped modes, whose fits are charged to the FLOP
    (the same fits, made again, cost what the estimate reports) and stay within
    SHAPE_SHARE of the budget; a two-row clause, and any event of a ReLU network (whose
    set opens into a cone), keeps the unit components and spends nothing on fits."""
    D = Gaussian.standard(4)
    pi = explain(_tanh_net(), D, "gaussian", seed=0)
    budget = 10_000 * pi.flops_per_sample
    one_row = Above(0, 1.2)
    est = pi.probability(one_row, flops=budget)
    assert est.details["shaped_modes"] >= 1 and est.flops <= budget
    assert 0 < est.details["shaping_flops"] <= SHAPE_SHARE * budget
    found = search(pi, one_row)
    direct = guided_probability(pi, one_row, found, None, budget, 0, math.log(3e-5))
    room = min(SHAPE_SHARE * budget, budget - 2 * PILOT_MIN * importance_draw_flops(found, shaped=len(found.modes)))
    again, cost, count = shaped(found, torch.Generator().manual_seed(pi.seed), room)
    assert count >= 1 and cost == direct.details["shaping_flops"]
    assert cost <= sum(fit_cost(found, m) + shape_flops(4) for m in found.modes)
    assert [m.shape is not None for m in again.modes].count(True) == count == direct.details["shaped_modes"]
    pilot = max(PILOT_MIN, round(PILOT_SHARE * ((budget - cost) // importance_draw_flops(again))))
    assert direct.details["adapted_modes"] == 0
    assert direct.flops == cost + direct.samples * importance_draw_flops(again) <= budget
    assert direct.samples - pilot == (budget - cost - pilot * importance_draw_flops(again)) // importance_draw_flops(again)
    wedge = pi.probability(All(Above(0, 1.0), Below(1, -0.5)), flops=budget)          # P ≈ 8e-4
    assert len(wedge.details["modes"]) >= 1
    assert wedge.details["shaped_modes"] == 0 and wedge.details["shaping_flops"] == 0
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(4, 48), nn.ReLU(), nn.Linear(48, 2)).double()
    linear = explain(relu, D, "gaussian", seed=0).probability(Above(0, 0.46), flops=budget)   # P ≈ 1e-4
    assert len(linear.details["modes"]) >= 1
    assert linear.details["shaped_modes"] == 0 and linear.details["shaping_flops"] == 0


def test_the_fits_leave_the_draws_their_minimum_under_a_small_budget():
    """Just above π's build and the search, a fit would leave fewer than 2·PILOT_MIN draws
    (303 of them at 1,000 sample-equivalents, measured without the rule): it is not made,
    and a budget that pays for it and the draws gets it."""
    pi = explain(_tanh_net(), Gaussian.standard(4), "gaussian", seed=0)
    shaped_at = []
    for extra in (1000, 1050, 1100):
        budget = pi.build_flops + extra * pi.flops_per_sample
        est = pi.probability(Above(0, 1.2), flops=budget)
        assert est.flops <= budget and est.samples >= 2 * PILOT_MIN and len(est.details["modes"]) == 1
        shaped_at.append(est.details["shaped_modes"])
    assert shaped_at == [0, 0, 1]


def test_zero_sample_draws_take_the_shape_of_each_fitted_needle(monkeypatch):
    """The zero-sample design estimate's draws (`structured._with_draws`) take the shaped
    component of every one-row mode of a saturating network from the quadratic it already
    fitted, each charged shape_flops (against the same estimate without shapes); a ReLU
    network's modes keep their unit components."""
    from explanations import structured

    seen = []
    join = structured._with_draws

    def recorded(pi, event, found, result, allowed, details, pilot=None):
        seen.append((found, result.flops))
        return join(pi, event, found, result, allowed, details, pilot)

    monkeypatch.setattr(structured, "_with_draws", recorded)
    D = Gaussian.standard(4)
    tanh = explain(_tanh_net(), D, "cumulant", seed=0)
    assert tanh.probability(Above(0, 1.2)).method.startswith("cumulant+design")
    found, charged = seen[-1]
    assert found.modes and all(m.shape is not None and structured.takes_shape(found, m) for m in found.modes)
    monkeypatch.setattr(structured, "takes_shape", lambda found, mode: False)
    tanh.probability(Above(0, 1.2))
    plain, uncharged = seen[-1]
    assert all(m.shape is None for m in plain.modes)
    assert charged - uncharged == len(found.modes) * shape_flops(4)
    monkeypatch.undo()
    monkeypatch.setattr(structured, "_with_draws", recorded)
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(4, 48), nn.ReLU(), nn.Linear(48, 2)).double()
    explain(relu, D, "cumulant", seed=0).probability(Above(0, 0.46))
    assert seen[-1][0].modes and all(m.shape is None for m in seen[-1][0].modes)


def test_zero_sample_shapes_are_made_only_where_they_and_the_draws_fit():
    """The shapes' algebra (O(d³) a mode) is spent only where what the budget leaves pays
    for it and DRAWS_MIN draws at the shaped draw's cost; else the modes stay as they are
    and nothing is charged (made regardless, a 64-input tanh query had cost 14,503 of 10⁴)."""
    from explanations import structured
    from explanations.quadratic import fit

    pi = explain(_tanh_net(), Gaussian.standard(4), "gaussian", seed=0)
    found = search(pi, Above(0, 1.2))
    fitted = [fit(found.margins[m.clause], m.point, torch.Generator().manual_seed(0)) for m in found.modes]
    needles = sum(structured.takes_shape(found, m) for m in found.modes)
    cost = needles * shape_flops(4)
    need = cost + structured.DRAWS_MIN * importance_draw_flops(found, shaped=needles)
    assert needles >= 1
    shaped_found, charged = structured._shaped_for_draws(found, fitted, 1_000, 1_000 + need)
    assert charged == cost and sum(m.shape is not None for m in shaped_found.modes) == needles
    plain, charged = structured._shaped_for_draws(found, fitted, 1_000, 1_000 + need - 1)
    assert charged == 0 and plain is found
