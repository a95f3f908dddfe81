"""Training FLOPs, derived from the formal structure and the observed batch sizes.

One training step on B rows costs 3·B·F, F = FLOPs of one forward pass of the compiled
graph (`Graph.flops_per_sample`: 2·in·out + out per affine map, the activation's price
per unit): the forward pass, plus a backward pass of twice its cost (the gradients with
respect to each layer's input and to its weights, each a product as large as the
forward one; Kaplan et al., "Scaling Laws for Neural Language Models", 2020, §2.1).
Checked against torch.utils.flop_counter.FlopCounterMode in tests/test_tracker.py: the
counter sees only the matrix products, and misses the first layer's input gradient when
x needs no gradient, so it reads a little lower than this count.
"""
from __future__ import annotations

from explanations import Graph

BACKWARD_FACTOR = 2      # backward FLOPs per forward FLOP


def training_step_flops(graph: Graph, rows: int) -> int:
    """FLOPs of a training step (forward + backward) on `rows` input rows."""
    return (1 + BACKWARD_FACTOR) * rows * graph.flops_per_sample
