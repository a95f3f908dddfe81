"""HDF5 storage of π-tracker objects: graphs, and run files of checkpoints (atomic,
readable while written, no pickle). Never imports tracker or train."""
from .graphs import read_graph, write_graph
from .run import Checkpoint, Run, Series, open_run
from .runfile import RunFileError, RunFileWriteError, WriterLock

__all__ = ["Checkpoint", "Run", "RunFileError", "RunFileWriteError", "Series", "WriterLock", "open_run",
           "read_graph", "write_graph"]
