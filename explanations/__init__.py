"""Explanations of a network on an input distribution: formal structure, distributions,
events, and the estimators that answer E_D[M(x)] and P_D[event] from structure."""
from .activations import Step
from .base import Explanation
from .compile import compile_model
from .distributions import BooleanCube, Gaussian
from .errors import DivergedModel, InvalidDistribution, InvalidEvent, InvalidModel, PiTrackerError, UnsupportedModule
from .estimate import Estimate
from .explain import METHODS, explain
from .graph import Graph

__all__ = ["BooleanCube", "DivergedModel", "Estimate", "Explanation", "Gaussian", "Graph", "InvalidDistribution",
           "InvalidEvent", "InvalidModel", "METHODS", "PiTrackerError", "Step", "UnsupportedModule", "compile_model",
           "explain"]
