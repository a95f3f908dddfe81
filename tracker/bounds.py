"""Upper bounds on what building π and answering an event will cost, from shapes alone.

The Tracker spends only what the budget's headroom covers, so it must know a cost before
paying it. These bounds follow each method's own FLOP count (the counters in
`explanations`) term by term, with every data-dependent quantity at its worst:

  affine m×n on a state of width n with r reference rows
        Wμ, WΣ, W(WΣ)ᵀ, W Cᵀ: 2·w·(n + m + r + 1), plus mn (sparsity test) and m² + m, where
        w = |S| if W's structural support S holds ≤ 10% of mn (then nnz(W) ≤ |S| and
        `propagate.WeightProduct` multiplies it as sparse), else mn
  activation of width n, P the pairs i < j that can have Σ_ij ≠ 0:
        ReLU family: bivariate_normal_cdf_flops(P) + 40·P + 37n²  (`moments`)
        others: n·Q·(f + 2K + 6) + (4K + 2)·P + 14n², Q quadrature nodes, K = 24
        plus r·n for the cross-covariance
  P comes from the zero pattern of Σ, carried through the chain: D's covariance's pattern
  at the input, Z ↦ S Z Sᵀ > 0 at an affine map whose structural support S (`Affine.support`:
  a convolution's taps, a pool's constants; every entry of a Linear) is sparse, every pair
  after a dense map, unchanged at an activation (a pair with Σ_ij = 0 stays exactly 0),
  and every pair after a residual sum or once the pattern is over half full. The support,
  not the weights' current values, so that a layer initialised at zero does not lower the
  bound below what its trained weights cost. On convolutional nets this is what keeps the
  bound near the cost (most pairs of distant units are independent).
  residual: its branches (reference r + n), a pseudo-inverse 10n³ and the pair products
  cumulant: the skew sources' products (2nm² to start, 4·n′·n·m per later map, 4n²m for
        T, correlations 2nm²), the Edgeworth corrections (n·Q·(f + 68) + 152n² per
        activation), the separate mean and the last layer's expansion (n·Q·(f + 2K + 6) + 10n³);
        the skew terms over the last layer only where `propagate_skewed` propagates the
        rest as Gaussian (residual sums, max pools)
  polynomial: its closed count (2-layer networks)

An event's query (zero-sample probability) is bounded from its clauses: the range check
(`ranges.settled`, whose FLOPs depend on the shapes alone), the bulk
integral over every inclusion–exclusion term (`mvn.log_union`, 4096 × 8 QMC points per
orthant), and for explanations with design points (cumulant, polynomial) the design
search at its loop limits (`design.find_modes`: pilot, Newton pushes, descents with their
line searches, every forward pass one sample-equivalent and every backward pass two),
then the dearer of its two endings: KEPT_MODES local quadratics (each polished first),
fitted and integrated along lines, where it finds modes, cumulant marginals joined by a
copula where it finds none
(each marginal gated by CUMULANT_BUDGET sample-equivalents, counted at 4× that, plus the
exact tetrahedral κ4 diagrams that gate leaves out) and the draws that check either (at
most what DESIGN_BUDGET leaves); and the pilot's PILOT_DRAWS draws (`explanations.pilot`).
tests/test_tracker_review.py checks bound ≥ cost over architectures, methods and events.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from explanations import Gaussian, Graph
from explanations.activations import activation
from explanations.cumulant import CUMULANT_BUDGET, DEFAULT_DEGREE as CUMULANT_DEGREE
from explanations.structured import DESIGN_BUDGET, KEPT_MODES, POLISH_ITERATIONS, WIDE_ITERATIONS, WIDE_STARTS
from explanations.events import Event
from explanations.explain import picked_method
from explanations.ranges import settled
from explanations.graph import Act, Affine, Chain
from explanations.moments import HERMITE_DEGREE, PANEL_NODES, QUADRATURE_PANELS, _RELU_PAIR_FLOPS
from explanations.montecarlo import detector_flops, draw_cost
from explanations.pilot import PILOT_DRAWS
from explanations.mvn import bivariate_normal_cdf_flops, union_flops_bound
from explanations.hermite_cumulants import TETRAHEDRA_UP_TO, _plan
from explanations.polynomial import CUMULANT_DEGREE as POLYNOMIAL_CUMULANT_DEGREE
from explanations.polynomial import DEFAULT_DEGREE as POLYNOMIAL_DEGREE
from explanations.propagate import SPARSE_DENSITY, carries_skew
from explanations.quadratic import (DOUBLING_SHARE, LINE_RANGE, MAX_LINES, fit_flops_bound, line_flops, pairs,
                                    widening_flops)
from explanations.tails import SADDLEPOINT_FLOPS

NODES = QUADRATURE_PANELS * PANEL_NODES
K = HERMITE_DEGREE
BULK_POINTS, BULK_REPLICATES = 4096, 8          # `guided._bulk`'s zero-sample integrals
PILOT, REACH, HALVINGS = 384, 30, 10              # `design.find_modes`' loop limits
SCAN = 13 + 8                                   # a full ray scan: 13 points and 8 bisections
NEAR_SCAN = 7 + 6 + SCAN                        # a near scan, then the full one


# ---- Gaussian propagation ----------------------------------------------------------------
def _possible_nonzeros(op: Affine) -> int:
    """Entries of W that can be nonzero: its structural support, or all of a Linear's; all
    where W carries gradients (a live graph), which `WeightProduct` keeps dense."""
    if op.support is None or op.weight.requires_grad:
        return op.n_out * op.n_in
    return int(op.support.sum())


def _affine(op: Affine, r: int) -> int:
    m, n = op.weight.shape
    nonzero = _possible_nonzeros(op)
    per_column = nonzero if nonzero <= SPARSE_DENSITY * m * n else m * n
    return 2 * per_column * (n + m + r + 1) + m * n + m * m + m


def _pattern_after(op: Affine, pattern: Tensor | None) -> Tensor | None:
    """The zero pattern of WΣWᵀ (module docstring) from W's structural support: a sparse
    0/1 matrix, or None for full (at once where W is not sparse: such a product fills)."""
    if pattern is None or _possible_nonzeros(op) > SPARSE_DENSITY * op.n_out * op.n_in:
        return None               # (a live W is dense here too: its moments compute every pair)
    support = op.support.to(torch.float32).cpu().to_sparse()
    with warnings.catch_warnings():                    # torch flags sparse products as beta
        warnings.simplefilter("ignore", UserWarning)
        out = torch.sparse.mm(torch.sparse.mm(support, pattern), support.t()).coalesce()
    n = op.n_out
    if out._nnz() > n * n / 2:
        return None
    return torch.sparse_coo_tensor(out.indices(), torch.ones_like(out.values()), out.shape,
                                   check_invariants=False).coalesce()


def _pairs(pattern: Tensor | None, n: int) -> int:
    """Pairs i < j the pattern allows."""
    if pattern is None:
        return n * (n - 1) // 2
    indices = pattern.indices()
    return int((indices[0] < indices[1]).sum())


def _activation(kind: str, n: int, r: int, pairs: int) -> int:
    act = activation(kind)
    if act.leak is not None:
        moments = bivariate_normal_cdf_flops(pairs) + _RELU_PAIR_FLOPS * pairs + 20 * n + 37 * n * n
    else:
        moments = n * NODES * (act.flops + 2 * K + 6) + (4 * K + 2) * pairs + 14 * n * n
    return moments + r * n


def propagation(chain: Chain, n: int, r: int, pattern: Tensor | None = None) -> tuple[int, int]:
    """Bound on `propagate`'s FLOPs through `chain` from width n with r reference rows
    and Σ's zero `pattern` (None: every pair), and the output width."""
    total = 0
    for op in chain:
        if isinstance(op, Affine):
            total += _affine(op, r)
            n, pattern = op.n_out, _pattern_after(op, pattern)
        elif isinstance(op, Act):
            total += _activation(op.kind, n, r, _pairs(pattern, n))
        else:
            parts = [propagation(branch, n, r + n, pattern) for branch in op.branches]
            m, b = parts[0][1], len(op.branches)
            full = sum(1 for branch in op.branches if branch)
            regressions = full * (full - 1) // 2                        # Σ⁺ products between non-skip branches
            total += sum(cost for cost, _ in parts) + 10 * n ** 3 * (regressions > 0)
            total += regressions * (2 * n * n * m + 2 * n * m * m) + 2 * b * m * m
            n, pattern = m, None
    return total, n


