"""Encoder bound: forward-only images/s of both encoders on pre-decoded uint8 views (B, 3, S, S)
already on the device, at the profile's batch (256), inference mode, bf16 autocast where the
trainer would use it (CUDA). Each encoder is timed in both memory layouts and the faster is the
bound (channels-last "where it helps"); the run says whether the library's rule
(features.prefers_channels_last) picks that layout."""

from __future__ import annotations

import torch

from geopak_lib.training.cache import encoder_input, prefers_channels_last
from geopak_lib.training.passes import autocast_enabled

from .common import rate

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _forward(encoders, x, use_amp):
    with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=use_amp):
        for enc in encoders:
            enc(encoder_input(x, enc.preprocess))


def encoder_bound(clip, scene, size: int, batch: int, device, repeats: int, amp: str = "auto",
                  other_batches=()) -> dict:
    """-> {clip: {layout: rate}, scene: {...}, best layouts, rule agreement, both: images/s of the
    pair at ``batch``, by_batch: the pair at ``batch`` and each of other_batches, best: the fastest}.

    On a CPU a smaller batch can be faster (cache-friendly), so the ratios of the pipelines to the
    bound use ``best``, the stricter figure, not only the batch-256 one."""
    use_amp = autocast_enabled(amp, device)
    full = torch.randint(0, 256, (max((batch, *other_batches)), 3, size, size), dtype=torch.uint8, device=device)
    x = full[:batch]
    out = {"batch": batch, "view_size": size, "bf16": use_amp}
    for name, enc in (("clip", clip), ("scene", scene)):
        enc.to(device).eval()
        runs = {}
        for layout, fmt in LAYOUTS.items():
            enc.to(memory_format=fmt)
            runs[layout] = rate(lambda: _forward([enc], x, use_amp), batch, max(1, repeats - 1), device)
        best = max(runs, key=lambda k: runs[k]["items_per_s"])
        enc.to(memory_format=LAYOUTS[best])
        out[name] = {"spec": enc.spec, **runs, "best_layout": best,
                     "library_layout": "channels_last" if prefers_channels_last(enc) else "contiguous"}
    out["both"] = rate(lambda: _forward([clip, scene], x, use_amp), batch, repeats, device)
    out["by_batch"] = {batch: out["both"]}
    for b in other_batches:
        out["by_batch"][b] = rate(lambda: _forward([clip, scene], full[:b], use_amp), b, repeats, device)
    best = max(out["by_batch"], key=lambda b: out["by_batch"][b]["items_per_s"])
    out["best"] = {"batch": best, **out["by_batch"][best]}
    for enc in (clip, scene):
        enc.to(memory_format=torch.contiguous_format)
    return out


def pair_rate(clip, scene, size: int, batch: int, device, repeats: int, layouts: dict, amp: str = "auto") -> float:
    """Images/s of both encoders at ``batch`` in the given layouts ({'clip': name, 'scene': name},
    the best of encoder_bound): the reference measured right next to a pipeline (run_all.paired)."""
    use_amp = autocast_enabled(amp, device)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    for name, enc in (("clip", clip), ("scene", scene)):
        enc.to(device).eval().to(memory_format=LAYOUTS[layouts[name]])
    try:
        return rate(lambda: _forward([clip, scene], x, use_amp), batch, repeats, device)["items_per_s"]
    finally:
        for enc in (clip, scene):
            enc.to(memory_format=torch.contiguous_format)
