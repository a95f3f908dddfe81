"""Training FLOPs, derived from the formal structure and the observed batch sizes.

One training step on B rows costs B·(F + W + G): F = FLOPs of one forward pass of the
compiled graph (`Graph.flops_per_sample`: 2·in·out + out per affine map, the activation's
price per unit), W the weight gradients and G the input gradients of the backward pass,
each a product as large as the map's forward one (Kaplan et al., "Scaling Laws for Neural
Language Models", 2020, §2.1), counted only where gradients flow:
  W  for an affine map whose module has a parameter that requires grad (trainable);
  G  for an op (affine map or activation) with a trainable affine map before it, whose
     parameters need the gradient through it (the inputs x never need one here).
With every parameter trainable this is 3·F less the first map's input gradient; with a
frozen body and a trainable head, F plus the head's weight gradient. Checked against
torch.utils.flop_counter.FlopCounterMode in tests/test_tracker.py (the counter sees only
matrix products, so it reads a little lower than this count).
"""
from __future__ import annotations

from torch import nn

from explanations import Graph
from explanations.graph import Act, Affine, Chain, chain_width, iter_ops


def trainable_paths(module: nn.Module) -> frozenset[str]:
    """Paths (as `compile_model` names them) of the submodules with a parameter of their
    own that requires grad."""
    return frozenset(path for path, child in module.named_modules()
                     if any(p.requires_grad for p in child.parameters(recurse=False)))


def _backward(chain: Chain, n: int, trainable: frozenset[str], flowing: bool) -> tuple[int, bool]:
    """Backward FLOPs per row of `chain` on an n-wide input, and whether a gradient flows
    out of it; `flowing`: a trainable map lies before the chain."""
    total = 0
    for op in chain:
        if isinstance(op, Affine):
            own = op.path in trainable
            total += op.forward_flops * (int(own) + int(flowing))
            flowing = flowing or own
            n = op.n_out
        elif isinstance(op, Act):
            total += op.unit_flops * n * int(flowing)
        else:
            parts = [_backward(branch, n, trainable, flowing) for branch in op.branches]
            total += sum(cost for cost, _ in parts) + (len(op.branches) - 1) * n * int(flowing)
            flowing = any(flows for _, flows in parts) or flowing
            n = chain_width(op.branches[0], n)
    return total, flowing


def training_step_flops(graph: Graph, rows: int, trainable: frozenset[str] | None = None) -> int:
    """FLOPs of a training step (forward + backward, module docstring) on `rows` input
    rows; `trainable`: the paths of `trainable_paths` (None: every map is trainable)."""
    if trainable is None:
        trainable = frozenset(op.path for op in iter_ops(graph.chain) if isinstance(op, Affine))
    backward, _ = _backward(graph.chain, graph.n_inputs, trainable, False)
    return rows * (graph.flops_per_sample + backward)


