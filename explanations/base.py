"""`Explanation`: what every explanation π of (M, D) answers, and the sampling budget.

expectation(samples=None) and probability(event, samples=None) answer from π's own
state; with samples=N they spend N forward passes through the compiled graph instead:
for the mean, Monte Carlo with π.predict as a control variate (`control`; plain for the
sampling explanation); for events, plain Monte Carlo here, importance sampling around
design points in cumulant explanations (`guided`). predict(x) is π's prediction of M(x).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import replace

import torch
from torch import Tensor

from .control import CONTROL_BUILD_SHARE, CONTROL_MARGIN, control_draw_cost, controlled_mean
from .distributions import Gaussian
from .errors import InvalidDistribution
from .estimate import Estimate
from .events import Event
from .graph import Graph
from .montecarlo import (detector_flops, draw_cost, draws_within, flop_budget, mean_estimate,
                         probability_estimate, sample_count, tally)
from .mvn import OrthantResult
from .ranges import settled


MOMENT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def moment_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The dtype π's moments are kept in: torch.float32 or torch.float64, or its name
    ("float64", "torch.float64": the form a Tracker's JSON options can hold)."""
    name = str(dtype).removeprefix("torch.")
    if name not in MOMENT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64 (a torch.dtype or its name), got {dtype!r}")
    return MOMENT_DTYPES[name]


