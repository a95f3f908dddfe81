"""Catastrophe-aware training: FORM's probability at the design points as a differentiable
penalty, against closed forms, finite differences and sampling."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, InvalidEvent, compile_model
from explanations.design import ClauseSearch
from explanations.events import Above, All, ArgMax, Below
from explanations.mvn import log_bivariate_normal_cdf
from explanations.observed import observer
from explanations.structured import log_chi2_tail
from train.catastrophe import HINGE_WIDTH, CatastrophePenalty

F64 = torch.float64


def correlated() -> Gaussian:
    root = torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [0.2, -0.3, 0.6]], dtype=F64)
    return Gaussian(torch.tensor([0.3, -0.2, 0.1]), root @ root.T)


def hinge(log_p: torch.Tensor, target: float) -> torch.Tensor:
    return HINGE_WIDTH * nn.functional.softplus((log_p / math.log(10) - math.log10(target)) / HINGE_WIDTH)


@pytest.mark.parametrize("event, rare", [(Above(0, 3.0), True), (Below(0, 1.0), False)])
def test_a_linear_model_gets_the_exact_probability_and_gradient(event, rare):
    """y = w·x + b: the event is a halfspace, P = Φ(±(w·μ + b - t)/|Fᵀw|) exactly, at a design
    point (rare) or from the origin's plane (a common event)."""
    torch.manual_seed(0)
    model, D = nn.Linear(3, 1).double(), correlated()
    penalty = CatastrophePenalty(model, D, event, target=1e-6, weight=2.0)
    value = penalty()
    value.backward()
    found = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    w, b = model.weight[0], model.bias[0]
    z = (w @ D.mean + b - event.t) / torch.sqrt(w @ D.cov @ w)
    log_p = torch.special.log_ndtr(z if rare else -z)
    assert (len(penalty.modes) == 1) == rare
    assert penalty.log10_probability == pytest.approx(float(log_p.detach()) / math.log(10), rel=1e-9)
    exact = 2.0 * hinge(log_p, 1e-6)
    exact.backward()
    assert float(value.detach()) == pytest.approx(float(exact.detach()), rel=1e-9)
    for mine, reference in zip(found, model.parameters()):
        torch.testing.assert_close(mine, reference.grad, rtol=1e-7, atol=1e-12)


