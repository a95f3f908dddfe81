"""method="sampling": the plain Monte Carlo baseline behind the common interface."""
from __future__ import annotations

from .base import Explanation, RunsTheModel
from .distributions import BooleanCube, Gaussian
from .estimate import Estimate
from .events import Event
from .graph import Graph


class SamplingExplanation(RunsTheModel, Explanation):
    """π = the empirical distribution of `samples` draws; predict(x) runs the model."""

    method = "sampling"
    distributions = (Gaussian, BooleanCube)

    def __init__(self, graph: Graph, distribution: Gaussian, *, samples: int = 100_000, seed: int = 0) -> None:
        super().__init__(graph, distribution, seed=seed)
        self.samples = samples

    def _expectation(self) -> Estimate:
        return self.expectation(samples=self.samples)

    def _probability(self, event: Event, paid: int) -> Estimate:
        return self.probability(event, samples=self.samples)
