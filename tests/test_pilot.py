"""The plain pilot that checks zero-sample claims that an event is common (`explanations.pilot`)."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import All, Above, Any, Below
from explanations.pilot import CONTRADICTION, PILOT_DRAWS, Pilot, checkable
from train.models import mlp

F64 = torch.float64


def sampled(model, dim, event, draws, seed):
    """P(event) from `draws` plain draws, in batches of 10⁶."""
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    with torch.no_grad():
        for start in range(0, draws, 1_000_000):
            x = torch.randn(min(1_000_000, draws - start), dim, generator=generator, dtype=F64)
            hits += int(event.evaluate(model(x)).sum())
    return hits / draws


def test_contradiction_is_the_binomial_tail():
    """P(Bin(n, p) ≤ h) against math.comb sums, on both sides of the level; checkable claims
    are those whose zero-hit probability e^{-np} can fall below it."""
    for n, p, h in ((256, 0.05, 3), (256, 0.05, 4), (256, 0.05, 5), (1000, 0.01, 0), (1000, 0.01, 2), (40, 0.5, 9)):
        tail = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(h + 1))
        assert Pilot(h, n, 0).contradicts(math.log(p)) == (tail < CONTRADICTION)
    assert Pilot(0, 256, 0).contradicts(math.log(0.05)) and not Pilot(40, 256, 0).contradicts(math.log(0.16))
    assert not Pilot(0, 256, 0).contradicts(-math.inf) and Pilot(255, 256, 0).contradicts(0.0)
    assert checkable(math.log(0.02)) and not checkable(math.log(0.017))
    assert checkable(math.log(0.002), 4000) and not checkable(math.log(0.001), 4000)
    assert Pilot(0, PILOT_DRAWS, 0).interval[0] == 0.0


def test_a_claim_too_low_is_contradicted_both_ways_only():
    """With both_ways, P(Bin(n, p) ≥ h) < CONTRADICTION contradicts too (against math.comb
    sums); one way, a claim below the draws' rate stands."""
    for n, p, h in ((256, 0.05, 22), (256, 0.05, 23), (256, 0.05, 25), (1000, 0.01, 18), (1000, 0.01, 19),
                    (40, 0.5, 31)):
        low = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(h + 1))
        high = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(h, n + 1))
        both = low < CONTRADICTION or high < CONTRADICTION
        assert Pilot(h, n, 0).contradicts(math.log(p), both_ways=True) == both
        assert Pilot(h, n, 0).contradicts(math.log(p)) == (low < CONTRADICTION)
    assert Pilot(1, 256, 0).contradicts(-math.inf, both_ways=True) and not Pilot(1, 256, 0).contradicts(-math.inf)


@pytest.mark.parametrize("widths, activation, level", [([4, 8, 6], "relu", 0.1), ([4, 8, 6], "relu", 0.2),
                                                       ([16, 64, 64, 6], "gelu", 0.1)])
def test_at_least_two_of_six_alarms_is_read_by_the_budgets_draws_not_boole(widths, activation, level):
    """Any(All(Above(i, q_i), Above(j, q_j)), i < j): at least two of six outputs past their
    1 - `level` quantiles, 15 two-row clauses, past inclusion–exclusion's 12. The copula's
    union is then Boole's bracket, whose lower end max_i P(C_i) read -0.38 and -0.39 dex
    (4 → 8 → 6), and whose lower end under the 5e-2 gate sent the GELU net's union to the
    design path, which found no design point beyond the unit ball: -0.57 dex at 11,350
    sample-equivalents. Now the bracket's upper end decides that the union is common and
    the draws the budget leaves check the copula both ways: within 0.05 dex of 2·10⁶ plain
    draws (p ≈ 0.12–0.33: the draws' own spread is about 0.01 dex) and 3 of the draws' own
    sds (from their 95% Wilson interval), within 10⁴."""
    import itertools
    model = mlp(widths, activation, seed=0, bias_std=0.1)
    with torch.no_grad():
        y = model(torch.randn(2_000_000, widths[0], generator=torch.Generator().manual_seed(1)))
    q = torch.quantile(y[:500_000], 1 - level, dim=0)
    event = Any(*[All(Above(i, float(q[i])), Above(j, float(q[j]))) for i, j in itertools.combinations(range(6), 2)])
    truth = float(event.evaluate(y).double().mean())
    estimate = explain(model, Gaussian.standard(widths[0]), "auto").probability(event)
    assert estimate.method.endswith("+pilot") and estimate.sample_equivalents <= 10_000
    assert abs(math.log10(estimate.value / truth)) < 0.05
    low, high = estimate.interval
    assert abs(estimate.value - truth) < 3 * (high - low) / (2 * 1.96)       # 3 of the draws' sds


