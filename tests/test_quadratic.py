"""Local quadratics at design points (`explanations.quadratic`): the fit against known
quadratics, the line integrals against closed forms, and the zero-sample estimate against
sampling where the tilted Gaussian it replaced was orders of magnitude off."""
import math
import statistics
from dataclasses import replace

import pytest
import torch
from torch import Tensor
from torch.special import log_ndtr

from explanations import Gaussian, compile_model, explain
from explanations.events import Above, All, Any, Below
from explanations import quadratic, structured
from explanations.quadratic import SPREAD_TARGET, Quadratic, _offset_law, denoised, fit, log_cell_probability, widened
from explanations.structured import grows_linearly
from train.bench_tails import build, zoo
from train.models import mlp

F64 = torch.float64


def random_quadratic(d: int, rows: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, d, generator=g, dtype=F64)
    return (torch.randn(rows, generator=g, dtype=F64), torch.randn(rows, d, generator=g, dtype=F64),
            h + h.transpose(1, 2))


def test_fit_recovers_a_quadratic_margin_exactly():
    d, rows = 7, 3
    c, b, h = random_quadratic(d, rows, 0)
    point = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=F64)
    margins = lambda xi: c + (xi - point) @ b.T + 0.5 * torch.einsum("nd,rde,ne->nr", xi - point, h, xi - point)
    local = fit(margins, point, torch.Generator().manual_seed(2))
    assert torch.allclose(local.value, c, atol=1e-9)
    assert torch.allclose(local.slope, b, atol=1e-9)
    assert torch.allclose(local.curvature, h, atol=1e-9)
    assert local.forwards == 64 and local.backwards == 64 * rows


def test_a_widened_refit_recovers_a_quadratic_margin_in_the_original_coordinates():
    """A design point of one exact quadratic margin (slope along ξ*, so the KKT multiplier is
    positive), whose tangent curvatures give the offsets' law spreads between ½ and 1 and
    beyond them, so L is neither I nor a multiple of it: the refit on L ũ, changed back by
    B = b̃ L⁻¹ and H = L⁻ᵀ H̃ L⁻¹, is the margin itself, and counts both fits."""
    d = 6
    point = torch.zeros(d, dtype=F64)
    point[0] = 3.0
    h = torch.diag(torch.tensor([0.0, -0.6, -0.2, 0.1, 0.25, -2.0], dtype=F64))   # 1 - βκ from 0.1 to 7
    h[1, 2] = h[2, 1] = 0.05
    b = torch.zeros(1, d, dtype=F64)
    b[0, 0] = 1.0
    margins = lambda xi: (xi - point) @ b.T + 0.5 * torch.einsum("nd,de,ne->n", xi - point, h, xi - point)[:, None]
    first = fit(margins, point, torch.Generator().manual_seed(2))
    _, stretch, _ = _offset_law(first, point, point / point.norm())
    assert bool(((stretch.rsqrt() > 0.5) & (stretch.rsqrt() < 1)).any()) and bool((stretch.rsqrt() < 0.5).any())
    local = widened(first, margins, point, torch.Generator().manual_seed(3))
    assert torch.allclose(local.value, torch.zeros(1, dtype=F64), atol=1e-9)
    assert torch.allclose(local.slope, b, atol=1e-9)
    assert torch.allclose(local.curvature[0], h, atol=1e-9)
    assert local.forwards == 128 and local.backwards == 128


def test_linear_growth_tells_cone_shaped_networks_from_saturating_ones():
    relu, gelu = compile_model(mlp([4, 8, 8, 1], "relu", seed=0)), compile_model(mlp([4, 8, 1], "gelu", seed=0))
    tanh, linear = compile_model(mlp([4, 8, 8, 1], "tanh", seed=0)), compile_model(torch.nn.Linear(4, 2))
    assert grows_linearly([relu]) and grows_linearly([gelu, linear])
    assert not grows_linearly([tanh]) and not grows_linearly([relu, tanh]) and not grows_linearly([linear])


