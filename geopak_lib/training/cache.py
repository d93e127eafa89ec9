"""Frozen-feature cache (phases 0-1) and the baselines computed on it.

While both encoders are frozen, an image's features never change, so each is computed once:
view 0 (the clean view) for every manifest row, plus ``views`` augmented views for each
training row. Arrays are memory-mapped ``.npy`` files in ``cache_root/<key>/``:

- ``clip.npy`` (S, Dc) and ``scene.npy`` (S, Ds), S = N + views * N_train slots. Slot r holds row
  r's clean view; slot N + (v-1) * N_train + j holds view v of the j-th training row.
- ``key.json``: what the key was computed from; ``progress.json``: slots done so far;
  ``complete.json``: written atomically last. A folder without it is never read.

The key covers each encoder's spec, weight status and a hash of its actual weights (so two
random inits never share a cache), the manifest content, image size, views, augmentation
settings, seed and storage dtype: change any of them and a new cache is built.
Decisions: docs/decisions/training.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geopak_lib.data.augment import (ImageViewDataset, augment_for_province, augment_settings, collate_undecoded, collate_views,
                      finish_views, item_seed)
from geopak_lib.utils import atomic_write_bytes, file_sha256, load_npy, pick_device, read_json, state_sha256
from geopak_lib.model.encoders import preprocess_batch

CACHE_VERSION = 1
MANIFEST_KEY_COLUMNS = ("id", "image_path", "sha1", "split", "province")


def encoder_input(images: torch.Tensor, preprocess) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, S, S) normalised for an encoder (encoders.preprocess_batch)."""
    return preprocess_batch(images, preprocess)


def prefers_channels_last(encoder) -> bool:
    """True for a convolutional encoder (more than one Conv2d; a ViT has one, its patch embedding):
    channels-last weights made EfficientNet-Lite0 1.4x faster on CPU (docs/performance.md), and
    convolutions with bf16 on GPU use it natively. The numbers change only at float rounding."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in encoder.modules()) > 1


def channels_last(*encoders) -> list:
    """Put the encoders that prefer it (prefers_channels_last) in channels-last layout; -> those."""
    moved = [e for e in encoders if e is not None and prefers_channels_last(e)]
    for e in moved:
        e.to(memory_format=torch.channels_last)
    return moved


def resolve_decode(decode: str, device: torch.device) -> str:
    """'auto' -> 'device' on CUDA (nvJPEG; measured in benchmarks/), 'workers' elsewhere."""
    if decode not in ("auto", "device", "workers"):
        raise ValueError(f"decode must be 'auto', 'device' or 'workers', got {decode!r}")
    return ("device" if device.type == "cuda" else "workers") if decode == "auto" else decode


def view_size(*encoders) -> int:
    """Side of the shared uint8 view: the largest input size among the encoders (each resizes down)."""
    return max(int(e.preprocess.image_size) for e in encoders)


def encoder_fingerprint(encoder) -> dict:
    """Spec, weight status and sha256 of the encoder's parameters and buffers (names + bytes)."""
    pre = encoder.preprocess
    return {"spec": encoder.spec, "weight_status": str(getattr(encoder, "weight_status", "")),
            "weights_sha256": state_sha256(encoder.state_dict()),
            "preprocess": {"image_size": int(pre.image_size), "mean": list(map(float, pre.mean)),
                           "std": list(map(float, pre.std)),
                           "interpolation": str(getattr(pre, "interpolation", ""))}}


