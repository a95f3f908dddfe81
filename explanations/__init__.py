"""Explanations of a network on an input distribution: formal structure, distributions,
events, and the estimators that answer E_D[M(x)] and P_D[event] from structure."""
from .base import Explanation
from .compile import compile_model
from .distributions import Gaussian
from .errors import InvalidDistribution, InvalidEvent, InvalidModel, PiTrackerError, UnsupportedModule
from .estimate import Estimate
from .explain import METHODS, explain
from .graph import Graph

__all__ = ["Estimate", "Explanation", "Gaussian", "Graph", "InvalidDistribution", "InvalidEvent",
           "InvalidModel", "METHODS", "PiTrackerError", "UnsupportedModule", "compile_model", "explain"]
