"""An event of a network as a limit-state function in whitened input space, with a meter.

For a compiled graph M, an input Gaussian D = N(μ, LLᵀ) (L = D.factor) and an Event whose
DNF is a union of clauses {v : A_c v > b_c} over v = (y, detector scores), y = M(μ + Lξ):

    g(ξ) = max_c min_j (A_c v - b_c)_j,   the event holds  ⇔  g(ξ) > 0,  ξ ~ N(0, I_d).

(A clause holds iff its smallest margin is positive; the union iff the largest clause
margin is.) This is the reliability-analysis form of the event that FORM, SORM, subset
sampling and cross-entropy importance sampling work on (`train.openturns_methods`).
Margins are in the outputs' own units. Evaluation is float64 (the graph and detector
graphs are copied to float64), in batches.

`evaluations` counts sample-equivalents spent: one per point evaluated, and three per
gradient (one forward and one backward pass, the backward counted as two forwards, as in
`explanations.structured`). With `limit`, the call that would exceed it raises
`BudgetExceeded` instead of evaluating (a guard against runaway runs).
"""
from __future__ import annotations

import torch
from torch import Tensor

from explanations.distributions import Gaussian
from explanations.events import Event
from explanations.graph import Graph
from explanations.observed import clause_rows, observer
from explanations.splitting import event_margin

BATCH = 1 << 14
GRADIENT_COST = 3
STOPPED = "evaluation limit reached"


class BudgetExceeded(RuntimeError):
    """A method asked for more evaluations than the limit."""


class LimitState:
    """g(ξ) for one (graph, D, event) (module docstring)."""

    def __init__(self, graph: Graph, distribution: Gaussian, event: Event, limit: int | None = None) -> None:
        event.check(graph.n_outputs)
        detectors = event.detectors()
        like = torch.zeros(1, dtype=torch.float64)
        self.clauses = [clause_rows(c, detectors, graph.n_outputs, like) for c in event.dnf()]
        # v = (y, detector scores) at whitened inputs ξ: [batch, d] → [batch, outputs + detectors]
        self.observe = observer(graph, distribution, detectors, torch.float64)[0]
        self.dim = distribution.dim
        self.limit = limit
        self.evaluations = 0

    def margin(self, v: Tensor) -> Tensor:
        """max over clauses of min over rows of A v - b: [batch]."""
        return event_margin(v, self.clauses)

    def _charge(self, count: int) -> None:
        if self.limit is not None and self.evaluations + count > self.limit:
            raise BudgetExceeded(f"{STOPPED}: {self.limit:,}")
        self.evaluations += count

    def __call__(self, xi: Tensor) -> Tensor:
        """g at a batch of whitened inputs [batch, d] (float64), counted."""
        self._charge(xi.shape[0])
        with torch.no_grad():
            return torch.cat([self.margin(self.observe(chunk)) for chunk in xi.split(BATCH)])

    def gradient(self, xi: Tensor) -> Tensor:
        """∇g at one whitened input [d] by autograd (a subgradient at the max/min switches), counted."""
        self._charge(GRADIENT_COST)
        with torch.enable_grad():
            point = xi.detach().clone().requires_grad_(True)
            self.margin(self.observe(point[None]))[0].backward()
        return point.grad
