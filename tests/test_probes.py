"""Zero-shot text probes on a tiny open_clip model built here (no download): scores are CLIP's own
cosine similarities, and a probe is switched off with a message on random weights."""

import json

import open_clip
import pytest
import torch

from geopak_lib.model.encoders import build_encoder, preprocess_batch
from geopak_lib.model.probes import build_text_probes, probe_prompts, probes_off_reason, weights_file
from geopak_lib.training.checkpoints import encoder_info

TINY = "geopak-tiny-probe"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny CLIP (both towers) registered with open_clip and saved as a plain state dict."""
    d = tmp_path_factory.mktemp("tinyclip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY, pretrained=None)
    path = d / "tiny.pt"
    torch.save(clip.state_dict(), path)
    return path


def test_scores_are_clip_cosine_similarities(tiny_weights):
    enc = build_encoder(f"open_clip:{TINY}:none@32", weights=str(tiny_weights))
    assert weights_file(enc.weight_status) == str(tiny_weights)
    probes, msg = build_text_probes(encoder_info(enc))
    assert probes is not None and msg.startswith("text probes on")
    images = torch.rand(3, 3, 32, 32)
    x = preprocess_batch(images, enc.preprocess)
    with torch.no_grad():
        got = probes.scores(enc(x))
        # independently: open_clip's whole model, image and text towers with their projections
        clip = open_clip.create_model(TINY, pretrained=str(tiny_weights)).eval()
        img = clip.encode_image(x, normalize=True)
        txt = clip.encode_text(open_clip.get_tokenizer(TINY)(probe_prompts()), normalize=True)
    assert got.shape == (3, len(probe_prompts()))
    torch.testing.assert_close(got, img @ txt.T, atol=1e-5, rtol=1e-5)
    assert float(got.abs().max()) <= 1.0 + 1e-6


def test_prompt_equal_to_an_image_embedding_scores_highest_for_it(tiny_weights):
    enc = build_encoder(f"open_clip:{TINY}:none@32", weights=str(tiny_weights))
    probes, _ = build_text_probes(encoder_info(enc))
    with torch.no_grad():
        pooled = enc(preprocess_batch(torch.rand(4, 3, 32, 32), enc.preprocess))
        target = pooled[2] @ probes.projection  # image 2 in the joint space
    probes.text_features[5] = target / target.norm()
    s = probes.scores(pooled)
    assert int(s[:, 5].argmax()) == 2 and abs(float(s[2, 5]) - 1.0) < 1e-5
    assert int(s[2].argmax()) == 5
    top = probes.top(pooled[2:3], k=2)[0]
    assert top[0][0] == probe_prompts()[5].removeprefix("a photo of ") and abs(top[0][1] - 1.0) < 1e-5


def test_random_or_missing_weights_switch_the_probes_off(tiny_weights, tmp_path):
    rand = build_encoder(f"open_clip:{TINY}:none@32")
    probes, msg = build_text_probes(encoder_info(rand))
    assert probes is None and "random weights" in msg and TINY in msg
    gone = {"spec": f"open_clip:{TINY}:none@32", "weight_status": f"file:{tmp_path}/gone.pt sha256=00", "is_random": False}
    probes, msg = build_text_probes(gone)
    assert probes is None and "gone.pt" in msg and "not on this machine" in msg
    assert "no text tower" in probes_off_reason({"spec": "timm:resnet18", "weight_status": "x", "is_random": False})
    assert probes_off_reason(None) == "text probes off: the model has no CLIP encoder"


def test_predictor_reports_probe_scores_of_its_own_clip_features(tiny_weights, tmp_path):
    """A checkpoint whose CLIP slot is the tiny CLIP loaded from a file: the predictor switches the
    probes on, and its scores are open_clip's own image-text similarities for the same view."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from geopak_lib.data.augment import clean_transform
    from geopak_lib.inference.predictor import GeopakPredictor
    from geopak_lib.training.cache import encoder_input
    from geopak_lib.model.geopak import GeopakModel, ModelConfig
    from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint

    clip = build_encoder(f"open_clip:{TINY}:none@32", weights=str(tiny_weights))
    scene = build_encoder("timm:tf_efficientnet_lite0@32")
    cells = pd.DataFrame({"cell_id": [0, 1], "province_id": [0, 1], "center_lat": [25.0, 31.5],
                          "center_lon": [68.0, 73.0], "radius_km": [30.0, 40.0], "neighbor_cell_ids": [[], []]})
    cfg = ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim, fused_dim=8, province_hidden=8, cell_hidden=8,
                      small_cell_hidden=8, offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2)
    path = tmp_path / "run" / "checkpoints" / "phase1" / "best.pt"
    save_checkpoint(checkpoint_state(GeopakModel(cfg, cells, clip, scene), None, None, {"phase": 1}, epoch=1,
                                     metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)
    img = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)

    pred = GeopakPredictor.from_checkpoint(path, device="cpu", refine=False)
    assert pred.info["probes"].startswith("text probes on")
    r = pred.predict(img)
    view = clean_transform(pred.image_size)(Image.open(img).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        full = open_clip.create_model(TINY, pretrained=str(tiny_weights)).eval()
        sims = (full.encode_image(encoder_input(view, clip.preprocess), normalize=True)
                @ full.encode_text(open_clip.get_tokenizer(TINY)(probe_prompts()), normalize=True).T)[0]
    best = sims.argsort(descending=True)[:3]
    assert [c for c, _ in r["probes"]] == [probe_prompts()[int(j)].removeprefix("a photo of ") for j in best]
    assert [s for _, s in r["probes"]] == pytest.approx(sims[best].tolist(), abs=1e-5)
    off = pred.with_probes(False).predict(img)
    assert off["probes"] == [] and pred.info["probes"] == "text probes off (not asked for)"
