"""Catastrophe-aware training: a differentiable penalty on the probability of an event.

    penalty = CatastrophePenalty(model, D, Above(0, 4.0), target=1e-6, weight=0.1)
    for x, y in loader:
        loss = loss_fn(model(x), y) + penalty()          # backward() reaches the weights
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    penalty.log10_probability, penalty.flops

The probability is FORM's at the event's design points (Hasofer & Lind 1974; Rackwitz &
Fiessler 1978), the most likely catastrophic inputs. In whitened input space, x = μ + Fξ
with ξ ~ N(0, I), let g(ξ; θ) be the event margin of the network's outputs and detector
scores (`splitting.event_margin`: positive exactly on the event), θ the parameters. A
design point ξ* of a clause minimises |ξ| on {g = 0} (`design.find_modes`). The tangent
plane there, {ξ : g* + ∇g*·(ξ - ξ*) = 0}, lies at signed distance
    s(θ) = (∇g*·ξ* - g(ξ*; θ)) / |∇g*|
from the origin (positive when the origin is outside the event), and P ≈ Φ(-s) per mode.
At a corner of an intersection (All), where several rows of the clause are active, the
mode's mass is that of the intersection of their tangent half-spaces, Φ₂(-s_i, -s_j;
n_i·n_j) with n_r the unit normals (for the pair that makes it smallest, where more meet).
Modes add (Boole's bound): log P ≈ logsumexp_k log P_k. With ξ* and ∇g* = ∇_ξ g held
fixed, the value of s is the design point's β = |ξ*| (g* = 0 there), and its gradient,
-(∂g/∂θ)/|∇g*|, is dβ/dθ by the envelope theorem on the Lagrangian |ξ| + λ g(ξ; θ): moving
the boundary at the design point is all that moves β to first order. So the penalty is
differentiable at the cost of one forward and backward pass of the network per mode, at
the live parameters (`compile_model(..., live=True)`, the network as eval() computes it).
Modes on the same planes count once, a single-plane mode's value is taken at its own
distance, and the sum is capped at P(|ξ| ≥ β_min) (`_mode_mass`, `_distinct_masses`).
Where the origin itself is in the event (a common event), there is no design point: each
clause's rows are linearised at ξ = 0 (the first-order second-moment index),
d_r = g_r(0; θ)/|∇g_r(0; θ)|, their half-spaces intersected as at a corner, the clauses
added and capped at 1, all differentiated whole (∇g through a double backward pass), since
ξ = 0 is no optimum and the envelope theorem does not apply there.

    penalty = weight · w · softplus((log10 P - log10 target)/w),   w = HINGE_WIDTH = 0.2

grows by `weight` per decade above the target and fades within a few tenths of a decade
below it. Measured (4 → 32 → 32 → 1 ReLU regression on x0 + ½ sin 2x1, 400 Adam steps,
Above(0, 3), target 1e-5, weight 0.1): plain training leaves P = 2.0e-3 (2·10⁶ draws);
with the penalty, FORM's P ends at 10^-5.4 and sampling finds 4e-6. A hinge a decade wide
overshot to 10^-10.4 (sampling: 0 in 2·10⁶) for the same loss.

Adversarial D: `inputs(n)` draws from D shifted to the design points, for training on the
failure modes themselves with the task's labels.

Following the design points as θ moves: a full search (`structured.search` on a fresh
Gaussian π: SEARCH_STARTS starts per clause, up to `max_modes` modes) every `search_every`
calls, and in between each mode's projected descent (`design.ClauseSearch.descend`,
`follow` steps) from where it was; after a search, up to REFINE steps, since the search's
short descents stop before the optimum, where ∇g is not yet parallel to ξ and s < β. FORM's error is that of the tangent plane (the
curvature of {g = 0} and failure regions no start reaches); the sampled estimates
(`probability(event, samples=N)`) measure the probability itself.

Detectors in the event are judges, held fixed: the penalty's gradient reaches the model's
parameters through its outputs, not a detector's own weights.

Cost (`flops`, cumulative; one forward pass of the network per point, a backward pass
two): the searches and descents, π's builds, and the live pass per mode (whose backward
is paid in the loss's backward). A Tracker sees none of it as training, since no forward
pass of the module is made.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from explanations import Gaussian, compile_model, explain
from explanations.design import ClauseSearch
from explanations.events import Event
from explanations.mvn import log_bivariate_normal_cdf
from explanations.observed import clause_margins, clause_rows, fold_flops, observer
from explanations.splitting import event_margin
from explanations.structured import log_chi2_tail, search

SEARCH_STARTS = 3
HINGE_WIDTH = 0.2    # decades: the softness of the hinge at the target
NEAR = 0.5          # a clause's row counts at a design point whose tangent plane passes this close
REFINE = 30          # descent steps after a search: the envelope gradient needs the optimum (KKT)
SAME_PLANE = 1e-9    # two modes of a clause whose active planes agree to this are one mode


class CatastrophePenalty:
    """weight · w · softplus((log10 P_FORM(event) - log10 target)/w), differentiable in the
    model's parameters (module docstring). `weight` is in the loss's units per decade above
    the target: on a regression whose MSE is about 0.005, 0.03 brought P to within a factor
    of about 2 of a 1e-4 target, and 0.1 overshot by up to two decades at twice the MSE
    (README, "Catastrophe-aware training"). Scale it with your loss."""

    def __init__(self, model: nn.Module, distribution: Gaussian, event: Event, *, target: float,
                 weight: float = 1.0, search_every: int = 50, follow: int = 3, max_modes: int = 4,
                 seed: int = 0, input_shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(distribution, Gaussian):
            raise TypeError(f"the penalty needs a Gaussian input distribution, got {type(distribution).__name__}")
        if not isinstance(event, Event):
            raise TypeError(f"the event must be an explanations.events Event (Above, All, ...), got {event!r}")
        if not 0 < target < 1:
            raise ValueError(f"target must be a probability in (0, 1), got {target!r}")
        if not 0 <= weight < math.inf:
            raise ValueError(f"weight must be finite and non-negative, got {weight!r}")
        for name, value in (("search_every", search_every), ("max_modes", max_modes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(follow, bool) or not isinstance(follow, int) or follow < 0:
            raise ValueError(f"follow must be a non-negative integer, got {follow!r}")
        self.input_shape = input_shape
        graph = compile_model(model, input_shape=input_shape, inference=True)
        event.check(graph.n_outputs)
        if distribution.dim != graph.n_inputs:
            raise ValueError(f"the distribution has {distribution.dim} dimensions, the model {graph.n_inputs} inputs")
        self.model, self.event, self.target, self.weight = model, event, target, weight
        parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.input_dtype = parameter.dtype if parameter is not None else distribution.mean.dtype
        self.input_device = parameter.device if parameter is not None else distribution.mean.device
        self.distribution = distribution.to(device=self.input_device, dtype=torch.float64)
        self.search_every, self.follow, self.max_modes, self.seed = search_every, follow, max_modes, seed
        self.calls, self.flops = 0, 0
        self.modes: list[tuple[int, Tensor]] = []       # (clause, ξ*) of each design point followed
        self.found_nothing = False                      # the last search found no design point
        self.log10_probability = math.nan
        self.planes: tuple[Tensor, Tensor] | None = None    # the last call's points ξ*_k and log Φ(-s_k)

    def __call__(self) -> Tensor:
        """The penalty at the model's current parameters, a scalar tensor with their autograd graph."""
        live = compile_model(self.model, input_shape=self.input_shape, inference=True, live=True).to(dtype=torch.float64)
        graph = live.detach()                     # for the search: one compile serves both
        detectors = self.event.detectors()
        like = torch.zeros(1, dtype=torch.float64, device=graph.device)
        clauses = [clause_rows(c, detectors, graph.n_outputs, like) for c in self.event.dnf()]
        observe, unit = observer(graph, self.distribution, detectors, torch.float64)   # input map included
        margins = clause_margins(observe, clauses)
        origin = torch.zeros(1, self.distribution.dim, dtype=torch.float64, device=graph.device)
        self.flops += unit + fold_flops(graph, self.distribution)
        common = float(event_margin(observe(origin), clauses)[0]) > 0
        if not common:
            if self.calls % self.search_every == 0 or (not self.modes and not self.found_nothing):
                self._search(graph)
            elif self.modes:
                self._follow(margins, unit, self.follow)
                if not self.modes:                # every mode lost its boundary: search now
                    self._search(graph)
        self.calls += 1
        if not common and not self.modes:         # no design point: the search finds the event unreachable
            self.log10_probability, self.planes = -math.inf, None
            return torch.zeros((), dtype=torch.float64, device=graph.device, requires_grad=True)
        observe_live = observer(live, self.distribution, detectors, torch.float64)[0]
        self.flops += fold_flops(graph, self.distribution)
        if common:
            masses = self._origin_masses(observe_live, origin, clauses, unit)
            points, log_p = origin.expand(len(masses), -1), torch.logsumexp(masses, 0)
            log_p = log_p - log_p.detach().clamp_min(0)                 # Boole's sum capped at 1
        else:
            points, masses = self._distinct_masses(observe_live, clauses, unit)
            log_p = torch.logsumexp(masses, 0)
            cap = log_chi2_tail(self.distribution.dim, float(points.norm(dim=1).min()))
            log_p = log_p - (log_p.detach() - cap).clamp_min(0)      # the value capped, the gradient kept
        self.planes = (points, masses.detach())
        self.log10_probability = float(log_p.detach()) / math.log(10)
        excess = log_p / math.log(10) - math.log10(self.target)
        return self.weight * HINGE_WIDTH * torch.nn.functional.softplus(excess / HINGE_WIDTH)

    def inputs(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n inputs near the catastrophe, for adversarial training (label them with the task):
        x = μ + F(ξ*_k + u), u ~ N(0, I), mode k drawn with probability ∝ Φ(-s_k): D shifted
        to the last call's design points, the same law as design-guided importance sampling's
        mode components (`explanations.guided`). [n, inputs], in the model's dtype and on its
        device (those of its first floating-point parameter)."""
        if self.planes is None:
            raise RuntimeError("call the penalty once first: the design points come from its search")
        points, masses = self.planes
        mode = torch.multinomial(torch.softmax(masses, 0).cpu(), n, replacement=True, generator=generator)
        u = torch.randn(n, points.shape[1], generator=generator, dtype=points.dtype).to(points.device)
        x = self.distribution.mean + (points[mode.to(points.device)] + u) @ self.distribution.factor.T
        return x.to(device=self.input_device, dtype=self.input_dtype)

    def _search(self, graph) -> None:
        """A full design-point search on a fresh Gaussian π of the current network."""
        pi = explain(graph, self.distribution, "gaussian", seed=self.seed)
        found = search(pi, self.event, starts=SEARCH_STARTS, max_modes=self.max_modes)
        self.flops += pi.build_flops + found.flops
        self.modes = [(m.clause, m.point.detach()) for m in found.modes]
        self._follow(found.margins, found.observe_flops, REFINE)
        self.found_nothing = not self.modes

    def _follow(self, margins: list, unit: int, steps: int) -> None:
        """Each mode's projected descent (at most `steps` steps) from its last point on the
        current network; a mode that loses the boundary is dropped."""
        followed = []
        for clause, point in self.modes:
            walker = ClauseSearch(margins[clause])
            with torch.enable_grad():
                moved = walker.descend(point, steps)
            self.flops += (walker.forwards + 2 * walker.backwards) * unit
            if moved is not None:
                followed.append((clause, moved.detach()))
        self.modes = followed

    def _distinct_masses(self, observe_live, clauses: list, unit: int) -> tuple[Tensor, Tensor]:
        """The followed modes' points and log masses (`_mode_mass`), each set of tangent
        planes counted once: descents along a corner's edge stop at different points of
        the same planes (a linear ArgMax's two modes had summed to twice its exact value).
        Modes that repeat an earlier one's planes are dropped from `modes`."""
        kept, masses, planes = [], [], []
        for clause, point in self.modes:
            mass, plane = self._mode_mass(observe_live, point, *clauses[clause], unit)
            if any(_same_planes((clause, *plane), other) for other in planes):
                continue
            kept.append((clause, point))
            masses.append(mass)
            planes.append((clause, *plane))
        self.modes = kept
        return torch.stack([point for _, point in kept]), torch.stack(masses)

    def _origin_masses(self, observe_live, origin: Tensor, clauses: list, unit: int) -> Tensor:
        """Per clause {A v > b}, log P of its rows' half-spaces linearised at ξ = 0 (where the
        origin lies in the event): n_r·ξ > -d_r, d_r = g_r(0; θ)/|∇g_r(0; θ)|. One row: log Φ(d);
        several: log Φ₂(d_i, d_j; n_i·n_j) for the pair that makes it smallest. Differentiated
        whole (∇g through a double backward pass: ξ = 0 is no optimum). The tightest row alone
        had put All(y0 < ½, y1 < ½) of a linear model at 0.69 for 0.48."""
        masses, rows_seen = [], 0
        with torch.enable_grad():
            at = origin.detach().requires_grad_(True)
            v = observe_live(at)[0]
            for a, b in clauses:
                rows = v @ a.T - b
                slopes = torch.stack([torch.autograd.grad(rows[r], at, retain_graph=True, create_graph=True)[0][0]
                                      for r in range(len(rows))])
                norms = slopes.norm(dim=1).clamp_min(1e-12)
                masses.append(_intersection_log_mass(rows / norms, slopes / norms[:, None]))
                rows_seen += len(rows)
        self.flops += (1 + 4 * rows_seen) * unit
        return torch.stack(masses)

    def _mode_mass(self, observe_live, point: Tensor, a: Tensor, b: Tensor, unit: int
                   ) -> tuple[Tensor, tuple[tuple[int, ...], Tensor, Tensor]]:
        """log P of the clause {A v > b} linearised at its design point, and its planes (the
        active rows, their distances and unit normals, detached). Each row r whose plane
        passes within NEAR of ξ* (g_r/|∇g_r| ≤ NEAR) is the half-space n_r·ξ > s_r,
        s_r = (∇g_r·ξ* - g_r(ξ*; θ))/|∇g_r|, n_r = ∇g_r/|∇g_r|.
        One row: log Φ(-s), ∇g held fixed (the envelope gradient), its value taken at
        β' = |ξ*| - g(ξ*)/|∇g|, the design point's own distance: at a ReLU kink the one-sided
        ∇g can lean off ξ* (cos 0.69 measured) and put the plane far nearer than the point
        (s = 3.1 for β = 4.5: 4.5 decades too high). Several rows: log Φ₂(-s_i, -s_j; n_i·n_j)
        (`mvn.log_bivariate_normal_cdf`, in log space) for the pair that makes it smallest (an
        upper bound where more rows meet), with ∇g_r live: where rows meet, the corner's
        value moves with the normals' angle, which the envelope argument does not cover
        (exact for a linear model)."""
        with torch.enable_grad():
            at = point.detach().requires_grad_(True)
            rows = observe_live(at[None])[0] @ a.T - b
            corner = len(rows) > 1
            slopes = torch.stack([torch.autograd.grad(rows[r], at, retain_graph=True, create_graph=corner)[0]
                                  for r in range(len(rows))])
        self.flops += (1 + 2 * len(rows)) * unit
        norms = slopes.norm(dim=1).clamp_min(1e-12)
        gaps = rows.detach() / norms.detach()
        active = [r for r in range(len(rows)) if float(gaps[r]) <= float(gaps.min()) + NEAR]
        slopes, norms = slopes[active], norms[active]
        distances = ((slopes @ point) - rows[active]) / norms
        normals = slopes / norms[:, None]
        planes = (tuple(active), distances.detach(), normals.detach())
        if len(active) == 1:
            beta = float(point.norm()) - float(rows[active[0]].detach() / norms[0].detach())
            return torch.special.log_ndtr(-(distances[0] + (beta - distances[0].detach()))), planes
        return _intersection_log_mass(-distances, normals), planes


def _intersection_log_mass(depths: Tensor, normals: Tensor) -> Tensor:
    """log P(n_r·ξ > -d_r for every row r), ξ ~ N(0, I), unit normals n_r: log Φ(d) for one row;
    for several, the smallest log Φ₂(d_i, d_j; n_i·n_j) over pairs (`mvn.log_bivariate_normal_cdf`;
    an upper bound where more than two rows meet)."""
    if len(depths) == 1:
        return torch.special.log_ndtr(depths[0])
    return torch.stack([log_bivariate_normal_cdf(depths[i], depths[j], (normals[i] @ normals[j]).clamp(-1, 1))
                        for i in range(len(depths)) for j in range(i + 1, len(depths))]).min()


def _same_planes(one: tuple, other: tuple) -> bool:
    """Do two modes' (clause, active rows, distances, normals) describe the same planes?"""
    if one[:2] != other[:2]:
        return False
    scale = 1 + float(one[2].abs().max())
    return (float((one[2] - other[2]).abs().max()) <= SAME_PLANE ** 0.5 * scale
            and float((one[3] * other[3]).sum(1).min()) >= 1 - SAME_PLANE)
