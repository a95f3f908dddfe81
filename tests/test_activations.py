"""The activations beyond ReLU, GELU, tanh and sigmoid, end to end: leaky ReLU, ELU, SiLU,
softplus and Mish through `gaussian` and `cumulant` against sampling, and a detector's final
increasing activation moved into its threshold."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, InvalidEvent, explain
from explanations.events import Above, Detector
from tracker import Tracker
from storage import open_run

F64 = torch.float64
MODULES = {"leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": lambda: nn.ELU(0.5), "silu": nn.SiLU,
           "softplus": lambda: nn.Softplus(2.0), "mish": nn.Mish}
SAMPLES = 400_000


def network(make: callable, seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), make(), nn.Linear(32, 32), make(), nn.Linear(32, 1)).to(F64)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(1.4)
                layer.bias.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("method", ["gaussian", "cumulant"])
def test_mean_and_variance_against_sampling(name, method):
    """E[y] within 4 sampling standard errors plus 0.01 sd, Var[y] within 5% (`cumulant`) or
    25% (`gaussian`). Measured on these nets, the same for ReLU, GELU and the new kinds:
    mean errors 0.002–0.006 sd; variance ratios 0.97–0.99 (`cumulant`) and 0.82–0.89
    (`gaussian`, which drops the skew later layers inherit; ReLU 0.82, GELU 0.79)."""
    model = network(MODULES[name])
    with torch.no_grad():
        y = model(torch.randn(SAMPLES, 8, generator=torch.Generator().manual_seed(0), dtype=F64))[:, 0]
    pi = explain(model, Gaussian.standard(8), method)
    sd = float(y.std())
    error = abs(float(pi.expectation().value[0]) - float(y.mean()))
    assert error <= 4 * sd / math.sqrt(SAMPLES) + 0.01 * sd
    assert float(pi.cov[0, 0]) == pytest.approx(sd * sd, rel=0.05 if method == "cumulant" else 0.25)


def test_sampled_tail_of_a_leaky_net_covers_the_truth():
    """The threshold is the 1 - 1e-3 quantile of SAMPLES draws; its exceedance probability,
    from 10 × SAMPLES fresh draws, is 1.017e-3 ± 0.016e-3 (the quantile's own draws put it
    at 1e-3 ± 5%, too rough for a 10⁴-draw estimate's interval of ±7%)."""
    model = network(MODULES["leaky_relu"])
    with torch.no_grad():
        y = model(torch.randn(SAMPLES, 8, generator=torch.Generator().manual_seed(0), dtype=F64))[:, 0]
        threshold = float(y.quantile(1 - 1e-3))
        fresh = model(torch.randn(10 * SAMPLES, 8, generator=torch.Generator().manual_seed(1), dtype=F64))[:, 0]
    truth = float((fresh > threshold).double().mean())
    estimate = explain(model, Gaussian.standard(8), "cumulant", seed=3).probability(Above(0, threshold), samples=10_000)
    assert estimate.interval[0] <= truth <= estimate.interval[1]


@pytest.mark.parametrize("final, threshold, inverse", [
    (lambda: nn.LeakyReLU(0.1), -0.05, -0.5), (lambda: nn.LeakyReLU(0.1), 0.3, 0.3),
    (lambda: nn.ELU(0.5), -0.25, math.log(0.5)), (lambda: nn.Softplus(2.0), 0.1, math.log(math.expm1(0.2)) / 2)])
def test_detector_final_activation_moves_into_the_threshold(final, threshold, inverse):
    torch.manual_seed(0)
    linear = nn.Linear(2, 1)
    detector = Detector(nn.Sequential(linear, final()), threshold)
    assert detector.score_threshold() == pytest.approx(inverse, rel=1e-12)
    assert not detector.scores_nonlinearly()
    model = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2))
    pi = explain(model, Gaussian.standard(3), "gaussian")
    assert pi.probability(detector).value == pytest.approx(pi.probability(Detector(linear, inverse)).value, rel=1e-9)


@pytest.mark.parametrize("final, threshold", [(lambda: nn.ELU(0.5), -0.5), (lambda: nn.Softplus(), 0.0),
                                              (nn.ReLU, -0.1)])
def test_detector_threshold_outside_the_final_range_is_refused(final, threshold):
    with pytest.raises(InvalidEvent, match="outside"):
        Detector(nn.Sequential(nn.Linear(2, 1), final()), threshold)


def test_tracking_a_leaky_network_round_trips_through_the_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "run.h5"
    with Tracker(model, optimizer, Gaussian.standard(4), method="cumulant", events={"high": Above(0, 2.0)},
                 path=path, every=10) as tracker:
        for _ in range(40):
            x = torch.randn(512, 4)
            loss = ((model(x) - x[:, :1]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    live = tracker.explanation.expectation().value
    checkpoint = list(open_run(path))[-1]
    kinds = repr(checkpoint.explanation.graph)
    assert "leaky_relu:0.2" in kinds and "elu:1.0" in kinds
    torch.testing.assert_close(checkpoint.explanation.expectation().value, live)


def test_bare_family_names_take_torch_s_defaults():
    from explanations.events import final_inverse
    valid, inverse, span = final_inverse("elu")
    assert span == "(-1, ∞)" and inverse(-0.5) == pytest.approx(math.log(0.5))
    assert final_inverse("softplus")[1](1.0) == pytest.approx(math.log(math.expm1(1.0)))


class ClampedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(6, 6), nn.ReLU6())

    def forward(self, x):
        return x + self.f(x)


def test_clamps_are_exact_relu_networks_with_sound_moments():
    """ReLU6, Hardtanh and Hardsigmoid compile into l + relu(u - l) - relu(u - h), exactly;
    `cumulant`'s mean through them (inside a residual block too) within 4 s.e. + 0.01 sd."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardtanh(-0.5, 2.0), ClampedBlock(), nn.Linear(6, 6),
                          nn.Hardsigmoid(), nn.Linear(6, 2)).to(F64)
    x = 3 * torch.randn(256, 4, dtype=F64)
    torch.testing.assert_close(explain(model, Gaussian.standard(4)).graph.forward(x), model(x), rtol=0, atol=1e-13)
    with torch.no_grad():
        y = model(torch.randn(SAMPLES, 4, dtype=F64, generator=torch.Generator().manual_seed(1)))
    error = (explain(model, Gaussian.standard(4), "cumulant").expectation().value - y.mean(0)).abs()
    assert (error <= 4 * y.std(0) / math.sqrt(SAMPLES) + 0.01 * y.std(0)).all()


def test_the_shape_flags_match_the_derivative_s_signs():
    """`increasing`: f′ ≥ 0 everywhere; `quasiconvex`: f′ changes sign once, from - to +
    (f falls, then rises), which `spatial.expand_pools` relies on to move f after a max pool.
    Checked on a grid of 10⁶ points over [-30, 30]."""
    from explanations.activations import ACTIVATIONS, activation
    z = torch.linspace(-30, 30, 1_000_001, dtype=F64)
    for kind in [*ACTIVATIONS, "leaky_relu:0.1", "elu:0.5", "softplus:2.0", "leaky_relu:-0.5", "elu:-0.5"]:
        act = activation(kind)
        signs = torch.sign(act.derivative(z))
        signs = signs[signs != 0]
        changes = int((signs[1:] != signs[:-1]).sum())
        if act.increasing:
            assert bool((signs >= 0).all()), kind
        assert act.quasiconvex == (changes == 1 and signs[0] < 0 and signs[-1] > 0), kind
