"""Plain data in HDF5: JSON in a scalar string dataset (attributes over ~64 KB fail).

The one way `storage` writes metadata; nothing is pickled or evaluated on reading.
Non-finite floats (NaN, ±inf), which strict JSON has no token for, are written as null;
`numbers` turns a list read back into floats with NaN for null (files written before
this hold the tokens NaN / Infinity, which Python's json reads as floats).
"""
from __future__ import annotations

import json
import math

import h5py


def finite_json(value: object) -> object:
    """`value` (JSON-able: dicts, lists, tuples, scalars) with every non-finite float
    replaced by None, so that it serialises as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def numbers(values: list) -> list[float]:
    """A JSON list of numbers as floats, null (a non-finite number when written) as NaN."""
    return [math.nan if value is None else float(value) for value in values]


def write_json(group: h5py.Group, name: str, value: object) -> None:
    """Store `value` as strict JSON (non-finite floats as null) in dataset `name`."""
    group.create_dataset(name, data=json.dumps(finite_json(value), allow_nan=False), dtype=h5py.string_dtype())


def read_json(group: h5py.Group, name: str, error: type[Exception] = ValueError) -> dict:
    """The JSON stored by `write_json`; `error` naming the dataset if it is missing or corrupt."""
    try:
        return json.loads(group[name].asstr()[()])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as problem:
        raise error(f"'{group.name}/{name}' in {group.file.filename} is missing or corrupt: {problem}") from None
