"""Tail structure in input space: most likely catastrophe points (design points).

Write x = μ + F ξ with ξ ~ N(0, I) (F Fᵀ = Σ). For a clause {v : A v > b}, where
v(ξ) = (y, detector scores) at x(ξ), the most likely catastrophe point (design point) is
    ξ* = argmin ½|ξ|²  subject to  g(ξ) = A v(ξ) - b ≥ 0,
found by projected descent along the failure boundary: from a feasible point, go to the
boundary along the ray from the origin, step against the component of ξ tangent to the
active constraints (their gradients by autograd), return to the boundary along the new
ray, and repeat while |ξ| decreases; at the optimum ξ lies in the span of the active
normals (the KKT condition). The classical HL-RF iteration (jumping to the linearised
min-norm point) was tried first and cycles on ReLU networks, whose outputs bend within
a unit of ξ. Several starts find several failure modes; points closer than a tenth of
their norm merge.
The large-deviation rate is β = |ξ*|: P ≈ Φ(-β) to first order (FORM; Hasofer & Lind
1974, Rackwitz & Fiessler 1978).

Zero-sample estimate at a mode: the network's least-squares quadratic of the clause's
margins there (`quadratic`), integrated under N(0, I) along lines through the mode's
Voronoi cell (see `structured`).
Assumptions: the event's mass is concentrated near the modes found (a failure region
not reached from any start is missed), and the margins are near quadratic within a unit
or two of each mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .distributions import Gaussian

if TYPE_CHECKING:
    from .shaping import Shape

MAX_MODES = 4
MODE_BAND = 3.0          # keep modes with β ≤ β_min + MODE_BAND
REACH_GROWTH = 2.0       # a Gauss–Newton step of `reach` moves at most this × (1 + |ξ|): from ξ = 0 a
                         # saturated sigmoid's step was 7e16 long (mode found at |ξ| = 1.5e7 for 20)
ACTIVE_REACH = 1e-3      # a face within this × (1 + |ξ|) of a boundary point is active in the descent
NEAR_OUTWARD, NEAR_INWARD = (1.2, 1.5, 2.0), (0.85, 0.7, 0.5)   # a descent's bracketing steps along its ray
NEAR_WIDTH, NEAR_ITERATIONS = 2e-3, 6     # regula falsi until the bracket is this narrow (relative), at most
MERGE_FLOOR = 0.1        # modes closer than max(0.1·β, this) are one: near the origin 0.1·β is ~0, and four
                         # modes of one common clause at β ≈ 0 had summed a union to 1.0 for 0.545


@dataclass(frozen=True)
class Mode:
    point: Tensor   # ξ*, whitened input
    beta: float     # |ξ*|
    clause: int     # the clause whose search found it
    shape: Shape | None = None      # a curvature-shaped mixture component (`shaping`), guided sampling's only


class OutOfBudget(Exception):
    """A search's next pass would take it past its limit."""


