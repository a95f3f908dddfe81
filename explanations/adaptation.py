"""The pilot's hits that no design point accounts for, and the modes they lead to.

An importance-sampling pilot around the design points ξ*_k (β_k = |ξ*_k|, u_k = ξ*_k/β_k)
draws hits ξ of the event. A hit with ξ·u_k ≥ β_k for some k lies in that mode's tangent
halfspace, FORM's picture of the part of the event the mode stands for, where the
mixture's component at ξ*_k (its weight α_k in q, `importance`) keeps the weight at
    w(ξ) = φ(ξ)/q(ξ) ≤ φ(ξ)/(α_k φ(ξ - ξ*_k)) = e^{β_k²/2 - ξ·ξ*_k}/α_k ≤ e^{-β_k²/2}/α_k.
A hit outside every such halfspace is *uncovered*: it lies nearer the origin, along its
own direction, than any found design point's tangent plane, in a part of the event the
search missed (or where the boundary bends toward the origin), and its weight has only
the defensive bound 1/α0. From up to ADAPT_STARTS of the uncovered hits, heaviest first
and in distinct directions (`design.distinct`: at more than about 25° from each other and
from the modes), a descent of ADAPT_ITERATIONS steps (`design.ClauseSearch.descend`, in the first
clause the hit satisfies; about 400 forward-pass equivalents on the benchmark's nets, and
up to 2,425 of a 10⁴ budget for one pilot's six, on r18) finds that part's design point;
the new modes join the mixture (at most ADAPT_STARTS more than the search's), and those
farther than MODE_BAND beyond the nearest are dropped, as in the search
(`design.banded`). Where every hit is covered, nothing is spent; a descent that the
budget stops adds the boundary point it has reached.

The pilot is not pooled with the run that follows, so the adapted mixture adds no bias:
it is a proposal chosen before the main run's draws, as the search's modes are (the
adaptive importance sampling of the cross-entropy method, Rubinstein 1999, with the
mixture's means moved by descents from the hits in place of weighted averages of them).

Measured on `pitrack bench sampling` (106 events, 20 repeats each at 10⁴ sample-
equivalents, seeds 0–19, 20–39 and 40–59; the last held out): relative RMSE above 0.3 on
21, 26, 23 → 22, 24, 22 events (pooled 26 → 24, above 0.5 13 → 9), median 0.112 pooled
either way, coverage 92.4% either way. On r18 at p = 1e-7 (16 → 256² → 2 ReLU, correlated
inputs), whose search stops at β ≈ 5.8 where the event's mass lies at β ≈ 4.8, 0.89 →
0.62 pooled (median ratio to the truth 0.08 → 0.46); r11 at 1e-7 0.54 → 0.41. A prototype
that descended from the six heaviest hits, covered or not, left 24 events above 0.3 on
seeds 0–39 (as before) and moved the median 0.109 → 0.130: those descents return to known
modes or add far ones that thin the mixture.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .design import ClauseSearch, Mode, OutOfBudget, banded, distinct, is_new
from .importance import Weighted
from .structured import Search

ADAPT_STARTS, ADAPT_ITERATIONS = 6, 10
ADAPT_SHARE = 0.4       # at most, of what a pilot leaves of a sampling budget, for the descents (`guided`)


def uncovered(run: Weighted, found: Search) -> Tensor:
    """The hits of `run` (drawn with `keep_points`) outside every mode's tangent halfspace
    {ξ : ξ·u_k ≥ β_k}, heaviest first: [n, d]. (A mode at the origin, β = 0, has the whole
    space for its halfspace: every hit is covered.)"""
    units = torch.stack([m.point / m.beta if m.beta > 0 else m.point for m in found.modes])
    betas = units.new_tensor([m.beta for m in found.modes])
    points = run.hit_points[run.log_weights.argsort(descending=True).to(run.hit_points.device)]
    return points[(points @ units.T - betas).max(dim=1).values < 0]


def adapted(found: Search, run: Weighted, limit: float = math.inf) -> tuple[Search, int, int]:
    """`found` with the modes reached by descents from `run`'s uncovered hits (module
    docstring), the FLOPs those descents spent, and how many modes they added. `limit`
    caps the forward-pass equivalents spent (a backward pass counts two): a pass that
    would cross it is not made, and a descent it stops keeps the boundary point it reached."""
    modes, passes = list(found.modes), 0
    for start in distinct(uncovered(run, found), ADAPT_STARTS, [m.point for m in found.modes]):
        search, point, spent_out = None, None, False
        try:
            for clause, margins in enumerate(found.margins):        # the first clause the hit satisfies
                test = ClauseSearch(margins, limit - passes)
                inside = float(test.margin(start[None])[0]) >= 0
                passes += test.forwards
                if inside:
                    search = ClauseSearch(margins, limit - passes)
                    break
            if search is not None:                                 # (none: on no clause's side, to rounding)
                with torch.inference_mode(False), torch.enable_grad():     # the descent needs autograd
                    point = search.descend(start, ADAPT_ITERATIONS)
        except OutOfBudget:
            spent_out = True
            point = search.reached if search is not None else None
        if search is not None:
            passes += search.forwards + 2 * search.backwards
        if point is not None and is_new(point, modes):
            modes.append(Mode(point, float(point.norm()), clause))
        if spent_out:
            break
    return replace(found, modes=banded(modes)), passes * found.observe_flops, len(modes) - len(found.modes)
