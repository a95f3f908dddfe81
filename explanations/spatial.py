"""Layers that are affine maps or ReLU networks on flattened inputs, for `compile_model`.

With the shape of one input known ((C, H, W) for images), a convolution, average pooling or
padding layer is x ↦ W x + b on flattened x (row-major, as nn.Flatten and x.flatten(1) order
it). BatchNorm in eval mode is elementwise, x ↦ s x + t, and folds into a neighbouring
affine map. Max pooling is not affine but is a ReLU network, exactly:
max(a, b) = relu(a) - relu(-a) + relu(b - a); so are the clamps (ReLU6, Hardtanh,
Hardsigmoid), clamp(u, l, h) = l + relu(u - l) - relu(u - h) (`Clamp`, written out by
`expand_clamps` once the widths are known).

Structure, worked out once per module, settings, input shape and device from the module's
own forward passes on the basis e_1 … e_n of its input space (float64, in chunks), then kept
(`_STRUCTURES`, dropped with the module):
- a layer without a weight (pooling, padding): W = [module(e_j) - module(0)]_j, b = module(0);
- a layer whose every matrix entry is one entry of its weight (a convolution): the index
  of that entry, read off a pass with the weight's entries set to 1, 2, 3, … and the bias to
  0, checked by a pass with their squares; the bias's index likewise;
- otherwise (circular padding wider than the input, so an entry sums several weights; a
  weight a hook or parametrisation computes, as spectral_norm's): W and b come from basis
  passes at every compile.
A compile then gathers the current weight into W (and, `live`, differentiably): no forward
pass of the module after the first, so its hooks see the structure passes once. FLOPs are
the layer's own, 2·(structural non-zeros of W) + out, not a dense product's, and do not
depend on the weight's values (except where W is rebuilt at every compile: there they are
the non-zeros of that compile's W, and its support is unknown, so cost bounds take it dense). A matrix may hold at most MAX_DENSE_ENTRIES entries.

An activation f just before a max pool moves after it where that is exact (`expand_pools`):
max_i f(z_i) = f(max_i z_i) for a non-decreasing f, and max(f(max_i z_i), f(min_i z_i)) for
one that falls, then rises (GELU, SiLU, Mish). The tournament then compares the affine map's
outputs z, which π holds as Gaussian (for a first layer, exactly), instead of values of f
that π would have to treat as Gaussian at every round.

Max pooling is charged what the model's own max pool costs, k - 1 comparisons per window
of k entries (on its last map; the others 0), plus the price of its ReLU units (one FLOP
each, about 3× the comparisons): not the 2·nnz + out of its maps, which would put a
1 × 28 × 28 CNN's two 2 × 2 pools at a quarter of its forward FLOPs (7% as charged).
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import Tensor, nn

from .activations import CLAMP_FLOPS, activation, clamp_kind, compose
from .errors import InvalidModel, UnsupportedModule
from .graph import MAX_POOL_EXTREMES, MAX_POOL_UNITS, Act, Affine, Chain, Residual, chain_flops

MAX_DENSE_ENTRIES = 50_000_000      # 200 MB in float32
BASIS_CHUNK_ENTRIES = 1 << 22       # entries of the basis pushed through a layer at once
SHAPE_HINT = ("it needs the shape of the model's input: pass input_shape=(C, H, W) to compile_model, "
              "explain, Tracker or CatastrophePenalty")
LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.AvgPool1d,
                  nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.ZeroPad1d, nn.ZeroPad2d,
                  nn.ConstantPad1d, nn.ConstantPad2d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d)

_SHAPES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_STRUCTURES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def input_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[int, list[tuple[int, ...]]]:
    """id(submodule) → the input shapes (without the batch) of its calls, in call order, from
    one forward pass of zeros in eval mode without gradients (no statistics move; modes are
    restored). Kept per module tree and input shape: the module's hooks see the pass once."""
    tree = tuple(id(m) for m in module.modules())
    cache = _SHAPES.setdefault(module, {})
    if (input_shape, tree) in cache:
        return cache[(input_shape, tree)]
    shapes: dict[int, list[tuple[int, ...]]] = {}

    def record(m: nn.Module, args: tuple) -> None:      # a pre-hook's return value would replace args
        if args and isinstance(args[0], Tensor):
            shapes.setdefault(id(m), []).append(tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules()]
    device, dtype = placement(module)
    try:
        with evaluating(module, input_shape):
            module(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    cache[(input_shape, tree)] = shapes
    return shapes


@contextmanager
def evaluating(module: nn.Module, input_shape: tuple[int, ...]) -> Iterator[None]:
    """The module in eval mode without gradients (no statistics move), every submodule's
    mode restored after; an error of its own forward becomes InvalidModel naming the shape."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            yield
    except Exception as error:       # the module's own forward refuses the shape
        raise InvalidModel(f"the model cannot take inputs of shape {tuple(input_shape)}: {error}") from None
    finally:
        for m, training in modes:
            m.training = training


def placement(module: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    """The device and floating dtype of the module's first parameter or buffer."""
    first = next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)
    return (first.device, first.dtype) if first is not None else (None, torch.get_default_dtype())


