"""The structure of a compiled network (its ops and their shapes, not their values), to
notice a model that changed shape mid-training or a run file written for another model."""
from __future__ import annotations

from explanations import Graph
from explanations.graph import Act, Affine, Chain


def _ops(chain: Chain) -> list:
    out: list = []
    for op in chain:
        if isinstance(op, Affine):
            out.append(("affine", op.n_out, op.n_in))
        elif isinstance(op, Act):
            out.append(("act", op.kind))
        else:
            out.append(("residual", tuple(tuple(_ops(branch)) for branch in op.branches)))
    return out


def structure(graph: Graph) -> tuple:
    """A hashable signature: inputs, input shape and every op's kind and shape (paths and
    values ignored)."""
    return graph.n_inputs, graph.input_shape, tuple(_ops(graph.chain))


def _describe(op: tuple | None) -> str:
    if op is None:
        return "nothing"
    if op[0] == "affine":
        return f"an affine map {op[2]}→{op[1]}"
    if op[0] == "act":
        return f"activation {op[1]}"
    return f"a residual block of {len(op[1])} branches"


def _inputs(count: int, shape: tuple | None) -> str:
    return f"{count}" if shape is None else f"{count} (shape {shape})"


def structure_difference(old: tuple, new: tuple) -> str | None:
    """What differs between two `structure` signatures, in words (None if they agree)."""
    if old == new:
        return None
    if old[:2] != new[:2]:
        return f"the inputs: {_inputs(*old[:2])} against {_inputs(*new[:2])}"
    a, b = old[2], new[2]
    for i in range(max(len(a), len(b))):
        left, right = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
        if left != right:
            return f"op {i} of the compiled chain: {_describe(left)} against {_describe(right)}"
    return "the compiled chain"
