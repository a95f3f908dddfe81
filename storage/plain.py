"""Plain data in HDF5: JSON in a scalar string dataset (attributes over ~64 KB fail).

The one way `storage` writes metadata; nothing is pickled or evaluated on reading.
"""
from __future__ import annotations

import json

import h5py


def write_json(group: h5py.Group, name: str, value: object) -> None:
    group.create_dataset(name, data=json.dumps(value), dtype=h5py.string_dtype())


def read_json(group: h5py.Group, name: str, error: type[Exception] = ValueError) -> dict:
    """The JSON stored by `write_json`; `error` naming the dataset if it is missing or corrupt."""
    try:
        return json.loads(group[name].asstr()[()])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as problem:
        raise error(f"'{group.name}/{name}' in {group.file.filename} is missing or corrupt: {problem}") from None
