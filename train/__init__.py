"""Models, tasks and command-line jobs used by the demos, benchmarks and tests."""
from .models import mlp

__all__ = ["mlp"]
