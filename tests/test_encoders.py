"""Encoders: specs, weight loading and conversion, random fallback, preprocessing, unfreezing.

Parameter counts are worked out by hand from the layer shapes (formulas below), not read from
the modules; weight conversions are checked tensor by tensor against the source, and the
EfficientNet-Lite0 conversion by classifying photos that scikit-image ships.
"""

import hashlib
import time

import huggingface_hub.constants
import open_clip
import pytest
import timm
import torch
import torchvision
from skimage import data as skdata

from geopak_lib.model.encoders import (
    LITE0_STATUS, Preprocess, RandomWeightsWarning, build_encoder, count_trainable, encoder_blocks, encoder_head,
    load_lite0_package, match_in_order, parse_spec, preprocess_batch, set_trainable_top_fraction)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vit_block_params(width, mlp):
    """One pre-norm transformer block: 2 LayerNorms, qkv + out projection, 2-layer MLP (with biases)."""
    return 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width) + (width * mlp + mlp) + (
        mlp * width + width)


def bottleneck_params(inp, planes, downsample):
    """ResNet bottleneck: 1×1, 3×3, 1×1 (×4) convs without bias, a BatchNorm (2/channel) after each."""
    n = inp * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * 4 * planes + 2 * 4 * planes
    return n + (inp * 4 * planes + 2 * 4 * planes if downsample else 0)


def inverted_residual_params(inp, mid, out, k):
    """EfficientNet-Lite block (no squeeze-excite): 1×1 expand, k×k depthwise, 1×1 project, BN after each."""
    return inp * mid + 2 * mid + k * k * mid + 2 * mid + mid * out + 2 * out


