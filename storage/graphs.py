"""A compiled `Graph` in an HDF5 group: metadata as a JSON dataset, weights as datasets.

Layout of the group:  meta   (scalar UTF-8 string: the JSON of Graph.to_plain()[0])
                      arrays/<name>  (one float dataset per weight or bias)
JSON goes in a dataset, not an attribute (attributes over ~64 KB fail). Nothing is
pickled or evaluated: a foreign or corrupt group raises ValueError naming the problem.
"""
from __future__ import annotations

import h5py
import numpy as np

from explanations.graph import Graph

from .plain import read_json, write_json


def write_graph(group: h5py.Group, graph: Graph, compression: str | None = None) -> None:
    """Store `graph` under `group` (which must not already hold one); `compression`
    ("gzip") compresses the weight datasets (with the shuffle filter)."""
    meta, arrays = graph.to_plain()
    write_json(group, "meta", meta)
    store = group.create_group("arrays")
    for name, array in arrays.items():
        store.create_dataset(name, data=array, compression=compression,
                             shuffle=compression is not None and array.size > 1)


def read_graph(group: h5py.Group, device: str | None = None) -> Graph:
    """The graph stored by `write_graph`; ValueError if the group holds something else."""
    if "meta" not in group or "arrays" not in group:
        raise ValueError(f"HDF5 group '{group.name}' in {group.file.filename} holds no π-tracker graph")
    meta = read_json(group, "meta")
    arrays = {name: np.asarray(dataset[()]) for name, dataset in group["arrays"].items()}
    return Graph.from_plain(meta, arrays, device=device)
