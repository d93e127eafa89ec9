"""GEOPAK speed benchmarks, one command: encoder bound, feature extraction end to end, phase-1 and
phase-2 training steps against the naive baseline, batch inference and single-image latency.

    python -m benchmarks.run_all                 # CPU: small profile (demo encoders, 320 JPEGs), ~10 min
    python -m benchmarks.run_all --profile full  # GPU: ViT-B-16 + ResNet-50, bf16, 4096 JPEGs
    python -m benchmarks.run_all --quick         # seconds; checks the suite runs (figures meaningless)

Every figure is printed with the machine it ran on (load average included) and written to
benchmarks/results/run_<profile>_<time>.json; --record appends a dated section to
docs/performance.md. Each ratio is the median of pipeline and reference timed back to back (a b, b a, ...),
so a load that drifts during the run favours neither side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from geopak_lib.training.cache import FeatureCache, view_size
from geopak_lib.training.checkpoints import load_checkpoint
from geopak_lib.utils import pick_device, seed_everything

from . import bench_encoders, bench_features, bench_inference, bench_refine, bench_train
from . import common
from .common import PROFILES, build_encoders, build_model, describe_machine, jpeg_dataset, machine_info

TARGETS = {  # name: (figure key, comparison, threshold, what it means)
    "phase1_speedup": (">=", 20.0, "phase-1 training on the cache vs the naive baseline"),
    "extraction_ratio": (">=", 0.8, "feature extraction from JPEG / encoder bound"),
    "inference_ratio": (">=", 0.8, "batch inference from JPEG / encoder bound"),
    "phase2_data_path_cost": ("<", 0.2, "phase-2 step, live data path vs pre-decoded tensors (extra time)"),
    "latency_s": ("<", 1.0, "single-image latency of geopak predict on CPU, model loading excluded (s)"),
    "refine_time_ratio": ("<", 2.0, "inference with refinement inside the cells / without, CPU, 90,000-image gallery"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["auto", *PROFILES], default="auto",
                    help="sizes: small (CPU: demo encoders at 128 px), full (GPU: ViT-B-16 + ResNet-50 at 224 px), "
                         "quick (tiny); auto = full on a GPU, small otherwise (default auto)")
    ap.add_argument("--quick", action="store_true", help="same as --profile quick")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto (GPU if any)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's own choice)")
    ap.add_argument("--n-images", type=int, default=0, help="JPEG files to build and use (default: the profile's)")
    ap.add_argument("--checkpoint", default="auto",
                    help="predictor checkpoint for the inference figures: auto = the demo book's kept checkpoint "
                         "when its encoders are the profile's, else an untrained one of the same size; or a path")
    ap.add_argument("--out", default="benchmarks/results", help="folder for results JSON, JPEGs, temporary caches")
    ap.add_argument("--record", action="store_true", help="append a dated section to docs/performance.md")
    ap.add_argument("--skip-geocells", action="store_true", help="do not run benchmarks/bench_geocells.py")
    ap.add_argument("--only", choices=["inference"], default=None,
                    help="inference: the encoder bound and batch inference alone (sweep, paired ratio), nothing "
                         "else; a few minutes, for comparing two versions of the predictor (not with --record)")
    args = ap.parse_args(argv)
    if args.only and args.record:
        ap.error("--record needs the whole suite (leave out --only)")
    return args


def _inference_checkpoint(args, profile, model, out: Path) -> Path:
    if args.checkpoint not in ("auto", ""):
        return Path(args.checkpoint)
    demo = bench_inference.demo_checkpoint() if profile.name == "small" else None
    if demo is not None:
        enc = load_checkpoint(demo)["encoders"]
        if (enc["clip_encoder"]["spec"], enc["scene_encoder"]["spec"]) == (profile.clip_spec, profile.scene_spec):
            return demo
    return bench_inference.save_model_checkpoint(model, out / "untrained_checkpoint.pt")


def run(args) -> dict:
    profile = PROFILES["quick" if args.quick else args.profile if args.profile != "auto" else
                       ("full" if pick_device(args.device).type == "cuda" else "small")]
    if args.n_images:
        profile = type(profile)(**{**profile.__dict__, "n_images": args.n_images})
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    out = Path(args.out)
    tmp = out / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"), "profile": profile.__dict__,
           "command": " ".join(["python -m benchmarks.run_all", *_argv(args)]),
           "machine_start": machine_info(device)}
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"machine: {describe_machine(res['machine_start'])}\nprofile {profile.name}: {profile.clip_spec} + "
        f"{profile.scene_spec}, {profile.n_images} JPEGs of {profile.image_size} px")
    table = jpeg_dataset(out / "data", profile.n_images, profile.image_size)
    clip, scene = build_encoders(profile)
    size = view_size(clip, scene)

    b = res["encoder_bound"] = bench_encoders.encoder_bound(clip, scene, size, profile.batch, device, profile.repeats,
                                                            other_batches=profile.bound_batches)
    bound = b["best"]["items_per_s"]
    say(f"[encoder bound] view {size} px, bf16 {b['bf16']}: both encoders at batch {profile.batch} "
        f"{b['both']['items_per_s']:.1f} img/s; by batch: "
        + ", ".join(f"{k} {v['items_per_s']:.1f}" for k, v in b["by_batch"].items())
        + f"; the bound for the ratios is the best, {bound:.1f} img/s (batch {b['best']['batch']})")
    say(f"[encoder bound] layouts at batch {profile.batch}: "
        + "; ".join(f"{k} {b[k]['spec']}: contiguous {b[k]['contiguous']['items_per_s']:.1f}, channels-last "
                    f"{b[k]['channels_last']['items_per_s']:.1f} img/s (library uses {b[k]['library_layout']})"
                    for k in ("clip", "scene")))

    pairs = 1 if profile.name == "quick" else 3
    layouts = {k: b[k]["best_layout"] for k in ("clip", "scene")}

    def reference(batch):  # the encoders alone at the pipeline's batch and at the bound's batch: the faster
        return max(bench_encoders.pair_rate(clip, scene, size, bb, device, 1, layouts, "auto")
                   for bb in sorted({batch, profile.batch}))

    if not args.only:  # feature extraction
        f = res["extraction"] = bench_features.sweep(table, clip, scene, tmp / "cache", device,
                                                     64 if profile.name != "quick" else profile.batch,
                                                     quick=profile.name == "quick")
        for r in f["runs"]:
            say(f"[extraction] batch {r['batch']:4d} workers {r['workers']} threads {r['threads']} "
                f"decode {r['decode']:8s}: {r['items_per_s']:.1f} img/s")
        fb = f["best"]
        f["paired"] = common.paired(lambda: bench_features.extract_once(table, clip, scene, tmp / "cache", fb["batch"],
                                                                        fb["workers"], fb["threads"], device,
                                                                        fb["decode"])["items_per_s"],
                                    lambda: reference(fb["batch"]), pairs)
        res["extraction_ratio"] = f["paired"]["ratio"]
        say(f"[extraction] best setting, timed {pairs}x back to back with the encoders alone: "
            + ", ".join(f"{r['a']:.1f} / {r['b']:.1f}" for r in f["paired"]["pairs"])
            + f" img/s; ratio {res['extraction_ratio']:.2f} of the encoder bound")

    model, data = build_model(profile, table, clip, scene)
    ckpt = _inference_checkpoint(args, profile, model, tmp)
    predictor = bench_inference.GeopakPredictor.from_checkpoint(ckpt, device=device, calibration=None)
    paths = table["image_path"].tolist()
    settings = [(32, 0), (32, 1), (32, 2), (64, 0), (256, 0)] if profile.name != "quick" else [(8, 0)]
    inf = res["inference"] = bench_inference.throughput(predictor, paths, device, settings)
    inf["checkpoint"] = str(ckpt)
    for r in inf["runs"]:
        say(f"[inference] batch {r['batch']:4d} workers {r['workers']}: {r['items_per_s']:.1f} img/s")
    ib = inf["best"]
    inf["paired"] = common.paired(
        lambda: bench_inference.throughput(predictor, paths, device, [(ib["batch"], ib["workers"])])["best"]["items_per_s"],
        lambda: reference(ib["batch"]), pairs)
    res["inference_ratio"] = inf["paired"]["ratio"]
    say(f"[inference] best setting vs the encoders alone, {pairs}x: "
        + ", ".join(f"{r['a']:.1f} / {r['b']:.1f}" for r in inf["paired"]["pairs"])
        + f" img/s; ratio {res['inference_ratio']:.2f} (checkpoint {ckpt})")
    if args.only:
        return _finish(res, out, tmp, device, say)
    if device.type == "cpu":
        lat = res["latency"] = bench_inference.latency(predictor, paths[0], device, 10 if profile.name != "quick" else 2)
        res["latency_s"] = lat["median_s"]
        say(f"[latency] one image on CPU: median {lat['median_s'] * 1000:.0f} ms, max {lat['max_s'] * 1000:.0f} ms")
        n_gallery = 2_000 if profile.name == "quick" else 90_000
        ref = res["refinement"] = bench_refine.refine_pair(predictor, paths, n_gallery, ib["batch"], pairs)
        res["refine_time_ratio"] = ref["time_ratio"]
        say(f"[refinement] {ref['gallery_items']:,}-image gallery ({ref['gallery_mb']} MB) on {ref['cells']} cells, "
            f"refined / plain img/s {pairs}x: " + ", ".join(f"{r['a']:.1f} / {r['b']:.1f}" for r in ref["pairs"])
            + f"; time ratio {ref['time_ratio']:.2f}, the step alone {ref['refine_step_ms_per_image']:.1f} ms/img")

    cache = FeatureCache.build_or_load(table, clip, scene, cache_root=tmp / "train_cache", views=1,
                                       batch_size=fb["batch"], num_workers=fb["workers"], device=device,
                                       progress=False)
    data.cache = cache
    steps1, naive1 = profile.steps * 5, max(2, profile.steps // 5)
    p1 = res["phase1"] = common.paired(
        lambda: bench_train.phase1_cached(model, data, profile.train_batch, steps1, device)["items_per_s"],
        lambda: bench_train.naive(model, data, profile.train_batch, naive1, device, 1)["items_per_s"], pairs)
    res["phase1_speedup"] = p1["ratio"]
    say(f"[phase 1] batch {profile.train_batch}, cached ({steps1} steps) / naive ({naive1} steps), {pairs}x: "
        + ", ".join(f"{r['a']:.0f} / {r['b']:.1f}" for r in p1["pairs"]) + f" img/s; speed-up {p1['ratio']:.1f}x")
    data.cache = None
    steps2 = max(2, profile.steps // 3)
    p2, live = bench_train.phase2(model, data, profile.phase2_batch, steps2, device,
                                  (0, 1, 2) if profile.name != "quick" else (0,), 5 if pairs > 1 else 1)
    res["phase2"] = p2
    res["phase2_data_path_cost"] = p2["data_path_cost"]
    n2 = res["phase2_naive"] = common.paired(
        live, lambda: bench_train.naive(model, data, profile.phase2_batch, max(2, steps2 // 2), device, 2)["items_per_s"],
        pairs)
    res["phase2_speedup"] = n2["ratio"]
    say(f"[phase 2] batch {profile.phase2_batch}, live data path by DataLoader workers: "
        + ", ".join(f"{w}: {r:.1f}" for w, r in p2["live_by_workers"].items())
        + f" img/s; live (workers {p2['best_workers']}) / pre-decoded, {len(p2['paired']['pairs'])}x: "
        + ", ".join(f"{r['a']:.1f} / {r['b']:.1f}" for r in p2["paired"]["pairs"])
        + f" img/s: data path +{100 * p2['data_path_cost']:.0f}%")
    say("[phase 2] ours (live) / naive: " + ", ".join(f"{r['a']:.1f} / {r['b']:.1f}" for r in n2["pairs"])
        + f" img/s; speed-up {n2['ratio']:.2f}x")

    if not args.skip_geocells:
        from . import bench_geocells

        g = bench_geocells.main(["--n", "2000" if profile.name == "quick" else "100000", "--out", str(out)])
        res["geocells"] = {"n": g["n"], "wall_s": g["wall_s"], "n_cells": g["n_cells"]}
    return _finish(res, out, tmp, device, say)


def _finish(res: dict, out: Path, tmp: Path, device, say) -> dict:
    """Machine at the end, targets, the results JSON; the temporary folder removed."""
    res["machine_end"] = machine_info(device)
    res["targets"] = check_targets(res, device)
    say("targets:")
    for name, t in res["targets"].items():
        say(f"  {'MET    ' if t['met'] else 'NOT MET'} {t['what']}: {t['value']} (target {t['op']} {t['threshold']})")
    stamp = res["date"].replace(":", "").replace("-", "")
    path = out / f"run_{res['profile']['name']}_{stamp}.json"
    path.write_text(json.dumps(res, indent=1))
    say(f"wrote {path}; load average at the end {res['machine_end']['loadavg'][0]:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def _argv(args) -> list:
    return getattr(args, "_argv", [])


def check_targets(res: dict, device) -> dict:
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        if name not in res:
            continue
        v = res[name]
        out[name] = {"value": v, "op": op, "threshold": threshold, "what": what,
                     "met": bool(v >= threshold if op == ">=" else v < threshold)}
    return out


def _pairs(p: dict, fmt: str = ".1f") -> str:
    return ", ".join(f"{r['a']:{fmt}} / {r['b']:{fmt}}" for r in p["pairs"])


def markdown(res: dict) -> str:
    """A dated section for docs/performance.md: machine, figures, targets, command."""
    m0, m1 = res["machine_start"], res["machine_end"]
    b, f, inf, p2 = res["encoder_bound"], res["extraction"], res["inference"], res["phase2"]
    fb, ib = f["best"], inf["best"]
    lines = [f"## {res['date'][:10]}: benchmark suite, profile {res['profile']['name']} ({res['date'][11:16]})", "",
             f"Machine: {describe_machine(m0)} at the start, {m1['loadavg'][0]:.2f} at the end. "
             f"Command: `{res['command']}`. Ratios are medians of measurements taken back to back "
             "(pipeline / reference, img/s, listed).", "",
             "| figure | value |", "| --- | --- |",
             f"| encoder bound, both encoders, batch {b['batch']} | {b['both']['items_per_s']:.1f} img/s "
             f"(clip {b['clip']['best_layout']}, scene {b['scene']['best_layout']}) |",
             "| encoder bound by batch | " + ", ".join(f"{k}: {v['items_per_s']:.1f}" for k, v in b["by_batch"].items())
             + " img/s |",
             "| feature extraction sweep (batch, workers, threads, decode: img/s) | "
             + "; ".join(f"{r['batch']}, {r['workers']}, {r['threads']}, {r['decode']}: {r['items_per_s']:.1f}"
                         for r in f["runs"]) + " |",
             f"| feature extraction, chosen setting ({fb['batch']}, {fb['workers']}, {fb['threads']}, {fb['decode']}) "
             f"/ encoders alone | {_pairs(f['paired'])} img/s |",
             "| batch inference sweep (batch, workers: img/s) | "
             + "; ".join(f"{r['batch']}, {r['workers']}: {r['items_per_s']:.1f}" for r in inf["runs"]) + " |",
             f"| batch inference, chosen setting ({ib['batch']}, {ib['workers']}) / encoders alone | "
             f"{_pairs(inf['paired'])} img/s |"]
    if "latency" in res:
        lines.append(f"| single-image latency of the predictor (CPU), model loaded | median "
                     f"{1000 * res['latency']['median_s']:.0f} ms, max {1000 * res['latency']['max_s']:.0f} ms |")
    lines += [f"| phase 1, batch {res['profile']['train_batch']}: on the cache / naive | {_pairs(res['phase1'], '.0f')} "
              "img/s |",
              f"| phase 2, batch {p2['batch']}: live data path by DataLoader workers | "
              + ", ".join(f"{w}: {r:.1f}" for w, r in p2["live_by_workers"].items()) + " img/s |",
              f"| phase 2: live (workers {p2['best_workers']}) / pre-decoded | {_pairs(p2['paired'])} img/s |",
              f"| phase 2: ours (live) / naive | {_pairs(res['phase2_naive'])} img/s "
              f"(speed-up {res['phase2_speedup']:.2f}x) |"]
    if "refinement" in res:
        r = res["refinement"]
        lines.append(f"| inference refined / plain, {r['gallery_items']:,}-image gallery ({r['gallery_mb']} MB, "
                     f"{r['cells']} cells) | {_pairs(r)} img/s; refinement step alone "
                     f"{r['refine_step_ms_per_image']:.1f} ms/img |")
    if "geocells" in res:
        g = res["geocells"]
        lines.append(f"| geocells (HDBSCAN), {g['n']:,} points | {g['wall_s']:.1f} s, {g['n_cells']} cells |")
    lines += ["", "| target | value | met |", "| --- | --- | --- |"]
    lines += [f"| {t['what']} {t['op']} {t['threshold']} | {t['value']} | {'yes' if t['met'] else '**no**'} |"
              for t in res["targets"].values()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weight warnings: expected; the figures are about speed
        res = run(args)
    if args.record:
        doc = Path("docs/performance.md")
        doc.write_text(doc.read_text().rstrip("\n") + "\n\n" + markdown(res))
        print(f"appended to {doc}")
    return res


if __name__ == "__main__":
    main()