def test_denoising_keeps_a_spike_and_clears_the_noise_bulk():
    """S = diag(2, -1.5, 0, …) plus GOE noise with off-diagonal variance τ²: raw, the spikes
    sit at θ + τ²d/θ (2.05 and -1.567 on average) and the bulk spreads over ±2τ√d = ±0.63;
    denoised, the spikes are back at 2 and -1.5 on average and the bulk is 0."""
    d, tau = 40, 0.05
    signal = torch.diag(torch.tensor([2.0, -1.5] + [0.0] * (d - 2), dtype=F64))
    raw, clean = [], []
    for seed in range(20):
        a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * tau
        noisy = signal + (a + a.T) / math.sqrt(2)               # off-diagonal variance τ², diagonal 2τ²
        raw.append(torch.linalg.eigvalsh(noisy))
        clean.append(torch.linalg.eigvalsh(denoised(noisy, tau * tau)))
    raw, clean = torch.stack(raw), torch.stack(clean)
    assert abs(float(raw[:, -1].mean()) - 2.05) < 0.03 and abs(float(clean[:, -1].mean()) - 2.0) < 0.03
    assert abs(float(raw[:, 0].mean()) + 1.567) < 0.03 and abs(float(clean[:, 0].mean()) + 1.5) < 0.03
    assert float(raw[:, 1:-1].abs().max()) > 0.5 and float(clean[:, 1:-1].abs().max()) < 1e-12
    assert torch.equal(denoised(signal, 0.0), signal)


def test_the_fit_does_not_mistake_rough_gradients_for_curvature(monkeypatch):
    """m(ξ) = ξ_0 - ξ_1²/2 + Σ_j a sin(ω w_j·ξ + φ_j): the sines' Hessian averaged over
    N(ξ*, ¼I) is at most aω² e^{-ω²/8} ≈ 2e-4, so the fit's target is diag(0, -1, 0, …).
    Their gradients are noise to the regression: raw, the fitted spectrum has spurious
    eigenvalues; denoised, the -1 stands out and the rest is mostly cleared."""
    d, a, omega = 16, 0.03, 10.0
    g = torch.Generator().manual_seed(4)
    w = torch.nn.functional.normalize(torch.randn(24, d, generator=g, dtype=F64), dim=1)
    phase = torch.rand(24, generator=g, dtype=F64) * 2 * math.pi
    margins = lambda xi: (xi[:, 0] - xi[:, 1] ** 2 / 2 + a * torch.sin(omega * xi @ w.T + phase).sum(1))[:, None]
    point = torch.zeros(d, dtype=F64)
    target = torch.diag(torch.tensor([0.0, -1.0] + [0.0] * (d - 2), dtype=F64))
    errors = {}
    for name in ("denoised", "raw"):
        if name == "raw":
            monkeypatch.setattr(quadratic, "denoised", lambda h, noise: h)
        errors[name] = [float((fit(margins, point, torch.Generator().manual_seed(s)).curvature[0] - target).norm())
                        for s in range(5)]
    assert sum(errors["denoised"]) < 0.5 * sum(errors["raw"])           # measured: 0.34 against 0.88 on average


def test_a_linear_margin_integrates_to_the_exact_normal_tail():
    d, beta = 6, 5.5
    e = torch.ones(d, dtype=F64) / math.sqrt(d)
    local = Quadratic(torch.zeros(1, dtype=F64), e[None, :], torch.zeros(1, d, d, dtype=F64), 0, 0, 0)
    result = log_cell_probability(local, beta * e, [], beta, 0, seed=0)
    assert result.log_p == pytest.approx(float(log_ndtr(torch.tensor(-beta, dtype=F64))), rel=1e-10)
    assert result.abs_error < 1e-15 and result.flops > 0


