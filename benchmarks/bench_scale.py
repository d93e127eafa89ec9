"""Cost curve of every stage against the number of images: synthetic data sets of 1k to 100k
images (benchmarks/scale_data.py: 64 px JPEGs at real positions inside the province polygons),
each stage in a fresh child process, its wall time and peak RSS from the child's rusage (os.wait4,
the figure /usr/bin/time -v prints as "Maximum resident set size"), and its work time: the child's own
clock from after its imports to the end of the stage (scale_stages.warm), without Python's start and
torch's import, and its CPU seconds over the same span (user + system, children included), which other
processes' load does not stretch. The log-log slope of each stage from 10k up is fitted with
numpy.polyfit on (log N, log seconds), once on the work time and once on the CPU time.

    python -m benchmarks.bench_scale                            # 1k ... 100k; encoder stages to 30k
    python -m benchmarks.bench_scale --sizes 1000 3000 --encoder-max 3000 --out runs/scale_dev
    python -m benchmarks.bench_scale --record                   # also the table + plot in docs/performance.md

Encoder stages (cache build, evaluation, predict: the demo's ViT-S-32 + EfficientNet-Lite0 at 128 px)
stop at --encoder-max; above it their time is extrapolated from the measured throughput of the
largest size (linear in N, from the work time), and labelled so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.scale_stages import ENCODER_STAGES, STAGES, run_stage  # noqa: F401 (STAGES: the names)

ORDER = ["validate", "split", "geocells", "cache", "cache_stub", "train", "train_fixed", "evaluate", "predict",
         "gallery", "reports", "site"]



def measure(stage: str, work: Path, *args) -> dict:
    """Run one stage in a child process -> wall s, peak RSS MiB, the stage's own figures."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_scale", "--child", stage, str(work), *map(str, args)])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed in {work}")
    extra = json.loads((work / f"stage_{stage}.json").read_text())
    return {"wall_s": round(time.perf_counter() - t0, 2), "rss_mib": round(usage.ru_maxrss / 1024), **extra}


def slope(ns, ts, lo: int = 10_000) -> float | None:
    """Log-log slope of t(N) over the sizes >= lo (None with fewer than two)."""
    pts = [(n, t) for n, t in zip(ns, ts) if n >= lo and t]
    if len(pts) < 2:
        return None
    return round(float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0]), 2)


def run(args) -> dict:
    from benchmarks.scale_data import make_dataset

    out = Path(args.out)
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"), "sizes": args.sizes,
           "encoder_max": args.encoder_max, "loadavg_start": os.getloadavg()[0], "runs": {}}
    for n in args.sizes:
        t0 = time.perf_counter()
        table = make_dataset(out / "data", n)
        print(f"[N={n}] data set built in {time.perf_counter() - t0:.0f} s", flush=True)
        work = out / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        runs = res["runs"][n] = {}
        for stage in [s for s in ORDER if s in args.stages]:
            if stage in ENCODER_STAGES and n > args.encoder_max:
                continue
            runs[stage] = measure(stage, work, *((table, out / "data" / "images") if stage == "validate" else ()))
            print(f"[N={n}] {stage:10s} {runs[stage]['wall_s']:8.1f} s  {runs[stage]['rss_mib']:6d} MiB  "
                  + json.dumps({k: v for k, v in runs[stage].items() if k not in ("wall_s", "rss_mib")}), flush=True)
        (out / "scale.json").write_text(json.dumps(res, indent=1))
    res["loadavg_end"] = os.getloadavg()[0]
    for other in args.merge:  # earlier runs fill the sizes and stages this one did not measure
        earlier = json.loads(Path(other).read_text())
        res.setdefault("merged", []).append({"file": str(other), "date": earlier["date"]})
        for n, stages in earlier["runs"].items():
            for stage, fig in stages.items():
                res["runs"].setdefault(int(n), {}).setdefault(stage, fig)
    res["runs"] = dict(sorted(res["runs"].items()))
    res["fit"] = fit(res)
    (out / "scale.json").write_text(json.dumps(res, indent=1))
    return res


def fit(res: dict) -> dict:
    """Per stage: measured sizes, slope from 10k, and for encoder stages the extrapolation to the
    largest size from the throughput at the largest measured one."""
    runs = {int(n): r for n, r in res["runs"].items()}
    sizes = sorted(runs)
    out = {}
    for stage in ORDER:
        ns = [n for n in sizes if stage in runs[n]]
        if not ns:
            continue
        ts = [runs[n][stage].get("work_s", runs[n][stage]["wall_s"]) for n in ns]
        cpu = [runs[n][stage].get("cpu_s") for n in ns]
        f = out[stage] = {"n": ns, "work_s": ts, "wall_s": [runs[n][stage]["wall_s"] for n in ns],
                          "rss_mib": [runs[n][stage]["rss_mib"] for n in ns], "slope_10k": slope(ns, ts),
                          "cpu_s": cpu, "slope_cpu_10k": slope(ns, [c or 0 for c in cpu])}
        if stage in ENCODER_STAGES and max(sizes) > ns[-1]:
            f["extrapolated"] = {n: round(ts[-1] * n / ns[-1], 1) for n in sizes if n > ns[-1]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    ap.add_argument("--encoder-max", type=int, default=30000, help="largest N for the encoder stages")
    ap.add_argument("--stages", nargs="+", default=ORDER, choices=ORDER)
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--merge", nargs="+", default=[], metavar="SCALE_JSON",
                    help="scale.json files of earlier runs whose sizes and stages this run does not measure")
    ap.add_argument("--record", action="store_true", help="write the table and plot into docs/performance.md")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_stage(*args.child)
    res = run(args)
    from benchmarks.scale_report import markdown, plot

    text = markdown(res, "python -m benchmarks.bench_scale " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.record:
        plot(res, Path("docs/figures/scale.png"))
        with open("docs/performance.md", "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