def manifest_hash(manifest: pd.DataFrame) -> str:
    """sha256 of the manifest columns that decide the features (row order included)."""
    missing = [c for c in ("id", "image_path", "split") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; use the manifest.csv written by 00_data_audit")
    cols = [c for c in MANIFEST_KEY_COLUMNS if c in manifest.columns]
    return hashlib.sha256(manifest[cols].astype(str).to_csv(index=False).encode()).hexdigest()


@dataclass(frozen=True)
class CacheSettings:
    """Everything besides the encoders and the manifest that decides, or drives, a cache build.

    views: augmented views per training row (K). dtype: 'float16' halves the disk and RAM
    footprint at ~3 significant digits, plenty for frozen features; 'float32' for exactness.
    chunk_batches: progress is recorded every this many batches (resume granularity).
    decode: where clean views' JPEGs are decoded: 'workers' (Pillow in the DataLoader workers),
    'device' (one batched torchvision decode_jpeg on the encoders' device, nvJPEG on a GPU),
    'auto' ('device' on CUDA). Augmented views are always made in the workers. views, seed, dtype
    and augment_configs enter the key; the others only change how fast it is built."""

    cache_root: str | Path = "cache"
    views: int = 2
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    dtype: str = "float16"
    chunk_batches: int = 8
    amp: str = "auto"
    decode: str = "auto"
    augment_configs: dict | None = None

    def __post_init__(self):
        if self.views < 0 or self.batch_size < 1 or self.chunk_batches < 1:
            raise ValueError("views must be >= 0, batch_size and chunk_batches >= 1")
        np.dtype(self.dtype)  # an unknown dtype fails here, not half-way through a build


def atomic_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class FeatureCache:
    """A complete cache, read-only, memory-mapped. Build or open it with :meth:`build_or_load`."""

    def __init__(self, path):
        self.path = Path(path)
        done = self.path / "complete.json"
        if not done.exists():
            raise FileNotFoundError(f"feature cache {self.path} is incomplete (no complete.json): "
                                    "rebuild it with FeatureCache.build_or_load(...)")
        self.meta, key = (read_json(self.path / n, "delete the cache folder to rebuild it") for n in ("complete.json", "key.json"))
        for name, digest in self.meta.get("arrays_sha256", {}).items():  # 4 ms on the demo (6 MB)
            if file_sha256(self.path / name) != digest:
                raise ValueError(f"feature cache {self.path / name} changed since it was built; delete {self.path}")
        if self.meta["key"] != key["key"]:
            raise ValueError(f"feature cache {self.path}: complete.json and key.json disagree; delete the folder")
        self.ids = np.asarray(self.meta["ids"], dtype=object)
        self.split = np.asarray(self.meta["split"], dtype=object)
        self.train_rows = np.flatnonzero(self.split == "train")
        self.views = int(self.meta["views"])
        fix = f"delete {self.path} to rebuild the cache"
        self.clip, self.scene = (load_npy(self.path / f"{n}.npy", fix) for n in ("clip", "scene"))
        self._train_pos = np.full(len(self.ids), -1)
        self._train_pos[self.train_rows] = np.arange(len(self.train_rows))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def clip_dim(self) -> int:
        return self.clip.shape[1]

    @property
    def scene_dim(self) -> int:
        return self.scene.shape[1]

    def slots(self, rows, views=0) -> np.ndarray:
        """Slot of (row, view) pairs; rows (B,) manifest positions, views int or (B,) in 0..views."""
        rows = np.asarray(rows, dtype=int)
        views = np.broadcast_to(np.asarray(views, dtype=int), rows.shape)
        aug = views > 0
        if (views > self.views).any() or (aug & (self._train_pos[rows] < 0)).any():
            raise IndexError(f"augmented views exist only for training rows and v <= {self.views}")
        return np.where(aug, len(self.ids) + (views - 1) * len(self.train_rows) + self._train_pos[rows], rows)

    def gather(self, rows, views=0, device="cpu"):
        """Features of (row, view) pairs -> clip (B, Dc), scene (B, Ds) float32 tensors."""
        s = self.slots(rows, views)
        to = lambda a: torch.from_numpy(np.asarray(a[s], dtype=np.float32)).to(device)  # noqa: E731
        return to(self.clip), to(self.scene)

    @classmethod
    def find_clean(cls, manifest: pd.DataFrame, clip_encoder, scene_encoder,
                   *, cache_root="cache", slots=("clip", "scene")) -> "FeatureCache | None":
        """A complete cache under ``cache_root`` holding these encoders' clean views (view 0) of this
        manifest's rows, whatever its augmented views, seed or dtype (those change only the other
        slots and the rounding), or None. For evaluating checkpoints whose encoders were frozen
        (phases 0-1) without running the encoders again; slots=("clip",) asks for the CLIP
        slot's features alone (phases 2-3 tune the scene encoder only)."""
        return cls.find_matching(manifest, {s: encoder_fingerprint(e) for s, e in
                                            (("clip", clip_encoder), ("scene", scene_encoder)) if s in slots}, cache_root)

    @classmethod
    def find_matching(cls, manifest: pd.DataFrame, fingerprints: dict, cache_root="cache") -> "FeatureCache | None":
        """find_clean with the encoders' fingerprints already taken ({slot: encoder_fingerprint})."""
        want = {"version": CACHE_VERSION, "manifest_sha256": manifest_hash(manifest), "n_rows": len(manifest),
                **fingerprints}
        for key_file in sorted(Path(cache_root).glob("*/key.json")):
            if not (key_file.parent / "complete.json").exists():
                continue
            key = read_json(key_file, f"delete {key_file.parent} to rebuild the cache")
            if all(key.get(k) == v for k, v in want.items()):
                return cls(key_file.parent)
        return None

    @classmethod
    def build_or_load(cls, manifest: pd.DataFrame, clip_encoder, scene_encoder, *,
                      settings: CacheSettings | None = None,
                      device="auto", progress: bool = True, **settings_kwargs) -> "FeatureCache":
        """Open the cache for these inputs, building (or finishing) it first when needed.

        manifest: manifest.csv rows (id, image_path, split, province, sha1), in a fixed order.
        settings: a CacheSettings, or its fields as keywords (cache_root=..., views=...).
        """
        settings = settings or CacheSettings(**settings_kwargs)
        path, key, key_inputs = cache_location(manifest, clip_encoder, scene_encoder, settings)
        if (path / "complete.json").exists():
            return cls(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_json(path / "key.json", {"key": key, **key_inputs})
        build_slots(path, key, manifest, clip_encoder, scene_enc=scene_encoder, settings=settings,
                    device=pick_device(device), progress=progress)
        return cls(path)


def cache_location(manifest, clip_encoder, scene_encoder, settings: CacheSettings):
    """(folder, key, what the key hashes) of the cache for these inputs (see the module docstring)."""
    size = view_size(clip_encoder, scene_encoder)
    key_inputs = {"version": CACHE_VERSION, "clip": encoder_fingerprint(clip_encoder),
                  "scene": encoder_fingerprint(scene_encoder), "manifest_sha256": manifest_hash(manifest),
                  "n_rows": len(manifest), "views": int(settings.views), "seed": int(settings.seed),
                  "dtype": str(settings.dtype), "augment": augment_settings(size, settings.augment_configs)}
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:24]
    return Path(settings.cache_root) / key, key, key_inputs


def _slot_items(manifest: pd.DataFrame, views: int, seed: int) -> list:
    """(row, strength, seed) per slot, in slot order (see the module docstring)."""
    n, train = len(manifest), np.flatnonzero(manifest["split"].to_numpy() == "train")
    items = [(r, "none", 0) for r in range(n)]
    provinces = manifest["province"].to_numpy() if "province" in manifest else np.full(n, "")
    for v in range(1, views + 1):
        items += [(int(r), augment_for_province(provinces[r]), item_seed(seed, r, v)) for r in train]
    return items


class _SlotDataset(torch.utils.data.Dataset):
    def __init__(self, views: ImageViewDataset, items: list):
        self.views, self.items = views, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, slot):
        return slot, self.views[self.items[slot]][1]