@pytest.mark.parametrize("kappa", [0.2, 1.0])
def test_a_curved_margin_matches_its_one_dimensional_integral(kappa):
    """{ξ_0 > t + κ|w|²/2}, w = (ξ_1, …): P = E[Φ(-(t + κ χ²_{d-1}/2))], by quadrature over
    the χ² density. The tilted Gaussian treated such a bend as noise and overstated it; lines
    with offsets from N(0, I) had a 27% spread at κ = 1 (1,024 lines), the SORM-shaped offsets
    (half the lines, beside N(0, I)) under 1%."""
    d, t = 8, 4.0
    local = Quadratic(torch.zeros(1, dtype=F64), torch.eye(d, dtype=F64)[:1],
                      -kappa * torch.diag(torch.tensor([0.0] + [1.0] * (d - 1), dtype=F64))[None], 0, 0, 0)
    point = t * torch.eye(d, dtype=F64)[0]
    result = log_cell_probability(local, point, [], t, 1e12, seed=0)
    r = torch.linspace(1e-9, 200, 400_001, dtype=F64)
    k = (d - 1) / 2
    log_density = (k - 1) * torch.log(r) - r / 2 - k * math.log(2) - math.lgamma(k)
    integrand = torch.exp(log_density + log_ndtr(-(t + kappa * r / 2)))
    exact = float(torch.trapezoid(integrand, r))
    assert abs(math.exp(result.log_p) - exact) <= 2 * result.abs_error      # 6 s.e. of 4 replicates
    assert result.abs_error < 0.01 * exact
    assert result.log_p < float(log_ndtr(torch.tensor(-t, dtype=F64))) - 1.0      # well below FORM


def test_cells_split_a_two_sided_event_without_double_counting():
    d = 4
    e = torch.eye(d, dtype=F64)[0]
    upper = Quadratic(torch.zeros(1, dtype=F64), e[None], torch.zeros(1, d, d, dtype=F64), 0, 0, 0)
    lower = Quadratic(torch.zeros(1, dtype=F64), -e[None], torch.zeros(1, d, d, dtype=F64), 0, 0, 0)
    a = log_cell_probability(upper, 3 * e, [-3 * e], 3.0, 0, seed=0)
    b = log_cell_probability(lower, -3 * e, [3 * e], 3.0, 0, seed=0)
    tail = float(log_ndtr(torch.tensor(-3.0, dtype=F64)))
    assert a.log_p == pytest.approx(tail, rel=1e-9) and b.log_p == pytest.approx(tail, rel=1e-9)


def test_a_convex_tail_on_a_deep_tanh_net_is_no_longer_overstated():
    """`pitrack bench tails`' r09 (8 → 32³ → 2 tanh, correlated inputs), Below(1, -2.1867):
    the tilted Gaussian at the design points put it 1.06 dex high. Truth: 4·10⁶ draws."""
    case = next(c for c in zoo() if c.name == "r09")
    model, D, _ = build(case)
    event = Below(1, -2.1867)
    hits = 0
    with torch.no_grad():
        for chunk in range(4):
            x = D.sample(1_000_000, generator=torch.Generator().manual_seed(100 + chunk))
            hits += int(event.evaluate(model(x.float())).sum())
    truth = math.log10(hits / 4_000_000)
    estimate = explain(model, D, "cumulant").probability(event)
    assert estimate.method.startswith("cumulant+design")
    assert abs(estimate.details.get("quadratics_log10", estimate.log10) - truth) <= 0.3   # before the draws join
    assert abs(estimate.log10 - truth) <= 0.3


def test_a_union_of_more_clauses_than_kept_modes_counts_every_clause():
    """y = relu(ξ + 10) - 10 = ξ wherever the mass is (6 outputs; a network without its
    ReLU would be answered by its exact Gaussian), Any(y_j > 3): each mode integrates its
    own clause, so every clause keeps its nearest mode beyond the MAX_MODES nearest (with
    four kept it read 0.18 dex low, and 0.47 with 12 clauses). Exact: 1 - (1 - Φ(-3))⁶
    (the ReLU's kink, 10 sd out, moves it by about 1e-23)."""
    d = 6
    model = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, d)).double()
    with torch.no_grad():
        for linear, shift in ((model[0], 10.0), (model[2], -10.0)):
            linear.weight.copy_(torch.eye(d, dtype=F64))
            linear.bias.fill_(shift)
    event = Any(*(Above(j, 3.0) for j in range(d)))
    estimate = explain(model, Gaussian.standard(d), "cumulant").probability(event)
    tail = float(log_ndtr(torch.tensor(-3.0, dtype=F64)).exp())
    assert estimate.method in ("cumulant+design", "cumulant+design+draws") and len(estimate.details["modes"]) == d
    assert abs(estimate.details.get("quadratics_log10", estimate.log10) - math.log10(1 - (1 - tail) ** d)) < 0.02
    assert abs(estimate.log10 - math.log10(1 - (1 - tail) ** d)) < 0.02