def vit_tower_params(vision_cfg):
    """open_clip ViT visual tower without its projection: patch conv (no bias), class token,
    positional embedding (1 + grid²), ln_pre, the blocks, ln_post."""
    width, layers, patch, side = (vision_cfg[k] for k in ("width", "layers", "patch_size", "image_size"))
    tokens = 1 + (side // patch) ** 2
    mlp = int(width * vision_cfg.get("mlp_ratio", 4.0))
    return 3 * patch * patch * width + width + tokens * width + 2 * width + layers * vit_block_params(width, mlp) + (
        2 * width)


def resnet50_params():
    """Stem (7×7 conv, BN) and 3-4-6-3 bottlenecks, the first of each stage with a downsample; no fc."""
    n, inp = 7 * 7 * 3 * 64 + 2 * 64, 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        n += bottleneck_params(inp, planes, True) + (blocks - 1) * bottleneck_params(4 * planes, planes, False)
        inp = 4 * planes
    return n


def lite0_params():
    """EfficientNet-Lite0 (stages: kernel, expansion, out channels, repeats), stem 3→32, head 320→1280;
    the first block is depthwise-separable (3×3 depthwise, 1×1 project); no classifier."""
    n = 3 * 3 * 3 * 32 + 2 * 32 + (9 * 32 + 2 * 32 + 32 * 16 + 2 * 16)
    inp = 16
    for k, e, out, repeats in ((3, 6, 24, 2), (5, 6, 40, 2), (3, 6, 80, 3), (5, 6, 112, 3), (5, 6, 192, 4),
                               (3, 6, 320, 1)):
        for _ in range(repeats):
            n, inp = n + inverted_residual_params(inp, inp * e, out, k), out
    return n + 320 * 1280 + 2 * 1280


RESNET50_PARAMS = resnet50_params()  # 25,557,032 with its 1000-class fc (2048 × 1000 + 1000)
LITE0_PARAMS = lite0_params()  # 4,652,008 with its 1000-class classifier (1280 × 1000 + 1000)
VIT_B16_BLOCK = vit_block_params(768, 3072)
VIT_B16_PARAMS = 3 * 16 * 16 * 768 + 768 + 197 * 768 + 2 * 768 + 12 * VIT_B16_BLOCK + 2 * 768  # proj removed


@pytest.fixture(scope="module")
def vit_b16():
    with pytest.warns(RandomWeightsWarning):
        return build_encoder("open_clip:ViT-B-16:none")


@pytest.fixture(scope="module")
def resnet50():
    with pytest.warns(RandomWeightsWarning):
        return build_encoder("timm:resnet50")


def test_parse_spec():
    assert parse_spec("open_clip:ViT-B-16:openai") == ("open_clip", "ViT-B-16", "openai", None)
    assert parse_spec("open_clip:ViT-S-32:none@128") == ("open_clip", "ViT-S-32", "none", 128)
    assert parse_spec("timm:resnet50") == ("timm", "resnet50", None, None)
    assert parse_spec("timm:resnet50:weights/resnet50_places365.pth.tar@160")[2:] == (
        "weights/resnet50_places365.pth.tar", 160)
    for bad in ("clip:ViT-B-16", "open_clip", "timm:resnet50@big", "timm:resnet50:none@big", "timm::none",
                "open_clip:ViT-B-16:openai@", ""):
        with pytest.raises(ValueError, match="not understood"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="@0 must be a positive"):
        parse_spec("timm:resnet50@0")


def test_bad_models_sources_and_sizes_are_named():
    with pytest.raises(ValueError, match=r"no model 'resnet05'.*'resnet50'"):
        build_encoder("timm:resnet05")
    with pytest.raises(ValueError, match=r"no model 'ViT-B-61'.*'ViT-B-16'"):
        build_encoder("open_clip:ViT-B-61:none")
    with pytest.raises(ValueError, match="source 'imagenet' not understood"):
        build_encoder("timm:resnet18:imagenet")
    # 100 px is not a whole number of 32-px patches: the last 4 columns and rows would be dropped
    with pytest.raises(ValueError, match="patch size 32; use @128 or @96"):
        build_encoder("open_clip:ViT-S-32:none@100")


def test_open_clip_vit_b16_offline_random(vit_b16):
    enc = vit_b16
    assert enc.is_random and enc.weight_status.startswith("random")
    vision_cfg = open_clip.get_model_config("ViT-B-16")["vision_cfg"]  # width 768, 12 layers, 16-px patches
    assert vit_tower_params(vision_cfg) == VIT_B16_PARAMS
    # timm's published vit_base_patch16_224 has 86,567,656 with its 1000-class head; CLIP's tower has
    # no such head, a bias-free patch conv and one more LayerNorm (ln_pre)
    assert VIT_B16_PARAMS == 86_567_656 - (768 * 1000 + 1000) - 768 + 2 * 768
    assert enc.dim == 768 and sum(p.numel() for p in enc.parameters()) == VIT_B16_PARAMS
    assert enc.preprocess == Preprocess(224, CLIP_MEAN, CLIP_STD, "bicubic")
    assert not enc.training and count_trainable(enc) == 0  # built frozen (spec 000 §2.1.1)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 224, 224)).shape == (1, 768)


def test_open_clip_tag_without_network_falls_back_quickly(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    start = time.perf_counter()
    with pytest.warns(RandomWeightsWarning, match="openai"):
        enc = build_encoder("open_clip:ViT-B-16:openai")
    assert time.perf_counter() - start < 10  # no network retries (without HF_HUB_OFFLINE they take ~55 s)
    assert enc.is_random and enc.weight_status.startswith("random") and "openai" in enc.weight_status
    assert enc.dim == 768
    # the openai tag's tower is built with QuickGELU, as its weights were trained
    assert type(enc.backbone.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    with pytest.raises(RuntimeError, match="openai"):
        build_encoder("open_clip:ViT-B-16:openai", strict=True)
    with pytest.raises(ValueError, match="known tags"):
        build_encoder("open_clip:ViT-B-16:no_such_tag")


def test_timm_pretrained_without_network_falls_back(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.warns(RandomWeightsWarning, match="timm hub weights not cached"):
        enc = build_encoder("timm:resnet18:pretrained@32")
    assert enc.is_random and enc.weight_status.startswith("random") and enc.dim == 512
    with pytest.raises(RuntimeError, match="timm hub weights of resnet18 cannot be loaded"):
        build_encoder("timm:resnet18:pretrained@32", strict=True)


def test_training_refuses_weights_it_cannot_load(monkeypatch):
    """A profile that names pretrained weights unavailable here (offline, empty cache) stops at once
    with one line naming the encoder, the source and the remedy; allow_random_weights builds random
    weights and says so plainly in weight_status."""
    from geopak_lib.model.encoders import WeightsUnavailableError
    from geopak_lib.training.inputs import build_encoders

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    clip, scene = "open_clip:ViT-S-32:none@64", "timm:resnet18:pretrained@32"
    with pytest.raises(WeightsUnavailableError) as info:
        build_encoders(0, clip, "", scene, scene_weights="")
    msg = str(info.value)
    assert "\n" not in msg and scene in msg and "timm hub weights of resnet18" in msg
    assert "allow_random_weights: true" in msg and "weights=FILE" in msg
    with pytest.raises(WeightsUnavailableError, match="open_clip tag 'openai'"):
        build_encoders(0, "open_clip:ViT-B-16:openai@32", "", "timm:resnet18:none@32", scene_weights="")
    _, enc = build_encoders(0, clip, "", scene, scene_weights="", allow_random_weights=True)
    assert enc.is_random and enc.weight_status.startswith("random (no weights available")


def test_size_suffix():
    """The two encoders of the smoke profile."""
    with pytest.warns(RandomWeightsWarning):
        enc = build_encoder("open_clip:ViT-S-32:none@64")
    assert enc.preprocess.image_size == 64 and enc.dim == 384
    assert enc.backbone.positional_embedding.shape == (1 + 2 * 2, 384)  # a 2 × 2 grid of 32-px patches
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 384)
    enc = build_encoder("timm:tf_efficientnet_lite0@64")
    assert enc.preprocess.image_size == 64 and not enc.is_random
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 1280)


def test_timm_resnet50_random(resnet50):
    assert resnet50.is_random and resnet50.dim == 2048
    assert resnet50.preprocess.mean == IMAGENET_MEAN and resnet50.preprocess.std == IMAGENET_STD
    with torch.no_grad():
        assert resnet50(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def places365_source(arch):
    """A torchvision ResNet with a 365-class fc, random weights and non-trivial BN statistics (so
    that their copy is checked too)."""
    torch.manual_seed(0)
    source = getattr(torchvision.models, arch)(num_classes=365)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return source.eval()


@pytest.mark.parametrize("arch, csail_format", [("resnet50", True), ("resnet18", False)])
def test_places365_checkpoint_converts(tmp_path, arch, csail_format):
    """CSAIL's format: torchvision keys under DataParallel's 'module.', a 365-class fc, saved before
    PyTorch 0.4 (no num_batches_tracked) in the legacy (non-zip) serialisation. The resnet18 case
    covers a recent save (zip, num_batches_tracked kept) at a quarter of the cost."""
    source = places365_source(arch)
    state = {k: v for k, v in source.state_dict().items()
             if not (csail_format and k.endswith("num_batches_tracked"))}
    path = tmp_path / f"{arch}_places365.pth.tar"
    torch.save({"epoch": 90, "arch": arch, "state_dict": {"module." + k: v for k, v in state.items()},
                "best_prec1": 54.74}, path, _use_new_zipfile_serialization=not csail_format)
    enc = build_encoder(f"timm:{arch}", weights=str(path))
    assert not enc.is_random
    assert enc.weight_status == f"file:{path} sha256={hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    got = enc.backbone.state_dict()
    backbone_keys = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(backbone_keys) == len([k for k in got if not k.endswith("num_batches_tracked")])
    for k in backbone_keys:
        assert torch.equal(got[k], state[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same features as the source network without its fc
        features = torch.flatten(torch.nn.Sequential(*list(source.children())[:-1])(x), 1)
        torch.testing.assert_close(enc(x), features)


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
    with pytest.raises(ValueError, match=r"resnet18.pth does not fit .*resnet50.*missing.*layer1\.0\.conv3"):
        build_encoder("timm:resnet50", weights=str(path))


def test_missing_weights_file_is_an_error(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50_places365.pth.tar"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet50_places365.pth.tar"):
        build_encoder("timm:resnet50", weights=str(missing))
    with pytest.warns(RandomWeightsWarning, match="not found"):
        enc = build_encoder("timm:test_efficientnet", weights=str(missing), allow_random=True)
    assert enc.is_random and "not found" in enc.weight_status


def top5(model, x):
    with torch.no_grad():
        return set(model(x).topk(5).indices[0].tolist())


def photo(image, preprocess):
    """(H, W, 3) uint8 photo -> (1, 3, S, S) normalised, as the feature cache prepares images."""
    return preprocess_batch(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0), preprocess)


def test_efficientnet_lite0_package_weights_classify_photos():
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    assert load_lite0_package(classifier) == LITE0_STATUS
    enc = build_encoder("timm:tf_efficientnet_lite0")  # the default: no warning, package weights
    assert not enc.is_random and enc.weight_status == LITE0_STATUS and enc.dim == 1280
    assert enc.preprocess == Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")  # TF's 127.5 ± 127.5
    own = enc.backbone.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in classifier.state_dict().items() if not k.startswith("classifier."))
    # ImageNet: 967 espresso, 968 cup, 504 coffee mug, 505 coffeepot; 281-285 domestic cats
    coffee = photo(skdata.coffee(), enc.preprocess)
    assert top5(classifier, coffee) & {967, 968, 504, 505}
    assert top5(classifier, photo(skdata.chelsea(), enc.preprocess)) & set(range(281, 286))
    with torch.no_grad():  # the headless encoder (num_classes=0) computes the classifier's pre-logits
        pre_logits = classifier.forward_head(classifier.forward_features(coffee), pre_logits=True)
        torch.testing.assert_close(enc(coffee), pre_logits)


def test_match_in_order_checks_every_pair():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.running_mean": torch.zeros(2)}
    good = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "y.running_mean": torch.ones(2)}
    assert list(match_in_order(good, target, "t")) == list(target)
    swapped = {"x.weight": torch.ones(2, 3), "y.running_mean": torch.ones(2), "x.bias": torch.ones(2)}
    with pytest.raises(ValueError, match="y.running_mean"):
        match_in_order(swapped, target, "t")
    with pytest.raises(ValueError, match="2 tensors"):
        match_in_order(dict(list(good.items())[:2]), target, "t")


def test_unfreeze_vit_top_30_percent(vit_b16):
    assert len(encoder_blocks(vit_b16)) == 12
    assert set_trainable_top_fraction(vit_b16, 0.3) == 4  # ceil(3.6)
    assert count_trainable(vit_b16) == 4 * VIT_B16_BLOCK + 2 * 768  # + ln_post
    assert all(p.requires_grad for p in vit_b16.backbone.transformer.resblocks[8].parameters())
    assert not any(p.requires_grad for p in vit_b16.backbone.transformer.resblocks[7].parameters())
    assert set_trainable_top_fraction(vit_b16, 0.0) == 0 and count_trainable(vit_b16) == 0
    set_trainable_top_fraction(vit_b16, 1.0)
    assert count_trainable(vit_b16) == VIT_B16_PARAMS
    set_trainable_top_fraction(vit_b16, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        set_trainable_top_fraction(vit_b16, 1.5)


def test_unfreeze_resnet50_top_20_percent_keeps_frozen_bn_stats(resnet50):
    blocks = encoder_blocks(resnet50)
    assert len(blocks) == 16 and blocks[-4] is resnet50.backbone.layer3[5]
    assert set_trainable_top_fraction(resnet50, 0.2) == 4  # ceil(3.2): layer3's last + layer4
    expected = (bottleneck_params(1024, 256, False) + bottleneck_params(1024, 512, True)
                + 2 * bottleneck_params(2048, 512, False))
    assert count_trainable(resnet50) == expected == 16_081_920
    b = resnet50.backbone
    assert all(p.requires_grad for p in b.layer3[5].parameters())
    assert not any(p.requires_grad for m in (b.conv1, b.bn1, b.layer3[4]) for p in m.parameters())
    frozen = lambda: [b.bn1.running_mean, b.layer1[0].bn1.running_mean, b.layer3[4].bn3.running_var]  # noqa: E731
    frozen_before = [t.clone() for t in frozen()]
    top_before = b.layer4[2].bn3.running_mean.clone()
    resnet50.train()
    assert not b.layer1[0].bn1.training and b.layer4[0].bn1.training
    resnet50(torch.randn(2, 3, 64, 64) * 3 + 1)
    for before, after in zip(frozen_before, frozen()):
        assert torch.equal(before, after)
    assert not torch.equal(top_before, b.layer4[2].bn3.running_mean)  # trainable blocks keep learning statistics
    assert RESNET50_PARAMS + 2048 * 1000 + 1000 == 25_557_032  # torchvision's published resnet50 size
    assert set_trainable_top_fraction(resnet50, 1.0) == 16 and count_trainable(resnet50) == RESNET50_PARAMS
    assert b.bn1.training and b.layer1[0].bn1.training  # everything trains: every BN learns statistics
    assert set_trainable_top_fraction(resnet50, 0.0) == 0 and count_trainable(resnet50) == 0
    assert not any(m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    resnet50.eval()


def test_unfreeze_efficientnet_lite0_top_20_percent():
    enc = build_encoder("timm:tf_efficientnet_lite0@64")
    assert len(encoder_blocks(enc)) == 16
    assert [type(m).__name__ for m in encoder_head(enc)][:2] == ["Conv2d", "BatchNormAct2d"]  # conv_head, bn2
    assert set_trainable_top_fraction(enc, 0.2) == 4  # blocks 5.1-5.3 (k5, 192->192) and 6.0 (k3, 192->320)
    expected = 3 * inverted_residual_params(192, 1152, 192, 5) + inverted_residual_params(192, 1152, 320, 3) + (
        320 * 1280 + 2 * 1280)
    assert count_trainable(enc) == expected == 2_446_080
    assert LITE0_PARAMS + 1280 * 1000 + 1000 == 4_652_008  # the published EfficientNet-Lite0 size
    assert set_trainable_top_fraction(enc, 1.0) == 16
    assert count_trainable(enc) == sum(p.numel() for p in enc.parameters()) == LITE0_PARAMS
    assert set_trainable_top_fraction(enc, 0.0) == 0 and count_trainable(enc) == 0


def test_preprocess_batch_normalises_whole_image():
    pre = Preprocess(8, CLIP_MEAN, CLIP_STD, "bicubic")
    value = torch.tensor([200, 100, 50], dtype=torch.uint8)
    images = value.view(1, 3, 1, 1).expand(2, 3, 20, 30).contiguous()  # constant, so resizing keeps it
    out = preprocess_batch(images, pre)
    assert out.shape == (2, 3, 8, 8)
    want = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(out[0, :, 3, 4], torch.tensor(want), atol=1e-5, rtol=0)
    torch.testing.assert_close(preprocess_batch(images.float() / 255, pre), out)
    mixed = preprocess_batch([images[0], images[0, :, :8, :11]], pre)  # images of different sizes
    torch.testing.assert_close(mixed, out)
    with pytest.raises(ValueError, match=r"\(2, 20, 30, 3\): expected \(B, 3, H, W\)"):
        preprocess_batch(images.permute(0, 2, 3, 1), pre)  # channels last