class ClauseSearch:
    """Design-point search for one clause with margins m(ξ) = A v(ξ) - b ≥ 0.

    `batch(ξ)` gives the margins of a batch [B, dim] → [B, rows]; gradients come from
    autograd. Counts forward passes (`forwards`) and backward passes (`backwards`); a pass
    that would bring forwards + 2·backwards past `limit` raises OutOfBudget instead.
    """

    def __init__(self, batch: Callable[[Tensor], Tensor], limit: float = math.inf) -> None:
        self.batch = batch
        self.limit = limit
        self.forwards = 0
        self.backwards = 0
        self.reached: Tensor | None = None

    def _charge(self, forwards: int, backwards: int = 0) -> None:
        if self.forwards + forwards + 2 * (self.backwards + backwards) > self.limit:
            raise OutOfBudget
        self.forwards += forwards
        self.backwards += backwards

    def margin(self, points: Tensor) -> Tensor:
        """Clause margin min_r m_r for each point: [B]."""
        self._charge(points.shape[0])
        with torch.no_grad():
            return self.batch(points).min(dim=1).values

    def rows(self, point: Tensor, select: Callable[[Tensor], list[int]]) -> tuple[Tensor, list[int], Tensor]:
        """Margins at one point, the rows `select` picks from them, and their gradients."""
        self._charge(1)
        point = point.detach().requires_grad_(True)
        values = self.batch(point[None, :])[0]
        picked = select(values.detach())
        if not values.requires_grad:       # piecewise-constant networks (Step): zero gradients
            return values.detach(), picked, point.new_zeros(len(picked), point.shape[0])
        self._charge(0, len(picked))
        grads = [torch.autograd.grad(values[r], point, retain_graph=True)[0] for r in picked]
        return values.detach(), picked, torch.stack(grads) if grads else point.new_zeros(0, point.shape[0])

    def normals(self, point: Tensor, reach: float) -> Tensor:
        """Gradients of the rows active at a boundary point, [k, dim]: the row that bounds it
        and every row whose face lies within `reach` of it (m_r/|∇m_r| ≤ reach, the face's
        distance to first order). A face a hair away counts: the descent otherwise follows
        the bounding face alone, steps across the other, halves its step, and crawls along
        their edge (on a linear wedge in d = 3, ten steps from |ξ| = 12.4 stopped at 11.2,
        1.2 short of the design point, with the second face 0.003 away)."""
        values, _, grads = self.rows(point, lambda m: list(range(m.shape[0])))
        distance = values / grads.norm(dim=1).clamp_min(1e-300)
        return grads[(distance <= reach) | (values <= values.min())]

    def to_boundary(self, direction: Tensor, near: bool = False) -> Tensor | None:
        """The boundary point nearest the origin on the ray through `direction` (grid scan
        over t ∈ [0.05, 4]·|direction|, bisection, then a secant step), or None. With
        `near` (the direction ends close to the boundary, as in the descent's steps), the
        crossing near t = 1 by regula falsi instead (`_near_crossing`: about 5 margins,
        where a grid over t ∈ [0.5, 2] and bisections took 13), or None where it brackets
        none; a step of the descent that finds none is halved."""
        if near:
            return self._near_crossing(direction)
        options = {"dtype": direction.dtype, "device": direction.device}
        grid = torch.logspace(math.log10(0.05), math.log10(4.0), 12, **options)
        grid = torch.cat([grid, grid.new_ones(1)]).sort().values       # t = 1: the start itself
        margins = self.margin(grid[:, None] * direction)
        ok = margins >= 0
        if not ok.any():
            return None
        first = int(ok.nonzero()[0])
        if first == 0:
            return float(grid[0]) * direction
        return self._bisect(direction, grid, margins, first, 8)

    def _near_crossing(self, direction: Tensor) -> Tensor | None:
        """The crossing near t = 1 on the ray t·`direction`: t = 1 first, then steps outward
        (NEAR_OUTWARD) from an infeasible point or inward (NEAR_INWARD) from a feasible one
        until one brackets the crossing, then regula falsi with the Illinois halving (Dowell
        & Jarratt 1971: where the same end moves twice, the other end's margin is halved)
        until the bracket is narrower than NEAR_WIDTH of t, and a last secant step. On a
        piecewise-linear margin the secant is exact within one linear piece. None where no
        step brackets a crossing or a margin is not finite."""
        previous, m_previous = 1.0, self._margin_at(direction, 1.0)
        if not math.isfinite(m_previous):
            return None
        for t in NEAR_INWARD if m_previous >= 0 else NEAR_OUTWARD:
            m_t = self._margin_at(direction, t)
            if not math.isfinite(m_t):
                return None
            if (m_t >= 0) != (m_previous >= 0):
                break
            previous, m_previous = t, m_t
        else:
            return None
        (out, m_out), (inside, m_in) = sorted([(previous, m_previous), (t, m_t)], key=lambda pair: pair[1] >= 0)
        moved = 0                                    # which end moved last: -1 the outer, +1 the inner
        for _ in range(NEAR_ITERATIONS):
            if abs(inside - out) <= NEAR_WIDTH * max(inside, out):
                break
            mid = _secant(out, m_out, inside, m_in)
            m_mid = self._margin_at(direction, mid)
            if m_mid >= 0:
                inside, m_in, m_out = mid, m_mid, m_out / 2 if moved == 1 else m_out
                moved = 1
            else:
                out, m_out, m_in = mid, m_mid, m_in / 2 if moved == -1 else m_in
                moved = -1
        return _secant(out, m_out, inside, m_in) * direction

    def _margin_at(self, direction: Tensor, t: float) -> float:
        """The clause margin at t·`direction`."""
        return float(self.margin((t * direction)[None, :])[0])

    def _bisect(self, direction: Tensor, grid: Tensor, margins: Tensor, first: int, bisections: int) -> Tensor:
        """Bisection on the bracket [grid[first - 1], grid[first]], then a secant step."""
        lo, hi = float(grid[first - 1]), float(grid[first])
        m_lo, m_hi = float(margins[first - 1]), float(margins[first])
        for _ in range(bisections):
            mid = (lo + hi) / 2
            m_mid = self._margin_at(direction, mid)
            if m_mid >= 0:
                hi, m_hi = mid, m_mid
            else:
                lo, m_lo = mid, m_mid
        return _secant(lo, m_lo, hi, m_hi) * direction     # secant on the last bracket

    def reach(self, start: Tensor, iterations: int = 30) -> Tensor | None:
        """Gauss–Newton steps on the violated rows from an infeasible point until it is
        feasible: Δ = 1.2·Jᵀ(J Jᵀ + εI)⁻¹(-m) over the rows with m < 0 (overshooting slightly),
        ε = 1e-12 of J Jᵀ's largest diagonal entry: relative, so that a saturated unit's tiny
        slopes still step (an absolute 1e-12 shrank the steps 100× once a sigmoid saturated, and
        P(sigmoid > 1 - 1e-7) = 10^-58 came out 10^-2.1 with no design point found), each step
        at most REACH_GROWTH·(1 + |ξ|) long. None where a margin is not finite or the violated
        rows are flat (zero slopes make the step 0·∞: a NaN point that no row calls violated)."""
        point = start.detach()
        for _ in range(iterations):
            values, violated, jac = self.rows(point, lambda m: [r for r in range(m.shape[0]) if float(m[r]) < 0])
            if not bool(torch.isfinite(values).all()):
                return None
            if not violated:
                return point
            gram = jac @ jac.T
            gram = gram + 1e-12 * gram.diagonal().max().clamp_min(1e-300) * torch.eye(
                len(violated), dtype=jac.dtype, device=jac.device)
            step = 1.2 * (jac.T @ torch.linalg.solve(gram, -values[violated]))
            if not bool(torch.isfinite(step).all()):
                return None
            room = REACH_GROWTH * (1 + float(point.norm()))           # a trust region: saturated units'
            point = point + step * min(1.0, room / max(float(step.norm()), 1e-300))   # slopes extrapolate far
        return None

    def descend(self, start: Tensor, iterations: int = 10) -> Tensor | None:
        """Projected descent of |ξ| along the boundary from a feasible start. The boundary
        point it has reached is kept in `reached`, for a caller whose budget runs out
        mid-descent (OutOfBudget)."""
        self.reached = point = self.to_boundary(start)
        if point is None:
            return None
        step = 0.5
        for _ in range(iterations):
            normals = self.normals(point, ACTIVE_REACH * (1 + float(point.norm())))
            basis = torch.linalg.qr(normals.T).Q                      # span of the active normals
            tangent = point - basis @ (basis.T @ point)
            if float(tangent.norm()) <= 1e-4 * float(point.norm()):
                break                                                 # KKT: ξ ∥ normals
            while step > 1e-3:
                candidate = self.to_boundary(point - step * tangent, near=True)
                if candidate is not None and float(candidate.norm()) < float(point.norm()):
                    self.reached = point = candidate
                    step = min(1.0, 2 * step)
                    break
                step /= 2
            else:
                break
        return point


