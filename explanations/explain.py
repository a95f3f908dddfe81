"""`explain(model, D, method)`: build an explanation π of a model on an input distribution."""
from __future__ import annotations

from torch import nn

from .base import Explanation
from .compile import compile_model
from .distributions import Gaussian
from .gaussian import GaussianExplanation
from .graph import Graph
from .sampling import SamplingExplanation

METHODS: dict[str, type[Explanation]] = {
    "gaussian": GaussianExplanation,
    "sampling": SamplingExplanation,
}


def explain(model: nn.Module | Graph, distribution: Gaussian, method: str = "gaussian",
            **options: object) -> Explanation:
    """π for `model` (a torch module, compiled here, or a compiled Graph) on inputs from
    `distribution`, by `method` (see METHODS); options go to the method's constructor."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    graph = model if isinstance(model, Graph) else compile_model(model)
    return METHODS[method](graph, distribution, **options)
