"""method="halfspaces": π for Linear → Step networks, whose outputs are y_i = 1[a_i·x + c_i ≥ 0].

Events that are intersections of output conditions are intersections of halfspaces in x
(`halfspaces.from_network`); P is computed from that structure:
- x ~ N(μ, Σ): separation of variables, constraint by constraint (`halfspaces`), or the
  degree-1 Hermite projection with ``gaussian="hermite"`` (the reference method;
  `pitrack bench halfspaces` measures it far less accurate, so it is not the default);
- x uniform on {-1, 1}^n (`BooleanCube`): twisted sequential Monte Carlo (`cube_smc`).
Each query spends about ``budget`` sample-equivalents (FLOPs of that many forward
passes of M; a positive finite number). The Gaussian QMC takes at least 64 points per
replicate whatever the budget; on the cube a budget below the SMC's minimum (16
particles in each of its 4 runs, tables included) raises ValueError naming that minimum.
The interval is `halfspaces.replicate_interval` (Student's t over the randomised
replicates, ends from log p̂): [0, 0] only for a set known to be empty, None where every
replicate found nothing in a set that is not.

``probability(event, flops=F)`` answers an intersection the same way within F FLOPs: the
solver gets F (not ``budget``), never spends more, and reports what it spent. Plain
sampling (`base`) answers what the structure cannot: unions, a budget F below the
solver's minimum (what was spent finding that out is charged), and ``samples=N``, which
asks for N forward passes.

predict(x) is M(x) itself: the structure is exact, and its mean over D is
E[y_i] = P[a_i·x + c_i ≥ 0], which expectation() computes per output (Φ in closed form
under a Gaussian; on the cube the one-constraint SMC of `cube_marginals`, all outputs at
once, within ``budget``, whose minimum raises as above).
"""
from __future__ import annotations

import math
import numbers

import torch

from .base import Explanation, RunsTheModel
from .cube_marginals import cube_marginal_log_probabilities
from .cube_smc import CubeResult, cube_log_probability
from .distributions import BooleanCube, Gaussian
from .errors import BudgetTooSmall, InvalidEvent, InvalidModel
from .estimate import Estimate
from .events import Event
from .graph import Graph
from .halfspaces import (Halfspaces, from_network, gaussian_log_probability, hermite_flops, hermite_log_probability,
                         is_step_network, replicate_interval, sov_flops_bound, sov_points, sov_points_within)
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
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < budget < math.inf:
            raise ValueError(f"budget (sample-equivalents per query) must be a positive finite number, got {budget!r}")
        super().__init__(graph, distribution, seed=seed)
        self.budget, self.gaussian = float(budget), gaussian
        self.cube = isinstance(distribution, BooleanCube)

    def _expectation(self) -> Estimate:
        affine = self.graph.chain[0]
        weight, bias = affine.weight.to(torch.float64), affine.bias.to(torch.float64)
        if self.cube:
            try:
                log_p, runs, spent = cube_marginal_log_probabilities(
                    weight, bias, flops=self.budget * self.flops_per_sample, replicates=REPLICATES, seed=self.seed)
            except BudgetTooSmall as error:
                raise self._too_small(error, "expectation()") from error
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

    def _probability(self, event: Event, paid: int) -> Estimate:
        halfspaces = from_network(self.graph, event)
        try:
            result = self._solve(halfspaces, self.budget * self.flops_per_sample)
        except BudgetTooSmall as error:
            raise self._too_small(error, "this event") from error
        return self._solved(halfspaces, result)

    def _sampled_probability(self, event: Event, samples: int | None, flops: float | None,
                             spent: int = 0) -> Estimate:
        """With a budget of `flops`, an intersection is solved by the structure within it
        (module docstring); plain sampling for `samples`, for unions and for a budget below
        the solver's minimum."""
        if flops is None:
            return super()._sampled_probability(event, samples, flops, spent)
        try:
            halfspaces = from_network(self.graph, event)
            result = self._solve(halfspaces, flops - spent, capped=True)
        except InvalidEvent:
            return super()._sampled_probability(event, samples, flops, spent)
        except BudgetTooSmall as error:
            return super()._sampled_probability(event, samples, flops, spent + error.spent)
        return self._solved(halfspaces, result, spent)

    def _solved(self, halfspaces: Halfspaces, result: OrthantResult, spent: int = 0) -> Estimate:
        """The zero-sample Estimate of a solved intersection, with its replicate interval."""
        return Estimate.probability(result.log_p,
                                    interval=replicate_interval(result.log_p, result.relative_se, result.replicates),
                                    flops=result.flops + spent, samples=0, method=self.method,
                                    flops_per_sample=self.flops_per_sample,
                                    details={"numerical_abs_error": result.abs_error,
                                             "relative_se": result.relative_se, "replicates": result.replicates,
                                             "constraints": halfspaces.k, "solver": self._solver_name()})

    def _too_small(self, error: BudgetTooSmall, query: str) -> BudgetTooSmall:
        """The cube's minimum, in the sample-equivalents that `budget` counts."""
        return BudgetTooSmall(f"budget={self.budget:g} sample-equivalents is below the "
                              f"{error.minimum_flops / self.flops_per_sample:.4g} that {query} needs on the cube "
                              f"({error}); pass a larger budget", error.minimum_flops)

    def _solver_name(self) -> str:
        return "cube-smc" if self.cube else f"gaussian-{self.gaussian}"

    def _solve(self, halfspaces: Halfspaces, flops: float, capped: bool = False) -> OrthantResult:
        """log P[x ∈ halfspaces] spending about `flops` (at most `flops` where `capped`;
        BudgetTooSmall where that cannot pay for the solver's minimum)."""
        if self.cube:
            return _as_orthant(cube_log_probability(halfspaces, flops=flops, replicates=REPLICATES,
                                                    seed=self.seed))
        k, n, standard = halfspaces.k, halfspaces.n, self.distribution.is_standard
        if self.gaussian == "hermite":
            if capped and hermite_flops(k, n, standard) > flops:
                raise BudgetTooSmall(f"the Hermite projection costs {hermite_flops(k, n, standard)} FLOPs",
                                     hermite_flops(k, n, standard))
            return hermite_log_probability(halfspaces, self.distribution)
        points = sov_points_within(k, n, flops, standard) if capped else sov_points(max(k, 1), n, flops)
        if points == 0:
            raise BudgetTooSmall(f"one QMC point per replicate costs up to {sov_flops_bound(k, n, 1, standard)} "
                                 f"FLOPs", sov_flops_bound(k, n, 1, standard))
        return gaussian_log_probability(halfspaces, self.distribution, points=points, seed=self.seed)


def _as_orthant(result: CubeResult) -> OrthantResult:
    """The SMC result with its relative standard error and replicates, and three standard
    errors of the replicate mean as abs_error."""
    return OrthantResult(result.log_p, 3 * result.relative_se * math.exp(result.log_p), result.flops,
                         result.relative_se, result.replicates)
