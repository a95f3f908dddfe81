"""The tail benchmark's ground truth (cross-entropy importance sampling) and its driver."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from explanations import compile_model
from explanations.events import Above
from explanations.montecarlo import tally
from train import bench_compare, bench_pool, bench_sampling, bench_tails
from train.bench_tails import Reference, Settings, Spec, input_distribution
from train.cli import main
from train.models import mlp
from train.tables import write_csv


@pytest.mark.parametrize("widths, activation, inputs", [((4, 16, 1), "relu", "standard"),
                                                         ((6, 32, 2), "gelu", "correlated")])
def test_importance_agrees_with_sampling(widths, activation, inputs):
    """p ≈ 1e-3: IS and 4·10⁶ plain draws agree within 3 combined standard errors."""
    graph = compile_model(mlp(list(widths), activation, seed=5, bias_std=0.1))
    D = input_distribution(widths[0], inputs, seed=5)
    y = graph.forward(D.sample(200_000, generator=torch.Generator().manual_seed(1), dtype=graph.dtype)).double()
    spec = Spec("one", ((0, 1),), 1e-3) if widths[-1] == 1 else Spec("all", ((0, 1), (1, 1)), 1e-3)
    mean, sd = y.mean(0), y.std(0)
    level = torch.quantile(spec.score((y - mean) / sd), 1 - spec.target).item()
    event = spec.event(level, mean.tolist(), sd.tolist())
    counts = tally(graph, D, 4_000_000, [event], seed=2, progress=False)
    p_s = counts.hits[0] / counts.samples
    se_s = math.sqrt(p_s * (1 - p_s) / counts.samples)
    result = Reference(graph, D, Settings(), seed=3).importance(event)
    assert 2e-4 < p_s < 5e-3
    assert result.rel_se < 0.05
    assert abs(result.p - p_s) < 3 * math.hypot(se_s, result.se)


def test_importance_matches_closed_form_on_linear_network():
    """y = w·x + b with x ~ N(μ, Σ) is N(w·μ + b, wᵀΣw): P[y > t] = Φ(-(t - mean)/sd) ≈ 1e-7."""
    model = mlp([8, 1], seed=7, bias_std=0.5)
    D = input_distribution(8, "correlated", seed=7)
    w, b = model[0].weight.detach().double()[0], model[0].bias.detach().double()[0]
    mean, sd = (w @ D.mean + b).item(), math.sqrt(w @ D.cov @ w)
    t = mean + sd * torch.special.ndtri(torch.tensor(1 - 1e-7, dtype=torch.float64)).item()
    exact = torch.special.ndtr(torch.tensor(-(t - mean) / sd, dtype=torch.float64)).item()
    result = Reference(compile_model(model), D, Settings(), seed=11).importance(Above(0, t))
    assert result.rel_se < 0.05
    assert abs(result.p - exact) < 3 * result.se


def test_quick_run_writes_outputs_and_reuses_cache(tmp_path, monkeypatch):
    paths = dict(cache=tmp_path / "cache", csv_path=tmp_path / "out" / "tails.csv",
                 png_path=tmp_path / "out" / "tails.png")
    first = bench_tails.run(quick=True, methods=["gaussian"], progress=False, **paths)
    assert first.truth_draws > 0
    with open(paths["csv_path"]) as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == [
        "case", "architecture", "activation", "inputs", "trained", "event", "target_p", "true_p",
        "true_lo", "true_hi", "true_se", "truth_source", "sampling_p", "sampling_se", "sampling_hits",
        "sampling_n", "importance_p", "importance_se", "importance_replicate_z", "agreement_z", "method",
        "estimate_method", "estimate_p", "estimate_log10", "abs_log10_ratio", "sample_equivalents", "equal_flops_n",
        "equal_flops_drawn", "equal_flops_hits", "equal_flops_p", "seconds", "note"]
    assert len(rows) == sum(len(case.specs) for case in bench_tails.zoo(quick=True))
    assert {"sampling", "importance"} <= {row["truth_source"] for row in rows} <= {"sampling", "importance", "combined"}
    for row in rows:
        assert 0 < float(row["true_lo"]) <= float(row["true_p"]) <= float(row["true_hi"])
        assert 0.1 < float(row["true_p"]) / float(row["target_p"]) < 10
    assert paths["png_path"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_sampling(*args, **kwargs):
        raise AssertionError("ground truth measured again despite a warm cache")

    monkeypatch.setattr(bench_tails, "measure_truth", no_sampling)
    second = bench_tails.run(quick=True, methods=["gaussian"], progress=False, **paths)
    assert second.truth_draws == 0
    assert [r["true_p"] for r in second.rows] == [r["true_p"] for r in first.rows]
    seeds, real_explain = [], bench_tails.explain            # --seed reaches π
    monkeypatch.setattr(bench_tails, "explain", lambda *a, **k: seeds.append(k["seed"]) or real_explain(*a, **k))
    bench_tails.run(quick=True, methods=["gaussian"], progress=False, seed=5, **paths)
    assert seeds and set(seeds) == {5}

    # bench sampling on the same (warm) truth: repeats of the hybrid against exact plain-sampling MSE
    rows = bench_sampling.run(repeats=2, budget=20_000, quick=True, cache=paths["cache"], progress=False,
                              csv_path=tmp_path / "out" / "sampling.csv", png_path=tmp_path / "out" / "sampling.png",
                              runs_path=tmp_path / "out" / "runs.csv", first_seed=3)
    assert len(rows) == sum(1e-8 <= r["true_p"] <= 1e-2 for r in first.rows)
    with open(tmp_path / "out" / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 2 * len(rows) and {int(r["seed"]) for r in runs} == {3, 4}
    for row in rows:                                  # the per-run records add up to the table
        mine = [r for r in runs if r["event"] == row["event"] and r["case"] == row["case"]]
        assert sum(r["covered"] == "True" for r in mine) == row["covered"]
        assert all(r["sampler"] in ("design-IS", "subset-simulation", "plain") for r in mine)
    for row in rows:
        assert row["repeats"] == 2 and 0 <= row["covered"] <= 2 and row["hybrid_mse"] >= 0
        assert 10_000 < row["sample_equivalents"] <= 20_000         # the budget, π's part included
        equal_draws = row["true_p"] * (1 - row["true_p"]) / row["plain_mse"]
        assert 10_000 < equal_draws < 20_000
    assert (tmp_path / "out" / "sampling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pooled = bench_pool.per_event(bench_pool.read_runs([tmp_path / "out" / "runs.csv"]))
    for row in rows:                                  # one file pooled is the bench's own table
        mine = pooled[row["case"], row["event"]]
        assert mine["covered"] == row["covered"] and mine["repeats"] == 2
        assert math.isclose(mine["relative_rmse"], row["relative_rmse"], rel_tol=1e-9)
    with pytest.raises(ValueError, match="already in"):
        bench_pool.read_runs([tmp_path / "out" / "runs.csv"] * 2)


def test_run_report_counts_misses_and_zero_estimates_per_sampler():
    runs = [{"sampler": "design-IS", "true_p": 1e-6, "log10": math.log10(1e-6 * f), "covered": f < 2}
            for f in (1.0, 1.2, 5.0)]
    runs.append({"sampler": "subset-simulation", "true_p": 1e-6, "log10": -math.inf, "covered": False})
    lines = bench_sampling.report_runs(runs, Path("runs.csv")).splitlines()
    design, subset, every = (next(line for line in lines if line.split()[:1] == [name])
                             for name in ("design-IS", "subset-simulation", "all"))
    assert design.split()[1:3] == ["3", "66.7%"] and design.endswith("33.3%")      # 5× is 0.70 dex
    assert subset.split()[1:3] == ["1", "0.0%"] and subset.endswith("100.0%")     # p̂ = 0: infinitely far
    assert every.split()[1] == "4" and every.endswith("50.0%")
    assert bench_sampling.report_runs([], Path("runs.csv")).splitlines()[-1] == "runs CSV: runs.csv"


def test_pool_joins_seed_sets_per_event(tmp_path):
    """Two seed sets of one event: relative RMSE over all four runs, coverage summed."""
    def runs_file(name, seeds, values):
        rows = [{"case": "r01", "event": "Above(0, 1)", "true_p": 1e-6, "seed": s, "value": v,
                 "log10": math.log10(v) if v > 0 else -math.inf, "covered": v < 2e-6, "sampler": "design-IS"}
                for s, v in zip(seeds, values)]
        write_csv(rows, tmp_path / name, bench_sampling.RUN_COLUMNS)
        return tmp_path / name
    first, second = runs_file("a.csv", (0, 1), (1e-6, 3e-6)), runs_file("b.csv", (20, 21), (0.0, 1.5e-6))
    event = bench_pool.per_event(bench_pool.read_runs([first, second]))["r01", "Above(0, 1)"]
    assert event["repeats"] == 4 and event["covered"] == 3
    assert math.isclose(event["relative_rmse"], math.sqrt((0 + 4 + 1 + 0.25) / 4))
    report = bench_pool.pool([first, second])
    assert "> 0.3:   1" in report and "coverage 75.0%" in report and "relu" in report    # r01 is a ReLU net
    assert event["relative_rmse_low"] == 0                       # four runs: too few for an interval
    assert "(beyond noise   0)" in report
    with pytest.raises(ValueError, match="not a bench sampling runs CSV"):
        bench_pool.read_runs([tmp_path / "a.csv", Path(__file__)])


def test_noise_intervals_tell_one_dominant_run_from_a_steady_error():
    """One run at 300× the truth among 20 exact ones puts the ratio to plain sampling under 1,
    but a resample without it (probability (19/20)^20 = 0.36) has no error, so the ratio's
    interval reaches ∞: within the repeats' noise. Twenty runs all at 300× are beyond it."""
    p, plain = 1e-6, 1e-6 / 1e4
    lone = [p] * 19 + [300 * p]
    hybrid = (299 * p) ** 2 / 20
    noise = bench_sampling.error_columns(lone, p, plain)
    assert noise["mse_ratio"] == pytest.approx(plain / hybrid) and noise["mse_ratio"] < 1
    assert noise["mse_ratio_low"] < noise["mse_ratio"] and noise["mse_ratio_high"] == math.inf
    assert noise["relative_rmse_low"] == 0 and noise["relative_rmse_high"] > noise["relative_rmse"]
    steady = bench_sampling.error_columns([300 * p] * 20, p, plain)
    assert steady["mse_ratio_high"] == pytest.approx(plain / (299 * p) ** 2) and steady["mse_ratio_high"] < 1
    assert steady["relative_rmse_low"] == pytest.approx(299)


