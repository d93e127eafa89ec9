"""The scale benchmark's pieces: the log-log slope fit, the synthetic positions, the table."""

from benchmarks.bench_scale import fit, slope
from benchmarks.scale_data import sample_points
from benchmarks.scale_report import markdown
from geopak_lib.geo import locate_province


def test_slope_is_the_power_of_n_from_10k_up():
    ns = [1000, 3000, 10_000, 30_000, 100_000]
    assert slope(ns, [n * 2e-3 for n in ns]) == 1.0
    assert slope(ns, [(n / 1e4) ** 2 for n in ns]) == 2.0
    assert slope(ns, [5.0 if n < 10_000 else n ** 0.5 for n in ns]) == 0.5  # sizes below 10k are ignored
    assert slope([1000, 10_000], [1.0, 10.0]) is None  # one point from 10k: no fit


def test_points_lie_inside_their_province():
    pts = sample_points(500, seed=3)
    assert len(pts) == 500
    assert (locate_province(pts["latitude"], pts["longitude"], tolerance_km=0.0) == pts["province"]).all()
    assert pts["province"].value_counts().index[0] == "Balochistan"  # the largest by area


def test_encoder_stages_are_extrapolated_and_labelled():
    # work time linear in N; the wall time adds a start-up of 8 s that the slope must not see
    runs = {n: {"split": {"work_s": n / 1000, "wall_s": n / 1000 + 8, "cpu_s": (n / 1000) ** 0.5, "rss_mib": 100}}
            for n in (1000, 10_000, 100_000)}
    for n in (1000, 10_000):
        runs[n]["predict"] = {"work_s": n / 100, "wall_s": n / 100 + 8, "rss_mib": 500}
    res = {"date": "2026-01-01T10:00:00", "runs": runs, "loadavg_start": 1.0, "loadavg_end": 1.0}
    res["fit"] = fit(res)
    assert res["fit"]["split"]["slope_10k"] == 1.0  # on the wall time it would be log(108/18)/log(10) = 0.78
    assert res["fit"]["split"]["slope_cpu_10k"] == 0.5 and res["fit"]["predict"]["slope_cpu_10k"] is None
    assert res["fit"]["predict"]["extrapolated"] == {100_000: 1000.0}  # 10k's throughput, 10x the images
    text = markdown(res, "python -m benchmarks.bench_scale")
    assert "*1000.0 (extrapolated)*" in text
    assert "| spatial block split | 1.0 / 9.0 / 100 | 10.0 / 18.0 / 100 | 100.0 / 108.0 / 100 | 1.0 | 0.5 |" in text


def test_runs_without_a_work_time_fit_on_the_wall_time():
    runs = {str(n): {"split": {"wall_s": n / 1000, "rss_mib": 100}} for n in (10_000, 100_000)}  # keys as JSON has them
    assert fit({"runs": runs})["split"]["slope_10k"] == 1.0
