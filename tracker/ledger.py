"""`Ledger`: cumulative training and explanation FLOPs, and the budget they obey.

The budget is a ratio: explanation_flops ≤ budget · training_flops at all times.
`afford(cost)` says whether spending `cost` now keeps that true; `spend` records it and
refuses to break it. A step on which π was not refreshed counts as stale.
"""
from __future__ import annotations

from dataclasses import dataclass


class BudgetExceeded(RuntimeError):
    """Spending would make explanation FLOPs exceed budget × training FLOPs."""


@dataclass
class Ledger:
    budget: float = 1.0
    training_flops: float = 0.0
    explanation_flops: float = 0.0
    stale_steps: int = 0

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"budget must be a positive ratio, got {self.budget!r}")

    @property
    def ratio(self) -> float:
        """explanation_flops / training_flops (0 before any training)."""
        return self.explanation_flops / self.training_flops if self.training_flops else 0.0

    def train(self, flops: float) -> None:
        """Record one training step's FLOPs."""
        self.training_flops += flops

    def afford(self, cost: float) -> bool:
        """Would spending `cost` keep explanation_flops ≤ budget · training_flops?"""
        return self.explanation_flops + cost <= self.budget * self.training_flops

    def spend(self, cost: float) -> None:
        """Record explanation work; raises BudgetExceeded instead of breaking the budget."""
        if not self.afford(cost):
            raise BudgetExceeded(f"spending {cost:.3g} FLOPs would make the ratio "
                                 f"{(self.explanation_flops + cost) / max(self.training_flops, 1):.3g} > {self.budget}")
        self.explanation_flops += cost

    def skip(self) -> None:
        """Record a step on which π was not refreshed."""
        self.stale_steps += 1
