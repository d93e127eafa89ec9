"""Geography-safe augmentation (spec 000 §11-§12) and the image dataset that applies it.

Allowed: random resized crop (mild scale range), colour jitter, gamma, mild blur and noise,
weather (haze: blend towards grey-white) and seasonal tint (towards green or brown).
Forbidden: anything that mirrors or warps the scene (horizontal/vertical flip, large rotations,
perspective or affine shear), because the left-right layout of a place (which side the
mountains, the river, the traffic are on) is a location cue. ``assert_geography_safe`` walks a
built pipeline and refuses any forbidden transform; every ``build_augment`` result passes it.

Strong augmentation is for Sindh and Punjab only (the provinces with plenty of images, where
over-fitting is the risk); the rare provinces get a mild pipeline (spec 000 §11).

Images leave every pipeline here as uint8 tensors (3, S, S); each encoder then resizes and
normalises them itself (``features.encoder_input``), so both encoders see the same view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

# the one loader of the book: EXIF, RGB, clear errors; files or bytes embedded in a Parquet table
from geopak_lib.data.images import ImageLoadError, exif_orientation, load_rgb, read_image_bytes

STRONG_PROVINCES = ("Sindh", "Punjab")
MAX_ROTATION_DEG = 5.0  # a tilted camera is natural; more than this starts to invent geography
FORBIDDEN = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomPerspective,
             v2.ElasticTransform)


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of one pipeline. Probabilities in [0, 1]; crop scale is the area fraction kept."""

    crop_scale: tuple = (0.8, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.0  # off: hue carries land cover (green crops vs brown desert); docs/decisions/training.md
    gamma_p: float = 0.3
    gamma_range: tuple = (0.85, 1.2)
    haze_p: float = 0.1
    haze_strength: tuple = (0.05, 0.2)
    season_p: float = 0.1
    season_strength: tuple = (0.05, 0.15)
    blur_p: float = 0.1
    blur_sigma: tuple = (0.1, 0.8)
    noise_p: float = 0.1
    noise_sigma: tuple = (0.005, 0.02)

    @staticmethod
    def preset(strength: str) -> "AugmentConfig":
        """'mild' (rare provinces) or 'strong' (Sindh, Punjab)."""
        if strength == "mild":
            return AugmentConfig()
        if strength == "strong":
            return AugmentConfig(crop_scale=(0.55, 1.0), brightness=0.3, contrast=0.3,
                                 saturation=0.3, gamma_p=0.5, gamma_range=(0.7, 1.4),
                                 haze_p=0.3, haze_strength=(0.1, 0.4), season_p=0.3,
                                 season_strength=(0.1, 0.3), blur_p=0.3, blur_sigma=(0.1, 1.2),
                                 noise_p=0.3, noise_sigma=(0.01, 0.04))
        raise ValueError(f"augmentation strength must be 'strong' or 'mild', got {strength!r}")


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(()).uniform_(lo, hi))


class _Sometimes(nn.Module):
    """Apply ``apply_to`` with probability p; ``span`` is the (lo, hi) range its strength is drawn
    from. x float (3, H, W) in [0, 1]. The coin is tossed first, so the random stream is the same
    whether or not the transform fires."""

    def __init__(self, p: float, span: tuple):
        super().__init__()
        self.p, self.span = p, span

    def forward(self, x):
        return x if torch.rand(()) >= self.p else self.apply_to(x)


class RandomGamma(_Sometimes):
    """x -> x ** gamma with gamma ~ U(span)."""

    def apply_to(self, x):
        return x.clamp(0, 1) ** _uniform(*self.span)


class RandomHaze(_Sometimes):
    """Haze or fog: blend towards a grey-white veil, x -> (1 - t) x + t * veil, t ~ U(span)."""

    def apply_to(self, x):
        veil = _uniform(0.75, 0.95)  # grey (0.75) to near-white fog (0.95)
        t = _uniform(*self.span)
        return (1 - t) * x + t * veil


