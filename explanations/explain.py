"""`explain(model, D, method)`: build an explanation π of a model on an input distribution.

method="auto" picks by structure: a Linear → Step network gets "halfspaces" (events are
intersections of halfspaces), a 2-layer network (affine → activation → affine)
"polynomial" (its Hermite surrogate is exact in structure), anything else "cumulant"
(on Boolean-cube inputs, where only those two apply, anything else "sampling"); the
estimates then say "auto:<method>".

method="guide" picks the cheapest explanation that guides sampled estimates
(`probability(event, flops=F)`, `expectation(flops=F)`), where π's part is paid from the
budget and only its Gaussian summary and input cross-covariance are used (the bulk test,
the design search's starting points, the control variate): "polynomial" for 2-layer
networks (its build is about half of "gaussian"'s there), "gaussian" otherwise ("cumulant"
costs 2–6 times more on deep networks and guides no better); Linear → Step networks and
Boolean-cube inputs as auto. The estimates say "guide:<method>".
"""
from __future__ import annotations

import inspect

from torch import nn

from .base import Explanation, moment_dtype
from .compile import compile_model
from .cumulant import CumulantPropagation
from .distributions import BooleanCube, Gaussian
from .gaussian import GaussianExplanation
from .graph import Act, Affine, Graph
from .halfspaces import is_step_network
from .intersection import HalfspaceExplanation
from .polynomial import PolynomialExplanation
from .sampling import SamplingExplanation

METHODS: dict[str, type[Explanation]] = {
    "gaussian": GaussianExplanation,
    "cumulant": CumulantPropagation,
    "polynomial": PolynomialExplanation,
    "sampling": SamplingExplanation,
    "halfspaces": HalfspaceExplanation,
}


def is_two_layer(graph: Graph) -> bool:
    """Affine → activation → affine, the structure `polynomial` expands exactly."""
    kinds = [type(op) for op in graph.chain]
    return kinds == [Affine, Act, Affine]


def picked_method(graph: Graph, distribution: Gaussian | BooleanCube, method: str) -> str:
    """The method `explain` runs for `method`: itself, or for "auto" and "guide" by structure
    (halfspaces for Linear → Step networks, plain sampling on the Boolean cube otherwise,
    polynomial for 2-layer networks, then cumulant for "auto" and gaussian for "guide")."""
    if method in METHODS:
        return method
    if is_step_network(graph):
        return "halfspaces"
    if not isinstance(distribution, Gaussian):
        return "sampling"
    if is_two_layer(graph):
        return "polynomial"
    return "cumulant" if method == "auto" else "gaussian"


def check_method(graph: Graph, distribution: Gaussian | BooleanCube, method: str, options: dict) -> None:
    """Raise now what `explain(graph, distribution, method, **options)` would raise for the
    method's name, the network's structure, an option's name or the dtype, without building
    π (other option values are checked when π is built). "auto" and "guide" are checked as
    the method they pick for this network and distribution (the choice `explain` makes):
    an option that method does not take is a TypeError naming both."""
    if method not in ("auto", "guide") and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: auto, guide, {', '.join(sorted(METHODS))}")
    name = picked_method(graph, distribution, method)
    METHODS[name].check_structure(graph)
    accepted = set(inspect.signature(METHODS[name].__init__).parameters) - {"self", "graph", "distribution"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        picked = "" if name == method else f" (here {name!r}, which it picks for this network and distribution)"
        raise TypeError(f"method {method!r}{picked} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(sorted(accepted))}")
    if "dtype" in options:
        moment_dtype(options["dtype"])


def explain(model: nn.Module | Graph, distribution: Gaussian | BooleanCube, method: str = "gaussian", *,
            input_shape: tuple[int, ...] | None = None, inference: bool = False, **options: object) -> Explanation:
    """π for `model` (a torch module, compiled here, or a compiled Graph) on inputs from
    `distribution`, by `method` (see METHODS, "auto" or "guide"); options go to the
    method's constructor. `input_shape` is one input's shape, for models with
    convolutions, and `inference` explains a model in training mode as eval() computes it
    (both as in `compile_model`); D is over the flattened inputs."""
    graph = model if isinstance(model, Graph) else compile_model(model, input_shape=input_shape, inference=inference)
    check_method(graph, distribution, method, options)
    if method in METHODS:
        return METHODS[method](graph, distribution, **options)
    chosen = METHODS[picked_method(graph, distribution, method)](graph, distribution, **options)
    chosen.method = f"{method}:{chosen.method}"
    return chosen
