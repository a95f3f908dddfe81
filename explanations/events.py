"""Events: the catastrophe-detector language.

    Above(k, t)      y_k > t              Below(k, t)   y_k < t
    ArgMax(k)        y_k > y_j for all j ≠ k (output k is the largest)
    All(e1, e2, …)   every event holds    Any(e1, e2, …)   some event holds
    Detector(m, t)   m(y) > t for a torch module m on the outputs (a learned detector)

Each event is evaluated on output tensors (`evaluate`, used by sampling) and exposes its
structure (`dnf`): a union of clauses, each an intersection of halfspaces
{v : Σ coef·v_key > threshold} over the observed vector v = (y, detector outputs).
Every such event is a union of polyhedra in v, which is what explanations integrate.
"""
from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from .activations import activation
from .errors import InvalidEvent

if TYPE_CHECKING:
    from .graph import Graph

MAX_CLAUSES = 4096


@dataclass(frozen=True, eq=False)
class Halfspace:
    """{v : Σ_i coef_i · v[key_i] > threshold}; a key is an output index or a Detector."""
    terms: tuple[tuple[object, float], ...]
    threshold: float


Clause = tuple[Halfspace, ...]


ABSORPTION_LIMIT = 256     # unions of more clauses are left as written (the test is quadratic)


def _keyed(h: Halfspace) -> dict | None:
    """The halfspace's coefficients by key (an output index, or a detector by identity);
    None where a key repeats (the sum of its terms would be needed)."""
    keyed = {("y", k) if isinstance(k, int) else ("detector", id(k)): c for k, c in h.terms}
    return keyed if len(keyed) == len(h.terms) else None


def _implies(g: Halfspace, h: Halfspace) -> bool:
    """g ⇒ h: g's coefficients are exactly λ > 0 times h's on the same keys and g's threshold
    is at least λ times h's ({λa·v > s} ⊆ {a·v > t} when s ≥ λt)."""
    mine, theirs = _keyed(g), _keyed(h)
    if mine is None or theirs is None or mine.keys() != theirs.keys():
        return False
    key = next(iter(theirs))
    if theirs[key] == 0:
        return False
    scale = mine[key] / theirs[key]
    return scale > 0 and all(mine[k] == scale * c for k, c in theirs.items()) and g.threshold >= scale * h.threshold


def _within(a: Clause, b: Clause) -> bool:
    """Clause a ⊆ clause b: every halfspace of b is implied by one of a."""
    return all(any(_implies(g, h) for g in a) for h in b)


def _tightened(clause: Clause) -> Clause:
    """The clause without the halfspaces another of its halfspaces implies (the first of
    equal ones kept); only halfspaces on the same keys are compared (an ArgMax clause on
    1,000 outputs had taken 1.2 s, comparing every pair)."""
    groups: dict[frozenset, list[int]] = {}
    for i, h in enumerate(clause):
        keyed = _keyed(h)
        groups.setdefault(frozenset(keyed) if keyed is not None else ("repeated", i), []).append(i)
    dropped = {i for members in groups.values() for i in members
               if any(_implies(clause[j], clause[i]) and (j < i or not _implies(clause[i], clause[j]))
                      for j in members if j != i)}
    return tuple(h for i, h in enumerate(clause) if i not in dropped)


def absorbed(clauses: list[Clause]) -> list[Clause]:
    """The same union without the halfspaces that another of their clause implies and the
    clauses that another clause contains (absorption, A ∪ (A ∩ B) = A; of equal ones the
    first is kept). Exact: the union is unchanged. Without it, nested clauses such as
    Any(Above(0, 4), Above(0, 4.5)) had design points a few hundredths apart on one ray,
    whose Voronoi cells each held a sliver of the other's event (read 400× too high on
    128 → 64 → 2 tanh). Unions of more than ABSORPTION_LIMIT clauses are left as written."""
    clauses = [_tightened(c) for c in clauses]
    if len(clauses) > ABSORPTION_LIMIT:
        return clauses
    return [a for i, a in enumerate(clauses)
            if not any(_within(a, b) and (j < i or not _within(b, a)) for j, b in enumerate(clauses) if j != i)]


class Event(ABC):
    """Base class: a predicate on the outputs y of the model."""

    @abstractmethod
    def evaluate(self, y: Tensor) -> Tensor:
        """Boolean tensor [batch]: does the event hold for each row of y: [batch, outputs]?"""

    @abstractmethod
    def dnf(self) -> list[Clause]:
        """The event as a union of clauses of halfspaces (see module docstring)."""

    @abstractmethod
    def check(self, n_outputs: int) -> None:
        """Raise InvalidEvent if the event names an output the model does not have."""

    def detectors(self) -> list["Detector"]:
        """The learned detectors this event uses, each once, in order of appearance."""
        return []

    def reads_nonlinear_detector(self) -> bool:
        """Does the event read a detector whose score passes through an activation
        (`Detector.scores_nonlinearly`)?"""
        return any(d.scores_nonlinearly() for d in self.detectors())


