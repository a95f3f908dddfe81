"""`Ledger`: cumulative training and explanation FLOPs, and the budget they obey.

The budget is a ratio: explanation_flops ≤ budget · training_flops at all times.
`afford(cost)` says whether spending `cost` now keeps that true; `spend` records it and
refuses to break it. A step on which π was not refreshed counts as stale.

Work whose cost is only known once done (an event's probability) is paid by `charge`,
after the caller checked `afford` on a prediction; a prediction that fell short is
recorded in `overruns` instead of being hidden. Sampling checks of π (verification,
not explanation) are counted apart in `check_flops`, outside the ratio. Wall times are
recorded beside the FLOPs, never instead of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class BudgetExceeded(RuntimeError):
    """Spending would make explanation FLOPs exceed budget × training FLOPs."""


@dataclass
class Ledger:
    budget: float = 1.0
    training_flops: float = 0.0
    explanation_flops: float = 0.0
    stale_steps: int = 0
    steps: int = 0               # training steps recorded
    full_updates: int = 0        # π rebuilt from scratch
    incremental_updates: int = 0 # π's head updated on a stale body
    overruns: int = 0            # charges that broke the ratio (a cost prediction fell short)
    check_flops: float = 0.0     # sampling checks of π, outside the ratio
    training_seconds: float = 0.0  # wall time of the user's loop between step hooks (reported, not budgeted)
    tracking_seconds: float = 0.0  # wall time inside the Tracker's step hooks and saves

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"budget must be a positive ratio, got {self.budget!r}")

    @property
    def ratio(self) -> float:
        """explanation_flops / training_flops (0 before any training)."""
        return self.explanation_flops / self.training_flops if self.training_flops else 0.0

    @property
    def headroom(self) -> float:
        """FLOPs that may still be spent now: budget · training_flops - explanation_flops."""
        return self.budget * self.training_flops - self.explanation_flops

    def train(self, flops: float) -> None:
        """Record one training step's FLOPs."""
        self.training_flops += flops
        self.steps += 1

    def afford(self, cost: float) -> bool:
        """Would spending `cost` keep explanation_flops ≤ budget · training_flops?"""
        return self.explanation_flops + cost <= self.budget * self.training_flops

    def spend(self, cost: float) -> None:
        """Record explanation work; raises BudgetExceeded instead of breaking the budget."""
        if not self.afford(cost):
            raise BudgetExceeded(f"spending {cost:.3g} FLOPs would make the ratio "
                                 f"{(self.explanation_flops + cost) / max(self.training_flops, 1):.3g} > {self.budget}")
        self.explanation_flops += cost

    def charge(self, cost: float) -> None:
        """Record work already done; an overrun of the budget is counted, not raised."""
        if not self.afford(cost):
            self.overruns += 1
        self.explanation_flops += cost

    def skip(self) -> None:
        """Record a step on which π was not refreshed."""
        self.stale_steps += 1

    def to_plain(self) -> dict:
        """The ledger as JSON-able numbers (ratio included for readers)."""
        return {**asdict(self), "ratio": self.ratio}

    @classmethod
    def from_plain(cls, plain: dict) -> "Ledger":
        """Inverse of `to_plain` (unknown keys, such as `ratio`, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in plain.items() if key in names})
