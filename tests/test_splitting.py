"""Subset simulation (`splitting`) and the sampler choice of design-guided sampling."""
import math
import statistics

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import All, Above, Any, Below
from explanations import guided
from explanations.guided import PILOT_HITS, PILOT_MODE_HITS
from explanations.montecarlo import effective_count_interval, gamma_quantile, wilson_interval
from explanations.splitting import clause_margin, subset_simulation
from explanations.structured import search
from train.models import mlp

F64 = torch.float64


def test_garwood_quantiles_match_known_chi_square_values():
    """χ²_{2n}/2 quantiles: n = 1 → -log(1 - q); n = 10, q = 0.975 → χ²_20 = 34.170/2."""
    assert abs(gamma_quantile(1.0, 0.025) - -math.log(0.975)) < 1e-9
    assert abs(gamma_quantile(10.0, 0.975) - 34.1696 / 2) < 1e-3
    low, high = effective_count_interval(math.log(1e-6), 10.0)
    assert low < 1e-6 * (1 - 1.96 / math.sqrt(10)) + 2e-7 and high > 1e-6 * (1 + 1.96 / math.sqrt(10))


def test_subset_simulation_on_a_halfspace_is_unbiased_enough_and_covered():
    """P(a·ξ > β) = Φ(-β) in 6 dimensions at 1e-6, 30 runs of 10⁴ evaluations: the mean
    within 3 of its standard errors, the relative RMSE under 0.5 (Au & Beck's figure for
    N ≈ 1500 per level is about 0.3–0.4), intervals cover in at least 24 of 30."""
    a = torch.ones(6, dtype=F64) / math.sqrt(6)
    beta = 4.7534                                                     # Φ(-β) = 1e-6
    truth = 0.5 * math.erfc(beta / math.sqrt(2))
    runs = [subset_simulation(lambda xi: xi @ a - beta, 6, 10_000, 6, torch.Generator().manual_seed(r))
            for r in range(30)]
    values = [r.p / truth for r in runs]
    assert all(r.evaluations <= 10_000 and r.reached for r in runs)
    assert abs(statistics.fmean(values) - 1) < 3 * statistics.stdev(values) / math.sqrt(30)
    assert math.sqrt(statistics.fmean((v - 1) ** 2 for v in values)) < 0.5
    assert sum(r.interval[0] <= truth <= r.interval[1] for r in runs) >= 24
    # the interval's δ̄ = Σ δ_l bounds δ = √Σ δ_l² and stays within √L of it
    assert all(r.cov <= r.cov_bound <= math.sqrt(len(r.levels)) * r.cov + 1e-12 for r in runs)


def test_an_unreachable_event_gives_zero_within_budget():
    run = subset_simulation(lambda xi: -1.0 - xi[:, 0].abs().clamp(max=1.0), 3, 2_000, 4,
                            torch.Generator().manual_seed(0))
    assert run.p == 0 and not run.reached and run.evaluations <= 2_000
    # the later levels bound nothing: Wilson's for no hit among the first level's plain draws
    assert run.interval == wilson_interval(0, run.first_level) and run.first_level >= 2_000 // 5


def test_a_hint_far_out_still_spends_the_budget_on_real_levels():
    """π's log P of a level-less tail (-1e4) once left the first level 20 draws and the
    run stopped there with [0, 0.15]."""
    run = subset_simulation(lambda xi: -1.0 - xi[:, 0].abs().clamp(max=1.0), 3, 2_000, 4_000,
                            torch.Generator().manual_seed(0))
    assert run.first_level >= 2_000 // 11 and run.evaluations >= 1_900
    assert run.interval[1] < 0.025


def test_clause_margin_is_positive_exactly_on_the_event():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    event = Any(Below(0, -0.3), Above(1, 0.2))
    pi = explain(model, Gaussian.standard(3), "gaussian")
    found = search(pi, event)
    xi = torch.randn(4000, 3, dtype=F64)
    margin = clause_margin(found.observe, found.clauses)(xi)
    with torch.no_grad():
        assert torch.equal(margin > 0, event.evaluate(model(xi)))


