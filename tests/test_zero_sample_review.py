"""Zero-sample probabilities a review found wrong: events a bounded output cannot reach (or
cannot miss), saturated design points, and modes of a common clause near the origin."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import Above, All, Any, ArgMax, Below, Detector
from explanations.ranges import settled
from train.models import mlp

F64 = torch.float64


def unit(act: nn.Module) -> nn.Sequential:
    """y = act(0.6 x1 + 0.8 x2), x ~ N(0, I): y = act(z) with z ~ N(0, 1)."""
    model = nn.Sequential(nn.Linear(2, 1), act, nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.6, 0.8]]))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    return model


@pytest.mark.parametrize("method", ["gaussian", "cumulant", "polynomial", "auto"])
def test_events_out_of_an_outputs_reach_are_settled_exactly(method):
    """P(tanh(z) > 1) is 0 and P(relu(z) < -0.2) is 0, P(relu(z) > -0.2) is 1 (they had come
    out 0.06, 0.13–0.26 and 0.74–0.87); a threshold inside the range is left to π."""
    D = Gaussian.standard(2)
    squashed, rectified = explain(unit(nn.Tanh()), D, method), explain(unit(nn.ReLU()), D, method)
    never = squashed.probability(Above(0, 1.0))
    assert never.value == 0.0 and never.interval == (0.0, 0.0) and never.method.endswith("+range")
    assert never.flops > squashed.build_flops
    assert rectified.probability(Below(0, -0.2)).value == 0.0
    always = rectified.probability(Above(0, -0.2))
    assert always.value == 1.0 and always.interval == (1.0, 1.0)
    assert not squashed.probability(Above(0, 1 - 1e-12)).method.endswith("+range")


def test_the_range_check_is_sound_at_its_edges():
    """The box holds the real outputs with rounding taken outward: never settles an event that
    sampling sees happen, on a detector, a union and ArgMax."""
    torch.manual_seed(0)
    model = mlp([4, 16, 2], "tanh", seed=1, bias_std=0.1)
    detector = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    graph = explain(model, Gaussian.standard(4)).graph
    with torch.no_grad():
        y = model(5 * torch.randn(200_000, 4))
        score = detector(y)[:, 0]
    top = float(score.max())
    for threshold, expected in ((top + 10.0, False), (top - 1e-3, None)):
        event = Detector(detector, threshold)
        event.check(2)
        assert settled(event, graph)[0] is expected
    bound = float(y[:, 0].abs().max())
    assert settled(Any(Above(0, 100.0), Below(0, 100.0)), graph)[0] is True
    assert settled(All(Above(0, 100.0), Above(1, -bound)), graph)[0] is False
    argmax = ArgMax(1)
    argmax.check(2)
    assert settled(argmax, graph)[0] is None


def test_a_saturated_design_point_is_reached():
    """P(sigmoid(z) > 1 - 1e-7) = Φ(-logit(1 - 1e-7)) = 10^-58.0: the search's absolute ridge
    had shrunk its steps 100× once the sigmoid saturated, found no design point and the copula
    said 10^-2.1."""
    h = 1 - 1e-7
    truth = math.log10(0.5 * math.erfc(math.log(h / (1 - h)) / math.sqrt(2)))
    estimate = explain(unit(nn.Sigmoid()), Gaussian.standard(2), "cumulant").probability(Above(0, h))
    assert "design" in estimate.method and abs(estimate.log10 - truth) < 2.0


@pytest.mark.parametrize("method", ["cumulant", "polynomial", "auto"])
def test_a_threshold_just_inside_a_bounded_range_is_a_tail(method):
    """P(tanh(z) > 0.999) = Φ(-atanh 0.999) = 7.2e-5. π's Gaussian of y calls it common (5.6e-2:
    it does not know that y < 1), the plain draws that check that claim find no hit, and the
    design path then reads 8.9e-5 by its quadratics (it had read 0.06 before the check), or,
    where the draws the budget leaves contradict them, 7.1e-5 by those draws."""
    truth = math.log10(0.5 * math.erfc(math.atanh(0.999) / math.sqrt(2)))
    estimate = explain(unit(nn.Tanh()), Gaussian.standard(2), method).probability(Above(0, 0.999))
    assert estimate.method.endswith(("+design", "+design+draws")) and estimate.details["pilot_hits"] == 0
    assert abs(estimate.log10 - truth) < 0.3


def test_modes_of_a_common_clause_near_the_origin_count_once():
    """Four modes at β ≈ 0 of ArgMax(0) (p = 0.545) had put Any(detector, ArgMax(0)) at 1.0."""
    model = mlp([4, 16, 16, 2], "tanh", seed=2, bias_std=0.3).double()
    torch.manual_seed(2)
    detector = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1)).double()
    x = torch.randn(400_000, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        y = model(x)
        threshold = float(torch.quantile(detector(y)[:, 0].float(), 1 - 1e-3))
    event = Any(Detector(detector, threshold), ArgMax(0))
    truth = float(event.evaluate(y).double().mean())
    pi = explain(model, Gaussian.standard(4), "cumulant")
    assert abs(pi.probability(event).value - truth) < 0.1


def test_the_range_check_rounds_in_the_networks_own_precision():
    """A float32 net y = tanh(100x) + 7e-8·tanh(100x) - 1 computes 1.19e-7 when saturated,
    above the real supremum 7e-8: the box in float64 rounding had called P(y > 1e-7) = 0."""
    model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight[:] = torch.tensor([[100.0], [100.0]])
        model[0].bias.zero_()
        model[2].weight[:] = torch.tensor([[1.0, 7e-8]])
        model[2].bias[:] = -1.0
    graph = explain(model, Gaussian.standard(1)).graph
    assert graph.dtype == torch.float32 and settled(Above(0, 1e-7), graph)[0] is None
    assert settled(Above(0, 1e-6), graph)[0] is False


def test_the_range_check_sees_unbounded_and_steep_activations():
    """A leaky ReLU's limit at -∞ is -∞ (its value at -1e30 had stood in for it), and a steep
    fused activation's minimum is bounded by search, not by a slope assumed ≤ 2."""
    leaky = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(0.01)).double()
    with torch.no_grad():
        leaky[0].weight.fill_(1e31)
        leaky[0].bias.zero_()
    graph = explain(leaky, Gaussian.standard(1)).graph
    assert settled(Below(0, -2e28), graph)[0] is None
    steep = nn.Sequential(nn.Linear(1, 1), nn.SiLU(), nn.LeakyReLU(1e6)).double()
    graph = explain(steep, Gaussian.standard(1)).graph
    with torch.no_grad():
        low = float(steep(torch.linspace(-3, 3, 200_001, dtype=F64)[:, None]).min())
    assert settled(Below(0, low + 1e-3), graph)[0] is None


def test_a_detector_with_an_inverted_final_activation_is_not_settled():
    """The inverse of a saturating final sigmoid is exact arithmetic; float32 sigmoid(16.7) = 1
    fires above 1 - 5e-8 where the inverse says the score cannot reach."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1))
    detector = nn.Sequential(nn.Linear(1, 1), nn.Tanh(), nn.Linear(1, 1), nn.Sigmoid())
    with torch.no_grad():
        detector[2].weight.fill_(16.7)
        detector[2].bias.zero_()
    event = Detector(detector, 1 - 5e-8)
    event.check(1)
    assert settled(event, explain(model, Gaussian.standard(2)).graph)[0] is None


def test_the_range_check_is_charged_when_it_settles_nothing():
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    pi = explain(model, Gaussian.standard(3), "gaussian")
    event = Above(0, 0.1)
    box = settled(event, pi.graph)[1]
    estimate = pi.probability(event)
    assert box > 0 and estimate.flops >= pi.build_flops + box
    assert estimate.details["query_flops"] == estimate.flops - pi.build_flops
