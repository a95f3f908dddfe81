"""`pitrack bench expectation`: Gaussian propagation's E[y] against a sampling reference.

The foundation issue's setting: a random ReLU MLP with 16 inputs and three hidden layers
of 128 (He-normal weights, zero biases), x ~ N(0, I). Reports |π - reference| in units
of the output's standard deviation, the reference's own standard error in the same
units, and π's cost in sample-equivalents. GELU and tanh variants are reported beside.
"""
from __future__ import annotations

from explanations import Gaussian, explain
from explanations.montecarlo import mean_estimate, tally

from .models import mlp

WIDTHS = [16, 128, 128, 128, 1]


def run(reference: int = 10 ** 7, seed: int = 0) -> list[dict]:
    results = []
    print(f"{'activation':<10} {'π E[y]':>10} {'reference':>10} {'|err|/sd':>9} {'ref s.e./sd':>11} {'π cost [samples]':>17}")
    for activation in ("relu", "gelu", "tanh"):
        model = mlp(WIDTHS, activation, seed=seed)
        D = Gaussian.standard(WIDTHS[0])
        pi = explain(model, D, "gaussian")
        estimate = pi.expectation()
        ref = mean_estimate(tally(pi.graph, pi.distribution, reference, seed=seed + 1, progress=True),
                            pi.flops_per_sample)
        sd = float(ref.details["std"][0])
        error = abs(float(estimate.value[0] - ref.value[0])) / sd
        results.append({"activation": activation, "pi": float(estimate.value[0]), "reference": float(ref.value[0]),
                        "error_sd": error, "reference_se_sd": reference ** -0.5,
                        "cost": estimate.sample_equivalents})
        print(f"{activation:<10} {float(estimate.value[0]):>10.5f} {float(ref.value[0]):>10.5f} {error:>9.5f}"
              f" {reference ** -0.5:>11.5f} {estimate.sample_equivalents:>17,.0f}")
    return results
