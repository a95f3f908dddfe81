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
                With samples=N or flops=F: design-guided sampling (`guided`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Explanation, moment_dtype
from .distributions import Gaussian
from .estimate import Estimate
from .events import Event
from .graph import Affine, Graph
from .guided import GuidedSampling
from .propagate import GaussianState, propagate


class GaussianExplanation(GuidedSampling, Explanation):
    """Mean/covariance propagation (module docstring)."""

    method = "gaussian"
    penultimate: GaussianState | None = None   # the state entering a final affine map (the head)

    def __init__(self, graph: Graph, distribution: Gaussian, *, dtype: torch.dtype | str = torch.float64,
                 seed: int = 0) -> None:
        super().__init__(graph, distribution, seed=seed)
        self.dtype = dtype = moment_dtype(dtype)
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

    def residual_fraction(self) -> Tensor:
        """1 - Var(predict)/Var(y) per output under π: predict = μ_y + (x - μ_x) R with
        R = Σ_x⁺ C has Var = diag(Rᵀ Σ_x R) = diag(Cᵀ Σ_x⁺ C), the share of Var(y) that is
        linear in x; 0 for outputs π gives no variance."""
        x = self.distribution.to(dtype=self.dtype)
        explained = (self.regression * (x.cov @ self.regression)).sum(0)
        variance = self.cov.diagonal()
        fraction = torch.where(variance > 0, 1 - explained / variance.clamp_min(1e-300), torch.zeros_like(variance))
        return fraction.clamp(0, 1).to(torch.float64)

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

    def _probability(self, event: Event, paid: int) -> Estimate:
        _, _, _, result, flops = self._bulk(event)
        return self._estimate(result, flops)
