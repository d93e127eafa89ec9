"""Several photos of one place: the combining maths by hand, GeopakPredictor.predict_group, and
`geopak predict --group-by folder|COLUMN` end to end (bad files, failed places, user mistakes)."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geopak_lib.book import cli
from geopak_lib.data.places import name_places
from geopak_lib.inference.groups import features_group_outputs, group_mean, merge_group_outputs
from geopak_lib.inference.outputs import merge_view_outputs
from geopak_lib.inference.predictor import GeopakPredictor


def test_group_mean_and_merge_by_hand():
    t = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0]])
    assert group_mean(t, torch.tensor([0, 0, 1]), 2).tolist() == [[2.0, 4.0], [10.0, 0.0]]
    with pytest.raises(ValueError, match="no rows"):
        group_mean(t, torch.tensor([0, 0, 2]), 3)
    a = {"province_logits": torch.log(torch.tensor([[0.2, 0.8]])),
         "geocell_logits": {0: torch.log(torch.tensor([[0.5, 0.5]]))},
         "fused": torch.ones(1, 3), "alpha": torch.tensor([0.2]), "aux_latlon": torch.tensor([[30.0, 70.0]])}
    b = {"province_logits": torch.log(torch.tensor([[0.6, 0.4]])),
         "geocell_logits": {0: torch.log(torch.tensor([[0.9, 0.1]]))},
         "fused": torch.zeros(1, 3), "alpha": torch.tensor([0.6]), "aux_latlon": torch.tensor([[32.0, 72.0]])}
    both = {k: ({p: torch.cat([a[k][p], b[k][p]]) for p in a[k]} if isinstance(a[k], dict) else torch.cat([a[k], b[k]]))
            for k in a}
    m = merge_group_outputs(both, torch.tensor([0, 0]), 1)
    assert torch.softmax(m["province_logits"], -1).tolist()[0] == pytest.approx([0.4, 0.6])
    assert torch.softmax(m["geocell_logits"][0], -1).tolist()[0] == pytest.approx([0.7, 0.3])
    tta = merge_view_outputs([a, b])  # the same probabilities as TTA's merge
    assert torch.allclose(m["province_logits"], tta["province_logits"])
    assert m["fused"].tolist() == [[0.5] * 3] and m["alpha"].tolist() == pytest.approx([0.4])
    assert m["aux_latlon"].tolist() == [[31.0, 71.0]]


def test_one_view_groups_equal_the_plain_forward(ckpt):  # noqa: F811
    _, model = ckpt
    torch.manual_seed(0)
    clip, scene = torch.randn(3, 6), torch.randn(3, 5)
    plain = model.forward_features(clip, scene)
    for combine in ("embedding", "probs"):
        out = features_group_outputs(model, clip, scene, torch.arange(3), n_groups=3, combine=combine)
        assert torch.allclose(torch.softmax(out["province_logits"], -1), torch.softmax(plain["province_logits"], -1),
                              atol=1e-6)
        assert torch.allclose(out["fused"], plain["fused"], atol=1e-6)
    emb = features_group_outputs(model, clip, scene, torch.zeros(3, dtype=torch.long), n_groups=1, combine="embedding")
    want = model.forward_features(clip.mean(0, keepdim=True), scene.mean(0, keepdim=True))
    assert torch.allclose(emb["province_logits"], want["province_logits"])
    with pytest.raises(ValueError, match="combine must be"):
        features_group_outputs(model, clip, scene, torch.arange(3), n_groups=3, combine="vote")


def write_places(root):
    rng = np.random.default_rng(1)
    img = lambda: Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))  # noqa: E731
    for place, names in {"karachi": ["1.jpg", "2.png"], "lahore": ["a.jpg", "deeper/b.jpg", "broken.jpg"],
                         "nowhere": ["bad.jpg"]}.items():
        for n in names:
            (root / place / n).parent.mkdir(parents=True, exist_ok=True)
            if n.startswith(("broken", "bad")):
                (root / place / n).write_text("not an image")
            else:
                img().save(root / place / n)
    (root / "empty_place").mkdir()


def test_predict_group(ckpt, tmp_path):  # noqa: F811
    path, _ = ckpt
    write_places(tmp_path)
    pred = GeopakPredictor.from_checkpoint(path, device="cpu")
    one = tmp_path / "karachi" / "1.jpg"
    single = pred.predict(one)
    for combine in ("embedding", "probs"):  # the same photo twice is that photo
        r = pred.predict_group([one, Image.open(one)], combine)
        assert r["lat"] == pytest.approx(single["lat"], abs=1e-4) and r["n_images"] == 2 and r["failed"] == {}
    good = [tmp_path / "lahore" / "a.jpg", tmp_path / "lahore" / "deeper" / "b.jpg"]
    r = pred.predict_group([*good, tmp_path / "lahore" / "broken.jpg"])
    assert r["n_images"] == 2 and list(r["failed"]) == [str(tmp_path / "lahore" / "broken.jpg")]
    assert r["lat"] == pytest.approx(pred.predict_group(good)["lat"])  # predicted from the rest
    with pytest.raises(ValueError, match="none of the 1 images"):
        pred.predict_group([tmp_path / "nowhere" / "bad.jpg"])
    tta = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True).predict_group(good, "probs")
    assert tta["n_images"] == 2 and np.isfinite(tta["lat"])  # every photo's TTA views join the group


def test_cli_group_by_folder(ckpt, tmp_path, capsys):  # noqa: F811
    path, _ = ckpt
    write_places(tmp_path / "places")
    out = tmp_path / "places.csv"
    code = cli.main(["predict", str(tmp_path / "places"), "--group-by", "folder", "--checkpoint", str(path),
                     "--out", str(out), "--no-progress", "--device", "cpu", "--top", "2"])
    assert code == 1  # one place failed, one lost a file
    t = pd.read_csv(out, keep_default_na=False).set_index("group")
    assert sorted(t.index) == sorted(str(tmp_path / "places" / p) for p in ("karachi", "lahore", "nowhere"))
    row = lambda p: t.loc[str(tmp_path / "places" / p)]  # noqa: E731
    assert row("karachi")["n_images"] == 2 and row("karachi")["error"] == "" and row("karachi")["failed_images"] == ""
    assert row("lahore")["n_images"] == 2 and "broken.jpg" in row("lahore")["failed_images"]
    assert row("nowhere")["error"].startswith("none of the 1 images") and row("nowhere")["lat"] == ""
    assert 20 < float(row("karachi")["lat"]) < 40 and "hyp2_weight" in t.columns
    # a place is named like a single image: the place names of its own predicted point, and the concept columns
    named = name_places(np.array([float(row("karachi")["lat"])]), np.array([float(row("karachi")["lon"])]))
    assert (row("karachi")["place"], row("karachi")["district"]) == (named.at[0, "place"], named.at[0, "district"])
    assert {"place_province", "place_km", "climate", "climate_p", "land_cover", "land_cover_p"} <= set(t.columns)
    assert "1 place(s) could not be predicted" in capsys.readouterr().err
    code = cli.main(["predict", str(tmp_path / "places" / "karachi"), "--group-by", "folder", "--checkpoint",
                     str(path), "--out", str(out), "--no-progress"])  # loose files of a folder: one place
    assert code == 0 and len(pd.read_csv(out)) == 1


def test_cli_group_by_column_and_user_mistakes(ckpt, tmp_path, capsys):  # noqa: F811
    path, _ = ckpt
    write_places(tmp_path)
    listing = tmp_path / "photos.csv"
    pd.DataFrame({"image": ["karachi/1.jpg", "karachi/2.png", str(tmp_path / "lahore" / "a.jpg")],
                  "site": ["K", "K", "L"]}).to_csv(listing, index=False)
    out = tmp_path / "sites.csv"
    args = ["--checkpoint", str(path), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert cli.main(["predict", str(listing), "--group-by", "site", *args]) == 0
    t = pd.read_csv(out, keep_default_na=False)
    assert t["group"].tolist() == ["K", "L"] and t["n_images"].tolist() == [2, 1]
    capsys.readouterr()
    mistakes = {("predict", str(tmp_path / "karachi"), "--group-by", "site"): "needs exactly one CSV",
                ("predict", str(listing), "--group-by", "town"): "has no column 'town'",
                ("predict", str(tmp_path / "karachi" / "1.jpg"), "--group-by", "folder"): "is not a folder",
                ("predict", str(tmp_path / "empty_place"), "--group-by", "folder"): "no image files"}
    for argv, msg in mistakes.items():
        assert cli.main([*argv, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