class RandomSeasonalTint(_Sometimes):
    """Seasonal colour shift: blend towards the image's own brightness in a green (monsoon) or
    brown (dry season) hue, so the structure stays and only the colour cast moves."""

    TINTS = torch.tensor([[0.85, 1.15, 0.75], [1.15, 0.98, 0.72]])  # green, brown (mean ~0.9)

    def apply_to(self, x):
        tint = self.TINTS[int(torch.randint(0, len(self.TINTS), ()))].to(x.dtype)
        luma = x.mean(0, keepdim=True)
        t = _uniform(*self.span)
        return ((1 - t) * x + t * luma * tint[:, None, None]).clamp(0, 1)


class RandomNoise(_Sometimes):
    """Additive Gaussian noise with sigma ~ U(span); clamped to [0, 1]."""

    def apply_to(self, x):
        return (x + torch.randn_like(x) * _uniform(*self.span)).clamp(0, 1)


def build_augment(strength: str = "strong", size: int = 224, config: AugmentConfig | None = None):
    """The training pipeline: PIL RGB image (or uint8 (3, H, W)) -> uint8 tensor (3, size, size).

    All randomness comes from torch's global generator, so seeding torch fixes the view.
    """
    c = config or AugmentConfig.preset(strength)
    pipeline = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=c.crop_scale, ratio=c.crop_ratio, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.ColorJitter(brightness=c.brightness, contrast=c.contrast, saturation=c.saturation,
                       hue=c.hue),
        RandomGamma(c.gamma_p, c.gamma_range),
        RandomHaze(c.haze_p, c.haze_strength),
        RandomSeasonalTint(c.season_p, c.season_strength),
        v2.RandomApply([v2.GaussianBlur(5, sigma=c.blur_sigma)], p=c.blur_p),
        RandomNoise(c.noise_p, c.noise_sigma),
        v2.ToDtype(torch.uint8, scale=True),
    ])
    assert_geography_safe(pipeline)
    return pipeline


def clean_transform(size: int = 224):
    """Evaluation view: the whole image resized to (size, size) -> uint8 (3, size, size).

    No centre crop, like encoders.preprocess_batch: the edges of a photo can hold the clue.
    """
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def resize_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> (3, size, size): clean_transform's resize, for decoded tensors."""
    return v2.functional.resize(image, [size, size], antialias=True)


def jpeg_bytes_or_view(path, size: int) -> torch.Tensor:
    """For decoding on the model's device: a plain JPEG (RGB or grey, upright EXIF) comes back as its
    file bytes, uint8 (N,); anything else as its clean view uint8 (3, size, size), made here with the
    book's loader (EXIF rotation, CMYK, PNG: cases the device decoder does not handle like it)."""
    import io

    from PIL import Image

    try:
        data = read_image_bytes(path)  # a file or bytes embedded in a Parquet table
    except ImageLoadError:
        data = b""  # missing or unreadable: the loader below raises the book's ImageLoadError
    try:
        if data[:2] == b"\xff\xd8":
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                if im.mode in ("RGB", "L") and exif_orientation(im) == 1:
                    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    except Exception:  # a damaged header: the loader below says what is wrong
        pass
    return clean_transform(size)(load_rgb(path))


