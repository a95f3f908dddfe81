import pytest
import torch

from explanations import Gaussian, InvalidDistribution, explain


@pytest.mark.parametrize("mean, cov, message", [
    (torch.zeros(2, 2), torch.eye(2), "mean must be a vector"),
    (torch.zeros(3), torch.eye(2), "shape \\(3, 3\\)"),
    (torch.tensor([0.0, float("nan")]), torch.eye(2), "mean has NaN"),
    (torch.zeros(2), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "covariance has NaN"),
    (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "not symmetric"),
    (torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "not positive semi-definite"),
    (torch.zeros(0), torch.zeros(0, 0), "at least one entry"),
])
def test_bad_distributions_are_named(mean, cov, message):
    with pytest.raises(InvalidDistribution, match=message):
        Gaussian(mean, cov)


def test_standard_needs_a_positive_dimension():
    for n in (0, True, 2.0):
        with pytest.raises(InvalidDistribution, match="positive integer"):
            Gaussian.standard(n)


def test_dtypes_are_float32_or_float64():
    """An integer dtype had rounded the mean and covariance silently ([0.5, 1.7] to [0, 1])."""
    for dtype in (torch.int64, torch.float16, torch.bool):
        with pytest.raises(InvalidDistribution, match="float32 or torch.float64"):
            Gaussian(torch.tensor([0.5, 1.7]), torch.eye(2), dtype=dtype)
        with pytest.raises(InvalidDistribution, match="float32 or torch.float64"):
            Gaussian.fit(torch.randn(10, 2), dtype=dtype)


def test_a_singular_covariance_is_accepted_in_float32():
    """eigh in float32 rounds a rank-deficient Σ's zero eigenvalues to about ±nε·λ_max (a
    rank-9 sample covariance of 50 features: λ_min = -1.8e-6·λ_max), which the fixed 1e-8
    tolerance had refused as not positive semi-definite; float64 accepted the same data."""
    g = torch.Generator().manual_seed(0)
    few = torch.randn(10, 50, generator=g)
    fitted = Gaussian.fit(few, dtype=torch.float32)
    a = torch.randn(30, 5, generator=g, dtype=torch.float64)
    low_rank = Gaussian(torch.zeros(30), a @ a.T, dtype=torch.float32)
    x = low_rank.sample(2000, generator=torch.Generator().manual_seed(1))
    null = torch.linalg.svd(a.T).Vh[5:].float()
    assert fitted.dim == 50 and (x @ null.T).abs().max() <= 1e-5 * x.abs().max()
    with pytest.raises(InvalidDistribution, match="not positive semi-definite"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1e-3]]), dtype=torch.float32)


def test_samples_have_the_requested_moments():
    a = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, -0.3, 0.2]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    D = Gaussian(mean, a @ a.T)
    x = D.sample(400_000, generator=torch.Generator().manual_seed(1))
    n = x.shape[0]
    sd = D.cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() <= 5 * sd / n ** 0.5).all()
    # Var of a sample covariance entry: (Σ_ii Σ_jj + Σ_ij²)/n.
    tolerance = 5 * ((torch.outer(D.cov.diagonal(), D.cov.diagonal()) + D.cov ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - D.cov).abs() <= tolerance).all()


def test_singular_covariance_is_sampled_on_its_subspace():
    """Draws stay on Σ's range to rounding. A Cholesky factor of a rank-deficient Σ can have
    pivots of order √ε·|Σ| (5e-9 for the 69th vector below, on torch 2.13's CPU LAPACK), which
    put draws off the subspace by that much; the eigen factor zeroes eigenvalues at eigh's
    rounding level instead."""
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    D = Gaussian(torch.zeros(3, dtype=torch.float64), torch.outer(v, v))
    assert D.sample_flops() == 3 + 2 * 9 and Gaussian.standard(3).sample_flops() == 3
    vectors = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for v in [torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64), *vectors]:
        x = Gaussian(torch.zeros(3, dtype=torch.float64), torch.outer(v, v)).sample(
            1000, generator=torch.Generator().manual_seed(0))
        off_line = x - torch.outer(x @ v / (v @ v), v)                  # the part orthogonal to v
        assert off_line.abs().max() <= 1e-12 * x.abs().max(), v
    a = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = Gaussian(torch.zeros(4, dtype=torch.float64), a @ a.T).sample(1000, generator=torch.Generator().manual_seed(2))
    null = torch.linalg.svd(a.T).Vh[2:]                                 # orthogonal to a's columns
    assert (x @ null.T).abs().max() <= 1e-12 * x.abs().max()


