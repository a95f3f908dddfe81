"""The pilot's uncovered hits and the modes they lead to (`explanations.adaptation`)."""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.special import ndtr

from explanations import Gaussian, explain
from explanations.adaptation import ADAPT_SHARE, adapted, uncovered
from explanations.events import Above, Any
from explanations.guided import PILOT_MIN, PILOT_SHARE, guided_probability
from explanations.importance import importance_draw_flops, importance_sampling
from explanations.structured import search

F64 = torch.float64


@pytest.fixture
def two_halfspaces():
    """y = ξ in d = 2 and the event {ξ₁ > 4} ∪ {ξ₂ > 3}, P = 1 - Φ(4)Φ(3); the search's
    two modes, and the same search with the nearer mode (β = 3) lost."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2, dtype=F64))
        model.bias.zero_()
    pi = explain(model, Gaussian.standard(2), method="gaussian")
    event = Any(Above(0, 4.0), Above(1, 3.0))
    found = search(pi, event)
    assert sorted(round(m.beta, 3) for m in found.modes) == [3.0, 4.0]
    far_only = replace(found, modes=[m for m in found.modes if m.beta > 3.5])
    truth = 1 - float(ndtr(torch.tensor(4.0, dtype=F64)) * ndtr(torch.tensor(3.0, dtype=F64)))
    return pi, event, found, far_only, truth


def test_uncovered_hits_lie_outside_every_tangent_halfspace_heaviest_first(two_halfspaces):
    pi, event, found, far_only, _ = two_halfspaces
    run = importance_sampling(event, far_only, 4000, torch.Generator().manual_seed(0), 2, keep_points=True)
    assert run.hit_points.shape == (run.hits, 2)
    missed = uncovered(run, far_only)
    assert len(missed) > 0
    assert bool((missed[:, 0] < 4).all()) and bool((missed[:, 1] > 3).all())  # only the lost clause's hits
    inside = run.hit_points[:, 0] < 4
    assert len(missed) == int(inside.sum())
    weights = run.log_weights[inside.cpu()].sort(descending=True).values
    order = run.log_weights[[int((run.hit_points == p).all(1).nonzero()[0]) for p in missed]]
    assert torch.equal(order, weights)
    # with both modes, every hit lies in a tangent halfspace: nothing is spent
    full = importance_sampling(event, found, 4000, torch.Generator().manual_seed(0), 2, keep_points=True)
    assert len(uncovered(full, found)) == 0
    assert adapted(found, full)[1:] == (0, 0)


def test_descents_from_uncovered_hits_find_the_lost_mode(two_halfspaces):
    pi, event, _, far_only, _ = two_halfspaces
    run = importance_sampling(event, far_only, 1000, torch.Generator().manual_seed(1), 2, keep_points=True)
    better, flops, added = adapted(far_only, run)
    assert added == 1 and flops > 0
    nearest = better.modes[0]
    assert abs(nearest.beta - 3.0) < 1e-3 and abs(float(nearest.point[1]) - 3.0) < 1e-3
    assert [round(m.beta, 3) for m in better.modes] == [3.0, 4.0]


def test_a_pilot_that_misses_a_mode_adapts_the_main_run(two_halfspaces):
    """Without the β = 3 mode, the main run sees that clause only through the defensive and
    broad components; with the mode back, its relative error falls several-fold and the
    estimate holds the truth within 4 standard errors."""
    pi, event, _, far_only, truth = two_halfspaces
    est = guided_probability(pi, event, far_only, 4000, None, 0, math.log(truth))
    assert est.method == "gaussian+design-IS" and est.samples == 4000
    assert est.details["adapted_modes"] == 1 and min(est.details["modes"]) == pytest.approx(3.0, abs=1e-3)
    assert abs(est.value - truth) <= 4 * est.details["standard_error"]
    unadapted = importance_sampling(event, far_only, 3600, torch.Generator().manual_seed(5), 2)
    assert est.details["standard_error"] / truth < unadapted.relative_error() / 3


def test_the_descents_are_charged_and_keep_within_a_flop_budget(two_halfspaces):
    """The estimate's FLOPs are the pilot's draws, the descents and the main run's draws
    (with the added mode's dot products), to the FLOP; where every hit is covered, the
    descents cost nothing."""
    pi, event, found, far_only, truth = two_halfspaces
    budget = 3_000 * pi.graph.flops_per_sample
    est = guided_probability(pi, event, far_only, None, budget, 0, math.log(truth))
    cost = est.details["adaptation_flops"]
    assert est.details["adapted_modes"] == 1 and cost > 0 and est.flops <= budget
    pilot = max(PILOT_MIN, round(PILOT_SHARE * (budget // importance_draw_flops(far_only))))
    trial = importance_sampling(event, far_only, pilot, torch.Generator().manual_seed(pi.seed), 2, keep_points=True)
    limit = min(ADAPT_SHARE * (budget - pilot * importance_draw_flops(far_only)), budget) / far_only.observe_flops
    better, flops, _ = adapted(far_only, trial, limit)
    assert flops == cost
    assert est.flops == (pilot * importance_draw_flops(far_only) + cost
                         + (est.samples - pilot) * importance_draw_flops(better))
    full = guided_probability(pi, event, found, None, budget, 0, math.log(truth))
    assert full.details["adapted_modes"] == 0 and full.details["adaptation_flops"] == 0


def test_a_descent_the_budget_stops_keeps_the_boundary_point_it_reached(two_halfspaces):
    """With room for the clause test and part of one descent, the descent's boundary point
    is kept: on a halfspace the first boundary point is already the design point's ray's
    crossing, so the lost mode comes back, at the cost of the passes made."""
    pi, event, _, far_only, _ = two_halfspaces
    run = importance_sampling(event, far_only, 1000, torch.Generator().manual_seed(1), 2, keep_points=True)
    whole = adapted(far_only, run)[1] / far_only.observe_flops
    stopped, flops, added = adapted(far_only, run, limit=30)
    assert whole > 30 and flops <= 30 * far_only.observe_flops
    assert added == 1 and stopped.modes[0].point[1] > 3 - 1e-6
    _, flops, added = adapted(far_only, run, limit=0.5)    # not even the clause test fits
    assert added == 0 and flops == 0


def test_a_mode_at_the_origin_covers_every_hit(two_halfspaces):
    _, event, found, far_only, _ = two_halfspaces
    run = importance_sampling(event, far_only, 1000, torch.Generator().manual_seed(1), 2, keep_points=True)
    origin = replace(far_only.modes[0], point=torch.zeros(2, dtype=F64), beta=0.0)
    assert len(uncovered(run, replace(far_only, modes=[origin, *far_only.modes]))) == 0
