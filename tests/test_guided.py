"""Design-guided importance sampling (the samples=N budget of cumulant explanations)."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import Above, Any, Below, Detector
from train.bench_detectors import setting

F64 = torch.float64


def test_rare_linear_tail_is_estimated_within_its_standard_error():
    layer = nn.Linear(6, 1).double()
    w, b = layer.weight[0].detach(), layer.bias.item()
    t = b + 5.0 * w.norm().item()
    pi = explain(layer, Gaussian.standard(6), method="cumulant")
    est = pi.probability(Above(0, t), samples=4000)
    truth = torch.special.ndtr(torch.tensor(-5.0, dtype=F64)).item()
    se = est.details["standard_error"]
    assert est.method == "cumulant+design-IS" and est.samples == 4000
    assert abs(est.value - truth) <= 4 * se and se < 0.1 * truth
    assert est.interval[0] <= truth <= est.interval[1] or abs(est.value - truth) <= 4 * se
    assert est.flops > est.details["search_flops"] > 0
    assert est.details["effective_hits"] > 100 and not est.details["degenerate"]
    # the pilot's 400 draws: 280 from N(ξ*, I), half of which fall in the halfspace
    assert 100 <= est.details["pilot_mode_hits"] <= 180
    few = pi.probability(Above(0, t), samples=8)                  # no pilot; at most 8 hits: flagged
    assert few.details["effective_hits"] <= 8 and few.details["degenerate"]


def test_two_failure_modes_and_a_nonlinear_network():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    D = Gaussian.standard(4)
    x = D.sample(2_000_000, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y = model(x)[:, 0]
    lo, hi = torch.quantile(y[:200_000], 0.0007).item(), torch.quantile(y[:200_000], 0.9993).item()
    event = Any(Below(0, lo), Above(0, hi))
    hits = int(((y < lo) | (y > hi)).sum())
    truth, truth_se = hits / 2e6, math.sqrt(hits) / 2e6
    est = explain(model, D, method="cumulant").probability(event, samples=4000)
    assert est.method == "cumulant+design-IS"
    assert abs(est.value - truth) <= 4 * math.hypot(est.details["standard_error"], truth_se)


def test_common_events_use_plain_sampling():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    pi = explain(model, Gaussian.standard(3), method="cumulant")
    est = pi.probability(Above(0, pi.mean[0].item()), samples=1000)
    assert est.method == "sampling" and est.samples == 1000


def test_unions_too_large_for_inclusion_exclusion_are_sampled():
    """13 clauses exceed the zero-sample union (2¹³ - 1 terms); a sampling budget still
    estimates them. The clauses are nested halfspaces of a linear map, so the union is the
    widest, P = Φ(-4)."""
    layer = nn.Linear(6, 1).double()
    w, b = layer.weight[0].detach(), layer.bias.item()
    event = Any(*[Above(0, b + (4.0 + 0.05 * i) * w.norm().item()) for i in range(13)])
    pi = explain(layer, Gaussian.standard(6), method="gaussian")
    est = pi.probability(event, samples=4000)
    truth = torch.special.ndtr(torch.tensor(-4.0, dtype=F64)).item()
    assert est.method == "gaussian+design-IS"
    assert abs(est.value - truth) <= 4 * est.details["standard_error"]


def test_events_on_a_nonlinear_detector_are_sampled_by_what_a_plain_pilot_sees():
    """π's bulk Gaussian puts this ReLU-detector event (p ≈ 1e-4) above 5e-2; before, its
    budget went to plain sampling, which saw no hit in 10⁴ draws. A 200-draw plain pilot
    now finds it rare and design-guided sampling takes the rest; at the median the pilot
    sees the event common and plain sampling runs. The threshold comes from 5·10⁵ draws,
    the truth from 1.5·10⁶ others (≈ 150 hits); the pilot's draws are counted in samples."""
    model, detectors = setting(5)
    scorer = detectors["relu"]
    D = Gaussian.standard(6)
    with torch.no_grad():
        score = scorer(model(D.sample(2_000_000, generator=torch.Generator().manual_seed(2)).float()))[:, 0]
    pi = explain(model, D, "cumulant")
    threshold = float(torch.quantile(score[:500_000], 0.9999))
    truth = float((score[500_000:] > threshold).double().mean())
    event = Detector(scorer, threshold=threshold)
    assert pi.probability(event).details["bulk_log10"] > math.log10(5e-2)
    rare = pi.probability(event, flops=10_000 * pi.flops_per_sample)
    assert rare.method == "cumulant+design-IS" and rare.flops <= 10_000 * pi.flops_per_sample
    assert rare.details["detector_pilot_hits"] < 4
    spread = 3 * (truth / 1_500_000) ** 0.5                      # the truth's own 3 standard errors
    assert rare.interval[0] - spread <= truth <= rare.interval[1] + spread
    common = pi.probability(Detector(scorer, threshold=float(score.median())), samples=2_000)
    assert common.method == "sampling" and common.samples == 2_000 and common.details["detector_pilot_hits"] >= 4