def input_pattern(distribution: Gaussian) -> Tensor | None:
    """The zero pattern of D's covariance, or None where it is over half full."""
    support = (distribution.cov != 0).to(torch.float32).cpu()
    if float(support.sum()) > support.numel() / 2:
        return None
    return support.to_sparse().coalesce()


def _gaussian(graph: Graph, distribution: Gaussian) -> int:
    r = graph.n_inputs
    cost, _ = propagation(graph.chain, r, r, input_pattern(distribution))
    return cost + (0 if distribution.is_standard else 10 * r ** 3 + 2 * r * r * graph.n_outputs)


# ---- cumulant and polynomial ---------------------------------------------------------------
def _unit_terms(kind: str, n: int, per_node: int) -> int:
    """Per-unit Hermite data of n units: closed forms for the ReLU family, else quadrature."""
    return 0 if activation(kind).leak is not None else n * NODES * (activation(kind).flops + per_node)


def _skew(chain: Chain, r: int) -> int:
    """The cumulant build's skew work over `chain` (up to its last activation)."""
    total, sources, pending, n = 0, [], None, r
    for op in chain:
        if isinstance(op, Affine):
            m, n_in = op.n_out, op.n_in
            total += sum(4 * m * n_in * s for s in sources) + 2 * m * r * n_in
            if pending is not None:
                kind, width = pending
                total += _unit_terms(kind, width, 20) + 100 * width
                total += 4 * m * width * (width + r) + 4 * width * width + 20 * width
                sources.append(width)
            pending, n = None, m
        elif isinstance(op, Act):
            total += _unit_terms(op.kind, n, 2 * K + 20) + 80 * n + 158 * n * n
            for s in sources:
                total += 4 * n * n * s + 30 * n * s + 4 * n * s * (s + r) + 2 * n * s
            mean = 36 * n * sum(sources) + sum(4 * n * s * (s + r) for s in sources)
            total += mean + _unit_terms(op.kind, n, 2 * K + 20) + 90 * n + 4 * n * n
            pending = (op.kind, n)
    return total


