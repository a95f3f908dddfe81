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
from .events import Event, Halfspace
from .graph import Graph
from .mvn import log_union
from .propagate import GaussianState, propagate


class GaussianExplanation(Explanation):
    """Mean/covariance propagation (module docstring)."""

    method = "gaussian"

    def __init__(self, graph: Graph, distribution: Gaussian, *, dtype: torch.dtype = torch.float64,
                 seed: int = 0) -> None:
        super().__init__(graph, distribution, seed=seed)
        self.dtype = dtype
        self.flops = Counter()
        x = self.distribution.to(dtype=dtype)
        state = propagate(graph.to(dtype=dtype).chain, GaussianState(x.mean, x.cov, x.cov), self.flops)
        self.mean, self.cov, self.cross = state.mean, state.cov, state.cross
        self.input_mean = x.mean
        if x.is_standard:
            self.regression = self.cross
        else:
            self.regression = torch.linalg.pinv(x.cov, hermitian=True) @ self.cross
            n = x.dim
            self.flops["predict setup"] += 10 * n ** 3 + 2 * n * n * graph.n_outputs

    @property
    def build_flops(self) -> int:
        """FLOPs spent building π."""
        return sum(self.flops.values())

    def predict(self, x: Tensor) -> Tensor:
        x = self._inputs(x)
        y = self.mean + (x.to(self.dtype) - self.input_mean) @ self.regression
        return y.to(x.dtype) if x.is_floating_point() else y

    def _expectation(self) -> Estimate:
        return Estimate(self.mean.clone(), None, None, self.build_flops, 0, self.method,
                        self.flops_per_sample, {"cov": self.cov.clone()})

    def observed(self, detectors: list) -> tuple[Tensor, Tensor, int]:
        """Mean and covariance of v = (y, detector scores) under π, and the FLOPs spent."""
        flops = Counter()
        means, crosses = [self.mean], [self.cov]
        variances = []
        for detector in detectors:
            graph = detector.graph.to(device=self.mean.device, dtype=self.dtype)
            out = propagate(graph.chain, GaussianState(self.mean, self.cov, self.cov), flops)
            means.append(out.mean)
            crosses.append(out.cross)
            variances.append(out.cov[0, 0])
        mean = torch.cat(means)
        cov = torch.cat(crosses, dim=1)                    # [outputs, outputs + detectors]
        cov = torch.cat([cov, torch.zeros(len(detectors), cov.shape[1], dtype=self.dtype,
                                          device=cov.device)])
        n = self.mean.shape[0]
        cov[n:, :n] = cov[:n, n:].T
        if detectors:
            pinv = torch.linalg.pinv(self.cov, hermitian=True)
            between = cov[:n, n:].T @ pinv @ cov[:n, n:]    # regression through y
            cov[n:, n:] = between
            cov[n:, n:].diagonal().copy_(torch.stack(variances))
            flops["detectors"] += 10 * n ** 3 + 2 * n * n * len(detectors)
        return mean, cov, sum(flops.values())

    def _probability(self, event: Event) -> Estimate:
        detectors = event.detectors()
        mean, cov, flops = self.observed(detectors)
        n = self.mean.shape[0]

        def column(key: object) -> int:
            return key if isinstance(key, int) else n + next(i for i, d in enumerate(detectors) if d is key)

        def rows(clause: tuple[Halfspace, ...]) -> tuple[Tensor, Tensor]:
            a = torch.zeros(len(clause), mean.shape[0], dtype=self.dtype, device=mean.device)
            for r, half in enumerate(clause):
                for key, coefficient in half.terms:
                    a[r, column(key)] += coefficient
            b = torch.tensor([half.threshold for half in clause], dtype=self.dtype, device=mean.device)
            return a, b

        result = log_union(mean, cov, [rows(clause) for clause in event.dnf()], seed=self.seed)
        return Estimate.probability(
            result.log_p, interval=None, flops=self.build_flops + flops + result.flops, samples=0,
            method=self.method, flops_per_sample=self.flops_per_sample,
            details={"numerical_abs_error": result.abs_error,
                     "build_flops": self.build_flops, "query_flops": flops + result.flops})
