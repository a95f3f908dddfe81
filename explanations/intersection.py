"""method="halfspaces": π for Linear → Step networks, whose outputs are y_i = 1[a_i·x + c_i ≥ 0].

Events that are intersections of output conditions are intersections of halfspaces in x
(`halfspaces.from_network`); P is computed from that structure:
- x ~ N(μ, Σ): separation of variables, constraint by constraint (`halfspaces`), or the
  degree-1 Hermite projection with ``gaussian="hermite"`` (the reference method;
  `pitrack bench halfspaces` measures it far less accurate, so it is not the default);
- x uniform on {-1, 1}^n (`BooleanCube`): twisted sequential Monte Carlo (`cube_smc`).
Each query spends about ``budget`` sample-equivalents (FLOPs of that many forward
passes of M). predict(x) is M(x) itself: the structure is exact, and its mean over D is
E[y_i] = P[a_i·x + c_i ≥ 0], which expectation() computes per output (Φ in closed form
under a Gaussian; on the cube the one-constraint SMC of `cube_marginals`, all outputs at
once, within ``budget``).
"""
from __future__ import annotations

import math

import torch

from .base import Explanation, RunsTheModel
from .cube_marginals import cube_marginal_log_probabilities
from .cube_smc import CubeResult, cube_log_probability
from .distributions import BooleanCube, Gaussian
from .errors import InvalidModel
from .estimate import Estimate
from .events import Event
from .graph import Graph
from .halfspaces import (Halfspaces, from_network, gaussian_log_probability, hermite_log_probability,
                         is_step_network, sov_points)
from .montecarlo import Z95
from .mvn import OrthantResult

REPLICATES = 4


class HalfspaceExplanation(RunsTheModel, Explanation):
    """π of a Linear → Step network on Gaussian or Boolean-cube inputs (module docstring)."""

    method = "halfspaces"
    distributions = (Gaussian, BooleanCube)

    @classmethod
    def check_structure(cls, graph: Graph) -> None:
        if not is_step_network(graph):
            raise InvalidModel("method 'halfspaces' needs a Linear → Step network (nn.Sequential(nn.Linear, Step()))")

    def __init__(self, graph: Graph, distribution: Gaussian | BooleanCube, *, budget: float = 3000,
                 gaussian: str = "sov", seed: int = 0) -> None:
        if gaussian not in ("sov", "hermite"):
            raise ValueError(f"gaussian must be 'sov' or 'hermite', got {gaussian!r}")
        if not budget > 0:
            raise ValueError(f"budget (sample-equivalents per query) must be positive, got {budget!r}")
        super().__init__(graph, distribution, seed=seed)
        self.budget, self.gaussian = float(budget), gaussian
        self.cube = isinstance(distribution, BooleanCube)

    def _expectation(self) -> Estimate:
        affine = self.graph.chain[0]
        weight, bias = affine.weight.to(torch.float64), affine.bias.to(torch.float64)
        if self.cube:
            flops = self.budget * self.flops_per_sample
            log_p, runs, spent = cube_marginal_log_probabilities(weight, bias, flops=flops, replicates=REPLICATES,
                                                                 seed=self.seed)
            values = log_p.exp()
            errors = 3 * runs.exp().std(dim=1) / math.sqrt(REPLICATES)
            return Estimate(values, None, None, spent, 0, self.method, self.flops_per_sample,
                            {"numerical_abs_error": errors})
        rows = [Halfspaces(weight[i:i + 1], bias[i:i + 1], torch.zeros(1, dtype=torch.bool, device=weight.device))
                for i in range(weight.shape[0])]
        results = [gaussian_log_probability(h, self.distribution) for h in rows]    # one step: Φ, exact
        values = torch.tensor([math.exp(r.log_p) for r in results], dtype=torch.float64)
        return Estimate(values, None, None, sum(r.flops for r in results), 0, self.method, self.flops_per_sample,
                        {"numerical_abs_error": torch.zeros_like(values)})

    def _probability(self, event: Event) -> Estimate:
        halfspaces = from_network(self.graph, event)
        result = self._solve(halfspaces, self.budget)
        p = math.exp(result.log_p)
        half = Z95 / 3 * result.abs_error   # abs_error is three standard errors
        interval = (max(0.0, p - half), p + half) if math.isfinite(half) else None
        return Estimate.probability(result.log_p, interval=interval, flops=result.flops, samples=0,
                                    method=self.method, flops_per_sample=self.flops_per_sample,
                                    details={"numerical_abs_error": result.abs_error,
                                             "constraints": halfspaces.k,
                                             "solver": self._solver_name()})

    def _solver_name(self) -> str:
        return "cube-smc" if self.cube else f"gaussian-{self.gaussian}"

    def _solve(self, halfspaces: Halfspaces, budget: float) -> OrthantResult:
        """log P[x ∈ halfspaces] spending about `budget` sample-equivalents."""
        flops = budget * self.flops_per_sample
        if self.cube:
            return _as_orthant(cube_log_probability(halfspaces, flops=flops, replicates=REPLICATES,
                                                    seed=self.seed))
        if self.gaussian == "hermite":
            return hermite_log_probability(halfspaces, self.distribution)
        points = sov_points(max(halfspaces.k, 1), halfspaces.n, flops)
        return gaussian_log_probability(halfspaces, self.distribution, points=points, seed=self.seed)


def _as_orthant(result: CubeResult) -> OrthantResult:
    """The SMC result with three standard errors of the replicate mean as abs_error."""
    p = math.exp(result.log_p)
    return OrthantResult(result.log_p, 3 / Z95 * (result.interval[1] - p), result.flops)
