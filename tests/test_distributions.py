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
])
def test_bad_distributions_are_named(mean, cov, message):
    with pytest.raises(InvalidDistribution, match=message):
        Gaussian(mean, cov)


def test_standard_needs_a_positive_dimension():
    with pytest.raises(InvalidDistribution):
        Gaussian.standard(0)


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
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    D = Gaussian(torch.zeros(3, dtype=torch.float64), torch.outer(v, v))
    x = D.sample(1000, generator=torch.Generator().manual_seed(0))
    ratio = x / v
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-8)
    assert D.sample_flops() == 3 + 2 * 9 and Gaussian.standard(3).sample_flops() == 3


def test_inputs_that_require_grad_are_detached():
    """A mean or covariance taken from a trained module must not tie π into its autograd graph."""
    mean, root = torch.zeros(3, requires_grad=True), torch.eye(3, requires_grad=True)
    D = Gaussian(mean, root @ root.T)
    assert not D.mean.requires_grad and not D.cov.requires_grad
    pi = explain(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), D)
    assert not pi.expectation().value.requires_grad