def l1_bump() -> tuple[torch.nn.Module, float]:
    """y = -|x_0 - 3| - |x_1| (a ReLU net) and P(y > -0.3) from 4·10⁶ draws (about 1,300
    hits): an L1 ball of radius 0.3 three units out."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]], dtype=F64))
        model[0].bias.copy_(torch.tensor([-3.0, 0, 3, 0], dtype=F64))
        model[2].weight.fill_(-1.0)
        model[2].bias.zero_()
    with torch.no_grad():
        y = model(Gaussian.standard(2).sample(4_000_000, generator=torch.Generator().manual_seed(3)))
    return model, float((y[:, 0] > -0.3).double().mean())


def test_a_bump_narrower_than_the_fit_is_refitted_narrower():
    """The quadratic fitted at s = ½ smooths the L1 ball away (it read -inf); refitted at
    s/4 it holds it. Over π's seeds 0–4 (each its own fits): measured +0.21 to +0.32 dex
    (a quadratic rounds the ball's corners outward); the median within 0.3, each within 0.4."""
    model, truth = l1_bump()
    errors = []
    for seed in range(5):
        estimate = explain(model, Gaussian.standard(2), "cumulant", seed=seed).probability(Above(0, -0.3))
        assert estimate.details["narrow_modes"] == 1 and estimate.details["anchored_modes"] == 0
        errors.append(abs(estimate.log10 - math.log10(truth)))
    assert statistics.median(errors) < 0.3 and max(errors) < 0.4


def test_a_bump_no_fit_holds_is_not_called_impossible(monkeypatch):
    """Where the refits see nothing either (here: refits at s itself, NARROW = 1), the
    quadratic anchored at the mode's own margin holds the L1 ball, within the budget: the
    second refit is skipped where it would leave no room for the anchored integral (four
    integrals had cost 11,107 sample-equivalents; measured 8,438–8,547 over π's seeds 0–4)."""
    monkeypatch.setattr(structured, "NARROW", 1.0)
    model, truth = l1_bump()
    estimate = explain(model, Gaussian.standard(2), "cumulant").probability(Above(0, -0.3))
    assert estimate.details["anchored_modes"] == 1
    assert abs(estimate.log10 - math.log10(truth)) < 0.3
    assert estimate.sample_equivalents <= structured.DESIGN_BUDGET


def test_every_cell_integral_of_a_mode_is_charged_once(monkeypatch):
    """With both refits empty (NARROW = 1), the L1 ball's mode integrates its first
    quadratic, a refit and the anchored one: each cell integral is charged exactly once.
    Tagging the k-th integral's FLOPs with +k moves the estimate's FLOPs by 1 + 2 + … + n.
    (Choosing the integral given up by min(log p) charged the first one thrice and the
    refit's never: +5 for 6.)"""
    monkeypatch.setattr(structured, "NARROW", 1.0)
    model, _ = l1_bump()
    integral = structured.log_cell_probability

    def charged(tag: int) -> tuple[float, int]:
        calls = []

        def tagged(*args):
            calls.append(None)
            result = integral(*args)
            return replace(result, flops=result.flops + tag * len(calls))

        monkeypatch.setattr(structured, "log_cell_probability", tagged)
        estimate = explain(model, Gaussian.standard(2), "cumulant").probability(Above(0, -0.3))
        return estimate.flops, len(calls)

    (plain, n), (tagged_flops, m) = charged(0), charged(1)
    assert n == m == 3 and tagged_flops - plain == n * (n + 1) // 2


def test_the_rescue_integrals_take_the_fewest_lines(monkeypatch):
    """The narrow refit's and the anchored quadratic's integrals are rescues on a budget
    already shared out: each is asked for the FLOPs of LINE_RANGE[0] lines, where the
    first integral had the mode's share."""
    monkeypatch.setattr(structured, "NARROW", 1.0)
    model, _ = l1_bump()
    integral, spends = structured.log_cell_probability, []

    def recorded(local, point, others, radius, spend, seed):
        spends.append(spend)
        return integral(local, point, others, radius, spend, seed)

    monkeypatch.setattr(structured, "log_cell_probability", recorded)
    estimate = explain(model, Gaussian.standard(2), "cumulant").probability(Above(0, -0.3))
    fewest = quadratic.line_flops(2, 1, 0, quadratic.LINE_RANGE[0])
    assert estimate.details["anchored_modes"] == 1 and len(spends) == 3
    assert spends[1:] == [fewest, fewest] and spends[0] != fewest


def test_the_numerical_error_of_a_deep_tail_does_not_underflow():
    """At p ≈ 1e-90 the replicates' variance (≈ 1e-184) underflows unless taken relative;
    then the lines double until their spread is under SPREAD_TARGET."""
    d, t, kappa = 8, 20.0, 0.2
    local = Quadratic(torch.zeros(1, dtype=F64), torch.eye(d, dtype=F64)[:1],
                      -kappa * torch.diag(torch.tensor([0.0] + [1.0] * (d - 1), dtype=F64))[None], 0, 0, 0)
    result = log_cell_probability(local, t * torch.eye(d, dtype=F64)[0], [], t, 1e12, seed=0)
    assert result.log_p < -200 and 0 < result.abs_error <= SPREAD_TARGET * math.exp(result.log_p)


def test_zero_sample_queries_stay_within_the_design_budget():
    """`pitrack bench tails`' r04 (16 → 32 → 32 → 2 ReLU, correlated inputs): its rare events,
    π's build included, cost at most DESIGN_BUDGET sample-equivalents (before the budget:
    up to 12,100 on this net, 18,600 on the zoo)."""
    from explanations.structured import DESIGN_BUDGET
    case = next(c for c in zoo() if c.name == "r04")
    model, D, _ = build(case)
    pi = explain(model, D, "auto")
    events = [Above(1, 2.44), Below(1, -4.4), All(Below(0, -5.93), Above(1, 2.35)), Any(Below(0, -8.19), Above(1, 3.46))]
    for event in events:
        estimate = pi.probability(event)
        assert estimate.method.endswith(("+design", "+design+draws"))
        assert estimate.flops <= DESIGN_BUDGET * pi.graph.flops_per_sample


def test_a_patch_narrower_than_the_fit_is_fitted_again_on_a_narrower_design():
    """gelu 3 → 12 → 12 → 1 (bias sd 0.5): Below(0, -0.431437) is a patch 0.3 wide at
    |x| ≈ 1.2–1.5 (p ≈ 1e-4). The quadratic fitted at s = ½ keeps a sliver of it (10^-13 to
    10^-19, by π's seed); refitted at s/4 the mode reads within 0.3 dex of 4·10⁶ draws
    (about 400 hits); so does the answer its degenerate draws join (`structured._with_draws`)."""
    event = Below(0, -0.431437)
    model = mlp([3, 12, 12, 1], "gelu", seed=0, bias_std=0.5).double()
    generator, hits = torch.Generator().manual_seed(7), 0
    with torch.no_grad():
        for _ in range(4):
            hits += int(event.evaluate(model(torch.randn(1_000_000, 3, generator=generator, dtype=F64))).sum())
    estimate = explain(model, Gaussian.standard(3), "auto").probability(event)
    assert estimate.method.endswith(("+design", "+design+draws")) and estimate.details["narrow_modes"] >= 1
    assert abs(estimate.details.get("quadratics_log10", estimate.log10) - math.log10(hits / 4e6)) <= 0.3
    assert abs(estimate.log10 - math.log10(hits / 4e6)) <= 0.3
