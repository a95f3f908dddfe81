"""Smoke test of `pitrack bench halfspaces --quick`: files written, estimates near the truth."""
import csv
import math

from train.bench_halfspaces import run


def test_quick_bench_writes_table_and_plot(tmp_path):
    rows = run(quick=True, csv_path=tmp_path / "b.csv", png_path=tmp_path / "b.png", progress=False)
    assert (tmp_path / "b.png").stat().st_size > 10_000
    with open(tmp_path / "b.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    probabilities = [r for r in rows if r["family"] in ("gaussian", "cube", "cnf")]
    assert {r["family"] for r in probabilities} == {"gaussian", "cube", "cnf"}
    for r in probabilities:
        assert 1e-8 <= r["true_p"] <= 1e-2
        assert r["median_abs_log10_err"] < 0.2 and r["sample_equivalents"] < 1e4
        assert r["mse_gain"] > 1
    permanents = [r for r in rows if r["family"] == "permanent"]
    assert permanents and all(math.isfinite(r["sinkhorn_sis_rel_rmse"]) for r in permanents)