def test_importance_sums_stay_in_log_space_far_in_a_tail():
    """P(y0 > t) ≈ 1e-172 on a linear model: weights near 1e-172 square to 0 in float64, which
    once read as no effective hit and sent the estimate to subset simulation (P = 0)."""
    model = nn.Linear(3, 2).double()
    t = float((model.bias[0] + 28 * model.weight[0].norm()).detach())
    estimate = explain(model, Gaussian.standard(3), "gaussian").probability(Above(0, t), samples=4_000)
    exact = float(torch.special.log_ndtr(torch.tensor(-28.0, dtype=torch.float64))) / math.log(10)
    assert "design-IS" in estimate.method and abs(estimate.log10 - exact) < 0.1


def test_a_run_with_few_hits_gets_the_plain_bound_of_its_defensive_draws():
    """The defensive fifth of the draws is plain sampling: with no hit the interval is
    Wilson's on it, and a run carried by one small weight (8.6e-32 for p ≈ 1e-6 once)
    reaches at least that; a degenerate run with many hits of tiny weight is not sent to 1."""
    from explanations.importance import Weighted
    from explanations.montecarlo import wilson_interval
    def log(*weights: float) -> torch.Tensor:
        return torch.tensor(weights, dtype=torch.float64).log()

    empty = Weighted(100, log(), 20, 0)
    assert empty.interval() == (0.0, wilson_interval(0, 20)[1])
    one = Weighted(100, log(8.6e-30), 20, 0)
    assert one.degenerate and one.interval()[1] == wilson_interval(0, 20)[1]
    crowded = Weighted(10_000, log(1.7e-11, *[1e-30] * 6_999), 2_000, 0)
    assert crowded.degenerate and crowded.interval()[1] < 2e-3
    many = Weighted(10_000, log(*[1.45e-6, 0.55e-6] * 200), 2_000, 0)
    assert not many.degenerate and many.interval()[1] < 1e-7


def test_a_small_flop_budget_is_spent_not_refused():
    """An event π puts at 1e-2 to 5e-2 once got an uncapped search that cost more than a
    3,000-sample-equivalent budget, and the call raised ValueError. P = 0.01497 ± 0.00006
    (4·10⁶ draws). Over π's seeds 0–39 the estimates' relative RMSE is 0.191 and their
    intervals cover P 35 times (without the pilot's descents, `adaptation`: 0.228 and 37;
    the RMSE of 40 runs is good to about ±11%)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0)
    truth, covered, squares = 0.01497, 0, 0.0
    for seed in range(40):
        pi = explain(model, Gaussian.standard(6), "gaussian", seed=seed)
        budget = 3_000 * pi.graph.flops_per_sample
        estimate = pi.probability(Any(Above(0, 2.62), Above(1, 0.966)), flops=budget)
        assert estimate.flops <= budget and estimate.samples > 500
        covered += estimate.interval[0] < truth < estimate.interval[1]
        squares += (estimate.value / truth - 1) ** 2
    assert covered >= 34 and math.sqrt(squares / 40) <= 0.25


def test_a_flop_budget_is_a_cap_even_when_the_search_would_pass_it():
    """The search makes no pass that would leave the draws fewer than their minimum, so the
    whole estimate stays within `flops`. Before, on this net a 1,000-sample-equivalent budget
    raised ValueError after the search had spent about twice the budget."""
    from train.models import mlp
    model = mlp([16, 32, 32, 32, 2], "tanh", seed=1, dtype=torch.float64)
    pi = explain(model, Gaussian.standard(16), "cumulant")
    unit, sd = pi.graph.flops_per_sample, pi.cov.diagonal().sqrt()
    events = [Above(0, float(pi.mean[0] + 3 * sd[0])),
              Any(Above(0, float(pi.mean[0] + 3 * sd[0])), Below(1, float(pi.mean[1] - 4 * sd[1])))]
    for event in events:
        for sample_equivalents in (50, 300, 1000):
            cap = pi.build_flops + sample_equivalents * unit
            estimate = pi.probability(event, flops=cap)
            assert estimate.flops <= cap and estimate.samples >= 1


def test_a_probability_below_float64_s_range_keeps_a_positive_upper_end():
    """log10 P = -442 (y ~ N(0, 4) above 90): p̂ underflows to 0, its log does not, and the
    interval's upper end is the smallest positive double, not 0 (before: [0, 0])."""
    linear = nn.Sequential(nn.Linear(4, 1)).double()
    with torch.no_grad():
        linear[0].weight.fill_(1.0), linear[0].bias.zero_()
    estimate = explain(linear, Gaussian.standard(4), "gaussian").probability(Above(0, 90.0), samples=3000)
    assert estimate.value == 0.0 and abs(estimate.log10 + 442.0) < 0.5
    assert estimate.interval[0] == 0.0 < estimate.interval[1] < 1e-300


