"""The formal structure of a network: a chain of typed operations on flat vectors.

    Affine(W, b)          h ↦ W h + b
    Act(kind)             h ↦ f(h) elementwise, f from `activations.activation(kind)`
    Residual(branches)    h ↦ Σ_i branch_i(h); each branch is a chain, () is the skip h ↦ h

Identity and Flatten compile away (the identity on flat [batch, n] inputs). Every op
keeps the path of the module it came from, for error messages. A `Graph` round-trips
through plain data: JSON-able metadata and a dict of named numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Union

import numpy as np
import torch
from torch import Tensor

from .activations import activation
from .errors import InvalidModel

FORMAT_VERSION = 1


def plain_array(tensor: Tensor) -> np.ndarray:
    """`tensor` as a numpy array; dtypes numpy lacks (bfloat16, float8) become float32."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        tensor = tensor.float()
    return tensor.numpy()


def _known_activation(kind: object) -> bool:
    try:
        activation(kind)
    except (ValueError, TypeError):
        return False
    return True


@dataclass(eq=False)
class Affine:
    weight: Tensor  # [out, in]
    bias: Tensor    # [out]
    path: str = ""
    flops: int | None = None    # forward FLOPs where the module was sparse (a convolution:
                                # 2·nnz(W) + out); None: dense, 2·in·out + out
    support: Tensor | None = None   # [out, in] bool: the entries that can be nonzero whatever
                                    # the weights' values (a convolution's taps, a pool's or a
                                    # tournament's constants); None: every entry (a Linear)

    @property
    def forward_flops(self) -> int:
        return self.flops if self.flops is not None else 2 * self.n_in * self.n_out + self.n_out

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]


@dataclass(eq=False)
class Act:
    kind: str
    path: str = ""

    @property
    def in_max_pool(self) -> bool:
        """A ReLU of a max pool's tournament (`spatial.max_pool`), whose units cancel in pairs."""
        return self.path.endswith((MAX_POOL_UNITS, MAX_POOL_EXTREMES))

    @property
    def unit_flops(self) -> int:
        """Forward FLOPs per unit: the activation's price, or 0 for the units of a pool
        rewritten around an activation (`spatial.expand_pools`), whose map carries the charge."""
        return 0 if self.path.endswith(MAX_POOL_EXTREMES) else activation(self.kind).flops


MAX_POOL_UNITS = " (max pool units)"       # the suffix of a tournament ReLU's path
MAX_POOL_EXTREMES = " (max pool extremes)"  # … of one whose FLOPs its last map carries


@dataclass(eq=False)
class Residual:
    branches: tuple[tuple["Op", ...], ...]
    path: str = ""


Op = Union[Affine, Act, Residual]
Chain = tuple[Op, ...]


def chain_width(chain: Chain, n_in: int) -> int:
    """Width of the vector a chain outputs for an n_in-wide input; checks shapes."""
    n = n_in
    for op in chain:
        if isinstance(op, Affine):
            if op.n_in != n:
                raise InvalidModel(f"'{op.path}' expects {op.n_in} inputs but receives {n}")
            n = op.n_out
        elif isinstance(op, Residual):
            widths = {chain_width(branch, n) for branch in op.branches}
            if len(widths) != 1:
                raise InvalidModel(f"residual '{op.path}' sums branches of widths {sorted(widths)}")
            n = widths.pop()
    return n


def first_width(chain: Chain) -> int | None:
    """Input width implied by the first affine map met along the chain."""
    for op in chain:
        if isinstance(op, Affine):
            return op.n_in
        if isinstance(op, Residual):
            found = [w for w in (first_width(b) for b in op.branches) if w is not None]
            if found:
                return found[0]
    return None


def iter_ops(chain: Chain) -> Iterator[Op]:
    """Every op, depth first, residual branches included."""
    for op in chain:
        yield op
        if isinstance(op, Residual):
            for branch in op.branches:
                yield from iter_ops(branch)


def run_chain(chain: Chain, h: Tensor) -> Tensor:
    """Evaluate the chain on a batch h: [batch, n]."""
    for op in chain:
        if isinstance(op, Affine):
            h = torch.addmm(op.bias.to(h.dtype), h, op.weight.to(h.dtype).T)
        elif isinstance(op, Act):
            h = activation(op.kind).fn(h)
        else:
            h = sum(run_chain(branch, h) for branch in op.branches)
    return h


def chain_flops(chain: Chain, n_in: int) -> int:
    """Forward FLOPs per sample: 2·in·out + out per affine map (2·nnz + out for a
    convolution's), the activation's
    price per unit, and one per unit for each extra residual summand."""
    total, n = 0, n_in
    for op in chain:
        if isinstance(op, Affine):
            total += op.forward_flops
            n = op.n_out
        elif isinstance(op, Act):
            total += op.unit_flops * n
        else:
            total += sum(chain_flops(branch, n) for branch in op.branches)
            total += (len(op.branches) - 1) * n
            n = chain_width(op.branches[0], n)
    return total