def _cumulant(graph: Graph, distribution: Gaussian, options: dict) -> int:
    chain, r = graph.chain, graph.n_inputs
    total = _gaussian(graph, distribution)
    if len(chain) >= 2 and isinstance(chain[-1], Affine) and isinstance(chain[-2], Act):
        n = chain[-1].n_in
        degree = int(options.get("degree", CUMULANT_DEGREE))
        total += n * NODES * (activation(chain[-2].kind).flops + 2 * degree + 6) + 10 * n ** 3
        skewed = chain[:-1] if carries_skew(chain[:-3]) else chain[-3:-1]    # else Gaussian up to the last layer
        total += 2 * chain[-1].n_out * n + _skew(skewed, r)
    return total


def _polynomial(graph: Graph, distribution: Gaussian, options: dict) -> int:
    first, act, second = graph.chain
    n, d, o = first.n_out, first.n_in, second.n_out
    degree = int(options.get("degree", POLYNOMIAL_DEGREE))
    total = 2 * n * d * d + 5 * n * d + n * NODES * (activation(act.kind).flops + 2 * degree + 6)
    total += 2 * n * n * d + 3 * degree * n * n + 4 * o * n * n + 2 * o * o * n + 2 * o * n + 8 * n * n
    return total + 2 * n * d * o + 2 * d * d * o + 10 * d ** 3 + 2 * n * d * d


def build_bound(graph: Graph, distribution: Gaussian, method: str, options: dict) -> int:
    """Upper bound on `explain(graph, distribution, method, **options).build_flops`."""
    name = picked_method(graph, distribution, method)
    if name == "cumulant":          # and the output covariance's PSD projection (`cumulant.psd_projected`)
        return _cumulant(graph, distribution, options) + 10 * graph.n_outputs ** 3
    if name == "polynomial":
        return _polynomial(graph, distribution, options)
    if name == "halfspaces":
        return 0
    return _gaussian(graph, distribution)