def test_thresholds_far_beyond_float64_s_squares_and_numpy_budgets():
    """A design point whose |ξ*|² overflows carries no probability a float64 sum can hold: it
    is dropped instead of crashing the mixture (before: RuntimeError from multinomial).
    `flops` takes NumPy numbers and 0-d tensors, as `samples` does."""
    import numpy as np
    linear = nn.Sequential(nn.Linear(4, 1)).double()
    pi = explain(linear, Gaussian.standard(4), "gaussian")
    assert pi.probability(Above(0, 1e200), samples=1000).value == 0.0
    budget = 3000 * pi.graph.flops_per_sample
    for flops in (np.int64(budget), np.float32(budget), torch.tensor(float(budget))):
        assert pi.probability(Above(0, 0.5), flops=flops).flops <= budget
    with pytest.raises(ValueError, match="flops must be a positive number"):
        pi.probability(Above(0, 0.5), flops=True)


def test_the_bulk_test_keeps_to_its_share_of_a_flop_budget():
    """A 6-clause union's inclusion–exclusion once cost 1,435 sample-equivalents of a 1,000
    budget, and the call raised after spending it. Under a FLOP budget the bulk test takes
    Boole's bracket where inclusion–exclusion would pass a quarter of what π's build leaves,
    and plain sampling runs where even the bracket would."""
    from train.models import mlp
    model = mlp([8, 64, 3], "relu", seed=4, dtype=torch.float64)
    pi = explain(model, Gaussian.standard(8), "gaussian")
    unit = pi.graph.flops_per_sample
    sd = pi.cov.diagonal().sqrt()
    event = Any(*[kind(k, float(pi.mean[k] + sign * 3 * sd[k])) for k in range(3)
                  for kind, sign in ((Above, 1), (Below, -1))])
    for sample_equivalents in (200, 1000, 5000):
        cap = pi.build_flops + sample_equivalents * unit
        estimate = pi.probability(event, flops=cap)
        assert estimate.flops <= cap and estimate.samples >= 1
    with pytest.raises(ValueError, match="flops must be a positive number, got '1e9'"):
        pi.probability(event, flops="1e9")
    with pytest.raises(ValueError, match="flops must be a positive number, got tensor\\(True\\)"):
        pi.probability(event, flops=torch.tensor(True))
    import numpy as np
    assert pi.probability(event, flops=np.array(float(1000 * unit + pi.build_flops))).samples >= 1


def test_a_union_past_inclusion_exclusion_is_bounded_by_its_bracket_alone():
    """30 clauses: the 2³⁰-term bound is never formed (a 24-clause union once took 25 s in it)."""
    from explanations.guided import GuidedSampling
    assert GuidedSampling._bulk_limit([1] * 30, 30, 256, 2, cap=1e12) == {"max_clauses": 0}
    assert GuidedSampling._bulk_limit([1] * 30, 30, 256, 2, cap=1.0) is None
    assert GuidedSampling._bulk_limit([1, 2], 3, 256, 2, cap=1e12) == {}
