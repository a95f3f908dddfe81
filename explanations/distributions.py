"""Input distributions: `Gaussian(mean, cov)` and `BooleanCube(n)`.

Validation: a float32 or float64 dtype; a 1-D finite mean with at least one entry; a
square, finite, symmetric covariance (|Σ - Σᵀ| ≤ τ·max|Σ|) whose smallest eigenvalue is
≥ -τ·(largest), τ = min(max(1e-8, 8nε), 1e-2) with ε the machine epsilon of the coarser of
Σ's own dtype and the target dtype (float32 rounding: A Aᵀ computed in float32 is asymmetric
by 4e-8·max|Σ|, and eigh in float32 put a rank-9 sample covariance of 50 features at
λ_min = -1.8e-6·λ_max). Sampling uses
x = μ + F u with u ~ N(0, I) and F F ᵀ = Σ: F = I for Σ = I, the Cholesky factor when Σ is well
conditioned (λ_min > 1e-8·λ_max), else V·diag(√λ') from the eigendecomposition, with
λ' = 0 for eigenvalues at eigh's rounding level (λ ≤ n·ε·λ_max) and λ' = λ above it. A
singular Σ is then sampled on its range: a Cholesky factor of a rank-deficient Σ would
carry pivots of order √ε·|Σ| (rounding, not variance) and draws off the subspace.
`Gaussian.fit(data)` takes the moments of a data set, with optional shrinkage of the
covariance toward a multiple of I (Ledoit & Wolf 2004) where rows are few against columns.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import InvalidDistribution

_TOLERANCE = 1e-8


def _epsilon(source: torch.dtype, dtype: torch.dtype) -> float:
    """ε of the module docstring: of the coarser of Σ's own dtype and the target dtype."""
    return max(torch.finfo(dtype).eps, torch.finfo(source).eps if source.is_floating_point else 0.0)


def _tolerance(n: int, eps: float) -> float:
    """τ of the module docstring for an n × n Σ."""
    return min(max(_TOLERANCE, 8 * n * eps), 1e-2)


