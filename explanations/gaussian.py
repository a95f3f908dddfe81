"""method="gaussian": π is the joint Gaussian model of (input, every layer, output).

Building π propagates N(μ_x, Σ_x) through the graph (`propagate`), keeping the output
mean μ_y, covariance Σ_y and the cross-covariance C = Cov(x, y).

expectation():  μ_y.
predict(x):     E_π[y | x] = μ_y + (x - μ_x)ᵀ Σ_x⁺ C  (the conditional mean of π's joint
                Gaussian); averaging over x ~ D gives μ_y exactly.
probability(e): e is a union of polyhedra in v = (y, detector scores) (`Event.dnf`);
                v is Gaussian under π (detector scores by propagating N(μ_y, Σ_y) through
                the detector's graph, cross-covariances by Stein's lemma), and the union's
                probability is computed in log space by `mvn.log_union` (exact for one
                halfspace via log Φ; Genz's separation of variables with randomised QMC
                for intersections, its numerical error in details["numerical_abs_error"]).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from .base import Explanation
from .distributions import Gaussian
from .estimate import Estimate
from .events import Clause, Event
from .graph import Affine, Graph
from .mvn import log_union
from .propagate import GaussianState, propagate


def observed(mean: Tensor, cov: Tensor, detectors: list) -> tuple[Tensor, Tensor, int]:
    """Mean and covariance of v = (y, detector scores) when y ~ N(mean, cov), and FLOPs.

    Each detector's score is propagated from N(mean, cov) through its graph with
    Cov(y, score) tracked (Stein's lemma); two scores are related through y by the
    joint-Gaussian regression Cov(d_a, d_b) ≈ Cov(d_a, y) Σ_y⁺ Cov(y, d_b).
    """
    flops = Counter()
    means, crosses, variances = [mean], [cov], []
    for detector in detectors:
        graph = detector.score_graph().to(device=mean.device, dtype=mean.dtype)
        out = propagate(graph.chain, GaussianState(mean, cov, cov), flops)
        means.append(out.mean)
        crosses.append(out.cross)
        variances.append(out.cov[0, 0])
    n = mean.shape[0]
    joint = torch.cat(crosses, dim=1)                           # [outputs, outputs + detectors]
    joint = torch.cat([joint, joint.new_zeros(len(detectors), joint.shape[1])])
    joint[n:, :n] = joint[:n, n:].T
    if detectors:
        between = joint[:n, n:].T @ torch.linalg.pinv(cov, hermitian=True) @ joint[:n, n:]
        between.diagonal().copy_(torch.stack(variances))
        joint[n:, n:] = between
        flops["detectors"] += 10 * n ** 3 + 2 * n * n * len(detectors)
    return torch.cat(means), joint, sum(flops.values())


def clause_rows(clause: Clause, detectors: list, n_outputs: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(A, b) with the clause = {v : A v > b}, v = (y, detector scores)."""
    def column(key: object) -> int:
        return key if isinstance(key, int) else n_outputs + next(i for i, d in enumerate(detectors) if d is key)

    a = like.new_zeros(len(clause), n_outputs + len(detectors))
    for r, half in enumerate(clause):
        for key, coefficient in half.terms:
            a[r, column(key)] += coefficient
    return a, like.new_tensor([half.threshold for half in clause])


class GaussianExplanation(Explanation):
    """Mean/covariance propagation (module docstring)."""

    method = "gaussian"
    penultimate: GaussianState | None = None   # the state entering a final affine map (the head)

    def __init__(self, graph: Graph, distribution: Gaussian, *, dtype: torch.dtype = torch.float64,
                 seed: int = 0) -> None:
        super().__init__(graph, distribution, seed=seed)
        self.dtype = dtype
        x = self.distribution.to(dtype=dtype)
        chain = graph.to(dtype=dtype).chain
        state = GaussianState(x.mean, x.cov, x.cov)
        if chain and isinstance(chain[-1], Affine):     # keep the state before the head
            self.penultimate = propagate(chain[:-1], state, self.flops)
            state = propagate(chain[-1:], self.penultimate, self.flops)
        else:
            state = propagate(chain, state, self.flops)
        self._finish(state)

    def _finish(self, state: GaussianState) -> None:
        """Keep the output state; set up predict's regression on the input."""
        x = self.distribution.to(dtype=self.dtype)
        self.mean, self.cov, self.cross = state.mean, state.cov, state.cross
        self.input_mean = x.mean
        if x.is_standard:
            self.regression = self.cross
        else:
            self.regression = torch.linalg.pinv(x.cov, hermitian=True) @ self.cross
            n = x.dim
            self.flops["predict setup"] += 10 * n ** 3 + 2 * n * n * self.graph.n_outputs

    @property
    def predict_flops(self) -> int:
        """μ_y + (x - μ_x) Σ_x⁺ C: 2 d m + d + m per row."""
        d, m = self.regression.shape
        return 2 * d * m + d + m

    def predict(self, x: Tensor) -> Tensor:
        x = self._inputs(x)
        y = self.mean + (x.to(self.dtype) - self.input_mean) @ self.regression
        return y.to(x.dtype) if x.is_floating_point() else y

    def _expectation(self) -> Estimate:
        return Estimate(self.mean.clone(), None, None, self.build_flops, 0, self.method,
                        self.flops_per_sample, {"cov": self.cov.clone()})

    def _probability(self, event: Event) -> Estimate:
        detectors = event.detectors()
        mean, cov, flops = observed(self.mean, self.cov, detectors)
        n = self.mean.shape[0]
        result = log_union(mean, cov, [clause_rows(c, detectors, n, mean) for c in event.dnf()], seed=self.seed)
        return self._estimate(result, flops)
