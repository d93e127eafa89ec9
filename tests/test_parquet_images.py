"""A Hugging Face style Parquet (image = struct {bytes, path}) is validated and read without unpacking
the images to files: validation, the feature cache and the predictor's loader see the same bytes."""

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.book.demo import build_demo_dataset
from geopak_lib.data.augment import jpeg_bytes_or_view
from geopak_lib.data.embedded import EMBEDDED_COLUMN, is_embedded, read_embedded
from geopak_lib.data.images import ImageLoadError, load_rgb, read_image_bytes
from geopak_lib.data.validate import read_table, validate_dataset
from geopak_lib.inference.outputs import ImageFiles

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A smoke-sized slice of the demo data (16 JPEGs) and the same rows as an HF Parquet."""
    root = tmp_path_factory.mktemp("hf")
    csv = build_demo_dataset(root / "demo", n_images=16, image_size=64)
    table = pd.read_csv(csv)
    blobs = [(root / "demo" / "images" / name).read_bytes() for name in table["image"]]
    images = [{"bytes": b, "path": name} for b, name in zip(blobs, table["image"])]
    images[3] = {"bytes": b"not a jpeg at all", "path": "broken.jpg"}  # unreadable -> rejected
    images[5] = {"bytes": None, "path": None}  # no bytes, no path -> image_missing
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrow = pa.table({"id": table["id"], "image": pa.array(images, type=struct),
                      "latitude": table["latitude"], "longitude": table["longitude"],
                      "province": table["province"]})
    parquet = root / "train.parquet"
    pq.write_table(arrow, parquet, row_group_size=5)  # several row groups: rows 0-4, 5-9, ...
    return {"csv": csv, "images": root / "demo" / "images", "parquet": parquet, "blobs": blobs, "root": root}


def test_read_table_keeps_names_and_references_not_bytes(demo):
    df = read_table(demo["parquet"])
    assert df["image"].iloc[0] == "pk000000.jpg" and pd.isna(df["image"].iloc[5])
    refs = df[EMBEDDED_COLUMN].tolist()
    assert not is_embedded(refs[5]) and all(is_embedded(r) for i, r in enumerate(refs) if i != 5)
    assert not any(isinstance(v, (bytes, dict)) for v in df.to_numpy().ravel())  # no bytes in the frame
    assert read_embedded(refs[12]) == demo["blobs"][12]  # row 12 lies in the third row group


def test_validate_parquet_matches_validate_csv(demo):
    from_csv = validate_dataset(demo["csv"], demo["images"], progress=False).manifest.set_index("id")
    result = validate_dataset(demo["parquet"], None, progress=False)
    manifest = result.manifest.set_index("id")
    assert sorted(result.rejects["id"]) == ["pk000003", "pk000005"]
    assert dict(zip(result.rejects["id"], result.rejects["reason"])) == {
        "pk000003": "image_unreadable", "pk000005": "image_missing"}
    assert len(manifest) == 14
    want = from_csv.loc[manifest.index]
    for col in ("width", "height", "sha1", "phash", "latitude", "longitude", "province"):
        assert manifest[col].tolist() == want[col].tolist(), col
    assert manifest.loc["pk000007", "sha1"] == hashlib.sha1(demo["blobs"][7]).hexdigest()
    assert all(is_embedded(p) for p in manifest["image_path"])


def test_one_reader_for_files_and_embedded_bytes(demo):
    manifest = validate_dataset(demo["parquet"], None, progress=False).manifest
    ref = manifest["image_path"].iloc[0]
    file = demo["images"] / manifest["image"].iloc[0]
    assert read_image_bytes(ref) == file.read_bytes()
    assert np.array_equal(np.asarray(load_rgb(ref)), np.asarray(load_rgb(file)))
    # the device-decode path gets the JPEG bytes, as it does for a file
    assert torch.equal(jpeg_bytes_or_view(ref, 32), jpeg_bytes_or_view(file, 32))
    # the predictor's dataset (evaluation, predict) reads references like paths
    _, view, error = ImageFiles([ref], 32)[0]
    assert error == "" and view.shape == (3, 32, 32)
    with pytest.raises(ImageLoadError, match="past the end"):
        read_image_bytes(ref.replace("parquet:0:", "parquet:99:"))


def test_feature_cache_builds_from_embedded_bytes(demo, tmp_path):
    from geopak_lib.training.cache import FeatureCache

    class Tiny(torch.nn.Module):
        def __init__(self, dim, spec):
            super().__init__()
            torch.manual_seed(dim)
            self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, dim))
            self.dim, self.spec, self.weight_status, self.is_random = dim, spec, "random init (test)", True
            from geopak_lib.model.encoders import Preprocess
            self.preprocess = Preprocess(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)

        def forward(self, x):
            return self.net(x)

    emb = validate_dataset(demo["parquet"], None, progress=False).manifest
    files = validate_dataset(demo["csv"], demo["images"], progress=False).manifest
    files = files.set_index("id").loc[emb["id"]].reset_index()
    split = ["train" if i < 10 else "test" for i in range(len(emb))]
    feats = []
    for m, root in ((emb, "a"), (files, "b")):
        m = m.assign(split=split)
        cache = FeatureCache.build_or_load(m, Tiny(5, "tiny:c"), Tiny(4, "tiny:s"), cache_root=tmp_path / root,
                                           views=1, batch_size=4, chunk_batches=1, device="cpu", progress=False)
        feats.append(cache.gather(list(range(len(m)))))
    assert torch.allclose(feats[0][0], feats[1][0]) and torch.allclose(feats[0][1], feats[1][1])


def test_cli_validate_parquet_without_images_folder(demo, tmp_path):
    out = tmp_path / "v"
    proc = subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", "validate", str(demo["parquet"]),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # two rows rejected
    assert "Traceback" not in proc.stderr
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 14 and manifest["image_path"].str.startswith("parquet:").all()


def test_csv_without_images_folder_is_one_line(demo, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", "validate", str(demo["csv"]),
                           "--out", str(tmp_path / "v")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--images" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_00_description_fits_the_data(demo, tmp_path):
    from geopak_lib.data.describe import DEMO_CAVEAT, dataset_description

    on_demo = validate_dataset(demo["csv"], demo["images"], progress=False)
    text = dataset_description(on_demo.manifest, demo["csv"], n_input=on_demo.n_input)
    assert DEMO_CAVEAT in text and "16 rows, of which 16 are valid" in text and "16 JPG" in text
    assert "median 64 x 64 pixels" in text
    # the same images as a user's Parquet: no demo caveat, formats say where the bytes are
    own = validate_dataset(demo["parquet"], None, progress=False)
    text = dataset_description(own.manifest, demo["parquet"], n_input=own.n_input)
    assert "aerial" not in text and "demo" not in text.lower()
    assert "`train.parquet`, 16 rows, of which 14 are valid" in text and "14 embedded in the Parquet table" in text
    m = own.manifest
    assert f"latitude {m['latitude'].min():.2f} to {m['latitude'].max():.2f}" in text
    n_prov = m["province"].nunique()
    assert f"provinces: {n_prov} of 7" in text


def test_00_prose_names_the_demo_only_in_generated_text():
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "00_data_audit.ipynb").read_text())
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "aerial" not in prose and "Blue Marble" not in prose
    assert any("describe.dataset_description" in "".join(c["source"]) for c in nb["cells"])


def test_skip_images_checks_embedded_bytes_without_decoding(demo):
    result = validate_dataset(demo["parquet"], None, check_images=False, progress=False)
    # broken bytes are only caught by decoding; missing bytes are caught without it
    assert dict(zip(result.rejects["id"], result.rejects["reason"])) == {"pk000005": "image_missing"}
    assert len(result.manifest) == 15 and result.manifest["sha1"].isna().all()


def test_a_file_that_is_not_parquet_is_one_line(tmp_path):
    fake = tmp_path / "data.parquet"
    fake.write_text("id,image\n")
    rc = subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", "validate", str(fake), "--out",
                         str(tmp_path / "v")], capture_output=True, text=True)
    assert rc.returncode == 2 and "cannot be read as a Parquet table" in rc.stderr
    assert len(rc.stderr.strip().splitlines()) == 1