def finish_views(items, size: int, device) -> torch.Tensor:
    """Items of jpeg_bytes_or_view -> uint8 (B, 3, size, size) on ``device``, in order. The JPEG bytes
    are decoded in one batched call on ``device`` (nvJPEG on CUDA, libjpeg-turbo on CPU, which gives
    the pixels Pillow gives) and resized like clean_transform."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out = [t.to(device, non_blocking=True) if t.ndim == 3 else None for t in items]
    todo = [i for i, t in enumerate(out) if t is None]
    if todo:
        with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated; they work
            warnings.simplefilter("ignore")
            decoded = decode_jpeg([items[i] for i in todo], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(todo, decoded):
            out[i] = resize_view(image, size)
    return torch.stack(out)


def augment_for_province(province: str) -> str:
    """'strong' for Sindh and Punjab, 'mild' for every other province (spec 000 §11)."""
    return "strong" if province in STRONG_PROVINCES else "mild"


def augment_settings(size: int, configs: dict | None = None) -> dict:
    """Everything that determines the augmented views, as plain data (feature-cache key)."""
    configs = configs or {s: AugmentConfig.preset(s) for s in ("strong", "mild")}
    return {"size": size, "clean": "resize whole image", "strong_provinces": list(STRONG_PROVINCES),
            **{s: asdict(c) for s, c in configs.items()}}


def _walk(transform):
    """Yield ``transform`` and every transform nested in it (Compose, RandomApply, modules)."""
    yield transform
    children = list(getattr(transform, "transforms", None) or [])
    if isinstance(transform, nn.Module):
        children += [m for m in transform.children() if not any(m is c for c in children)]
    for child in children:
        yield from _walk(child)


def _max_abs_degrees(t) -> float:
    degrees = getattr(t, "degrees", 0)
    return float(np.max(np.abs(np.atleast_1d(np.asarray(degrees, dtype=float)))))


def assert_geography_safe(transform) -> None:
    """Raise ValueError naming the first transform that mirrors or warps the scene."""
    for t in _walk(transform):
        name = type(t).__name__
        if isinstance(t, FORBIDDEN):
            raise ValueError(f"{name} is forbidden: it mirrors or warps the scene (spec 000 §12)")
        if isinstance(t, (v2.RandomRotation, v2.RandomAffine)) and _max_abs_degrees(t) > MAX_ROTATION_DEG:
            raise ValueError(f"{name} rotates by up to {_max_abs_degrees(t)} deg; at most "
                             f"{MAX_ROTATION_DEG} deg is geography-safe (spec 000 §12)")
        if isinstance(t, v2.RandomAffine) and t.shear is not None:
            raise ValueError(f"{name} shears the image (a perspective-like warp); forbidden")


def item_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from (seed, keys...): the same keys give the same augmented view anywhere
    (any worker count, any chunking), which keeps cache builds and resumed runs exact."""
    state = np.random.SeedSequence([int(seed), *[int(k) for k in keys]]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class ImageViewDataset(torch.utils.data.Dataset):
    """Images of a manifest, one view per item. An item is (row, strength, seed): row indexes
    ``paths``; strength 'none' gives the clean view, 'strong'/'mild' an augmented one drawn with
    ``seed``. Returns (row, uint8 (3, size, size)). jpeg_bytes: clean views of plain JPEGs come back
    as file bytes for finish_views to decode on the model's device (see jpeg_bytes_or_view)."""

    def __init__(self, paths, size: int = 224, configs: dict | None = None, jpeg_bytes: bool = False):
        self.paths, self.size, self.jpeg_bytes = list(paths), size, jpeg_bytes
        configs = configs or {}
        self.pipelines = {s: build_augment(s, size, configs.get(s)) for s in ("strong", "mild")}
        self.clean = clean_transform(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        row, strength, seed = item
        if strength == "none" and self.jpeg_bytes:
            return row, jpeg_bytes_or_view(self.paths[row], self.size)
        image = load_rgb(self.paths[row])
        if strength == "none":
            return row, self.clean(image)
        with torch.random.fork_rng(devices=[]):  # keep the caller's RNG stream untouched
            # The CPU generator alone: what the transforms draw from. torch.manual_seed would also
            # queue lazy CUDA/XPU/MTIA seeding with a stack trace: 0.4 vs 0.002 ms (docs/performance.md).
            torch.random.default_generator.manual_seed(seed)
            return row, self.pipelines[strength](image)


def collate_views(batch):
    """[(row, uint8 (3, S, S))] -> (rows LongTensor (B,), images uint8 (B, 3, S, S))."""
    rows, images = zip(*batch)
    return torch.as_tensor(rows, dtype=torch.long), torch.stack(images)


def collate_undecoded(batch):
    """[(row, view or JPEG bytes)] -> (rows LongTensor (B,), list of items for finish_views)."""
    rows, items = zip(*batch)
    return torch.as_tensor(rows, dtype=torch.long), list(items)
