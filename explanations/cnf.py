"""Random k-CNF formulas as halfspaces on the cube, and their satisfying fraction.

A literal is s·x_v with s = ±1 (true when s·x_v = +1, x ∈ {-1, 1}^n). A clause of w
literals is false only when every literal is -1, i.e. Σ_j s_j x_{v_j} = -w, and the
sum moves in steps of 2, so the clause holds iff Σ_j s_j x_{v_j} + (w - 2) ≥ 0: a
halfspace with w nonzero weights. A formula with m clauses is the network
Linear(n, m) → Step with the event All(Above(i, 0.5) for every clause), and the
fraction of satisfying assignments is P[x ∈ ∩ clauses] under `BooleanCube(n)`
(`cube_smc`, whose sparse updates cost O(w) per clause touched).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .activations import Step
from .events import Above, All
from .halfspaces import Halfspaces


@dataclass(frozen=True)
class CNF:
    """Clauses as variable indices [m, w] (distinct within a clause) and signs [m, w] (±1)."""

    variables: torch.Tensor
    signs: torch.Tensor
    n: int

    def __post_init__(self) -> None:
        if self.variables.shape != self.signs.shape or self.variables.dim() != 2:
            raise ValueError(f"variables and signs must both be [clauses, width], got "
                             f"{tuple(self.variables.shape)} and {tuple(self.signs.shape)}")
        if self.variables.numel() and (int(self.variables.min()) < 0 or int(self.variables.max()) >= self.n):
            raise ValueError(f"variable indices must lie in [0, {self.n})")
        if not bool((self.signs.abs() == 1).all()):
            raise ValueError("signs must be +1 or -1")

    @property
    def weight(self) -> torch.Tensor:
        """[m, n]: s_j at column v_j of each clause's row."""
        m, _ = self.variables.shape
        weight = torch.zeros(m, self.n, dtype=torch.float64)
        weight.scatter_add_(1, self.variables, self.signs.to(torch.float64))
        return weight

    @property
    def offset(self) -> torch.Tensor:
        return torch.full((self.variables.shape[0],), float(self.variables.shape[1] - 2), dtype=torch.float64)

    def halfspaces(self) -> Halfspaces:
        m = self.variables.shape[0]
        return Halfspaces(self.weight, self.offset, torch.zeros(m, dtype=torch.bool))

    def network(self) -> nn.Sequential:
        """Linear(n, m) → Step: output i is 1 when clause i holds."""
        linear = nn.Linear(self.n, self.variables.shape[0]).to(torch.float64)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            linear.bias.copy_(self.offset)
        return nn.Sequential(linear, Step())

    def event(self) -> All:
        """Every clause holds."""
        return All(*[Above(i, 0.5) for i in range(self.variables.shape[0])])


def random_cnf(n: int, clauses: int, width: int = 3, seed: int = 0) -> CNF:
    """m clauses of `width` distinct variables drawn uniformly, each negated with probability ½."""
    if width > n:
        raise ValueError(f"a clause of width {width} needs at least {width} variables, got n = {n}")
    generator = torch.Generator().manual_seed(seed)
    variables = torch.stack([torch.randperm(n, generator=generator)[:width] for _ in range(clauses)]) \
        if clauses else torch.zeros(0, width, dtype=torch.long)
    signs = torch.randint(0, 2, (clauses, width), generator=generator) * 2 - 1
    return CNF(variables, signs, n)
