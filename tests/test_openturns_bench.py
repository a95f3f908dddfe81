"""The limit state of an event (no OpenTURNS needed) and the OpenTURNS baseline of bench sampling."""
import csv
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, compile_model
from explanations.events import Above, All, Any, ArgMax, Below, Detector
from train import bench_sampling, bench_tails
from train.limit_state import BudgetExceeded, LimitState


def _net(seed: int, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), activation(), nn.Linear(16, 3))


def _detector() -> nn.Module:
    """sigmoid(2 y_0 - 2 y_1 + y_2)."""
    linear = nn.Linear(3, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -2.0, 1.0]]))
        linear.bias.zero_()
    return nn.Sequential(linear, nn.Sigmoid())


@pytest.mark.parametrize("event", [
    Above(0, 0.2), Below(1, -0.1), All(Above(0, 0.0), Below(2, 0.1)),
    Any(All(Above(0, 0.1), Above(1, -0.2)), Below(2, -0.3)), ArgMax(1),
    All(Detector(_detector(), threshold=0.6), Below(0, 0.4)),
], ids=repr)
def test_margin_is_positive_exactly_where_the_event_holds(event):
    torch.manual_seed(1)
    D = Gaussian(torch.tensor([0.3, -0.2, 0.0, 0.5]), torch.eye(4) + 0.3)
    limit = LimitState(compile_model(_net(0)), D, event)
    xi = torch.randn(20_000, 4, dtype=torch.float64)
    v = limit.observe(xi)
    holds = event.evaluate(v[:, :3])
    assert 0.02 < holds.double().mean() < 0.98          # both sides are tested
    assert torch.equal(limit.margin(v) > 0, holds)
    assert torch.equal(limit(xi) > 0, holds)
    assert limit.evaluations == 20_000


def test_gradient_and_counter():
    limit = LimitState(compile_model(_net(2, nn.Tanh)), Gaussian.standard(4), Any(Above(0, 0.5), Below(1, -0.5)),
                       limit=100)
    point = torch.tensor([0.3, -0.7, 0.2, 1.1], dtype=torch.float64)
    step = 1e-6 * torch.eye(4, dtype=torch.float64)
    differences = (limit(point + step) - limit(point - step)) / 2e-6
    assert torch.allclose(limit.gradient(point), differences, atol=1e-6)
    assert limit.evaluations == 8 + 3
    with pytest.raises(BudgetExceeded):
        limit(torch.zeros(90, 4, dtype=torch.float64))
    assert limit.evaluations == 11


def _linear_case(t: float):
    w = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.zero_()
    exact = 0.5 * math.erfc(t / w.norm().item() / math.sqrt(2))       # Φ(-t/|w|)
    return model, exact


def test_form_is_exact_on_a_linear_network_and_is_charged_what_it_used():
    ot_methods = pytest.importorskip("train.openturns_methods")

    class Spy(LimitState):
        def __init__(self, *args):
            super().__init__(*args)
            self.rows = self.gradients = 0

        def __call__(self, xi):
            self.rows += xi.shape[0]
            return super().__call__(xi)

        def gradient(self, xi):
            self.gradients += 1
            return super().gradient(xi)

    model, exact = _linear_case(5.0)
    limit = Spy(compile_model(model), Gaussian.standard(4), Above(0, 5.0))
    run = ot_methods.approximation("form", limit, budget=1000)
    assert run.note == ""
    assert abs(run.p - exact) / exact < 1e-6
    assert limit.gradients > 0
    assert run.evaluations == limit.evaluations == limit.rows + 3 * limit.gradients
    assert run.evaluations < 1000


def test_stochastic_methods_stay_near_the_budget():
    ot_methods = pytest.importorskip("train.openturns_methods")
    model, exact = _linear_case(4.0)
    limit = LimitState(compile_model(model), Gaussian.standard(4), Above(0, 4.0))
    for kind in ot_methods.STOCHASTIC:
        size = ot_methods.level_size(kind, limit, 4000)
        runs = [ot_methods.simulate(kind, limit, 4000, size, seed)[0] for seed in range(3)]
        assert all(r.p is not None and abs(r.p - exact) / exact < 1 for r in runs)
        assert 0.6 * 4000 <= sum(r.evaluations for r in runs) / 3 <= 1.5 * 4000


def test_bench_sampling_with_openturns_fills_its_columns(tmp_path, monkeypatch):
    pytest.importorskip("openturns")
    monkeypatch.setattr(bench_sampling, "zoo", lambda quick: bench_tails.zoo(quick=True)[:1])
    out = tmp_path / "out"
    rows = bench_sampling.run(repeats=2, budget=3000, quick=True, cache=tmp_path / "cache", progress=False,
                              csv_path=out / "sampling.csv", png_path=out / "sampling.png",
                              runs_path=out / "runs.csv", openturns=True, openturns_repeats=2)
    assert rows
    with open(out / "sampling.csv") as handle:
        table = list(csv.DictReader(handle))
    for row in table:
        assert row["ot_repeats"] == "2"
        for method in ("form", "sorm", "subset", "cross_entropy"):
            assert float(row[f"{method}_evaluations"]) > 0
        for column in ("subset_rel_rmse", "cross_entropy_rel_rmse", "best_ot_rel_error", "best_ot_over_hybrid"):
            assert float(row[column]) >= 0
        assert row["best_ot"] in ("form", "sorm", "subset", "cross_entropy")
    assert (out / "sampling_openturns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