def test_inputs_that_require_grad_are_detached():
    """A mean or covariance taken from a trained module must not tie π into its autograd graph."""
    mean, root = torch.zeros(3, requires_grad=True), torch.eye(3, requires_grad=True)
    D = Gaussian(mean, root @ root.T)
    assert not D.mean.requires_grad and not D.cov.requires_grad
    pi = explain(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), D)
    assert not pi.expectation().value.requires_grad


def test_fit_recovers_the_moments_of_its_data():
    generator = torch.Generator().manual_seed(0)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    truth = Gaussian(torch.tensor([1.0, -2.0, 0.5]), root @ root.T)
    fitted = Gaussian.fit(truth.sample(200_000, generator))
    assert ((fitted.mean - truth.mean).abs() < 5 * truth.cov.diagonal().sqrt() / 200_000 ** 0.5).all()
    assert (fitted.cov - truth.cov).abs().max() < 0.02              # s.e. of an entry ≤ 2.6e-3
    images = torch.randn(50, 1, 2, 3, generator=generator)
    torch.testing.assert_close(Gaussian.fit(images).mean, images.reshape(50, 6).double().mean(0))


def test_ledoit_wolf_shrinks_noise_and_keeps_structure():
    """Few rows of N(0, I): S is noise around I, so λ is near 1. Many rows of a strongly
    correlated law: S is right, so λ is near 0. λ = 0.3 is applied as given."""
    generator = torch.Generator().manual_seed(1)
    few = torch.randn(20, 40, generator=generator, dtype=torch.float64)
    shrunk = Gaussian.fit(few, shrinkage="ledoit-wolf")
    assert torch.linalg.eigvalsh(shrunk.cov)[0] > 0.3                # S alone is singular (20 < 40 rows)
    assert (shrunk.cov - torch.diag(shrunk.cov.diagonal())).abs().max() < 0.05
    factor = torch.randn(10, 10, generator=generator, dtype=torch.float64)
    many = torch.randn(20_000, 10, generator=generator, dtype=torch.float64) @ factor.T
    plain = Gaussian.fit(many)
    assert (Gaussian.fit(many, shrinkage="ledoit-wolf").cov - plain.cov).abs().max() < 0.01 * plain.cov.abs().max()
    d = plain.cov.diagonal().mean()
    torch.testing.assert_close(Gaussian.fit(many, shrinkage=0.3).cov, 0.7 * plain.cov + 0.3 * d * torch.eye(10, dtype=torch.float64))


@pytest.mark.parametrize("data, shrinkage, message", [
    (torch.zeros(1, 3), 0.0, "at least 2 rows"), (torch.zeros(5), 0.0, "at least 2 rows"),
    (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 0.0, "NaN"), (torch.zeros(4, 2), 1.5, "shrinkage"),
    (torch.zeros(4, 2), "oas", "shrinkage"), (torch.zeros(5, 0), 0.0, "at least 2 rows")])
def test_fit_refuses_bad_data(data, shrinkage, message):
    with pytest.raises(InvalidDistribution, match=message):
        Gaussian.fit(data, shrinkage=shrinkage)


def test_float32_covariances_are_judged_at_float32_rounding():
    """A Aᵀ computed in float32 is asymmetric by ~4e-8·max|Σ| and a rank-2 float32 B Bᵀ has
    eigenvalues of ±1e-7·λ_max: both were refused ("not symmetric", "not positive
    semi-definite") even with dtype=float64, whose tolerance is float64's."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    b = torch.randn(6, 2, generator=g)
    low_rank = b @ b.T
    for dtype in (torch.float64, torch.float32):
        Gaussian(torch.zeros(6), a @ a.T / 6 + 0.1 * torch.eye(6), dtype=dtype)
        x = Gaussian(torch.zeros(6), (low_rank + low_rank.T) / 2, dtype=dtype).sample(
            2000, generator=torch.Generator().manual_seed(1))
        null = torch.linalg.svd(b.T.double()).Vh[2:].to(dtype)
        assert (x @ null.T).abs().max() <= 1e-5 * x.abs().max()
    with pytest.raises(InvalidDistribution, match="not symmetric"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 1e-3], [0.0, 1.0]]))