def _index(k: object) -> int:
    """k as an int: Python, NumPy and 0-d torch integers (operator.index), not bools."""
    try:
        if isinstance(k, bool) or getattr(k, "dtype", None) == torch.bool:
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise InvalidEvent(f"output index must be an integer, got {k!r}") from None
    if k < 0:
        raise InvalidEvent(f"output index must be non-negative, got {k}")
    return k


def _threshold(t: object) -> float:
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise InvalidEvent(f"threshold must be a number, got {t!r}") from None
    if not math.isfinite(value):
        raise InvalidEvent(f"threshold must be finite, got {value}: such an event is empty or certain")
    return value


def _check_index(k: int, n_outputs: int) -> None:
    if k >= n_outputs:
        raise InvalidEvent(f"output index {k} out of range for a model with {n_outputs} outputs")


class Above(Event):
    """y_k > t."""

    def __init__(self, k: int, t: float) -> None:
        self.k, self.t = _index(k), _threshold(t)

    def evaluate(self, y: Tensor) -> Tensor:
        return y[:, self.k] > self.t

    def dnf(self) -> list[Clause]:
        return [(Halfspace(((self.k, 1.0),), self.t),)]

    def check(self, n_outputs: int) -> None:
        _check_index(self.k, n_outputs)

    def __repr__(self) -> str:
        return f"Above({self.k}, {self.t:g})"


class Below(Event):
    """y_k < t."""

    def __init__(self, k: int, t: float) -> None:
        self.k, self.t = _index(k), _threshold(t)

    def evaluate(self, y: Tensor) -> Tensor:
        return y[:, self.k] < self.t

    def dnf(self) -> list[Clause]:
        return [(Halfspace(((self.k, -1.0),), -self.t),)]

    def check(self, n_outputs: int) -> None:
        _check_index(self.k, n_outputs)

    def __repr__(self) -> str:
        return f"Below({self.k}, {self.t:g})"


class ArgMax(Event):
    """Output k is the largest: y_k > y_j for every j ≠ k (needs the output count)."""

    def __init__(self, k: int, n_outputs: int | None = None) -> None:
        self.k, self.n_outputs = _index(k), n_outputs

    def evaluate(self, y: Tensor) -> Tensor:
        others = torch.cat([y[:, :self.k], y[:, self.k + 1:]], dim=1)
        return (y[:, self.k:self.k + 1] > others).all(dim=1)

    def dnf(self) -> list[Clause]:
        if self.n_outputs is None:
            raise InvalidEvent("ArgMax needs the model's output count: call check(n_outputs) first")
        return [tuple(Halfspace(((self.k, 1.0), (j, -1.0)), 0.0)
                      for j in range(self.n_outputs) if j != self.k)]

    def check(self, n_outputs: int) -> None:
        _check_index(self.k, n_outputs)
        if n_outputs < 2:
            raise InvalidEvent("ArgMax needs a model with at least 2 outputs")
        self.n_outputs = n_outputs

    def __repr__(self) -> str:
        return f"ArgMax({self.k})"


class _Compound(Event):
    def __init__(self, *events: Event) -> None:
        if len(events) == 1 and isinstance(events[0], (list, tuple)):
            events = tuple(events[0])
        if not events:
            raise InvalidEvent(f"{type(self).__name__} needs at least one event")
        for e in events:
            if not isinstance(e, Event):
                raise InvalidEvent(f"{type(self).__name__} takes events, got {e!r}")
        self.events = events

    def check(self, n_outputs: int) -> None:
        for e in self.events:
            e.check(n_outputs)

    def detectors(self) -> list["Detector"]:
        found: list[Detector] = []
        for e in self.events:
            found += [d for d in e.detectors() if all(d is not f for f in found)]
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.events))})"


class All(_Compound):
    """Every event holds (intersection)."""

    def evaluate(self, y: Tensor) -> Tensor:
        result = self.events[0].evaluate(y)
        for e in self.events[1:]:
            result = result & e.evaluate(y)
        return result

    def dnf(self) -> list[Clause]:
        parts = [e.dnf() for e in self.events]
        count = math.prod(len(p) for p in parts)
        if count > MAX_CLAUSES:
            raise InvalidEvent(f"All(...) expands to {count} clauses (> {MAX_CLAUSES}); simplify the event")
        return absorbed([sum(choice, ()) for choice in product(*parts)])


class Any(_Compound):
    """Some event holds (union)."""

    def evaluate(self, y: Tensor) -> Tensor:
        result = self.events[0].evaluate(y)
        for e in self.events[1:]:
            result = result | e.evaluate(y)
        return result

    def dnf(self) -> list[Clause]:
        return absorbed([clause for e in self.events for clause in e.dnf()])


