"""Model outputs of a split read from the feature cache where it matches the model's encoders,
else computed from the images (phase comparison, refinement fitting, several-photo studies)."""

from __future__ import annotations

import pandas as pd

from geopak_lib.training.cache import FeatureCache, encoder_fingerprint
from geopak_lib.training.inputs import TrainData
from geopak_lib.training.passes import PassSettings, model_outputs


FEATURE_SOURCES = {"cache": "cache", "clip_cache": "cache+scene", "images": "images"}  # 05's `features` column


def feature_source(model, table: pd.DataFrame, cache_root="cache") -> tuple[str, FeatureCache | None]:
    """How a model can be evaluated on ``table``'s rows (the manifest, or load_data's table in its
    order): 'cache' (a complete feature cache of exactly both its encoders: the heads alone),
    'clip_cache' (one of its CLIP encoder, which phases 2-3 left frozen: only the scene encoder
    runs on the images) or 'images' (no cache fits), with that cache. Weights sha256 decide (each
    encoder's weights are hashed once)."""
    prints = {"clip": encoder_fingerprint(model.clip_encoder), "scene": encoder_fingerprint(model.scene_encoder)}
    for source, slots in (("cache", ("clip", "scene")), ("clip_cache", ("clip",))):
        cache = FeatureCache.find_matching(table, {s: prints[s] for s in slots}, cache_root)
        if cache is not None:
            return source, cache
    return "images", None


def cached_outputs(model, table: pd.DataFrame, split: str, *, cache_root="cache",
                   batch_size: int = 256) -> tuple[dict | None, str]:
    """(model outputs (CPU) for the ``split`` rows of ``table``, source) with what the feature cache
    holds of this model's encoders (feature_source): the same numbers as split_outputs up to the
    cache's float16 rounding, with one encoder's pass over the images or none; (None, 'images')
    when no cache fits."""
    source, cache = feature_source(model, table, cache_root)
    if cache is None:
        return None, source
    return outputs_from_cache(model, table, split, source, cache=cache, batch_size=batch_size), source


def outputs_from_cache(model, table: pd.DataFrame, split: str, source: str, *, cache: FeatureCache,
                       batch_size: int = 256) -> dict:
    """cached_outputs with feature_source's answer already in hand (several splits, one lookup)."""
    data = TrainData(table.reset_index(drop=True), cache)
    device, was_training = next(model.parameters()).device, model.training
    try:
        return model_outputs(model, data, data.rows(split), PassSettings(source=source, batch_size=batch_size),
                             device=device)
    finally:
        model.train(was_training)
