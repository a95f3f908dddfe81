"""`Estimate`: a number together with what it cost and how it was obtained."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
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

    def __str__(self) -> str:
        """One line for people: the value, its 95% interval where there is one, the method and
        the cost, e.g. "P = 3.2e-06 (10^-5.49), 95% in [1.1e-06, 7.5e-06]; cumulant+design-IS;
        10,000 sample-equivalents, 9,800 drawn"."""
        if self.log10 is not None:
            shown = f"P = {self.value:.3g} (10^{self.log10:.2f})" if self.value > 0 or not math.isfinite(self.log10) \
                else f"P = 10^{self.log10:.2f}"
            bounds = self.interval and _distinct(float(self.interval[0]), float(self.interval[1]))
        else:
            flat = lambda t: [float(v) for v in torch.as_tensor(t).reshape(-1)]
            values = flat(self.value)
            lows, highs = (flat(end) for end in self.interval) if self.interval else ((), ())
            parts = [f"{v:.4g}" + (f" ({lo:.4g} to {hi:.4g})" if self.interval else "")
                     for v, lo, hi in zip(values, lows or values, highs or values)]
            shown, bounds = "E[y] = [" + ", ".join(parts) + "]" + (" (95%)" if self.interval else ""), None
        cost = f"{self.sample_equivalents:,.0f} sample-equivalents" + (f", {self.samples:,} drawn" if self.samples else "")
        flag = " (flagged degenerate: details say why)" if self.details.get("degenerate") else ""
        return "; ".join([shown + (f", 95% in {bounds}" if bounds else "") + flag, self.method, cost])

    @classmethod
    def probability(cls, log_p: float, **kwargs: Any) -> "Estimate":
        """A probability estimate from its natural log, keeping log10 when exp underflows."""
        return cls(value=math.exp(log_p), log10=log_p / math.log(10.0), **kwargs)


def _distinct(low: float, high: float) -> str:
    """[low, high] with 2 significant digits, or more (up to 6) where 2 would print the same."""
    for digits in range(2, 7):
        shown = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if shown[0] != shown[1] or low == high:
            break
    return f"[{shown[0]}, {shown[1]}]"