def _factor(cov: Tensor, eps: float) -> Tensor:
    """F with F Fᵀ = Σ (module docstring) for a symmetric Σ, after checking that Σ is
    positive semi-definite to τ."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    largest = eigenvalues[-1].abs()
    rounding = cov.shape[0] * eps * largest
    if eigenvalues[0] < -_tolerance(cov.shape[0], eps) * largest.clamp_min(1e-300):
        raise InvalidDistribution(
            f"covariance is not positive semi-definite: smallest eigenvalue {eigenvalues[0].item():.3g}")
    cholesky, info = torch.linalg.cholesky_ex(cov)
    if eigenvalues[0] > _TOLERANCE * largest and info == 0:
        return cholesky
    return eigenvectors * eigenvalues.where(eigenvalues > rounding, 0).sqrt()


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise InvalidDistribution(f"dtype must be torch.float32 or torch.float64 (moments and eigh need them), got {dtype}")


class Gaussian:
    """The multivariate normal N(mean, cov) over flat input vectors."""

    def __init__(self, mean: Tensor, cov: Tensor, *, dtype: torch.dtype = torch.float64) -> None:
        _check_dtype(dtype)
        mean = torch.as_tensor(mean).detach()       # a law, not a node of the caller's autograd graph
        cov = torch.as_tensor(cov).detach()
        if mean.dim() != 1 or mean.shape[0] == 0:
            raise InvalidDistribution(f"mean must be a vector with at least one entry, got shape {tuple(mean.shape)}")
        n = mean.shape[0]
        if cov.shape != (n, n):
            raise InvalidDistribution(
                f"covariance must have shape ({n}, {n}) to match the mean, got {tuple(cov.shape)}")
        eps = _epsilon(cov.dtype, dtype)
        mean, cov = mean.to(dtype), cov.to(device=mean.device, dtype=dtype)
        if not torch.isfinite(mean).all():
            raise InvalidDistribution("mean has NaN or infinite entries")
        if not torch.isfinite(cov).all():
            raise InvalidDistribution("covariance has NaN or infinite entries")
        scale = cov.abs().max().clamp_min(1e-300)
        asymmetry = (cov - cov.T).abs().max()
        if asymmetry > _tolerance(n, eps) * scale:
            raise InvalidDistribution(f"covariance is not symmetric (max |Σ - Σᵀ| = {asymmetry:.3g})")
        cov = (cov + cov.T) / 2
        self.mean, self.cov = mean, cov
        self._identity = bool(torch.equal(cov, torch.eye(n, dtype=dtype, device=cov.device)))
        self.factor = cov if self._identity else _factor(cov, eps)     # (I needs no decomposition)

    @classmethod
    def standard(cls, n: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> "Gaussian":
        """N(0, I_n)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidDistribution(f"dimension must be a positive integer, got {n!r}")
        return cls(torch.zeros(n, dtype=dtype, device=device),
                   torch.eye(n, dtype=dtype, device=device), dtype=dtype)

    @classmethod
    def fit(cls, data: Tensor, *, shrinkage: float | str = 0.0, dtype: torch.dtype = torch.float64) -> "Gaussian":
        """The Gaussian with the moments of `data`'s rows ([rows, features]; a batch of images
        [rows, C, H, W] is flattened per row, as nn.Flatten does): mean x̄ and covariance
        (1 - λ) S + λ (tr S/d) I, S the sample covariance with divisor rows - 1.
        `shrinkage` is λ in [0, 1], or "ledoit-wolf" for the estimate of Ledoit & Wolf
        ("A well-conditioned estimator for large-dimensional covariance matrices", J.
        Multivariate Analysis 88, 2004, §3.3): with centred rows x_k, S_n = Σ x_k x_kᵀ/n,
        m = tr S_n/d, δ² = |S_n - mI|², b² = min(Σ_k |x_k x_kᵀ - S_n|²/n², δ²) (|·| the
        Frobenius norm), λ = b²/δ²."""
        _check_dtype(dtype)
        rows = torch.as_tensor(data).detach()
        if rows.dim() < 2 or rows.shape[0] < 2 or rows[0].numel() == 0:
            raise InvalidDistribution(f"data must hold at least 2 rows of features, got shape {tuple(rows.shape)}")
        rows = rows.reshape(rows.shape[0], -1).to(dtype)
        if not torch.isfinite(rows).all():
            raise InvalidDistribution("data has NaN or infinite entries")
        n, d = rows.shape
        centred = rows - rows.mean(0)
        second = centred.T @ centred / n                                            # S_n
        target = second.diagonal().mean()
        if shrinkage == "ledoit-wolf":
            spread = ((second - target * torch.eye(d, dtype=dtype, device=rows.device)) ** 2).sum()
            squares = (centred * centred).sum(1)
            noise = ((squares ** 2).sum() - 2 * ((centred @ second) * centred).sum() + n * (second ** 2).sum()) / n ** 2
            shrinkage = float(torch.clamp(noise / spread, max=1.0)) if spread > 0 else 1.0
        elif isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1:
            raise InvalidDistribution(f"shrinkage must be a number in [0, 1] or 'ledoit-wolf', got {shrinkage!r}")
        cov = second * (n / (n - 1))
        cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(d, dtype=dtype, device=rows.device)
        return cls(rows.mean(0), cov, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def is_standard(self) -> bool:
        """True for N(0, I): samples need no factor multiply."""
        return self._identity and not bool(self.mean.any())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussian":
        """The same distribution with tensors on another device or dtype (itself, unvalidated
        again, when neither changes)."""
        dtype = dtype or self.mean.dtype
        if dtype == self.mean.dtype and (device is None or torch.device(device) == self.mean.device):
            return self
        return Gaussian(self.mean.to(device=device), self.cov.to(device=device), dtype=dtype)

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n independent draws, shape [n, dim]."""
        dtype = dtype or self.mean.dtype
        device = generator.device if generator is not None else self.mean.device
        u = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        if self.is_standard:
            return u
        return torch.addmm(self.mean.to(device=device, dtype=dtype), u, self.factor.to(device=device, dtype=dtype).T)

    def sample_flops(self) -> int:
        """FLOPs of one draw: dim normal variates, plus 2·dim² for μ + F u unless standard."""
        return self.dim if self.is_standard else self.dim + 2 * self.dim * self.dim

    def __repr__(self) -> str:
        kind = "standard" if self.is_standard else "general"
        return f"Gaussian(dim={self.dim}, {kind}, dtype={self.mean.dtype})"


class BooleanCube:
    """The uniform distribution on {-1, +1}^n: independent signs, mean 0, covariance I.

    Halfspaces {a·x ≥ b} and CNF clauses live here (`halfspaces`, `cnf`); only the
    halfspace and sampling explanations accept it (Gaussian propagation would not know
    the inputs are discrete).
    """

    def __init__(self, n: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidDistribution(f"dimension must be a positive integer, got {n!r}")
        self.n, self.dtype = n, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.n

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.n, dtype=self.dtype, device=self.device)

    @property
    def cov(self) -> Tensor:
        return torch.eye(self.n, dtype=self.dtype, device=self.device)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "BooleanCube":
        """The same distribution on another device or dtype."""
        return BooleanCube(self.n, dtype=dtype or self.dtype, device=device or self.device)

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n independent uniform sign vectors, shape [n, dim]."""
        device = generator.device if generator is not None else self.device
        bits = torch.randint(0, 2, (n, self.n), generator=generator, device=device)
        return (2 * bits - 1).to(dtype or self.dtype)

    def sample_flops(self) -> int:
        """FLOPs of one draw: one random bit per coordinate."""
        return self.n

    def __repr__(self) -> str:
        return f"BooleanCube(dim={self.n}, dtype={self.dtype})"