class Detector(Event):
    """A learned catastrophe detector: the event `module(y) > threshold`.

    The module maps the model's outputs [batch, outputs] to one score per row; it is
    compiled to the formal language too, so explanations propagate through it (and the
    graph is recompiled when the module's parameters change, e.g. while it trains).
    A final increasing activation is inverted into the threshold for explanations:
    relu(u) > t ⇔ u > t (t ≥ 0), σ(u) > t ⇔ u > logit t, tanh u > t ⇔ u > atanh t.
    """

    def __init__(self, module: nn.Module, threshold: float = 0.0) -> None:
        if not isinstance(module, nn.Module):
            raise InvalidEvent(f"Detector takes a torch module, got {type(module).__name__}")
        self.module, self.threshold = module, _threshold(threshold)
        self._compiled, self._versions = None, None
        if self.graph.n_outputs != 1:
            raise InvalidEvent(f"a detector must output one score per row, this one outputs {self.graph.n_outputs}")
        self.score_threshold()

    @property
    def graph(self) -> "Graph":
        """The detector's formal graph as `eval()` computes it (`compile_model`'s `inference`),
        recompiled if its parameters or buffers (BatchNorm statistics) changed since."""
        from .compile import compile_model  # events are importable without the compiler
        versions = [t._version for t in (*self.module.parameters(), *self.module.buffers())]
        if self._compiled is None or versions != self._versions:
            self._compiled, self._versions = compile_model(self.module, inference=True), versions
        return self._compiled

    def score_graph(self) -> "Graph":
        """The graph without a final increasing activation (see the class docstring)."""
        from .graph import Act, Graph
        chain = self.graph.chain
        if chain and isinstance(chain[-1], Act) and final_inverse(chain[-1].kind):
            return Graph(chain[:-1], self.graph.n_inputs)
        return self.graph

    def scores_nonlinearly(self) -> bool:
        """Does `score_graph` pass through an activation? Then the score's law under a
        Gaussian y is not Gaussian, and moment-matching it can miss its tail by orders."""
        from .graph import Act, iter_ops
        return any(isinstance(op, Act) for op in iter_ops(self.score_graph().chain))

    def score_threshold(self) -> float:
        """The threshold on `score_graph`'s output; InvalidEvent if the event is certain
        or impossible (a threshold outside the final activation's range)."""
        chain = self.graph.chain
        kind = getattr(chain[-1], "kind", None) if chain else None
        if not final_inverse(kind):
            return self.threshold
        valid, inverse, span = final_inverse(kind)
        if not valid(self.threshold):
            raise InvalidEvent(f"threshold {self.threshold:g} is outside {span}, where the detector's final "
                               f"{kind} can be crossed: the event is certain or impossible")
        return inverse(self.threshold)

    def score(self, y: Tensor) -> Tensor:
        """The detector's score for each row of y: [batch], on y's device."""
        graph = self.graph
        return graph.forward(y.to(device=graph.device, dtype=graph.dtype))[:, 0].to(y.device)

    def evaluate(self, y: Tensor) -> Tensor:
        return self.score(y) > self.threshold

    def dnf(self) -> list[Clause]:
        return [(Halfspace(((self, 1.0),), self.score_threshold()),)]

    def check(self, n_outputs: int) -> None:
        if self.graph.n_inputs != n_outputs:
            raise InvalidEvent(f"the detector reads {self.graph.n_inputs} values but the model has {n_outputs} outputs")

    def detectors(self) -> list["Detector"]:
        return [self]

    def __repr__(self) -> str:
        return f"Detector({type(self.module).__name__}, threshold={self.threshold:g})"


# Final activations a detector threshold can be moved through: (valid t, inverse, range).
_INVERSES = {
    "sigmoid": (lambda t: 0 < t < 1, lambda t: math.log(t / (1 - t)), "(0, 1)"),
    "tanh": (lambda t: -1 < t < 1, math.atanh, "(-1, 1)"),
}


def final_inverse(kind: str | None) -> tuple[Callable[[float], bool], Callable[[float], float], str] | None:
    """(valid t, f⁻¹, f's range) for an increasing final activation f, so that f(s) > t ⇔
    s > f⁻¹(t); None for other kinds. ReLU family f = max(s, 0) + c min(s, 0): c = 0 has range
    [0, ∞) and f⁻¹(t) = t; c > 0 is onto with f⁻¹(t) = t/c below 0. ELU (α > 0):
    range (-α, ∞), f⁻¹(t) = log(1 + t/α) below 0. Softplus: range (0, ∞),
    f⁻¹(t) = log(e^{βt} - 1)/β."""
    if kind in _INVERSES:
        return _INVERSES[kind]
    if kind is None:
        return None
    family, _, value = activation(kind).name.partition(":")      # a bare family name takes its default
    leak = activation(kind).leak
    if leak == 0:
        return (lambda t: t >= 0, lambda t: t, "[0, ∞)")
    if leak is not None and leak > 0:
        return (lambda t: True, lambda t: t if t >= 0 else t / leak, "(-∞, ∞)")
    if family == "elu" and float(value) > 0:
        alpha = float(value)
        return (lambda t: t > -alpha, lambda t: t if t >= 0 else math.log1p(t / alpha), f"({-alpha:g}, ∞)")
    if family == "softplus":
        beta = float(value)
        return (lambda t: t > 0, lambda t: (beta * t + math.log(-math.expm1(-beta * t))) / beta, "(0, ∞)")
    return None
