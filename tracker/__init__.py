"""The Tracker: keeps π up to date during training within a FLOP budget."""
from .ledger import Ledger

__all__ = ["Ledger"]