# ---- queries ----------------------------------------------------------------------------------
def _observed(event: Event, n: int) -> int:
    """`observed`: the detectors' Gaussian propagation from y and their regression."""
    detectors = event.detectors()
    total = sum(propagation(d.score_graph().chain, n, n)[0] for d in detectors)
    return total + (10 * n ** 3 + 2 * n * n * len(detectors) if detectors else 0)


def _observe_unit(graph: Graph, event: Event) -> int:
    """One whitened input's v = (y, detector scores): `structured.search`'s observe_flops at
    most (the input map counted as a general Gaussian's; N(0, I) needs none)."""
    d = graph.n_inputs
    return graph.flops_per_sample + detector_flops([event]) + 2 * d * d + d


def _search(graph: Graph, event: Event, rows: list[int]) -> int:
    """`structured.design_estimate`'s wide search (`design.find_modes`) at its loop limits
    (module docstring); each descent's step takes the gradients of every row."""
    d, v = graph.n_inputs, graph.n_outputs + len(event.detectors())
    unit = _observe_unit(graph, event)
    total = 0
    for count in rows:
        forwards = (PILOT + (WIDE_STARTS + 1) * (REACH + 1) + WIDE_STARTS
                    + (WIDE_STARTS + 1) * (SCAN + WIDE_ITERATIONS * (1 + HALVINGS * NEAR_SCAN)))
        backwards = (WIDE_STARTS + 1) * (REACH + WIDE_ITERATIONS) * count
        total += (forwards + 2 * backwards) * unit + 10 * v ** 3 + 2 * d * v * (count + 1)
    return total


def _quadratics(graph: Graph, event: Event, rows: list[int]) -> int:
    """`structured.design_estimate` after its search: up to KEPT_MODES modes and one more per
    clause (`structured._kept`), each polished (a descent of POLISH_ITERATIONS steps: a full
    scan, then per step the gradients of every row and at most HALVINGS near scans), a local
    quadratic of the widest clause, fitted twice (`quadratic.widened`) and integrated over
    its cell (`quadratic`), then at worst integrated twice more (anchored at the mode's
    margins, then its tangent planes) after one more pass."""
    d, r, modes = graph.n_inputs, max(rows), KEPT_MODES + len(rows)
    unit = _observe_unit(graph, event)
    polish = (SCAN + POLISH_ITERATIONS * (1 + HALVINGS * NEAR_SCAN) + 2 * POLISH_ITERATIONS * r) * unit
    fitting, lines = _fit_and_lines(graph, event, rows)
    return modes * (polish + 2 * fitting + widening_flops(d, r) + unit + 3 * lines)


def _fit_and_lines(graph: Graph, event: Event, rows: list[int]) -> tuple[int, int]:
    """One local quadratic's fit (`quadratic.fit`) and one cell integral, at most."""
    d, r, walls = graph.n_inputs, max(rows), KEPT_MODES + len(rows) - 1
    points = 2 * pairs(d)
    fitting = (points + 2 * points * r) * _observe_unit(graph, event) + fit_flops_bound(d, r)
    lines = min(line_flops(d, r, walls, MAX_LINES), max(line_flops(d, r, walls, LINE_RANGE[0]), DOUBLING_SHARE * fitting))
    return fitting, lines


def _refilled(graph: Graph, event: Event, rows: list[int]) -> int:
    """What fills the zero-sample budget: the draws that check a copula's answer where the
    search found no mode, or the quadratics' answer where it found some
    (`structured._with_draws`; either up to DESIGN_BUDGET with all else), and the narrower refits
    (`structured._narrowed`), made only while the design estimate stays within its budget,
    after which each mode may still take the two fallback integrals."""
    return DESIGN_BUDGET * graph.flops_per_sample + 2 * (KEPT_MODES + len(rows)) * _fit_and_lines(graph, event, rows)[1]