def test_a_many_clause_union_whose_search_would_pass_the_budget_stays_within_it():
    """At least two of six outputs past their 3% quantiles on a 4 → 8³ → 6 ReLU net (15
    two-row clauses, p ≈ 3.5e-2): each clause's pilot cloud and first descent had run
    regardless of the search's effort, 24,000 sample-equivalents of 10⁴. The search now makes
    no pass past 1 - DRAWS_RESERVE of the budget: within 10⁴, and within 0.15 dex of 10⁶
    plain draws (about 35,000 hits)."""
    import itertools
    model = mlp([4, 8, 8, 8, 6], "relu", seed=899, bias_std=0.1)
    with torch.no_grad():
        y = model(torch.randn(1_000_000, 4, generator=torch.Generator().manual_seed(52)))
    q = torch.quantile(y[:300_000], 1 - math.sqrt(1e-3), dim=0)
    event = Any(*[All(Above(i, float(q[i])), Above(j, float(q[j]))) for i, j in itertools.combinations(range(6), 2)])
    truth = float(event.evaluate(y).double().mean())
    for seed in (0, 1):
        estimate = explain(model, Gaussian.standard(4), "auto", seed=seed).probability(event)
        assert estimate.sample_equivalents <= 10_000
        assert abs(math.log10(estimate.value / truth)) < 0.15


def test_a_rare_event_on_the_short_side_of_a_skewed_output_takes_the_design_path():
    """relu 2 → 8 → 8 → 1 (bias sd 0.1): y has skew -1.8 and an upper edge near 0.7. π's
    Gaussian puts P(y > 0.3) above the 5e-2 gate (its Cornish–Fisher copula read 0.3–0.4);
    256 plain draws contradict it and the design path reads it within 0.3 dex of 4·10⁶
    draws (about 2,800 hits), by its quadratics or the importance draws that check them."""
    model = mlp([2, 8, 8, 1], "relu", seed=1, bias_std=0.1).double()
    event = Above(0, 0.3)
    truth = sampled(model, 2, event, 4_000_000, seed=0)
    pi = explain(model, Gaussian.standard(2), "auto")
    bulk = torch.special.ndtr((pi.mean[0] - 0.3) / pi.cov[0, 0].sqrt())
    assert float(bulk) > 0.05
    estimate = pi.probability(event)
    assert estimate.method.endswith(("+design", "+design+draws"))
    assert abs(math.log10(estimate.value / truth)) <= 0.3
    assert estimate.sample_equivalents <= 10_000


def test_a_model_ending_in_tanh_is_read_near_its_bound():
    """gelu 8 → 32 → 32 → 2 → tanh: Above(0, t) with t = 0.996, near the bound, is 1.5 of
    π's Gaussian sds out; the pilot sends it to the design path, which reads it within
    0.5 dex of 4·10⁶ draws (it read 680× too high)."""
    base = mlp([8, 32, 32, 2], "gelu", seed=9, bias_std=0.1).double()
    model = nn.Sequential(*base, nn.Tanh()).double()
    event = Above(0, 0.99587)
    truth = sampled(model, 8, event, 4_000_000, seed=0)
    assert 5e-5 < truth < 2e-4
    estimate = explain(model, Gaussian.standard(8), "auto").probability(event)
    assert estimate.method.endswith(("+design", "+design+draws"))
    assert abs(math.log10(estimate.value / truth)) <= 0.5


def test_where_the_structure_finds_nothing_the_budget_buys_draws_that_answer():
    """relu 4 → 16³ → 4 (seed 5, bias sd 0.1): Above(0, 0.1) and All(Above(0, -0.088),
    Below(1, -0.385)) are not reached by any input up to |x| = 64 (a review's ray scan), and
    the design search finds no point. The copula had read 0.03 and 6e-3; the draws the
    budget leaves contradict it (no hit), and the answer is moved into their Wilson
    interval: its upper end, under 1e-3, within 10⁴ sample-equivalents."""
    model = mlp([4, 16, 16, 16, 4], "relu", seed=5, bias_std=0.1).double()
    pi = explain(model, Gaussian.standard(4), "auto")
    for event in (Above(0, 0.1), All(Above(0, -0.0884), Below(1, -0.385))):
        estimate = pi.probability(event)
        assert estimate.method.endswith("+pilot") and estimate.details["pilot_hits"] == 0
        assert estimate.interval[0] == 0.0 and estimate.value == pytest.approx(estimate.interval[1], rel=1e-12)
        assert estimate.value < 1e-3
        assert estimate.samples > PILOT_DRAWS and estimate.sample_equivalents <= 10_000
        assert estimate.details["contradicted_log10"] > -2.5