def test_the_noise_interval_is_the_resampled_means_two_and_a_half_percent_tails():
    """Ten runs, two of them 2p off: the count K of those in a resample is Binomial(10, 0.2)
    and its mean squared error 0.4 K p². P(K ≥ 5) = 3.3% and P(K ≥ 6) = 0.6%, so the upper end
    is 2 p² (a 5/95% interval would end at 1.6 p²); P(K = 0) = 10.7%, so the lower end is 0.
    Fewer runs than MIN_RUNS give no interval; the generator is seeded."""
    p = 1e-6
    values = [p] * 8 + [3 * p] * 2
    mse, low, high = (x / (p * p) for x in bench_sampling.mse_summary(values, p))
    assert math.isclose(mse, 0.8) and low == 0 and math.isclose(high, 2.0)
    assert bench_sampling.mse_summary(values[:9], p)[1:] == (0.0, math.inf)
    spread = list(np.random.default_rng(5).lognormal(math.log(p), 1, 20))
    assert bench_sampling.mse_summary(spread, p) == bench_sampling.mse_summary(spread, p)
    assert bench_sampling.mse_summary(spread, p, seed=1) != bench_sampling.mse_summary(spread, p)
    with pytest.raises(ValueError, match="no runs"):
        bench_sampling.mse_summary([], p)