def _settings(module: nn.Module) -> tuple:
    """The module's non-tensor settings (kernel, stride, padding mode, count_include_pad, …)."""
    return tuple(sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and k != "training"))


def _apply(module: nn.Module, x: Tensor, parameters: dict | None = None, keep: bool = False) -> Tensor:
    """module(x) in float64, with `parameters` in place of its own (its own, widened, if None;
    differentiable in them with `keep`); floating buffers widened too."""
    if parameters is None:
        parameters = {name: (p if keep else p.detach()).double() for name, p in module.named_parameters()}
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in module.named_buffers()}
    with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
        return torch.func.functional_call(module, {**parameters, **buffers}, (x,))


def _columns(module: nn.Module, shape: tuple[int, ...], device: torch.device | None,
             parameters: dict | None = None, keep: bool = False) -> tuple[Tensor, Tensor]:
    """W = [module(e_j) - module(0)]_j [out, in] and b = module(0) [out], the basis pushed
    through in chunks of BASIS_CHUNK_ENTRIES."""
    n = math.prod(shape)
    zero = _apply(module, torch.zeros(1, *shape, dtype=torch.float64, device=device), parameters, keep).reshape(-1)
    step = max(1, BASIS_CHUNK_ENTRIES // n)
    parts = []
    for start in range(0, n, step):
        rows = torch.arange(start, min(n, start + step), device=device)
        basis = torch.zeros(len(rows), n, dtype=torch.float64, device=device)
        basis[torch.arange(len(rows), device=device), rows] = 1.0
        parts.append(_apply(module, basis.reshape(-1, *shape), parameters, keep).reshape(len(rows), -1) - zero)
    return torch.cat(parts).T, zero


@dataclass(frozen=True)
class _Structure:
    weight_index: Tensor | None     # [out, in] index into the flat weight, -1 where none
    bias_index: Tensor | None       # [out] index into the bias, -1 where none
    constant: Tensor | None         # W of a layer without a weight
    offset: Tensor                  # b's part no parameter sets (padding, a layer without a weight)
    nonzeros: int
    rebuild: bool                   # W and b from the basis at every compile


def _structure(module: nn.Module, shape: tuple[int, ...], device: torch.device | None, path: str) -> _Structure:
    """The module docstring's structure, computed once per settings, shape and device;
    UnsupportedModule where W would hold more than MAX_DENSE_ENTRIES entries."""
    cache = _STRUCTURES.setdefault(module, {})
    key = (shape, _settings(module), str(device),
           tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))
    if key in cache:
        return cache[key]
    n_in = math.prod(shape)
    with torch.no_grad():
        n_out = _apply(module, torch.zeros(1, *shape, dtype=torch.float64, device=device)).numel()
    if n_out * n_in > MAX_DENSE_ENTRIES:
        raise UnsupportedModule(path, type(module).__name__, f"its matrix would hold {n_out * n_in:,} entries, "
                                f"more than {MAX_DENSE_ENTRIES:,}")
    own = dict(module.named_parameters(recurse=False))
    if not own and getattr(module, "weight", None) is None:
        matrix, offset = _columns(module, shape, device)
        found = _Structure(None, None, matrix, offset, int((matrix != 0).sum()), False)
    elif set(own) <= {"weight", "bias"} and "weight" in own:
        weight = own["weight"]
        ids = torch.arange(1, weight.numel() + 1, dtype=torch.float64, device=device).reshape(weight.shape)
        zeros = {name: torch.zeros(p.shape, dtype=torch.float64, device=device) for name, p in own.items()}
        found_ids, offset = _columns(module, shape, device, {**zeros, "weight": ids})
        index = found_ids.round().long() - 1
        unique = bool(((index >= -1) & (index < weight.numel())).all()) and bool(torch.equal(
            _columns(module, shape, device, {**zeros, "weight": ids * ids})[0],
            torch.where(index >= 0, ids.reshape(-1)[index.clamp(0, weight.numel() - 1)] ** 2, 0.0)))
        bias_index = None
        if "bias" in own:
            bias_ids = torch.arange(1, own["bias"].numel() + 1, dtype=torch.float64, device=device)
            with_bias = _apply(module, torch.zeros(1, *shape, dtype=torch.float64, device=device),
                               {**zeros, "bias": bias_ids}).reshape(-1)
            bias_index = (with_bias - offset).round().long() - 1
        found = _Structure(index, bias_index, None, offset, int((index >= 0).sum()), not unique)
    else:                             # a weight computed by a hook or parametrisation
        found = _Structure(None, None, None, torch.zeros(0), 0, True)      # non-zeros counted at each compile
    cache[key] = found
    return found


