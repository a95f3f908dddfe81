"""Events as plain JSON (no pickle): the catastrophe-detector language written down.

    Above(k, t)  → {"event": "above", "k": k, "t": t}       Below likewise ("below")
    ArgMax(k)    → {"event": "argmax", "k": k}
    All(e, …)    → {"event": "all", "of": [e, …]}           Any likewise ("any")
    Detector(m, t) → {"event": "detector", "graph": i, "threshold": t}

A detector's module is stored as its compiled graph (the i-th of the returned list,
written with `write_graph`); reading rebuilds it as nn.Sequential(Linear, activation, …),
which compiles back to the same graph. Detectors with residual sums are refused.
"""
from __future__ import annotations

from explanations.compile import graph_module
from explanations.events import Above, All, Any, ArgMax, Below, Detector, Event
from explanations.graph import Graph



def event_to_plain(event: Event, graphs: list[Graph]) -> dict:
    """The JSON form of `event`; detector graphs are appended to `graphs`."""
    if isinstance(event, (Above, Below)):
        return {"event": type(event).__name__.lower(), "k": event.k, "t": event.t}
    if isinstance(event, ArgMax):
        return {"event": "argmax", "k": event.k}
    if isinstance(event, (All, Any)):
        return {"event": type(event).__name__.lower(), "of": [event_to_plain(e, graphs) for e in event.events]}
    if isinstance(event, Detector):
        graphs.append(event.graph)
        return {"event": "detector", "graph": len(graphs) - 1, "threshold": event.threshold}
    raise TypeError(f"cannot store an event of type {type(event).__name__}")


def event_from_plain(plain: dict, graphs: list[Graph]) -> Event:
    """Inverse of `event_to_plain`; ValueError on anything else."""
    if not isinstance(plain, dict):
        raise ValueError(f"an event must be a JSON object, got {plain!r}")
    kind = plain.get("event")
    try:
        if kind == "above":
            return Above(int(plain["k"]), float(plain["t"]))
        if kind == "below":
            return Below(int(plain["k"]), float(plain["t"]))
        if kind == "argmax":
            return ArgMax(int(plain["k"]))
        if kind in ("all", "any"):
            parts = [event_from_plain(p, graphs) for p in plain["of"]]
            return All(*parts) if kind == "all" else Any(*parts)
        if kind == "detector":
            return Detector(graph_module(graphs[int(plain["graph"])]), float(plain["threshold"]))
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"malformed stored event {plain!r}: {error!r}") from None
    raise ValueError(f"unknown stored event kind {kind!r}")