class Explanation(ABC):
    """An explanation π of a compiled model `graph` on inputs x ~ `distribution`."""

    method: str = ""
    distributions: tuple[type, ...] = (Gaussian,)   # the input distributions this method accepts

    @classmethod
    def check_structure(cls, graph: Graph) -> None:
        """Raise if this method cannot explain a network of `graph`'s structure (any, here);
        `__init__` and `explain.check_method` call it before any work."""

    def __init__(self, graph: Graph, distribution: Gaussian, *, seed: int = 0) -> None:
        self.check_structure(graph)
        if not isinstance(distribution, self.distributions):
            names = " or ".join(d.__name__ for d in self.distributions)
            raise InvalidDistribution(f"method {self.method!r} expects a {names} input distribution, "
                                      f"got {type(distribution).__name__}")
        if distribution.dim != graph.n_inputs:
            raise InvalidDistribution(
                f"the distribution has {distribution.dim} dimensions but the model takes {graph.n_inputs} inputs")
        self.graph = graph
        self.distribution = distribution.to(device=graph.device)
        self.seed = seed
        self.flops: Counter = Counter()       # build FLOPs by kind

    @property
    def build_flops(self) -> int:
        """FLOPs spent building π's state, by kind in `self.flops`."""
        return sum(self.flops.values())

    @property
    def flops_per_sample(self) -> int:
        """FLOPs of one forward pass of M: the unit 'sample-equivalent'."""
        return self.graph.flops_per_sample

    @property
    @abstractmethod
    def predict_flops(self) -> int:
        """FLOPs of predict(x) per input row."""

    def residual_fraction(self) -> Tensor:
        """π's own model of Var(y - π.predict(x)) / Var(y) per output: 1 here (no model of it)."""
        return torch.ones(self.graph.n_outputs, dtype=torch.float64)

    def _control_pays(self, flops: float) -> bool:
        """Under a budget of F FLOPs the control variate (`control`) pays π's build B and c_cv
        per draw, so its variance is f·Var(y)·c_cv/(F - B) against plain sampling's
        Var(y)·c/F, with f = `residual_fraction()` (1 - ρ² between y and π.predict). It is
        taken where B is at most CONTROL_BUILD_SHARE of F, which bounds the loss where f is
        wrong (ρ = 0: c_cv/(c (1 - share)), about 1.4×), and f predicts at most CONTROL_MARGIN
        of plain sampling's variance for every output. f is π's model: on narrow deep nets it
        read 0.02 where 0.5 was measured (π's Var(y) short), and with the build at 45% of F
        the control had 1.8–3.3× plain sampling's squared error. (Taken whenever predict was
        cheaper, it had 78 draws against plain sampling's 996 at F = 1,000 sample-equivalents,
        and 8× its squared error.)"""
        spare = flops - self.build_flops
        if self.build_flops > CONTROL_BUILD_SHARE * flops or spare < 3 * control_draw_cost(self):
            return False
        worst = float(self.residual_fraction().max())
        return worst * control_draw_cost(self) / spare <= CONTROL_MARGIN * draw_cost(self.graph, self.distribution) / flops

    def expectation(self, samples: int | None = None, *, flops: float | None = None) -> Estimate:
        """Estimate of E_D[M(x)], one entry per output; with a budget of `samples` draws (with
        π.predict as a control variate where predict is cheaper than the model), or of
        `flops` in all (π's part counted first, the rest buys draws; the control variate
        only where `_control_pays`)."""
        controlled = self.predict_flops < self.flops_per_sample
        if flops is not None:
            flops = flop_budget(flops)
            controlled = controlled and self._control_pays(flops)
            fixed = self.build_flops if controlled else 0
            per_draw = control_draw_cost(self) if controlled else draw_cost(self.graph, self.distribution)
            samples = draws_within(flops, fixed, per_draw, samples, minimum=3 if controlled else 1)
        if samples is None:
            return self._expectation()
        if controlled:
            return controlled_mean(self, samples)
        return mean_estimate(tally(self.graph, self.distribution, samples, seed=self.seed), self.flops_per_sample)

    def probability(self, event: Event, samples: int | None = None, *, flops: float | None = None) -> Estimate:
        """Estimate of P_D[event]; the event is checked against the model first. With a budget
        of `samples` draws, or of `flops` in all (any search π makes is paid first)."""
        if not isinstance(event, Event):
            raise TypeError(f"probability expects an Event, got {type(event).__name__}")
        event.check(self.graph.n_outputs)
        if samples is not None and flops is not None:
            raise ValueError("give either samples or flops, not both")
        if samples is not None:
            samples = sample_count(samples)
        if flops is not None:
            flops = flop_budget(flops)
        if samples is not None or flops is not None:
            return self._sampled_probability(event, samples, flops)
        certain, box_flops = settled(event, self.graph)
        if certain is not None:                 # impossible or certain for every input (`ranges`)
            return Estimate.probability(0.0 if certain else -math.inf, interval=(float(certain), float(certain)),
                                        flops=self.build_flops + box_flops, samples=0,
                                        method=f"{self.method}+range", flops_per_sample=self.flops_per_sample,
                                        details={"build_flops": self.build_flops, "query_flops": box_flops})
        estimate = self._probability(event, box_flops)
        details = {**estimate.details, "query_flops": estimate.details.get("query_flops", 0) + box_flops}
        return replace(estimate, flops=estimate.flops + box_flops, details=details)    # the range check paid too

    def _sampled_probability(self, event: Event, samples: int | None, flops: float | None,
                             spent: int = 0) -> Estimate:
        """P(event) with a budget of `samples` forward passes (or `flops`, after the `spent`
        FLOPs a subclass charged before choosing plain sampling): plain Monte Carlo here."""
        if samples is None:
            samples = draws_within(flops, spent, draw_cost(self.graph, self.distribution) + detector_flops([event]))
        counts = tally(self.graph, self.distribution, samples, [event], seed=self.seed)
        estimate = probability_estimate(counts.hits[0], counts, self.flops_per_sample)
        return replace(estimate, flops=estimate.flops + spent) if spent else estimate

    def _inputs(self, x: Tensor) -> Tensor:
        """x as [batch, inputs] on π's device; for a model compiled with `input_shape`, a batch
        of inputs of that shape ([batch, C, H, W]) is flattened per row, as the graph reads it."""
        x = torch.as_tensor(x)
        shape = self.graph.input_shape
        if shape is not None and x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.graph.n_inputs:
            also = f" or [batch, {', '.join(map(str, shape))}]" if shape is not None else ""
            raise ValueError(f"predict expects inputs of shape [batch, {self.graph.n_inputs}]{also}, got {tuple(x.shape)}")
        return x.to(self.graph.device)

    def _estimate(self, result: OrthantResult, query_flops: int, method: str | None = None,
                  details: dict | None = None) -> Estimate:
        """A zero-sample probability Estimate whose cost includes building π."""
        build = self.build_flops
        return Estimate.probability(
            result.log_p, interval=None, flops=build + query_flops + result.flops, samples=0,
            method=method or self.method, flops_per_sample=self.flops_per_sample,
            details={"numerical_abs_error": result.abs_error, "build_flops": build,
                     "query_flops": query_flops + result.flops, **(details or {})})

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """π's prediction of M(x): [batch, outputs]."""

    @abstractmethod
    def _expectation(self) -> Estimate: ...

    @abstractmethod
    def _probability(self, event: Event, paid: int) -> Estimate:
        """P(event) with no budget given; `paid`: the FLOPs the query spent before (the range
        check), which `probability` adds to the estimate's and a budgeted explanation counts."""


class RunsTheModel:
    """Mixin for explanations whose predict(x) is M(x) itself: one forward pass per row (so
    `expectation(samples=N)` uses no control variate)."""

    @property
    def predict_flops(self) -> int:
        return self.graph.flops_per_sample

    def predict(self, x: Tensor) -> Tensor:
        return self.graph.forward(self._inputs(x).to(self.graph.dtype))