def linear_module(module: nn.Module, path: str, shape: tuple[int, ...] | None, live: bool,
                  device: torch.device | None, dtype: torch.dtype) -> Affine:
    """The affine map of a convolution, pooling or padding layer (module docstring)."""
    if shape is None:
        raise UnsupportedModule(path, type(module).__name__, SHAPE_HINT)
    found = _structure(module, shape, device, path)
    if found.rebuild:
        (matrix, bias), support = _columns(module, shape, device, keep=live), None
    elif found.constant is not None:
        matrix, bias, support = found.constant, found.offset, found.constant != 0
    else:
        take = lambda t: (t if live else t.detach()).reshape(-1).double()
        matrix, support = _gather(take(module.weight), found.weight_index), found.weight_index >= 0
        bias = found.offset if found.bias_index is None else found.offset + _gather(take(module.bias), found.bias_index)
    matrix, bias = matrix.to(dtype), bias.to(dtype)
    if not live:
        matrix, bias = matrix.detach(), bias.detach()
    nonzeros = int((matrix != 0).sum()) if found.rebuild else found.nonzeros    # no structure known: this compile's
    return Affine(matrix, bias, path, 2 * nonzeros + matrix.shape[0], support)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values[index] where index ≥ 0, else 0."""
    return torch.where(index >= 0, values[index.clamp_min(0)], values.new_zeros(()))


def max_pool(module: nn.Module, path: str, shape: tuple[int, ...] | None, device: torch.device | None,
             dtype: torch.dtype) -> tuple["MaxPool"]:
    """Max pooling as the ReLU network it is: a tournament over each window's entries
    (`_tournament`), Affine → ReLU → … → Affine, exact, ⌈log2 k⌉ ReLU layers for k entries;
    `expand_pools` writes it out once it knows what comes before."""
    kind = type(module).__name__
    two = isinstance(module, nn.MaxPool2d)
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v) if two else (v,)
    kernel, stride = pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size)
    if any(pair(module.padding)) or any(d != 1 for d in pair(module.dilation)) or module.ceil_mode or module.return_indices:
        raise UnsupportedModule(path, kind, "only padding=0, dilation=1, ceil_mode=False, return_indices=False")
    if shape is None:
        raise UnsupportedModule(path, kind, SHAPE_HINT)
    index = torch.arange(math.prod(shape)).reshape(shape)
    for axis in range(len(kernel)):
        index = index.unfold(len(shape) - len(kernel) + axis, kernel[axis], stride[axis])
    return (MaxPool(index.reshape(-1, math.prod(kernel)), math.prod(shape), path, kind, device, dtype,
                    _STRUCTURES.setdefault(module, {}), (shape, kernel, stride)),)


@dataclass(eq=False)
class MaxPool:
    """A max pool, one row of `windows` (input indices) per output, until `expand_pools`
    places it. `cache` is the module's entry of `_STRUCTURES`, `key` its settings."""
    windows: Tensor
    n_in: int
    path: str
    kind: str
    device: torch.device | None
    dtype: torch.dtype
    cache: dict
    key: tuple

    def tournament(self, extremes: bool = False, free: bool = False) -> Chain:
        """The chain computing each window's max (with `extremes`, then each window's min:
        2m outputs for m windows); its last map charged the model's k - 1 comparisons per
        window (module docstring), every other map 0. With `free` nothing is charged, its
        ReLU units included (MAX_POOL_EXTREMES): `expand_pools` charges the rewrite."""
        key = ("max", *self.key, extremes)
        if key not in self.cache:
            self.cache[key] = _tournament(self.windows, self.n_in, self.path, self.kind, extremes)
        matrices = self.cache[key]
        charge = 0 if free else self.windows.shape[0] * (self.windows.shape[1] - 1)
        chain: list = []
        for i, matrix in enumerate(matrices):
            matrix = matrix.to(device=self.device, dtype=self.dtype)
            chain += [Affine(matrix, matrix.new_zeros(matrix.shape[0]), self.path,
                             charge if i == len(matrices) - 1 else 0, matrix != 0),
                      Act("relu", self.path + (MAX_POOL_EXTREMES if free else MAX_POOL_UNITS))]
        return tuple(chain[:-1])


