"""A multi-view set for the demo: several images of the same point, to measure what several photos
of one place buy (``GeopakPredictor.predict_group``).

For each chosen point of the validation and test splits, view 0 is the point's own demo image and
views 1..n-1 are new crops at the same point, drawn like the demo's own images
(``demo.sample_views``: another raster or blend, another window size and shift, and the demo's
share of scenery-poor views). Only val/test points get views (validation chooses how to combine
them, test reports), and at most ``max_points`` per split, to keep the book's cost small: the
extra images are rendered and encoded once, in 06. Decisions: docs/decisions/ensemble.md.

Layout of ``out_dir`` (in the run folder): ``views/<id>_v<k>.jpg`` and ``multiview.csv`` with
group (the sample id), view, image_path, latitude, longitude, province, province_id, split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.book import demo
from geopak_lib.utils import atomic_write_bytes, safe_child

VIEWS_FILE = "multiview.csv"
COLUMNS = ["group", "view", "image_path", "latitude", "longitude", "province", "province_id", "split"]


def demo_stamp(manifest: pd.DataFrame) -> dict | None:
    """The demo builder's stamp of the dataset the manifest's images come from, or None when the
    images are not a demo build (extra views need the demo's rasters and points)."""
    folder = Path(manifest["image_path"].iloc[0]).parent.parent
    try:
        stamp = json.loads((folder / demo.STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stamp if stamp.get("builder") == demo.__name__ else None


def choose_points(manifest: pd.DataFrame, splits=("val", "test"), max_points: int = 200, seed: int = 0):
    """Up to max_points rows per split, a seeded random choice, in manifest order."""
    rng = np.random.default_rng([seed, 4])
    keep = []
    for s in splits:
        rows = np.flatnonzero(manifest["split"].to_numpy() == s)
        keep += sorted(rng.choice(rows, size=min(max_points, len(rows)), replace=False).tolist())
    return manifest.iloc[sorted(keep)].reset_index(drop=True)


def build_multiview_set(manifest: pd.DataFrame, out_dir, *, n_views: int = 4, max_points: int = 200,
                        seed: int = 0, splits=("val", "test")) -> pd.DataFrame:
    """Write (or reuse) the multi-view set; -> its table (COLUMNS, n_views rows per point, view 0 = the
    point's own image). Raises ValueError when the manifest's images are not a demo build."""
    stamp = demo_stamp(manifest)
    if stamp is None:
        raise ValueError("extra views can only be cut for the built-in demo dataset (its images are crops of "
                         "rasters at known points); set multiview_views = 0 for your own photos")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    out = Path(out_dir)
    params = {"n_views": n_views, "max_points": max_points, "seed": seed, "splits": list(splits),
              "demo": {k: stamp.get(k) for k in ("samples_sha1", "image_size", "poor_share", "region_km")}}
    try:
        if json.loads((out / "params.json").read_text()) == params:
            return pd.read_csv(out / VIEWS_FILE, dtype={"group": str})
    except (OSError, ValueError):
        pass
    (out / "params.json").unlink(missing_ok=True)  # first: an interrupted build must never look complete
    (out / "views").mkdir(parents=True, exist_ok=True)
    points = choose_points(manifest, splits, max_points, seed)
    extra = demo.sample_views(len(points) * (n_views - 1), seed + 1, stamp["poor_share"])
    # each extra view stays inside its point's region too, so a test place's views share no training ground
    extra = demo.fit_windows(np.repeat(points["latitude"].to_numpy(), n_views - 1),
                             np.repeat(points["longitude"].to_numpy(), n_views - 1), extra,
                             float(stamp.get("region_km", demo.REGION_KM)))
    rows = []
    for i, p in enumerate(points.itertuples()):
        rows.append({"group": p.id, "view": 0, "image_path": p.image_path})
        for k in range(1, n_views):
            j = i * (n_views - 1) + k - 1
            img = demo.render_image(p.latitude, p.longitude, extra.iloc[j], int(stamp["image_size"]),
                                    rng=np.random.default_rng([seed, 5, j]))
            path = safe_child(out / "views", p.id, f"_v{k}.jpg")  # the id is data: never a path
            img.save(path, "JPEG", quality=demo.JPEG_QUALITY)
            rows.append({"group": p.id, "view": k, "image_path": str(path)})
    table = pd.DataFrame(rows).merge(points.rename(columns={"id": "group"})[
        ["group", "latitude", "longitude", "province", "province_id", "split"]], on="group", how="left")[COLUMNS]
    atomic_write_bytes(out / VIEWS_FILE, table.to_csv(index=False).encode())
    atomic_write_bytes(out / "params.json", json.dumps(params, indent=1).encode())  # last
    return table
