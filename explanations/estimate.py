"""`Estimate`: a number together with what it cost and how it was obtained."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """An estimate of E_D[M(x)] (tensor, one entry per output) or of P_D[event] (float).

    value:     the estimate; probabilities may underflow to 0.0 while `log10` stays finite.
    log10:     log10 of a probability (computed in log space); None for expectations.
    interval:  (lo, hi) where the method has an honest one (sampling), else None.
    flops:     floating-point operations spent, building the explanation included.
    samples:   forward passes of the model that were drawn (0 for a pure explanation).
    method:    which method produced it ("gaussian", "sampling", ...).
    flops_per_sample: FLOPs of one forward pass of M, the unit "sample-equivalent".
    details:   method-specific diagnostics (numerical error, hits, clauses, ...).
    """

    value: float | Tensor
    log10: float | None
    interval: tuple[Any, Any] | None
    flops: float
    samples: int
    method: str
    flops_per_sample: float
    details: dict = field(default_factory=dict)

    @property
    def sample_equivalents(self) -> float:
        """Cost in forward passes of M: flops / flops_per_sample."""
        return self.flops / self.flops_per_sample

    @classmethod
    def probability(cls, log_p: float, **kwargs: Any) -> "Estimate":
        """A probability estimate from its natural log, keeping log10 when exp underflows."""
        return cls(value=math.exp(log_p), log10=log_p / math.log(10.0), **kwargs)
