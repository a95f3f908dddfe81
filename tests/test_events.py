import pytest
import torch
from torch import nn

from explanations import InvalidEvent
from explanations.events import Above, All, Any, ArgMax, Below, Detector

Y = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [-1.0, -2.0, -3.0]])


def test_semantics_on_outputs():
    assert Above(0, 2.0).evaluate(Y).tolist() == [True, False, False]
    assert Below(1, 0.0).evaluate(Y).tolist() == [False, False, True]
    assert ArgMax(2).evaluate(Y).tolist() == [False, True, False]
    assert ArgMax(0).evaluate(Y).tolist() == [True, False, True]
    assert All(Above(1, 0.5), Above(2, -1.0)).evaluate(Y).tolist() == [True, True, False]
    assert Any(Above(0, 2.0), Below(2, -2.0)).evaluate(Y).tolist() == [True, False, True]


def test_detector_is_a_module_on_outputs():
    score = nn.Linear(3, 1)
    with torch.no_grad():
        score.weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
        score.bias.zero_()
    event = Detector(score, threshold=1.0)
    assert event.evaluate(Y).tolist() == [True, False, False]
    assert Any(event, Above(2, 4.0)).detectors() == [event]
    with pytest.raises(InvalidEvent, match="reads 3 values but the model has 2 outputs"):
        event.check(2)
    with pytest.raises(InvalidEvent, match="one score per row"):
        Detector(nn.Linear(3, 2))


def test_structure_is_a_union_of_halfspace_clauses():
    event = All(Any(Above(0, 1.0), Above(1, 2.0)), Below(2, 3.0))
    dnf = event.dnf()
    assert len(dnf) == 2 and all(len(c) == 2 for c in dnf)
    below = dnf[0][1]
    assert below.terms == ((2, -1.0),) and below.threshold == -3.0
    argmax = ArgMax(1)
    argmax.check(3)
    assert [h.terms for h in argmax.dnf()[0]] == [((1, 1.0), (0, -1.0)), ((1, 1.0), (2, -1.0))]


def test_nested_clauses_are_absorbed_and_the_union_is_unchanged():
    """A ∪ (A ∩ B) = A and A ∩ A′ = A′ for A′ ⊆ A: contained clauses and implied halfspaces
    leave the DNF (the first of equal ones stays); different keys, opposite directions and
    different detectors do not absorb. Semantics are checked on random outputs."""
    def thresholds(event):
        return [[(h.terms, h.threshold) for h in clause] for clause in event.dnf()]
    assert thresholds(Any(Above(0, 3.0), Above(0, 4.0))) == [[(((0, 1.0),), 3.0)]]
    assert thresholds(All(Above(0, 3.0), Above(0, 4.0))) == [[(((0, 1.0),), 4.0)]]
    assert thresholds(Any(Above(0, 3.0), Above(0, 3.0))) == [[(((0, 1.0),), 3.0)]]
    assert thresholds(Any(All(Above(0, 3.0), Below(1, 0.0)), Above(0, 2.0))) == [[(((0, 1.0),), 2.0)]]
    assert len(Any(All(Above(0, 3.0), Below(1, 0.0)), Above(0, 4.0)).dnf()) == 2
    assert len(Any(Above(0, 3.0), Below(0, 4.0), Above(1, 5.0)).dnf()) == 3
    first, second = Detector(nn.Linear(3, 1), 0.5), Detector(nn.Linear(3, 1), 0.5)
    assert len(Any(first, second).dnf()) == 2 and len(Any(first, All(first, Above(0, 1.0))).dnf()) == 1
    y = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0)) * 3
    event = Any(All(Above(0, 1.0), Below(1, 0.0)), Above(0, 2.0), All(Above(0, 0.5), Above(0, 1.5)))
    from_dnf = torch.zeros(4000, dtype=torch.bool)
    for clause in event.dnf():
        inside = torch.ones(4000, dtype=torch.bool)
        for h in clause:
            inside &= sum(c * y[:, k] for k, c in h.terms) > h.threshold
        from_dnf |= inside
    assert len(event.dnf()) == 2 and torch.equal(from_dnf, event.evaluate(y))


@pytest.mark.parametrize("build, message", [
    (lambda: Above(0, float("nan")), "finite, got nan"),
    (lambda: Below(1, float("-inf")), "finite, got -inf"),
    (lambda: Below(-1, 0.0), "non-negative"),
    (lambda: Above(1.5, 0.0), "integer"),
    (lambda: Above(0, "high"), "number"),
    (lambda: All(), "at least one"),
    (lambda: Any(Above(0, 1.0), 3), "takes events"),
])
def test_malformed_events(build, message):
    with pytest.raises(InvalidEvent, match=message):
        build()


def test_index_out_of_range_is_caught_by_check():
    with pytest.raises(InvalidEvent, match="output index 3 out of range for a model with 3 outputs"):
        All(Above(0, 1.0), Any(Below(3, 0.0))).check(3)
    with pytest.raises(InvalidEvent, match="at least 2 outputs"):
        ArgMax(0).check(1)


def test_numpy_and_torch_integers_are_output_indices():
    import numpy as np
    assert repr(Above(np.int64(1), 0.5)) == repr(Above(1, 0.5)) and repr(Below(torch.tensor(2), 0.0)) == repr(Below(2, 0.0))
    with pytest.raises(InvalidEvent):
        Above(True, 0.5)
    with pytest.raises(InvalidEvent):
        Above(1.5, 0.5)

