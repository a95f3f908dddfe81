"""Permanents: Ryser against the definition; the estimators against Ryser."""
import itertools
import math

import pytest
import torch

from explanations.permanent import godsil_gutman, ryser, sinkhorn_sis, uniform_permutations


def random_01(n, seed, density=0.5):
    return (torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < density).to(torch.float64)


def test_ryser_matches_the_definition():
    a = random_01(6, 0, 0.6)
    direct = sum(math.prod(a[i, s[i]].item() for i in range(6)) for s in itertools.permutations(range(6)))
    assert ryser(a) == direct
    assert ryser(torch.ones(7, 7)) == math.factorial(7)
    assert ryser(torch.eye(5)) == 1.0


@pytest.mark.parametrize("estimator, draws", [(sinkhorn_sis, 300), (godsil_gutman, 3000),
                                              (uniform_permutations, 200_000)])
def test_estimators_are_consistent_with_ryser(estimator, draws):
    a = random_01(9, 1)
    exact = ryser(a)
    result = estimator(a, draws, seed=0)
    assert abs(result.value - exact) <= 4 * result.relative_se * result.value
    assert result.flops > 0 and result.draws == draws


def test_sinkhorn_sis_beats_godsil_gutman_at_equal_flops():
    """Variance per draw × FLOPs per draw (= relative se² × total FLOPs) decides equal-FLOPs MSE."""
    a = random_01(16, 2)
    sis = sinkhorn_sis(a, 500, seed=0)
    gg = godsil_gutman(a, 20_000, seed=0)
    assert sis.relative_se ** 2 * sis.flops < gg.relative_se ** 2 * gg.flops / 2


def test_bad_matrices_are_rejected():
    with pytest.raises(ValueError, match="square"):
        ryser(torch.ones(2, 3))
    with pytest.raises(ValueError, match="0, 1"):
        sinkhorn_sis(torch.full((3, 3), 0.5), 10)