def _open_arrays(path: Path, n_slots: int, dims: tuple, dtype, fresh: bool):
    arrays = []
    for name, dim in zip(("clip", "scene"), dims):
        file = path / f"{name}.npy"
        if not fresh:
            try:
                a = np.load(file, mmap_mode="r+")
                if a.shape == (n_slots, dim) and a.dtype == dtype:
                    arrays.append(a)
                    continue
            except (OSError, ValueError):
                pass  # missing or damaged: start this array afresh
        arrays.append(np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=(n_slots, dim)))
    return arrays


def build_slots(path, key, manifest, clip_enc, *, scene_enc, settings: CacheSettings, device, progress: bool = False,
                shard=(0, 1)) -> None:
    """Compute the features into path/{clip,scene}.npy. shard (rank, world): only batches i with
    i % world == rank (distributed.build_cache_distributed merges the parts)."""
    s = settings
    views, batch_size, num_workers, seed, chunk_batches = s.views, s.batch_size, s.num_workers, s.seed, s.chunk_batches
    augment_configs, dtype, amp, decode = s.augment_configs, np.dtype(s.dtype), s.amp, s.decode
    size = view_size(clip_enc, scene_enc)
    started = time.time()
    items = _slot_items(manifest, views, seed)
    state = path / "progress.json"
    done = read_json(state, f"delete {path} to rebuild the cache")["done"] if state.exists() else 0
    modes = {e: e.training for e in (clip_enc, scene_enc)}
    clip_enc.to(device).eval()
    scene_enc.to(device).eval()
    moved = channels_last(clip_enc, scene_enc)
    with torch.inference_mode():  # probe the output widths on one blank image
        blank = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
        dims = tuple(int(e(encoder_input(blank, e.preprocess)).shape[-1]) for e in (clip_enc, scene_enc))
    clip_arr, scene_arr = _open_arrays(path, len(items), dims, dtype, fresh=done == 0)
    # Batches start at multiples of batch_size from 0, so a resumed build sees the same batches.
    batches = [list(range(s, min(s + batch_size, len(items)))) for s in range(done, len(items), batch_size)
               if (s // batch_size) % shard[1] == shard[0]]
    on_device = resolve_decode(decode, device) == "device"
    dataset = _SlotDataset(ImageViewDataset(manifest["image_path"].tolist(), size, augment_configs, on_device), items)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate_undecoded if on_device else collate_views,
                                         pin_memory=device.type == "cuda" and not on_device)
    use_amp = (amp == "bf16") or (amp == "auto" and device.type == "cuda")
    bar = tqdm(total=len(items), initial=done, desc="features", unit="img", disable=not progress)
    try:
        for i, (slots, images) in enumerate(loader):
            images = finish_views(images, size, device) if on_device else images.to(device, non_blocking=True)
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                fc = clip_enc(encoder_input(images, clip_enc.preprocess)).float().cpu().numpy()
                fs = scene_enc(encoder_input(images, scene_enc.preprocess)).float().cpu().numpy()
            lo, hi = int(slots[0]), int(slots[-1]) + 1  # batches are contiguous slot ranges
            clip_arr[lo:hi], scene_arr[lo:hi] = fc, fs
            bar.update(hi - lo)
            if (i + 1) % chunk_batches == 0 or i + 1 == len(batches):
                clip_arr.flush()
                scene_arr.flush()
                atomic_json(state, {"key": key, "done": hi})  # only after the data is on disk
    finally:
        bar.close()
        for e, was_training in modes.items():
            e.train(was_training)
        for e in moved:
            e.to(memory_format=torch.contiguous_format)
    del clip_arr, scene_arr
    atomic_json(path / "complete.json", {
        "key": key, "views": views, "n_slots": len(items), "dims": list(dims),
        "ids": manifest["id"].astype(str).tolist(), "split": manifest["split"].astype(str).tolist(),
        "build_seconds": round(time.time() - started, 2),
        "arrays_sha256": {n: file_sha256(path / n) for n in ("clip.npy", "scene.npy")}})