def _secant(a: float, m_a: float, b: float, m_b: float) -> float:
    """Where the line through (a, m_a) and (b, m_b) crosses zero (m_a, m_b of opposite signs)."""
    return a + (b - a) * m_a / (m_a - m_b)


def find_modes(batch_margins: list[Callable[[Tensor], Tensor]], dim: int, *, pilot: int = 384,
               starts: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None,
               guesses: list[Tensor | None] | None = None, max_modes: int = MAX_MODES,
               effort: float = math.inf, iterations: int = 10, limit: float = math.inf,
               fill: bool = False, rays: bool = False) -> tuple[list[Mode], int, int]:
    """Design points of each clause, from the feasible points of a pilot cloud.

    Network outputs are far from linear, so a gradient taken in the bulk can point away
    from the catastrophe: starts are the feasible points of smallest norm among `pilot`
    draws from N(0, s²I), s = 1.5, 2.5, 4, in distinct directions (if none is feasible, or with
    `fill` where fewer than `starts` directions are, infeasible points of largest margin (with
    `rays`, in turn with those whose ray crosses the boundary nearest: `_push_order`) are
    pushed in by Newton steps on the margin: `_clause_modes`). `guesses[c]`, if
    given, is one more start for clause c (π's statistically linearised design point),
    pushed in the same way when infeasible. A descent after a clause's first starts only
    while the clause has spent less than its share of `effort` forward-pass equivalents (a
    backward pass counts two); each descent takes at most `iterations` steps. `limit` is a
    hard cap in the same units: a pass that would cross the clause's share of it is not
    made, and the clause ends with the modes found so far (a budgeted estimate then has its
    draws left). Clause c of C has (effort - spent)/(C - c) and (limit - spent)/(C - c), so an
    early clause cannot leave a later one unsearched (under one shared limit, a 6-clause
    union on a small network left its last two clauses without a search). Keeps the
    `max_modes` nearest modes within MODE_BAND of the nearest.
    Returns (modes, forward passes, backward passes).
    """
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1.5, 2.5, 4.0], dtype=dtype).repeat_interleave(-(-pilot // 3))[:pilot]
    cloud = (torch.randn(pilot, dim, generator=generator, dtype=dtype) * scales[:, None]).to(device)
    modes: list[Mode] = []
    forwards = backwards = 0
    for c, batch in enumerate(batch_margins):
        left, spent = len(batch_margins) - c, forwards + 2 * backwards
        search = ClauseSearch(batch, (limit - spent) / left)
        try:
            _clause_modes(search, cloud, starts, guesses[c] if guesses else None, (effort - spent) / left,
                          iterations, modes, c, fill, rays)
        except OutOfBudget:
            pass                             # this clause's share is spent; the next has its own
        forwards += search.forwards
        backwards += search.backwards
    return banded(modes)[:max_modes], forwards, backwards


def _clause_modes(search: ClauseSearch, cloud: Tensor, starts: int, guess: Tensor | None, effort: float,
                  iterations: int, modes: list[Mode], clause: int, fill: bool = False,
                  rays: bool = False) -> None:
    """One clause of `find_modes`: its starts from the pilot `cloud` (and `guess`), and
    descents from them while its search has spent under `effort`, adding new modes to `modes`.
    Where no cloud point is feasible, or with `fill` where fewer than `starts` are (in
    distinct directions), as many infeasible points of largest margin, in new directions,
    are pushed in and descended from, one by one, while effort is left. On `pitrack bench
    sampling`'s r07 (8 → 128³ → 1 ReLU) at p = 1e-6 the cloud often holds one feasible
    point; its descent and the linear guess's spent 800 of 3,000 passes and missed the modes
    at β ≈ 3.6 that hold most of the mass, and 4 runs in 20 read 0.001–0.4 of the truth."""
    margins = search.margin(cloud)
    inside = cloud[margins >= 0]
    chosen = distinct(inside[inside.norm(dim=1).argsort()], starts)
    missing = starts - len(chosen) if fill or not len(inside) else 0
    if guess is not None:
        pushed = guess if float(search.margin(guess[None, :])[0]) >= 0 else search.reach(guess)
        chosen += [pushed] if pushed is not None else []
    to_push = distinct(_push_order(search, cloud, margins, rays), missing, chosen)
    descents = 0
    for start, infeasible in [(p, False) for p in chosen] + [(p, True) for p in to_push]:
        if descents and search.forwards + 2 * search.backwards >= effort:
            break
        start = search.reach(start) if infeasible else start
        if start is None:
            continue
        point = search.descend(start, iterations)
        descents += 1
        if point is not None and is_new(point, modes):
            modes.append(Mode(point, float(point.norm()), clause))


def _push_order(search: ClauseSearch, cloud: Tensor, margins: Tensor, rays: bool) -> Tensor:
    """The cloud's infeasible points in the order `_clause_modes` pushes them in: largest
    margin first, or with `rays` alternately the next of largest margin and the next whose
    ray from the origin is estimated to cross the boundary nearest the origin (the
    zero-sample design estimate's search, `structured`). Along the ray t·ξ the margin is
    taken linear between m(0) and m(ξ), so it crosses 0 at t* = m(0)/(m(0) - m(ξ)) where it
    rises outward (m(ξ) > m(0) with m(0) < 0), |t* ξ| from the origin; it costs one margin
    more, at the origin.
    Largest margins alone lead to the far boundary that the outermost points see: on a
    4 → 64³ → 2 tanh net with correlated inputs, Below(0) at p = 1e-4 lies in a thin sheet at
    |ξ| = 1.7–2.4, and 16 such starts found modes at β ≥ 5.4 only (-5.5 dex); with the ray
    order, β = 1.6. Tail benchmark, π's seeds 0–9 and 10–19 (85 events with 1e-8 ≤ p ≤ 1e-3,
    zero-sample `auto`; the rule was found on that net, not on the benchmark): event-runs
    beyond 0.5 dex 17 → 10 and 21 → 17, beyond 0.3 dex 52 → 39 and 54 → 45, worst 4.09 → 2.12
    and 3.49 → 3.08 (r09 All at 9e-8 10 → 4, r12 Below at 1e-8 8 → 5). The sampled
    estimators keep the margin order: on `pitrack bench sampling` (seeds 0–19) the ray order
    (ray first) left 16 events above 0.3 relative RMSE as before, but coverage 92.8% → 91.4%
    and r09 All at 9e-8 1.14 → 1.49."""
    outside, values = cloud[margins < 0], margins[margins < 0]
    by_margin = outside[values.argsort(descending=True)]
    if not rays or not len(outside):
        return by_margin
    at_origin = float(search.margin(cloud.new_zeros(1, cloud.shape[1]))[0])
    if at_origin >= 0:
        return by_margin
    rising = values > at_origin
    t = torch.where(rising, at_origin / (at_origin - values).clamp_max(-1e-300), torch.full_like(values, math.inf))
    by_ray = outside[(t * outside.norm(dim=1)).argsort()]
    return torch.stack([by_margin, by_ray], dim=1).flatten(0, 1)       # margin first, then ray, in turn


def banded(modes: list[Mode]) -> list[Mode]:
    """`modes` sorted by β, those beyond MODE_BAND of the nearest left out."""
    modes = sorted(modes, key=lambda m: m.beta)
    return [m for m in modes if m.beta <= modes[0].beta + MODE_BAND]


def distinct(points: Tensor, count: int, taken: list[Tensor] = ()) -> list[Tensor]:
    """Up to `count` of `points`, in their order, each at more than about 25° (cosine < 0.9)
    from every point taken before it and from `taken`."""
    chosen: list[Tensor] = []
    for point in points:
        if len(chosen) == count:
            break
        if all(float(torch.dot(point, q) / (point.norm() * q.norm()).clamp_min(1e-300)) < 0.9
               for q in [*taken, *chosen]):
            chosen.append(point)
    return chosen


def is_new(point: Tensor, modes: list[Mode]) -> bool:
    """Is `point` farther than max(0.1 β, MERGE_FLOOR) from every mode (β the larger norm)?"""
    beta = float(point.norm())
    return all(float((point - m.point).norm()) > max(0.1 * max(beta, m.beta), MERGE_FLOOR) for m in modes)


def whitened_cross(cross_xy: Tensor, distribution: Gaussian) -> Tensor:
    """Cov(ξ, y) = F⁺ Cov(x, y) for x = μ + F ξ."""
    if distribution.is_standard:
        return cross_xy
    return torch.linalg.pinv(distribution.factor.to(cross_xy.dtype)) @ cross_xy


FAR = 5e-2


def is_far(log_p: float, level: float = math.log(FAR)) -> bool:
    """Is the event rare enough under π's bulk model to be worth the design-point search?
    The bar is high (5e-2) because the bulk Gaussian can overstate a tail by orders of
    magnitude (bounded outputs: 1e-3 for truths of 1e-8 in the tail benchmark)."""
    return log_p < level
