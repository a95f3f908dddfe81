"""Halfspaces, CNF and permanents after a review: t-based intervals that cover, no [0, 0] for
a set that is not known to be empty, intervals below 1e-308, the structured estimator
under a FLOP budget, budgets and options checked up front, exact Ryser, deep cube tails."""
import itertools
import math

import pytest
import torch
from torch import nn

from explanations import BooleanCube, Gaussian, Step, explain
from explanations.cnf import random_cnf
from explanations.cube_smc import cube_log_probability
from explanations.events import Above, All, Any
from explanations.halfspaces import (Halfspaces, exact_cube_log_probability, from_network, gaussian_log_probability,
                                     replicate_interval, sov_flops_bound)
from explanations.montecarlo import student_t_quantile
from explanations.permanent import godsil_gutman, ryser, sinkhorn_sis, uniform_permutations
from test_halfspaces import step_net        # tests/ is on sys.path (pytest's default import mode)


def every(k):
    return All(*[Above(i, 0.5) for i in range(k)])


def lowest_coverage(runs, nominal=0.95, sds=3.0):
    """The fewest covering intervals among `runs` that a 95% interval allows: the nominal
    rate less `sds` binomial standard deviations of the observed fraction."""
    return runs * (nominal - sds * math.sqrt(nominal * (1 - nominal) / runs))


def log10_binomial_tail(n, threshold):
    """log10 P(Σ of n uniform signs ≥ threshold), exactly."""
    first = math.ceil((n + threshold) / 2)
    terms = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in range(first, n + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms)) - n * math.log(2)) / math.log(10)


# ---- 1. intervals from Student's t ------------------------------------------------------------
def test_cube_intervals_cover_the_enumerated_truth():
    """300 seeds of a dense 18 × 6 set at the default budget: with ±1.96 standard errors of 4
    replicates 253 of 300 intervals covered (84%); Student's t with 3 degrees of freedom."""
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(6, 18, generator=generator, dtype=torch.float64)
    c = -0.25 * a.norm(dim=1)
    exact = math.exp(exact_cube_log_probability(Halfspaces(a, c, torch.zeros(6, dtype=torch.bool))))
    net, runs = step_net(a, c), 300
    covered = 0
    for seed in range(runs):
        lo, hi = explain(net, BooleanCube(18), "auto", seed=seed).probability(every(6)).interval
        covered += lo <= exact <= hi
    assert covered >= lowest_coverage(runs)


def test_gaussian_intervals_cover_a_precise_reference():
    """Separation of variables with 8 replicates of 16–64 points, 1000 seeds on each of two
    sets: ±1.96 standard errors covered 88.7% and 91.9% (measured); Student's t covers 95%."""
    runs = covered = 0
    for n, k, points in ((30, 5, 64), (6, 4, 16)):
        generator = torch.Generator().manual_seed(3)
        a = torch.randn(k, n, generator=generator, dtype=torch.float64) + 0.5
        h = Halfspaces(a, -0.5 * a.norm(dim=1), torch.zeros(k, dtype=torch.bool))
        reference = gaussian_log_probability(h, Gaussian.standard(n), points=1 << 15, replicates=16, seed=10 ** 6)
        assert reference.relative_se < 1e-3
        truth = math.exp(reference.log_p)
        for seed in range(1000):
            r = gaussian_log_probability(h, Gaussian.standard(n), points=points, seed=seed)
            lo, hi = replicate_interval(r.log_p, r.relative_se, r.replicates)
            covered += lo <= truth <= hi
            runs += 1
    assert covered >= lowest_coverage(runs)


def test_replicate_interval_is_t_based_and_formed_in_log_space():
    t3 = student_t_quantile(0.975, 3)
    lo, hi = replicate_interval(math.log(0.2), 0.1, 4)
    assert (lo, hi) == pytest.approx((0.2 * (1 - 0.1 * t3), 0.2 * (1 + 0.1 * t3)), rel=1e-12)
    p = 1e-300                                             # p̂ · se would be formed near underflow
    lo, hi = replicate_interval(math.log(p), 0.1, 8)
    assert hi == pytest.approx(p * (1 + 0.1 * student_t_quantile(0.975, 7)), rel=1e-12)
    assert replicate_interval(-800.0, 0.1, 8) == (0.0, math.ulp(0.0))    # p̂ ≈ 1e-348: above 0 all the same
    assert replicate_interval(math.log(0.5), 0.8, 4)[0] == 0.0          # a half-width beyond p̂
    assert replicate_interval(-0.01, 0.5, 4)[1] == 1.0                  # a probability stays ≤ 1
    assert replicate_interval(math.log(0.3), 0.0, 0) == (0.3, 0.3)      # exact
    assert replicate_interval(-math.inf, 0.0, 0) == (0.0, 0.0)          # known to be empty
    assert replicate_interval(-math.inf, math.nan, 4) is None           # every replicate found nothing
    assert replicate_interval(math.log(0.3), math.nan, 0) is None       # no error known (Hermite)