class Graph:
    """A compiled network: `chain` maps [batch, n_inputs] to [batch, n_outputs]."""

    def __init__(self, chain: Chain, n_inputs: int, input_shape: tuple[int, ...] | None = None) -> None:
        self.chain = tuple(chain)
        self.n_inputs = n_inputs
        if input_shape is not None and (not all(isinstance(n, int) and n > 0 for n in input_shape)
                                        or int(np.prod(input_shape)) != n_inputs):
            raise InvalidModel(f"input shape {tuple(input_shape)} does not hold {n_inputs} inputs")
        self.input_shape = tuple(input_shape) if input_shape is not None else None   # one input's, unflattened
        self.n_outputs = chain_width(self.chain, n_inputs)
        for op in iter_ops(self.chain):
            if isinstance(op, Affine):
                for name, tensor in (("weight", op.weight), ("bias", op.bias)):
                    if not torch.isfinite(tensor).all():
                        raise InvalidModel(f"{name} of '{op.path}' has NaN or infinite entries")

    @property
    def flops_per_sample(self) -> int:
        """FLOPs of one forward pass: the unit 'sample-equivalent'."""
        return chain_flops(self.chain, self.n_inputs)

    @property
    def device(self) -> torch.device:
        return next((op.weight.device for op in iter_ops(self.chain) if isinstance(op, Affine)),
                    torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return next((op.weight.dtype for op in iter_ops(self.chain) if isinstance(op, Affine)),
                    torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        """M(x) for x: [batch, n_inputs] (a single vector is treated as a batch of one)."""
        squeeze = x.dim() == 1
        h = x.reshape(-1, self.n_inputs) if squeeze else x
        if h.shape[-1] != self.n_inputs:
            raise ValueError(f"inputs have {h.shape[-1]} features, the model expects {self.n_inputs}")
        y = run_chain(self.chain, h)
        return y[0] if squeeze else y

    __call__ = forward

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy with parameters on another device / dtype."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Graph":
        """The same maps without their autograd history (a `live` graph's, say)."""
        return self._map(Tensor.detach)

    def _map(self, change: Callable[[Tensor], Tensor]) -> "Graph":
        """A copy with `change` applied to every weight and bias."""
        def move(chain: Chain) -> Chain:
            out = []
            for op in chain:
                if isinstance(op, Affine):
                    out.append(replace(op, weight=change(op.weight), bias=change(op.bias)))
                elif isinstance(op, Residual):
                    out.append(Residual(tuple(move(b) for b in op.branches), op.path))
                else:
                    out.append(op)
            return tuple(out)
        return Graph(move(self.chain), self.n_inputs, self.input_shape)

    def to_plain(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, named arrays) from which `from_plain` rebuilds the graph;
        weights of dtypes numpy lacks (bfloat16, float8) become float32 arrays."""
        arrays: dict[str, np.ndarray] = {}

        def encode(chain: Chain) -> list:
            out = []
            for op in chain:
                if isinstance(op, Affine):
                    key = f"affine{len(arrays) // 2}"
                    arrays[f"{key}.weight"] = plain_array(op.weight)
                    arrays[f"{key}.bias"] = plain_array(op.bias)
                    out.append({"op": "affine", "array": key, "path": op.path}
                               | ({"flops": op.flops} if op.flops is not None else {}))
                elif isinstance(op, Act):
                    out.append({"op": "act", "kind": op.kind, "path": op.path})
                else:
                    out.append({"op": "residual", "path": op.path,
                                "branches": [encode(b) for b in op.branches]})
            return out

        meta = {"format": "pi-tracker graph", "version": FORMAT_VERSION,
                "n_inputs": self.n_inputs, "chain": encode(self.chain)}
        if self.input_shape is not None:
            meta["input_shape"] = list(self.input_shape)
        return meta, arrays

    @classmethod
    def from_plain(cls, meta: dict, arrays: dict[str, np.ndarray],
                   device: torch.device | str | None = None) -> "Graph":
        """Inverse of `to_plain`; raises ValueError on foreign or malformed data."""
        if not isinstance(meta, dict) or meta.get("format") != "pi-tracker graph":
            raise ValueError("not a π-tracker graph description")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"graph format version {meta.get('version')} is not {FORMAT_VERSION}")

        def decode(items: list) -> Chain:
            out: list[Op] = []
            for item in items:
                kind = item.get("op")
                if kind == "affine":
                    try:
                        weight, bias = arrays[item["array"] + ".weight"], arrays[item["array"] + ".bias"]
                    except KeyError as missing:
                        raise ValueError(f"graph arrays lack {missing}") from None
                    flops = item.get("flops")
                    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, int) or flops < 0):
                        raise ValueError(f"bad FLOP count in {item!r}")
                    out.append(Affine(torch.as_tensor(np.asarray(weight), device=device),
                                      torch.as_tensor(np.asarray(bias), device=device), item.get("path", ""), flops))
                elif kind == "act" and _known_activation(item.get("kind")):
                    out.append(Act(item["kind"], item.get("path", "")))
                elif kind == "residual":
                    out.append(Residual(tuple(decode(b) for b in item["branches"]), item.get("path", "")))
                else:
                    raise ValueError(f"unknown graph operation {item!r}")
            return tuple(out)

        shape = meta.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and all(isinstance(n, int) for n in shape)):
            raise ValueError(f"bad input shape {shape!r}")
        try:
            return cls(decode(meta["chain"]), int(meta["n_inputs"]), tuple(shape) if shape is not None else None)
        except InvalidModel as error:
            raise ValueError(str(error)) from None

    def __repr__(self) -> str:
        def show(chain: Chain) -> str:
            parts = []
            for op in chain:
                if isinstance(op, Affine):
                    parts.append(f"Affine({op.n_in}→{op.n_out})")
                elif isinstance(op, Act):
                    parts.append(op.kind)
                else:
                    parts.append("Residual(" + " + ".join(show(b) or "skip" for b in op.branches) + ")")
            return " → ".join(parts)
        return f"Graph({self.n_inputs} inputs: {show(self.chain)})"