def expand_pools(chain: Chain) -> Chain:
    """Each MaxPool written out as its tournament. An activation f right before it moves
    after it where that is exact:
    - f non-decreasing (or a clamp): max_i f(z_i) = f(max_i z_i);
    - f falls, then rises (quasi-convex: GELU, SiLU, Mish): on [min z, max z] f is at most
      its value at an end, so max_i f(z_i) = max(f(max_i z_i), f(min_i z_i)); the tournament
      finds both extremes (its first round shares the units of each pair), f runs on the
      2m extremes and one more round takes the larger value.
    The tournament then compares the affine map's outputs z, which π holds as Gaussian (for
    a first layer, exactly), instead of f's values, which π would have to treat as Gaussian
    at every round (a GELU net's worst mean: 0.99 sd off in place, measured in
    `pitrack bench cnn`). The FLOPs of the units f no longer runs on are charged to the
    pool's last map, so the graph's FLOPs stay the model's: for a rising f on top of the
    pool's own charge; for a quasi-convex one the rewritten tournament's units are free
    (MAX_POOL_EXTREMES) and its last map carries f's and the pool's charge less f on the 2m
    extremes. f stays in place where that would be negative (f on 2m extremes dearer than on
    the n inputs and the pool together: k = 2 windows at stride 1 for f pricier than 4) or the
    extremes' tournament would not fit MAX_DENSE_ENTRIES."""
    out: list = []
    for op in chain:
        if isinstance(op, Residual):
            op = Residual(tuple(expand_pools(branch) for branch in op.branches), op.path)
        if not isinstance(op, MaxPool):
            out.append(op)
            continue
        previous = out[-1] if out else None
        pool = op.tournament()
        rising = isinstance(previous, Clamp) or isinstance(previous, Act) and activation(previous.kind).increasing
        if rising:
            first, last = pool[0], pool[-1]
            price = CLAMP_FLOPS if isinstance(previous, Clamp) else activation(previous.kind).flops
            moved = replace(last, flops=last.forward_flops + price * (first.n_in - last.n_out))
            out[-1:] = [*pool[:-1], moved, previous]
        elif isinstance(previous, Act) and activation(previous.kind).quasiconvex:
            out[-1:] = _around_extremes(op, pool, previous) or [previous, *pool]
        else:
            out.extend(pool)
    return tuple(out)


def _around_extremes(pool: "MaxPool", maxima: Chain, act: Act) -> list | None:
    """max_i f(z_i) = max(f(max_i z_i), f(min_i z_i)) as a chain (`expand_pools`), charged
    what f before the pool and the pool cost; None where that cannot be done."""
    m, n = pool.windows.shape[0], pool.n_in
    try:
        extremes = pool.tournament(extremes=True, free=True)
        ends = torch.arange(m).unsqueeze(1) + torch.tensor([0, m])          # (max, min) of window i
        larger = MaxPool(ends, 2 * m, pool.path, pool.kind, pool.device, pool.dtype, pool.cache,
                         ("extremes", *pool.key)).tournament(free=True)
    except UnsupportedModule:
        return None
    written = [*extremes, act, *larger]
    charge = chain_flops((act, *maxima), n) - chain_flops(written, n)
    if charge < 0:
        return None
    return [*written[:-1], replace(written[-1], flops=charge)]


@dataclass(eq=False)
class Clamp:
    """scale·clamp(z + offset, low, high) elementwise (ReLU6, Hardtanh, Hardsigmoid), until
    `expand_clamps` knows its width and writes it as the ReLU network it is."""
    low: float
    high: float
    scale: float
    offset: float
    path: str
    kind: str                # the module's class, for errors


