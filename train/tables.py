"""Benchmark tables as CSV: one row per dict, fixed column order, missing or None cells empty;
read back as dicts of strings, checked for the columns a reader needs."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row[c] for c in columns} for row in rows)


def read_csv(path: Path, required: list[str], kind: str) -> list[dict[str, str]]:
    """The rows of the CSV at `path`; ValueError naming `kind` where a `required` column is missing."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a {kind} (no column {', '.join(missing)})")
        return list(reader)
