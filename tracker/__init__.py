"""The Tracker: keeps π up to date during training within a FLOP budget."""
from .ledger import BudgetExceeded, Ledger
from .tracker import Tracker

__all__ = ["BudgetExceeded", "Ledger", "Tracker"]