@pytest.fixture(scope="module")
def rough_network():
    """A deep tanh network at large gain, its event {y > t} at P ≈ 2e-4 and a 2·10⁶-sample
    reference."""
    torch.manual_seed(4)
    layers = []
    for n_in, n_out in ((4, 64), (64, 64), (64, 64)):
        linear = nn.Linear(n_in, n_out)
        nn.init.normal_(linear.weight, std=2.5 / math.sqrt(n_in))
        layers += [linear, nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 1)).double()
    D = Gaussian.standard(4)
    x = D.sample(2_000_000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)[:, 0]
    t = torch.quantile(y[:500_000], 1 - 2e-4).item()
    return model, D, Above(0, t), float((y > t).double().mean())


def _rough_estimates(rough_network, seeds: int) -> tuple[list[float], int]:
    """Each seed's estimate over the truth, and how many went to subset simulation (the
    choice checked against the pilot's counts); every estimate within its FLOP budget."""
    model, D, event, truth = rough_network
    ratios, splitting = [], 0
    for seed in range(seeds):
        pi = explain(model, D, "gaussian", seed=seed)
        budget = 8_000 * pi.flops_per_sample
        estimate = pi.probability(event, flops=budget)
        assert estimate.flops <= budget
        few = (estimate.details["pilot_effective_hits"] < PILOT_HITS
               and estimate.details["pilot_mode_hits"] < PILOT_MODE_HITS)
        assert estimate.method == ("gaussian+subset-simulation" if few else "gaussian+design-IS")
        splitting += few
        ratios.append(estimate.value / truth)
    return ratios, splitting


def test_rough_network_switches_to_subset_simulation_and_stays_in_budget(rough_network, monkeypatch):
    """The network has scattered failure islands: where the pilot's importance sampler, on
    unit components at the design points, finds few hits (under PILOT_HITS effective ones
    and under PILOT_MODE_HITS drawn at the design points), the budget goes to subset
    simulation; so it does on most of eight seeds. Over them, the median estimate is
    within a factor 2 of the reference, each within a factor 5."""
    monkeypatch.setattr(guided, "SHAPE_SHARE", 0.0)       # no curvature-shaped components
    ratios, splitting = _rough_estimates(rough_network, 8)
    assert splitting >= 5
    assert 0.5 < statistics.median(ratios) < 2 and all(0.2 < r < 5 for r in ratios)


def test_rough_network_with_shaped_components_keeps_the_same_accuracy(rough_network):
    """With the components shaped to the islands' curvature (`shaping`), the pilot finds
    hits at the design points and most seeds keep importance sampling; the same bounds
    hold: the median within a factor 2 of the reference, each estimate within a factor 5."""
    ratios, splitting = _rough_estimates(rough_network, 8)
    assert splitting <= 4
    assert 0.5 < statistics.median(ratios) < 2 and all(0.2 < r < 5 for r in ratios)


def test_an_event_that_pi_calls_impossible_is_still_sampled():
    """All(y0 > 1, y0 < 0) is empty and π's bulk says log P = -inf; before, sizing subset
    simulation's levels from it raised OverflowError. Now p̂ = 0 within the budget."""
    pi = explain(mlp([4, 16, 16, 2], "tanh", seed=0, bias_std=0.1), Gaussian.standard(4), "cumulant")
    estimate = pi.probability(All(Above(0, 1.0), Below(0, 0.0)), samples=3_000)
    assert estimate.value == 0.0 and estimate.interval[0] == 0.0


def test_wilson_interval_holds_the_ends_exactly():
    assert wilson_interval(0, 1946)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0



def test_a_run_beyond_its_planned_levels_keeps_only_the_first_level_s_bound():
    """A run 12 levels down (the sizes plan for 10) reported [10^-84, 10^-55] for P ≈ 10^-50;
    its upper end is now at least Wilson's for no hit among the first level's draws."""
    from explanations.splitting import SIZED_LEVELS, SplittingResult
    planned = SplittingResult(1e-9, [0.2] * 9, [-1.0] * 9 + [0.0], 5000, True, 500, 500)
    beyond = SplittingResult(1e-12, [0.2] * 12, [-1.0] * 12 + [0.0], 5000, True, 400, 500)
    assert not planned.beyond_plan and beyond.beyond_plan and len(beyond.levels) > SIZED_LEVELS
    assert planned.interval[1] < 1e-7
    assert beyond.interval[1] == pytest.approx(wilson_interval(0, 500)[1]) and beyond.interval[0] < 1e-12