def test_envelope_gradient_matches_finite_differences_at_a_converged_design_point():
    """dβ/dθ = -(∂g/∂θ)/|∇_ξ g| holds at the optimum: there it agrees with central differences
    of β(θ) re-solved to convergence (measured: 4–5 digits on tanh and GELU nets)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    D = Gaussian.standard(4)
    threshold = 0.3          # π puts y at -0.06 ± 0.08

    def converged() -> tuple[CatastrophePenalty, torch.Tensor]:
        penalty = CatastrophePenalty(model, D, Above(0, threshold), target=1e-100, max_modes=1,
                                     search_every=10 ** 9, follow=0)
        penalty()
        observe = observer(compile_model(model).to(dtype=F64), D, [], F64)[0]
        with torch.enable_grad():
            point = ClauseSearch(lambda xi: observe(xi) - threshold).descend(penalty.modes[0][1], 300)
        penalty.modes = [(0, point)]
        return penalty, penalty()

    penalty, value = converged()
    assert -12 < penalty.log10_probability < -3
    model.zero_grad()
    value.backward()
    for layer, i, j in ((0, 3, 1), (2, 0, 5), (4, 0, 3)):
        weight = model[layer].weight
        analytic = float(weight.grad[i, j]) / math.log(10)            # d log10 P/dθ: the hinge is linear here
        with torch.no_grad():
            weight[i, j] += 1e-3
        up = converged()[0].log10_probability
        with torch.no_grad():
            weight[i, j] -= 2e-3
        down = converged()[0].log10_probability
        with torch.no_grad():
            weight[i, j] += 1e-3
        assert analytic * math.log(10) == pytest.approx((up - down) / 2e-3, rel=2e-3, abs=1e-4)


def test_training_with_the_penalty_keeps_the_catastrophe_below_target():
    """Regression on x0 + ½ sin 2x1: plain training reproduces the task's own P(y > 3) ≈ 2e-3;
    with the penalty (target 1e-5) sampling finds it two orders lower, and the fit stays good."""
    def train(weight: float) -> tuple[float, float, CatastrophePenalty | None]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        penalty = CatastrophePenalty(model, Gaussian.standard(4), Above(0, 3.0), target=1e-5, weight=weight)
        generator = torch.Generator().manual_seed(0)
        for _ in range(400):
            x = torch.randn(256, 4, generator=generator)
            loss = ((model(x) - x[:, :1] - 0.5 * torch.sin(2 * x[:, 1:2])) ** 2).mean()
            if weight:
                loss = loss + penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        x = torch.randn(1_000_000, 4, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            y = model(x)[:, 0]
        error = float(((y - x[:, 0] - 0.5 * torch.sin(2 * x[:, 1])) ** 2).mean())
        return float((y > 3.0).double().mean()), error, penalty

    plain, plain_error, _ = train(0.0)
    guarded, guarded_error, penalty = train(0.1)
    assert plain > 1e-3 and plain_error < 0.02
    assert guarded < 5e-5 and guarded_error < 0.05      # 1e-3 is 1,000 hits in 10⁶ draws; 5e-5 is 50
    assert -7 < penalty.log10_probability < -4.5
    assert penalty.flops > 0


def test_bad_arguments_are_named():
    model, D = nn.Linear(3, 2), Gaussian.standard(3)
    for options, message in (({"target": 0.0}, "target"), ({"target": 1e-3, "weight": -1.0}, "weight"),
                             ({"target": 1e-3, "search_every": 0}, "search_every"),
                             ({"target": 1e-3, "follow": -1}, "follow")):
        with pytest.raises(ValueError, match=message):
            CatastrophePenalty(model, D, Above(0, 1.0), **options)
    with pytest.raises(InvalidEvent, match="output index 2"):
        CatastrophePenalty(model, D, Above(2, 1.0), target=1e-3)
    with pytest.raises(ValueError, match="weight must be finite"):
        CatastrophePenalty(model, D, Above(0, 1.0), target=1e-3, weight=math.inf)
    with pytest.raises(TypeError, match="must be an explanations.events Event"):
        CatastrophePenalty(model, D, "y0 > 1", target=1e-3)
    with pytest.raises(ValueError, match="4 dimensions, the model 3 inputs"):
        CatastrophePenalty(model, Gaussian.standard(4), Above(0, 1.0), target=1e-3)


def test_inputs_are_drawn_around_the_design_point():
    torch.manual_seed(0)
    model, D = nn.Linear(3, 1).double(), correlated()
    penalty = CatastrophePenalty(model, D, Above(0, 3.0), target=1e-6)
    with pytest.raises(RuntimeError, match="call the penalty once"):
        penalty.inputs(10)
    penalty()
    x = penalty.inputs(20_000, torch.Generator().manual_seed(1))
    centre = D.mean + D.factor @ penalty.modes[0][1]
    assert x.shape == (20_000, 3)
    assert ((x.mean(0) - centre).abs() < 5 * D.cov.diagonal().sqrt() / 20_000 ** 0.5).all()
    with torch.no_grad():
        hits = float((model(x)[:, 0] > 3.0).double().mean())
    assert 0.4 < hits < 0.6          # the design point of a halfspace lies on it: half the draws cross


def test_an_intersection_takes_both_planes_at_its_corner():
    """All(y0 > 3, y1 > 3) for y = x ~ N(0, I): the design point is the corner (3, 3), and the
    two tangent half-spaces give P = Φ(-3)² exactly, symmetric in the two thresholds' biases."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    penalty = CatastrophePenalty(model, Gaussian.standard(2), All(Above(0, 3.0), Above(1, 3.0)), target=1e-12)
    penalty().backward()
    assert penalty.log10_probability == pytest.approx(2 * math.log10(float(torch.special.ndtr(torch.tensor(-3.0)))), rel=1e-6)
    assert model.bias.grad[0] == pytest.approx(float(model.bias.grad[1]), rel=1e-3) and model.bias.grad[0] > 0


