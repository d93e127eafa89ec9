"""Encoders: specs, weight loading and conversion, random fallback, preprocessing, unfreezing.

Parameter counts are worked out by hand from the layer shapes (formulas below), not read from
the modules; weight conversions are checked tensor by tensor against the source, and the
EfficientNet-Lite0 conversion by classifying photos that scikit-image ships.
"""

import hashlib
import time

import huggingface_hub.constants
import pytest
import timm
import torch
import torchvision
from skimage import data as skdata

from geopak_lib.encoders import (
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
    for bad in ("clip:ViT-B-16", "open_clip", "timm:resnet50@big", ""):
        with pytest.raises(ValueError, match="not understood"):
            parse_spec(bad)


def test_open_clip_vit_b16_offline_random(vit_b16):
    enc = vit_b16
    assert enc.is_random and enc.weight_status.startswith("random")
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
    assert time.perf_counter() - start < 20  # no network retries (they take ~45 s)
    assert enc.is_random and "openai" in enc.weight_status and enc.dim == 768
    # the openai tag's tower is built with QuickGELU, as its weights were trained
    assert type(enc.backbone.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    with pytest.raises(RuntimeError, match="openai"):
        build_encoder("open_clip:ViT-B-16:openai", strict=True)
    with pytest.raises(ValueError, match="known tags"):
        build_encoder("open_clip:ViT-B-16:no_such_tag")


def test_open_clip_size_suffix():
    with pytest.warns(RandomWeightsWarning):
        enc = build_encoder("open_clip:ViT-S-32:none@64")
    assert enc.preprocess.image_size == 64 and enc.dim == 384
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 384)


def test_timm_resnet50_random(resnet50):
    assert resnet50.is_random and resnet50.dim == 2048
    assert resnet50.preprocess.mean == IMAGENET_MEAN and resnet50.preprocess.std == IMAGENET_STD
    with torch.no_grad():
        assert resnet50(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


@pytest.fixture(scope="module")
def places365_source():
    """A torchvision resnet50 with a 365-class fc and non-trivial BN statistics (so their copy is checked)."""
    torch.manual_seed(0)
    source = torchvision.models.resnet50(num_classes=365)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return source.eval()


@pytest.mark.parametrize("with_num_batches_tracked", [False, True])
def test_places365_checkpoint_converts(tmp_path, places365_source, with_num_batches_tracked):
    """A checkpoint in CSAIL's format: torchvision resnet50 keys under 'module.', a 365-class fc,
    and (saved before PyTorch 0.4) no num_batches_tracked."""
    state = {k: v for k, v in places365_source.state_dict().items()
             if with_num_batches_tracked or not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": {"module." + k: v for k, v in state.items()},
                "best_prec1": 54.74}, path)
    enc = build_encoder("timm:resnet50", weights=str(path))
    assert not enc.is_random
    assert enc.weight_status == f"file:{path} sha256={hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    got = enc.backbone.state_dict()
    backbone_keys = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(backbone_keys) == len([k for k in got if not k.endswith("num_batches_tracked")])
    for k in backbone_keys:
        assert torch.equal(got[k], state[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same features as the source network without its fc
        features = torch.flatten(torch.nn.Sequential(*list(places365_source.children())[:-1])(x), 1)
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


def top5(model, image, preprocess):
    x = preprocess_batch(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0), preprocess)
    with torch.no_grad():
        return set(model(x).topk(5).indices[0].tolist())


def test_efficientnet_lite0_package_weights_classify_photos():
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    assert load_lite0_package(classifier) == LITE0_STATUS
    enc = build_encoder("timm:tf_efficientnet_lite0")  # the default: no warning, package weights
    assert not enc.is_random and enc.weight_status == LITE0_STATUS and enc.dim == 1280
    assert enc.preprocess == Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")  # TF's 127.5 ± 127.5
    own = enc.backbone.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in classifier.state_dict().items() if not k.startswith("classifier."))
    # ImageNet: 967 espresso, 968 cup, 504 coffee mug, 505 coffeepot; 281-285 domestic cats
    assert top5(classifier, skdata.coffee(), enc.preprocess) & {967, 968, 504, 505}
    assert top5(classifier, skdata.chelsea(), enc.preprocess) & set(range(281, 286))


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
    frozen = lambda: [b.bn1.running_mean, b.layer1[0].bn1.running_mean, b.layer3[4].bn3.running_var]  # noqa: E731
    frozen_before = [t.clone() for t in frozen()]
    top_before = b.layer4[2].bn3.running_mean.clone()
    resnet50.train()
    assert not b.layer1[0].bn1.training and b.layer4[0].bn1.training
    resnet50(torch.randn(2, 3, 64, 64) * 3 + 1)
    for before, after in zip(frozen_before, frozen()):
        assert torch.equal(before, after)
    assert not torch.equal(top_before, b.layer4[2].bn3.running_mean)  # trainable blocks keep learning statistics
    set_trainable_top_fraction(resnet50, 0.0)
    resnet50.eval()


def test_unfreeze_efficientnet_lite0_top_20_percent():
    enc = build_encoder("timm:tf_efficientnet_lite0@64")
    assert len(encoder_blocks(enc)) == 16
    assert [type(m).__name__ for m in encoder_head(enc)][:2] == ["Conv2d", "BatchNormAct2d"]  # conv_head, bn2
    assert set_trainable_top_fraction(enc, 0.2) == 4  # blocks 5.1-5.3 (k5, 192->192) and 6.0 (k3, 192->320)
    expected = 3 * inverted_residual_params(192, 1152, 192, 5) + inverted_residual_params(192, 1152, 320, 3) + (
        320 * 1280 + 2 * 1280)
    assert count_trainable(enc) == expected == 2_446_080


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
