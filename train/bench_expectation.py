"""`pitrack bench expectation`: π's E[y] against a sampling reference.

Settings (random MLPs, He-normal weights, zero biases, x ~ N(0, I)):
  foundation  16 → 128³ → 1 (ReLU, GELU, tanh): the foundation issue's setting.
  wide        256 → 256⁴ → 1 (ReLU): the published wide-MLP setting.
Reported per network: |π - reference| in output standard deviations, the reference's own
standard error in the same unit, π's cost in sample-equivalents, and the sampling-
equivalent count N = Var[y]/err² (the plain-sampling budget with the same squared error)
with the ratio N / cost (how many times cheaper than sampling π is at equal error).
"""
from __future__ import annotations

from explanations import Gaussian, explain
from explanations.montecarlo import mean_estimate, tally

from .models import mlp

SETTINGS = {
    "foundation": ([16, 128, 128, 128, 1], ("relu", "gelu", "tanh")),
    "wide": ([256, 256, 256, 256, 256, 1], ("relu",)),
}


def run(reference: int = 10 ** 7, seed: int = 0, setting: str = "foundation",
        methods: tuple[str, ...] = ("gaussian",)) -> list[dict]:
    widths, activations = SETTINGS[setting]
    results = []
    print(f"{'activation':<10} {'method':<9} {'π E[y]':>10} {'reference':>10} {'|err|/sd':>9} "
          f"{'ref s.e./sd':>11} {'cost':>8} {'N=Var/err²':>11} {'N/cost':>8}")
    for activation in activations:
        model = mlp(widths, activation, seed=seed)
        D = Gaussian.standard(widths[0])
        pis = {m: explain(model, D, m) for m in methods}
        graph = next(iter(pis.values())).graph
        ref = mean_estimate(tally(graph, D, reference, seed=seed + 1, progress=True), graph.flops_per_sample)
        sd = float(ref.details["std"][0])
        for method, pi in pis.items():
            estimate = pi.expectation()
            error = abs(float(estimate.value[0] - ref.value[0])) / sd
            equivalent = 1 / max(error, 1e-12) ** 2
            row = {"activation": activation, "method": method, "pi": float(estimate.value[0]),
                   "reference": float(ref.value[0]), "error_sd": error, "reference_se_sd": reference ** -0.5,
                   "cost": estimate.sample_equivalents, "equivalent_samples": equivalent,
                   "ratio": equivalent / estimate.sample_equivalents}
            results.append(row)
            print(f"{activation:<10} {method:<9} {row['pi']:>10.5f} {row['reference']:>10.5f} {error:>9.5f}"
                  f" {reference ** -0.5:>11.5f} {row['cost']:>8,.0f} {equivalent:>11,.0f} {row['ratio']:>8.1f}")
    return results