def _tetrahedra(n: int, degree: int) -> int:
    """`hermite_cumulants._tetrahedra`'s FLOPs for one row (a marginal): per sorted (c, e, f),
    the product Q and the blocks of b, whose count does not depend on the block size."""
    total, K = 0, degree
    for c in range(1, K - 1):
        for e in range(c, (K - c) // 2 + 1):
            for f in range(e, K - c - e + 1):
                depth, top, blocks = min(K - 1 - f, K - 1 - e), K - 1 - c, max(0, min(K - c, K - f) - 1)
                total += n ** 3 + n * n + 2 * n ** 4
                total += blocks * (n ** 3 * (1 + 2 * depth) + n * n * (depth + top + 2 * top * depth) + 2 * top * depth * n)
    return total


def _tetrahedra_bound(n: int, degree: int) -> int:
    """`hermite_cumulants._tetrahedra_bound`'s FLOPs for one row, beyond TETRAHEDRA_UP_TO
    units: its middles and pair sums, each contraction priced by the same opt_einsum plan."""
    K = degree
    total = (K + 1) * n * n + (2 * K + 1) * n
    for f in range(1, K - 1):
        keys = []
        for q in range(1, K):
            for s in range(q, K - q - f + 1):
                total += _plan("ik,rk,jk->rij", (n, n), (1, n), (n, n))[1]
                keys += [(q, s)] if q == s else [(q, s), (s, q)]
        for index, x in enumerate(keys):
            for y in keys[index:]:
                t1, t2 = x[0] + y[0], x[1] + y[1]
                if t1 <= K and t2 <= K:
                    top = min(K - t1, K - t2)
                    total += n * n + _plan("rai,raj,aij,rij->ra", (1, top + 1, n), (1, top + 1, n),
                                           (top + 1, n, n), (1, n, n))[1]
    return total


def _marginal(graph: Graph, name: str, options: dict) -> int:
    """One cumulant marginal: at most 4 × CUMULANT_BUDGET sample-equivalents, which
    `_affordable` estimates without the tetrahedral κ4 diagrams, plus those (order 4): summed
    exactly up to TETRAHEDRA_UP_TO units, bounded beyond."""
    if name == "polynomial":
        n, order = graph.chain[0].n_out, 4
        degree = min(int(options.get("cumulant_degree", POLYNOMIAL_CUMULANT_DEGREE)),
                     int(options.get("degree", POLYNOMIAL_DEGREE)))
        up_to = int(options.get("tetrahedra_up_to", TETRAHEDRA_UP_TO))
    else:
        chain = graph.chain          # `cumulant` expands a last Act → Affine; other endings have no diagrams
        ends = len(chain) >= 2 and isinstance(chain[-1], Affine) and isinstance(chain[-2], Act)
        n, order = chain[-1].n_in if ends else 0, int(options.get("order", 3))
        degree, up_to = int(options.get("degree", CUMULANT_DEGREE)), TETRAHEDRA_UP_TO
    tetrahedra = 0 if order < 4 else _tetrahedra(n, degree) if n <= up_to else _tetrahedra_bound(n, degree)
    return 4 * CUMULANT_BUDGET * graph.flops_per_sample + tetrahedra


def query_bound(graph: Graph, distribution: Gaussian, method: str, options: dict, event: Event) -> int:
    """Upper bound on the FLOPs `π.probability(event)` spends beyond π's build (module docstring)."""
    name = picked_method(graph, distribution, method)
    rows = [len(clause) for clause in event.dnf()]
    box = settled(event, graph)[1]        # the range check first (its FLOPs depend on shapes alone)
    if name == "halfspaces":       # its QMC takes at least 64 × 8 points, whatever the budget
        return int(box + 2 * float(options.get("budget", 3000)) * graph.flops_per_sample
                   + union_flops_bound(rows, graph.n_inputs, 64, 8))
    v = graph.n_outputs + len(event.detectors())
    total = box + _observed(event, graph.n_outputs) + union_flops_bound(rows, v, BULK_POINTS, BULK_REPLICATES)
    if name in ("cumulant", "polynomial"):
        atoms = sum(rows)
        marginals = (atoms * (_marginal(graph, name, options) + 2 * v * v + SADDLEPOINT_FLOPS)
                     + union_flops_bound(rows, atoms, BULK_POINTS, BULK_REPLICATES) + 2 * atoms * v * v)
        if options.get("design", True):
            # a pilot, the search, then its modes' quadratics or (none found) the marginals;
            # the draws that check those and the narrower refits fill the budget (`_refilled`)
            pilot = PILOT_DRAWS * (draw_cost(graph, distribution) + detector_flops([event]))
            search = _search(graph, event, rows)
            total += pilot + max(search + _quadratics(graph, event, rows), search + marginals,
                                 _refilled(graph, event, rows))
        else:
            total += marginals
    return total