def test_the_report_counts_misses_beyond_the_repeats_noise():
    """Rows whose point misses a target but whose interval reaches back over it are counted
    apart from those whose whole interval is on the wrong side."""
    def row(ratio, low, high, rmse, rmse_low):
        return {"case": "r01", "true_p": 1e-6, "samples": 1, "sample_equivalents": 1, "mse_ratio": ratio,
                "mse_ratio_low": low, "mse_ratio_high": high, "relative_rmse": rmse, "relative_rmse_low": rmse_low,
                "relative_rmse_high": 1.0, "covered": 1, "repeats": 1, "methods": "design-IS"}
    rows = [row(0.5, 0.1, 2, 0.5, 0.2), row(0.5, 0.1, 0.8, 0.5, 0.4), row(50, 10, 500, 0.1, 0.05)]
    text = bench_sampling.report(rows, 10_000, Path("a.csv"), Path("a.png"))
    assert "ratio < 1: 2 (beyond the repeats' noise: 1)" in text
    assert "below 100: 3 (beyond noise: 2)" in text
    assert "above 0.3: 2 (beyond noise: 1)" in text


def test_pool_counts_an_event_above_0_3_within_noise_apart(tmp_path):
    """Twenty runs at 2p are above 0.3 beyond noise; nineteen exact and one at 5p are above it
    (4/√20 = 0.89) but a resample without the 5p run has no error."""
    p = 1e-6
    rows = [{"case": "r01", "event": name, "true_p": p, "seed": seed, "value": value, "log10": math.log10(value),
             "covered": True, "sampler": "design-IS"}
            for name, values in (("A", [p] * 19 + [5 * p]), ("B", [2 * p] * 20)) for seed, value in enumerate(values)]
    write_csv(rows, tmp_path / "runs.csv", bench_sampling.RUN_COLUMNS)
    assert "> 0.3:   2 (beyond noise   1)" in bench_pool.pool([tmp_path / "runs.csv"])