# ---- 2. p̂ = 0 from dead replicates is not "impossible" ---------------------------------------
def test_a_satisfiable_cnf_whose_runs_all_die_has_no_interval():
    formula = random_cnf(20, 88, seed=7)                  # 3 satisfying assignments of 2^20
    assert exact_cube_log_probability(formula.halfspaces()) > -math.inf
    results = [cube_log_probability(formula.halfspaces(), particles=4, replicates=2, seed=s) for s in range(6)]
    dead = [r for r in results if r.log_p == -math.inf]
    assert dead and all(r.interval is None and r.particles > 0 for r in dead)
    estimate = explain(formula.network(), BooleanCube(20), "auto", seed=0).probability(formula.event())
    assert estimate.interval is not None or estimate.value == 0.0
    if estimate.value == 0.0:                              # so it was at seed 0 of the review
        assert estimate.interval is None


def test_only_a_set_known_to_be_empty_gets_zero_zero():
    n = 10
    unreachable = Halfspaces(torch.ones(1, n, dtype=torch.float64), torch.tensor([-11.0]),
                             torch.zeros(1, dtype=torch.bool))             # Σ x ≥ 11 with 10 signs
    result = cube_log_probability(unreachable, particles=64)
    assert result.log_p == -math.inf and result.particles == 0 and result.interval == (0.0, 0.0)
    edge = Halfspaces(torch.ones(1, n, dtype=torch.float64), torch.tensor([-10.0]), torch.ones(1, dtype=torch.bool))
    assert cube_log_probability(edge, particles=64).interval == (0.0, 0.0)  # Σ x > 10: empty too
    reachable = Halfspaces(edge.weight, edge.offset, torch.zeros(1, dtype=torch.bool))   # Σ x ≥ 10: one point
    lo, hi = cube_log_probability(reachable, particles=64).interval
    assert lo <= 2.0 ** -n <= hi
    net = step_net(torch.ones(2, n), [-11.0, 0.0])
    pi = explain(net, BooleanCube(n), "halfspaces")
    assert pi.probability(All(Above(0, 0.5), Above(1, 0.5))).interval == (0.0, 0.0)
    assert from_network(pi.graph, Above(0, 1.5)).empty and pi.probability(Above(0, 1.5)).interval == (0.0, 0.0)


# ---- 3. below 1e-308 ---------------------------------------------------------------------------
def test_an_interval_below_float64s_range_is_not_zero_zero():
    n = 40
    net = step_net(torch.eye(n), torch.full((n,), -6.0))          # Φ(-6)^40 = 10^-360.2
    estimate = explain(net, Gaussian.standard(n), "halfspaces").probability(every(n))
    assert estimate.log10 == pytest.approx(40 * math.log10(0.5 * math.erfc(6 / math.sqrt(2))), abs=1e-9)
    assert estimate.value == 0.0 and estimate.interval == (0.0, math.ulp(0.0))
    correlated = step_net([[1.0, 0, 0], [0.6, 0.8, 0]], [-40.0, -40.0])    # two QMC steps, 10^-455
    estimate = explain(correlated, Gaussian.standard(3), "halfspaces").probability(every(2))
    assert estimate.log10 < -400 and estimate.details["replicates"] == 8
    assert estimate.interval == (0.0, math.ulp(0.0))


# ---- 4. a FLOP budget keeps the structure ------------------------------------------------------
def test_a_flop_budget_solves_an_intersection_by_its_structure():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 5), Step())
    with torch.no_grad():
        net[0].bias.fill_(-2.0)
    pi = explain(net, Gaussian.standard(30), "auto")
    zero = pi.probability(every(5))
    budget = 100 * zero.flops
    rich = pi.probability(every(5), flops=budget)          # plain sampling gave 0 here (p ≈ 3e-18)
    assert rich.method == "auto:halfspaces" and rich.samples == 0 and rich.flops <= budget
    assert rich.details["relative_se"] < zero.details["relative_se"] / 4
    assert abs(rich.value - zero.value) <= 4 * zero.details["relative_se"] * zero.value
    poor = pi.probability(every(5), flops=1e-3 * zero.flops)   # not one QMC point: plain sampling
    assert poor.method == "sampling" and poor.flops <= 1e-3 * zero.flops
    union = pi.probability(Any(Above(0, 0.5), Above(1, 0.5)), flops=budget)
    assert union.method == "sampling" and union.flops <= budget
    hermite = explain(net, Gaussian.standard(30), "halfspaces", gaussian="hermite")
    assert hermite.probability(every(5), flops=budget).method == "halfspaces"


