"""How much a figure moves with the training seed: phases 0-1 retrained on one run's cache with several seeds.

Every seed starts from the same run folder's inputs (manifest.csv with its split, geocells, assignments,
concepts), copied into runs/seeds/<profile>_s<seed>/, and the same feature cache, so only the training
seed differs (initialisation, batch order, dropout). For each seed the book's own notebooks 02 and 03 run
(phase 0, then phase 1 with the profile's settings; the concept ablation is switched off: it trains
extra variants that no figure here uses), then every phase's best checkpoint is scored end to end on
val and test exactly as notebook 05 scores them (analysis of phase_comparison).

    python benchmarks/seed_spread.py --profile demo --seeds 0 1 2

Prints one row per (seed, phase, split) and the spread of the test median across seeds, and writes
benchmarks/results/seed_spread_<profile>.csv. Figures are recorded in docs/decisions/evaluation.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("manifest.csv", "geocells.json", "geocells.csv", "assignments.csv", "concepts.json", "rejects.csv",
          "fixes.csv")
NOTEBOOKS = "02_phase0_province,03_phase1_geography"


def seed_profile(profile: Path, seed: int, out_dir: Path) -> Path:
    """A copy of ``profile`` with its seed and its own run folder, the concept ablation off."""
    raw = yaml.safe_load(profile.read_text())
    name = f"{profile.stem}_s{seed}"
    raw["common"] = {**raw.get("common", {}), "seed": seed, "run_dir": f"runs/seeds/{name}"}
    raw["notebooks"].setdefault("03_phase1_geography", {})["concept_ablation"] = False
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def prepare_run(source: Path, run_dir: Path) -> None:
    """The source run's data and geocell outputs (not its checkpoints) in a fresh run folder."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for name in INPUTS:
        if (source / name).is_file():
            shutil.copy2(source / name, run_dir / name)


def score(run_dir: Path) -> pd.DataFrame:
    from geopak_lib.analysis.phases import phase_comparison
    from geopak_lib.training.inputs import load_data

    return phase_comparison(run_dir, load_data(run_dir))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo", help="profile in params/ whose run folder is the source")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    profile = ROOT / "params" / f"{args.profile}.yaml"
    source = ROOT / yaml.safe_load(profile.read_text())["common"]["run_dir"]
    if not (source / "assignments.csv").is_file():
        print(f"{source}: no geocell assignments; run `geopak book {args.profile} --only 00_data_audit,01_geocells` "
              "first", file=sys.stderr)
        return 2
    work = ROOT / "runs" / "seeds"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        path = seed_profile(profile, seed, work)
        run_dir = ROOT / "runs" / "seeds" / path.stem
        prepare_run(source, run_dir)
        subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", "book", str(path), "--only", NOTEBOOKS],
                       cwd=ROOT, check=True)
        table = score(run_dir)
        table.insert(0, "seed", seed)
        rows.append(table)
        print(table.to_string(index=False), flush=True)
    out = pd.concat(rows, ignore_index=True)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    out.to_csv(ROOT / "benchmarks" / "results" / f"seed_spread_{args.profile}.csv", index=False)
    spread = (out.groupby(["phase", "split"])["median_km"]
              .agg(["mean", "std", "min", "max"]).round(1))
    print("\nmedian error (km) across seeds:\n" + spread.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