def test_compare_lines_up_tables_per_event(tmp_path, capsys):
    """Two tables of one method: each column's median, worst, count beyond 0.5 dex and mean
    signed error from the rows given, the second's better and worse events against the
    first, events outside SUMMARY_RANGE left out, an estimate of 0 counted as the worst."""
    def table(name, log10s, method="auto"):
        rows = [{"case": "r01", "event": f"Above(0, {i})", "method": method, "true_p": p,
                 "estimate_log10": math.log10(p) + error, "sample_equivalents": 100 * (i + 1)}
                for i, (p, error) in enumerate(zip((1e-4, 1e-6, 1e-8, 1e-2), log10s))]
        write_csv(rows, tmp_path / name, bench_tails.COLUMNS)
        return tmp_path / name
    first = table("a.csv", (0.1, -0.3, 0.6, 5.0))            # the last event is outside the summary range
    second = table("b.csv", (0.05, -0.31, -math.inf, 0.0))
    columns, failed = bench_compare.read_tables([first, second])
    assert [len(c) for c in columns.values()] == [3, 3] and not failed
    rows = list(csv.DictReader(open(first)))
    rows[1]["estimate_log10"] = ""                            # a failed query
    write_csv(rows, tmp_path / "c.csv", bench_tails.COLUMNS)
    assert "2 events (1 failed, left out)  median 0.3500" in bench_compare.compare([tmp_path / "c.csv"])
    report = bench_compare.compare([first, second])
    assert f"[0] {first}: auto: 3 events  median 0.3000  worst 0.60  > 0.5: 1  mean error +0.133  max cost 300" in report
    assert "worst inf" in report and "vs the first: 1 better, 1 worse of 3" in report
    assert "* r01 Above(0, 2)" in report and "  r01 Above(0, 0)" in report and "Above(0, 3)" not in report
    with pytest.raises(ValueError, match="not a bench tails CSV"):
        bench_compare.read_tables([first, Path(__file__)])
    with pytest.raises(SystemExit):
        main(["bench", "compare", str(first), str(tmp_path / "missing.csv")])
    assert f"bench compare: {tmp_path / 'missing.csv'} is not a readable CSV text file" in capsys.readouterr().err


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'gausian'"):
        bench_tails.run(quick=True, methods=["gausian"], cache=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())                  # refused before any ground truth


@pytest.mark.parametrize("argv, message", [
    (["bench", "tails", "--methods", "auto,guide@-5"], "'guide@-5' is not a positive count"),
    (["bench", "tails", "--methods", "auto@1e4"], "'auto@1e4' is not a positive count"),
    (["bench", "tails", "--methods", "foo@3"], "unknown method 'foo'"),
    (["bench", "sampling", "--cases", "r01,zz"], "unknown cases ['zz']; the zoo has r01"),
    (["bench", "sampling", "--quick", "--cases", "r01"], "the quick zoo has q1"),
    (["bench", "detectors", "--budget", "-5"], "--budget: must be a positive number, got -5"),
])
def test_bad_bench_arguments_are_usage_errors(argv, message, capsys):
    """Before: a traceback (unknown methods), a matplotlib error after the run (unknown
    cases) or a run with a negative budget."""
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_truth_combines_agreeing_references_and_keeps_sampling_otherwise():
    settings = bench_tails.Settings()
    sampling = {"p": 1.0e-4, "se": 2e-6, "hits": 4000, "interval": [0.96e-4, 1.04e-4]}
    agreeing = {"p": 1.02e-4, "se": 1e-6, "replicate_z": 0.5}
    truth = bench_tails._truth({"sampling": sampling, "importance": agreeing}, settings)
    precision = 2e-6 ** -2 + 1e-6 ** -2
    assert truth["source"] == "combined"
    assert truth["p"] == pytest.approx((1.0e-4 * 2e-6 ** -2 + 1.02e-4 * 1e-6 ** -2) / precision, rel=1e-12)
    assert truth["se"] == pytest.approx(precision ** -0.5, rel=1e-12)
    disagreeing = dict(agreeing, p=1.2e-4)                     # 8.9 standard errors apart
    assert bench_tails._truth({"sampling": sampling, "importance": disagreeing}, settings)["source"] == "sampling"
    unsteady = dict(agreeing, replicate_z=4.0)                 # the IS runs disagree with each other
    assert bench_tails._truth({"sampling": sampling, "importance": unsteady}, settings)["source"] == "sampling"
    few = dict(sampling, hits=10)
    assert bench_tails._truth({"sampling": few, "importance": agreeing}, settings)["source"] == "importance"