def fuse_elementwise(chain: Chain) -> Chain:
    """Each run of two or more elementwise layers in a row (activations, clamps) as one
    activation, their composition (`activations.compose`; exact). π takes an activation's
    input as Gaussian, which a second activation in a row does not get: ReLU → Dropout → ReLU,
    the same function as one ReLU, had its mean 0.11–0.25 sd off and its variance 26–33% low,
    ReLU → Hardtanh its variance 1.9× (review). A max pool's tournament units are not the
    model's activations and stay apart."""
    out: list = []
    run: list = []

    def flush() -> None:
        if len(run) > 1:
            kinds = [clamp_kind(op.low, op.high, op.scale, op.offset) if isinstance(op, Clamp) else op.kind
                     for op in run]
            out.append(Act(compose(kinds).name, " + ".join(op.path for op in run)))
        else:
            out.extend(run)
        run.clear()

    for op in chain:
        if isinstance(op, Clamp) or isinstance(op, Act) and not op.in_max_pool:
            run.append(op)
            continue
        flush()
        out.append(Residual(tuple(fuse_elementwise(b) for b in op.branches), op.path) if isinstance(op, Residual)
                   else op)
    flush()
    return tuple(out)


def expand_clamps(chain: Chain, width: int, dtype: torch.dtype, device: torch.device | None) -> tuple[Chain, int]:
    """Each Clamp as clamp(u, l, h) = l + relu(u - l) - relu(u - h): Affine [u - l; u - h] →
    ReLU → Affine [I, -I] plus the constants: exact in real arithmetic, in floating point
    within a few ulps of max(|l|, |h|, |u|) (the saturated ends cancel u), and one ReLU layer
    on π's Gaussian inputs, whose moments are exact. Charged 2 comparisons per unit (on the
    second map; the first 0) plus its ReLU units. Where a map would hold more than
    MAX_DENSE_ENTRIES entries (a ReLU6 after a convolution on a 1 × 28 × 28 image: 7.9·10⁷),
    the clamp stays one activation (`clamp:l,h,s,o`, moments by quadrature; it had been
    refused). Returns the chain and its output width."""
    out: list = []
    for op in chain:
        if isinstance(op, Clamp) and 2 * width * width > MAX_DENSE_ENTRIES:
            out.append(Act(clamp_kind(op.low, op.high, op.scale, op.offset), op.path))
        elif isinstance(op, Clamp):
            eye = torch.eye(width, dtype=dtype, device=device)
            shifts = torch.cat([eye.new_full((width,), op.offset - op.low), eye.new_full((width,), op.offset - op.high)])
            up, down = torch.cat([eye, eye]), op.scale * torch.cat([eye, -eye], dim=1)
            out += [Affine(up, shifts, op.path, 0, up != 0), Act("relu", op.path),
                    Affine(down, eye.new_full((width,), op.scale * op.low), op.path, (CLAMP_FLOPS - 2) * width,
                           down != 0)]
        elif isinstance(op, Residual):
            branches = [expand_clamps(branch, width, dtype, device) for branch in op.branches]
            out.append(Residual(tuple(b for b, _ in branches), op.path))
            width = branches[0][1]
        else:
            out.append(op)
            width = op.n_out if isinstance(op, Affine) else width
    return tuple(out), width


def _tournament(windows: Tensor, n_in: int, path: str, kind: str, extremes: bool = False) -> list[Tensor]:
    """The maps W_1, …, W_L with W_L relu(W_{L-1} … relu(W_1 x)) equal to the max over each
    row of `windows` (input indices), and with `extremes` then to each row's min. Candidates
    are sparse rows over the current layer. A round turns a pair (a, b) on the max side into
    the units (a, -a, b - a), max(a, b) = relu(a) - relu(-a) + relu(b - a); on the min side
    into (a, -a, a - b), min(a, b) = relu(a) - relu(-a) - relu(a - b), the units a and -a
    shared with the max side's where the pair is the same (the first round); a leftover c
    into (c, -c), whose ReLUs combine back into c."""
    leaves = [[{int(i): 1.0} for i in window] for window in windows.tolist()]
    signs = (1.0, -1.0) if extremes else (1.0,)
    values = [leaves for _ in signs]                 # values[side][window]: its candidates
    matrices, width = [], n_in
    while any(len(candidates) > 1 for side in values for candidates in side):
        units: list[dict] = []
        passed: dict[int, int] = {}                  # id(candidate) → index of its unit pair

        def through(form: dict) -> dict:
            """relu(u) - relu(-u) = u, on the units (u, -u), made once per round."""
            if id(form) not in passed:
                passed[id(form)] = len(units)
                units.extend([form, {k: -v for k, v in form.items()}])
            return {passed[id(form)]: 1.0, passed[id(form)] + 1: -1.0}

        combined = []
        for sign, side in zip(signs, values):
            merged_side = []
            for candidates in side:
                merged = []
                for j in range(0, len(candidates) - 1, 2):
                    a, b = candidates[j], candidates[j + 1]
                    gap = {k: -sign * v for k, v in a.items()}
                    for k, v in b.items():
                        gap[k] = gap.get(k, 0.0) + sign * v
                    pair = through(a)
                    pair[len(units)] = sign
                    units.append(gap)
                    merged.append(pair)
                if len(candidates) % 2:
                    merged.append(through(candidates[-1]))
                merged_side.append(merged)
            combined.append(merged_side)
        matrices.append(_dense(units, width, path, kind))
        values, width = combined, len(units)
    return matrices + [_dense([candidates[0] for side in values for candidates in side], width, path, kind)]