def test_a_flop_budget_on_the_cube_buys_particles_and_never_overspends():
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(6, 14, generator=generator, dtype=torch.float64)
    c = -0.25 * a.norm(dim=1)
    exact = math.exp(exact_cube_log_probability(Halfspaces(a, c, torch.zeros(6, dtype=torch.bool))))
    pi = explain(step_net(a, c), BooleanCube(14), "halfspaces")
    default = pi.probability(every(6))
    budget = 20 * default.flops
    rich = pi.probability(every(6), flops=budget)
    assert rich.method == "halfspaces" and rich.flops <= budget and rich.interval is not None
    assert abs(rich.value - exact) <= 5 * rich.details["relative_se"] * rich.value
    poor = pi.probability(every(6), flops=200 * pi.flops_per_sample)   # below 16 particles × 4 runs
    assert poor.method == "sampling" and poor.flops <= 200 * pi.flops_per_sample
    assert pi.probability(every(6), samples=500).samples == 500        # samples=N still draws


def test_sov_flops_bound_bounds_what_the_solver_spends():
    generator = torch.Generator().manual_seed(0)
    for k, n, standard in ((5, 30, True), (12, 3, True), (20, 20, False), (40, 10, True), (1, 4, True)):
        a = torch.randn(k, n, generator=generator, dtype=torch.float64)
        D = Gaussian.standard(n) if standard else Gaussian(torch.zeros(n, dtype=torch.float64),
                                                            torch.eye(n, dtype=torch.float64) * 2 + 0.5)
        h = Halfspaces(a, torch.full((k,), -0.5, dtype=torch.float64), torch.zeros(k, dtype=torch.bool))
        for points in (1, 64):
            assert gaussian_log_probability(h, D, points=points).flops <= sov_flops_bound(k, n, points, standard)


# ---- 6. budgets and options, checked up front ------------------------------------------------
def test_budgets_are_finite_and_the_cube_names_its_minimum():
    net = step_net(torch.randn(3, 6), torch.zeros(3))
    for bad in (0, -1.0, math.nan, math.inf, True, "3000"):
        with pytest.raises(ValueError, match="positive finite"):
            explain(net, Gaussian.standard(6), "halfspaces", budget=bad)
    tiny = explain(net, BooleanCube(6), "halfspaces", budget=1e-3)
    with pytest.raises(ValueError, match=r"budget=0.001 sample-equivalents is below the [0-9.]+ that this event"):
        tiny.probability(Above(0, 0.5))
    with pytest.raises(ValueError, match=r"below the [0-9.]+ that expectation\(\) needs"):
        tiny.expectation()
    assert explain(net, Gaussian.standard(6), "halfspaces", budget=1e-3).probability(every(3)).value > 0


def test_auto_checks_options_against_the_method_it_picks():
    step = step_net(torch.randn(3, 6), torch.zeros(3))
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(TypeError, match=r"'auto' \(here 'halfspaces'.*takes no option 'dtype'"):
        explain(step, Gaussian.standard(6), "auto", dtype="float32")
    with pytest.raises(TypeError, match=r"'auto' \(here 'cumulant'.*takes no option 'budget'"):
        explain(mlp, Gaussian.standard(6), "auto", budget=3000)
    with pytest.raises(TypeError, match=r"'guide' \(here 'sampling'.*takes no option 'budget'"):
        explain(mlp, BooleanCube(6), "guide", budget=3000)
    assert explain(step, Gaussian.standard(6), "auto", gaussian="hermite").method == "auto:halfspaces"


# ---- 5. permanents ----------------------------------------------------------------------------
def test_ryser_is_exact_in_integers():
    assert ryser(torch.ones(20, 20)) == math.factorial(20)      # long double: 1.4e-10 off
    assert ryser(torch.ones(24, 24)) == math.factorial(24)      # long double: 4.1e-8 off, 36 s
    a = (torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) < 0.6).double()
    direct = sum(math.prod(int(a[i, s[i]]) for i in range(8)) for s in itertools.permutations(range(8)))
    assert ryser(a) == direct and isinstance(ryser(a), int)
    assert ryser(torch.zeros(3, 3)) == 0 and ryser(torch.ones(1, 1)) == 1


@pytest.mark.parametrize("estimator", [sinkhorn_sis, godsil_gutman, uniform_permutations])
def test_estimators_need_a_draw(estimator):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="draws must be a positive integer"):
            estimator(torch.eye(3), bad)
    assert estimator(torch.eye(3), 1).draws == 1


# ---- 7. deep cube tails ----------------------------------------------------------------------
def test_deep_cube_tails_follow_the_large_deviation_rate():
    """Σ x ≥ 900 over n = 1200 signs (10^-166.3): the normal lookahead gave 10^-168.6 to
    10^-169.9, and Σ x ≥ 996 (10^-211.0) gave 0."""
    n = 1200
    for threshold in (900, 996):
        truth = log10_binomial_tail(n, threshold)
        pi = explain(step_net(torch.ones(1, n), [-float(threshold)]), BooleanCube(n), "halfspaces")
        assert abs(pi.probability(Above(0, 0.5)).log10 - truth) < 0.5
        assert abs(math.log10(float(pi.expectation().value[0])) - truth) < 0.5