def test_an_unreachable_event_is_searched_for_on_schedule_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Tanh())
    penalty = CatastrophePenalty(model, Gaussian.standard(3), Above(0, 1.5), target=1e-6, search_every=50)
    for _ in range(5):
        assert float(penalty().detach()) == 0.0
    assert penalty.found_nothing and penalty.log10_probability == -math.inf and penalty.planes is None
    first = penalty.flops
    penalty()
    assert penalty.flops - first < 10 * compile_model(model).flops_per_sample     # no search: one forward pass


def test_inputs_come_in_the_distribution_s_dtype():
    model = nn.Linear(3, 1)
    D = Gaussian(torch.zeros(3), torch.eye(3), dtype=torch.float32)
    penalty = CatastrophePenalty(model, D, Above(0, 2.0), target=1e-6)
    penalty()
    x = penalty.inputs(5)
    assert x.dtype == torch.float32 and model(x).shape == (5, 1)


def linear(weight: list, bias: list) -> nn.Linear:
    model = nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight, dtype=F64))
        model.bias.copy_(torch.tensor(bias, dtype=F64))
    return model


def test_modes_on_the_same_planes_count_once():
    """ArgMax(0) of y = x - (3, 0, 0) is {x0 - x1 > 3, x0 - x2 > 3}: P = Φ₂(-3/√2, -3/√2; ½)
    exactly. Descents along the corner's edge stop at different points of the same two planes;
    two such modes had summed to twice the probability (10^-2.27 for 10^-2.57)."""
    model = linear([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [-3.0, 0, 0])
    penalty = CatastrophePenalty(model, Gaussian.standard(3), ArgMax(0), target=1e-9)
    penalty()
    h = torch.tensor(-3 / math.sqrt(2), dtype=F64)
    exact = float(log_bivariate_normal_cdf(h, h, torch.tensor(0.5, dtype=F64))) / math.log(10)
    assert penalty.log10_probability == pytest.approx(exact, abs=1e-6) and len(penalty.modes) == 1


def test_a_corner_s_gradient_follows_the_angle_between_its_planes():
    """All(y0 > 2.5, y1 > 2.5) on y = Wx, x ~ N(0, I): P = Φ₂(-2.5/|w0|, -2.5/|w1|; ρ),
    ρ = w0·w1/(|w0||w1|). With the normals held fixed the weight gradient was 5–30% off."""
    weight = [[1.0, 0.2, 0.0], [0.4, 1.0, -0.3]]
    model = linear(weight, [0.0, 0.0])
    penalty = CatastrophePenalty(model, Gaussian.standard(3), All(Above(0, 2.5), Above(1, 2.5)), target=1e-300,
                                 weight=1.0)
    log_p = penalty()                                   # far above the target: the hinge is linear
    log_p.backward()
    w = torch.tensor(weight, dtype=F64, requires_grad=True)
    norms = w.norm(dim=1)
    exact = log_bivariate_normal_cdf(-2.5 / norms[0], -2.5 / norms[1], (w[0] @ w[1]) / (norms[0] * norms[1]))
    (exact / math.log(10)).backward()
    assert penalty.log10_probability == pytest.approx(float(exact) / math.log(10), abs=1e-6)
    assert torch.allclose(model.weight.grad, w.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rho", [-0.6, -0.9])
def test_a_corner_far_out_is_computed_in_log_space(rho):
    """All(y0 > 6, y1 > 6) on unit-norm rows at correlation ρ: P = Φ₂(-6, -6; ρ) down to
    10^-160, where Φ₂ in linear space (absolute error 1e-15) had given 10^-25.7 and 10^-300."""
    angle = math.acos(rho)
    model = linear([[1.0, 0.0], [math.cos(angle), math.sin(angle)]], [0.0, 0.0])
    penalty = CatastrophePenalty(model, Gaussian.standard(2), All(Above(0, 6.0), Above(1, 6.0)), target=1e-300)
    penalty().backward()
    six = torch.tensor(-6.0, dtype=F64)
    exact = float(log_bivariate_normal_cdf(six, six, torch.tensor(rho, dtype=F64))) / math.log(10)
    assert exact < -40 and penalty.log10_probability == pytest.approx(exact, abs=1e-4)
    assert torch.isfinite(model.weight.grad).all() and model.bias.grad.abs().sum() > 0


def test_a_plane_leaning_off_its_design_point_takes_the_point_s_distance():
    """On a ReLU net a design point can sit at a kink, where the one-sided gradient leans off
    ξ* (cos 0.69): its plane came 1.4 units nearer than the point and put P 4.5 decades above
    importance sampling's 6.7e-8. Each mode's value is Φ(-β) and the sum at most the χ² bound."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)).double()
    with torch.no_grad():
        y = model(torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    t = float(y[:, 0].mean() + 3.5 * y[:, 0].std())
    penalty = CatastrophePenalty(model, Gaussian.standard(4), Above(0, t), target=1e-6)
    penalty()
    points, masses = penalty.planes
    betas = points.norm(dim=1)
    assert torch.allclose(masses, torch.special.log_ndtr(-betas), atol=1e-6)
    assert penalty.log10_probability <= log_chi2_tail(4, float(betas.min())) / math.log(10) + 1e-9
    assert penalty.log10_probability < -5.0


def test_an_unreachable_event_gives_a_penalty_that_backpropagates():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Tanh())
    penalty = CatastrophePenalty(model, Gaussian.standard(3), Above(0, 1.5), target=1e-6)
    value = penalty()
    value.backward()                     # alone, as well as inside a loss
    assert float(value) == 0.0


def test_the_penalty_bench_runs_and_writes_its_table(tmp_path, capsys):
    from train.bench_penalty import CONFIGS, run
    rows = run(seeds=1, steps=3, draws=20_000, csv_path=tmp_path / "p.csv", png_path=tmp_path / "p.png",
               progress=False)
    assert len(rows) == len(CONFIGS) and (tmp_path / "p.csv").exists() and (tmp_path / "p.png").stat().st_size > 0
    assert all(0 <= r["sampled_low"] <= r["sampled_p"] <= r["sampled_high"] <= 1 for r in rows)
    assert "sampled P after training" in capsys.readouterr().out


def test_a_common_intersection_takes_both_planes_at_the_origin():
    """All(y0 < ½, y1 < ½) on y = Wx, x ~ N(0, I), holds the origin: P = Φ₂(½/|w0|, ½/|w1|; ρ)
    exactly, value and gradient (the tightest row alone had read 0.69 for 0.48)."""
    weight = [[1.0, 0.2, 0.0], [0.4, 1.0, -0.3]]
    model = linear(weight, [0.0, 0.0])
    penalty = CatastrophePenalty(model, Gaussian.standard(3), All(Below(0, 0.5), Below(1, 0.5)), target=1e-9)
    penalty().backward()
    w = torch.tensor(weight, dtype=F64, requires_grad=True)
    norms = w.norm(dim=1)
    exact = log_bivariate_normal_cdf(0.5 / norms[0], 0.5 / norms[1], (w[0] @ w[1]) / (norms[0] * norms[1]))
    (exact / math.log(10)).backward()
    assert penalty.log10_probability == pytest.approx(float(exact) / math.log(10), abs=1e-9)
    assert torch.allclose(model.weight.grad, w.grad, rtol=1e-6, atol=1e-9)
