"""The truncation cap of importance sampling's hit weights (`explanations/truncation.py`)."""
import math

import torch

from explanations.truncation import SHARE, log_cap, truncated


def test_one_outlier_among_equal_weights_is_cut_at_the_closed_form():
    """n - 1 weights w and one W ≫ w: (n - 1) w + τ = ½√n τ, so τ = (n - 1) w / (½√n - 1)."""
    weights = torch.tensor([1.0] * 99 + [1000.0], dtype=torch.float64)
    expected = 99 / (SHARE * 10 - 1)
    assert math.isclose(log_cap(weights.log()), math.log(expected), rel_tol=1e-12)


def test_the_cap_solves_its_equation_and_moves_with_the_scale():
    """Σ min(w, τ) = ½√n τ at the returned τ, for heavy-tailed weights, and the same cap
    shifted for weights 300 decades smaller."""
    generator = torch.Generator().manual_seed(0)
    log_w = 3 * torch.randn(500, generator=generator, dtype=torch.float64)
    cap = log_cap(log_w)
    assert math.isfinite(cap)
    left = torch.logsumexp(truncated(log_w, cap), 0)
    assert math.isclose(float(left), math.log(SHARE * math.sqrt(500)) + cap, rel_tol=1e-12)
    assert math.isclose(log_cap(log_w - 690), cap - 690, rel_tol=1e-12)


def test_light_tailed_weights_and_few_hits_are_not_cut():
    """Exponential weights (a halfspace's hits) are not cut at any n; nor is anything among
    n ≤ 4 hits, however uneven (½√n ≤ 1 puts τ at or above the largest)."""
    generator = torch.Generator().manual_seed(1)
    for n in (5, 10, 100, 10_000):
        exponential = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
        assert log_cap(exponential.log()) == math.inf
    for n in range(5):
        assert log_cap(torch.tensor([0.0] + [-700.0] * (n - 1), dtype=torch.float64)[:n]) == math.inf
    assert log_cap(torch.zeros(50, dtype=torch.float64)) == math.inf        # all equal


def test_a_weight_beyond_float64s_range_of_the_others_is_cut():
    """One log-weight 800 above 99 others (their ratio e^800 is no float64): the cap is
    99 w / (½√100 - 1) = 24.75 w of the others, found in log space."""
    log_w = torch.tensor([0.0] + [-800.0] * 99, dtype=torch.float64)
    assert math.isclose(log_cap(log_w), -800 + math.log(99 / 4), rel_tol=1e-12)


def test_truncation_trades_a_rare_stray_weight_for_a_small_bias():
    """Runs of N = 4,000 draws: 30% hit near a mode with weights Exp(mean 3e-6) (mass 9e-7),
    and a stray region of mass 2.5e-7 is hit with weight 0.01 (once in 10 runs). Over
    500 runs the truncated estimate's squared error is far below the unbiased one's, and
    its mean lies below the truth by at most the stray mass and 3% of the modes' (plus the
    runs' noise): the modes' weights are hardly cut."""
    generator = torch.Generator().manual_seed(2)
    draws, runs, stray_weight, stray_rate = 4_000, 500, 0.01, 2.5e-5
    truth = 0.3 * 3e-6 + stray_rate * stray_weight
    raw, cut = [], []
    for _ in range(runs):
        modes = torch.rand(draws, generator=generator) < 0.3
        strays = torch.rand(draws, generator=generator) < stray_rate
        weights = torch.cat([3e-6 * torch.empty(int(modes.sum()), dtype=torch.float64).exponential_(generator=generator),
                             torch.full((int(strays.sum()),), stray_weight, dtype=torch.float64)])
        cap = log_cap(weights.log())
        raw.append(float(weights.sum()) / draws)
        cut.append(float(truncated(weights.log(), cap).exp().sum()) / draws)
    raw, cut = torch.tensor(raw), torch.tensor(cut)
    raw_mse, cut_mse = ((raw - truth) ** 2).mean(), ((cut - truth) ** 2).mean()
    assert cut_mse < raw_mse / 4
    noise = 3 * cut.std() / math.sqrt(runs)
    assert 0.97 * (truth - stray_rate * stray_weight) - noise < cut.mean() < truth
