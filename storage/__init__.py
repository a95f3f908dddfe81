"""HDF5 storage of π-tracker objects. Never imports tracker or train."""
from .graphs import read_graph, write_graph

__all__ = ["read_graph", "write_graph"]
