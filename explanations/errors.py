"""Errors that name what is wrong with a user's input."""


class PiTrackerError(Exception):
    """Base class of every error π-tracker raises on bad input."""


class UnsupportedModule(PiTrackerError, TypeError):
    """A submodule (or traced operation) that the formal language cannot express."""

    def __init__(self, path: str, kind: str, reason: str = "") -> None:
        self.path, self.kind = path, kind
        where = path or "<root>"
        message = f"unsupported module at '{where}' ({kind})"
        super().__init__(f"{message}: {reason}" if reason else message)


class InvalidModel(PiTrackerError, ValueError):
    """A supported module whose parameters are unusable (NaN/inf weights, shape clash)."""


class DivergedModel(InvalidModel):
    """A model whose outputs are not finite on ordinary (standard normal) inputs: its weights
    have grown until its forward pass overflows."""


class InvalidDistribution(PiTrackerError, ValueError):
    """An input distribution that is malformed (shapes, symmetry, PSD, finiteness)."""


class InvalidEvent(PiTrackerError, ValueError):
    """An event that cannot be evaluated on this model (index out of range, NaN threshold)."""


class BudgetTooSmall(PiTrackerError, ValueError):
    """A budget that cannot pay for what an estimate needs at least (π's part and its fewest
    draws or particles); `minimum_flops` is that least cost where known and `spent` what was
    already spent finding it out."""

    def __init__(self, message: str, minimum_flops: float = float("nan"), spent: int = 0) -> None:
        super().__init__(message)
        self.minimum_flops, self.spent = minimum_flops, spent
