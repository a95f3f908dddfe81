"""`pitrack bench detectors`: a smoke run of the driver on one net and one level."""
import csv

from train import bench_detectors


def test_a_small_run_writes_its_table_and_plot(tmp_path, capsys):
    rows = bench_detectors.run(seeds=range(1), quantiles=(0.99,), draws=400_000, budget=5_000,
                               csv_path=tmp_path / "d.csv", png_path=tmp_path / "d.png", progress=False)
    assert [r["detector"] for r in rows] == ["relu", "tanh", "gelu"]
    with open(tmp_path / "d.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert (tmp_path / "d.png").stat().st_size > 0
    for row in rows:                                   # p ≈ 1e-2, truth's relative s.e. ≈ 1.6%
        assert row["zero_sample_method"] in ("cumulant+design", "cumulant+design+draws") and row["zero_sample_dex"] < 0.3
        assert row["sampled_dex"] < 0.2 and row["sampled_cost"] <= 5_000
    assert "sampled 95% intervals covering the truth" in capsys.readouterr().out