def _dense(rows: list[dict], width: int, path: str, kind: str) -> Tensor:
    if len(rows) * width > MAX_DENSE_ENTRIES:
        raise UnsupportedModule(path, kind, f"its ReLU network needs a matrix of {len(rows) * width:,} entries, "
                                f"more than {MAX_DENSE_ENTRIES:,}")
    matrix = torch.zeros(len(rows), width, dtype=torch.float64)
    for r, row in enumerate(rows):
        for k, v in row.items():
            matrix[r, k] += v
    return matrix


@dataclass(eq=False)
class Scale:
    """An elementwise affine map x ↦ scale·x + shift (BatchNorm in eval mode), until
    `fold_normalisations` merges it into a neighbouring affine map."""
    scale: Tensor
    shift: Tensor
    path: str


def batch_norm(module: nn.Module, path: str, shape: tuple[int, ...] | None, take) -> Scale:
    """BatchNorm1d/2d in eval mode: y = γ (x - μ_run)/√(σ²_run + ε) + β = s x + (β - s μ_run),
    s = γ/√(σ²_run + ε), per channel, repeated over the positions of [C, L] or [C, H, W]
    inputs. `take` gives the affine parameters (detached copies, or live)."""
    kind = type(module).__name__
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedModule(path, kind, "track_running_stats=False: it always normalises by the batch")
    scale = torch.rsqrt(module.running_var.detach() + module.eps)
    shift = -module.running_mean.detach() * scale
    if module.affine:
        weight, bias = take(module.weight), take(module.bias)
        scale, shift = weight * scale, weight * shift + bias
    if isinstance(module, nn.BatchNorm2d) and shape is None:
        raise UnsupportedModule(path, kind, SHAPE_HINT)
    positions = math.prod(shape[1:]) if shape is not None else 1
    return Scale(scale.repeat_interleave(positions), shift.repeat_interleave(positions), path)


def fold_normalisations(chain: Chain) -> Chain:
    """Merge each BatchNorm's elementwise map D x + t into the affine map before it,
    D(W x + b) + t, or else the one after it, W(D x + t) + b, so that it costs no extra
    layer (and keeps the map's sparsity, so its FLOPs); one with no affine map beside it (at
    the input, or between activations) becomes a diagonal Affine."""
    out: list = []
    for op in chain:
        if isinstance(op, Residual):
            op = Residual(tuple(fold_normalisations(branch) for branch in op.branches), op.path)
        previous = out[-1] if out else None
        if isinstance(op, Scale) and isinstance(previous, Affine):
            out[-1] = replace(previous, weight=op.scale[:, None] * previous.weight,
                              bias=op.scale * previous.bias + op.shift)
        elif isinstance(op, Scale) and isinstance(previous, Scale):
            out[-1] = Scale(op.scale * previous.scale, op.scale * previous.shift + op.shift, previous.path)
        elif isinstance(op, Affine) and isinstance(previous, Scale):
            out[-1] = replace(op, weight=op.weight * previous.scale[None, :], bias=op.weight @ previous.shift + op.bias)
        else:
            out.append(op)
    return tuple(Affine(torch.diag(op.scale), op.shift, op.path, 2 * op.scale.numel(),
                        torch.eye(op.scale.numel(), dtype=torch.bool, device=op.scale.device))
                 if isinstance(op, Scale) else op for op in out)
