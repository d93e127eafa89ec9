"""06's measurements of the options beyond the spec: several photos of one place (on a multi-view
set: rows group, view, image_path, latitude, longitude, split; view 0 is the place's own image)
and checkpoint ensembles, and the table that says which option is on.

Each image is encoded once (``view_features``); every (number of views, combine rule) pair is then
only the heads on cached features. Every choice here is made by the one rule (bootstrap.adopt):
an option, or a combine rule other than the predictor's default, is taken only when its paired
validation interval lies below zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geopak_lib.inference.groups import COMBINE, DEFAULT_COMBINE, encoder_features, features_group_outputs
from geopak_lib.inference.outputs import ImageFiles, collate_files
from geopak_lib.metrics import error_km, summarize_errors
from geopak_lib.model.inference import mixture_predict


@torch.no_grad()
def view_features(predictor, paths, batch_size: int = 64, progress: bool = True):
    """Image files -> clip_feat (N, clip_dim), scene_feat (N, scene_dim) on the CPU, in order, from
    the predictor's own encoders (one GeopakModel). Raises ValueError naming an unreadable file."""
    paths = [str(p) for p in paths]
    loader = torch.utils.data.DataLoader(ImageFiles(paths, predictor.image_size), batch_size=batch_size,
                                         collate_fn=collate_files)
    clip, scene = [], []
    for idx, images, errors in tqdm(loader, desc="views", unit="batch", disable=not progress):
        if errors:
            i, msg = next(iter(errors.items()))
            raise ValueError(f"multi-view image {paths[i]} cannot be read: {msg}")
        c, s = encoder_features(predictor.model, images.to(predictor.device))
        clip.append(c.cpu())
        scene.append(s.cpu())
    return torch.cat(clip), torch.cat(scene)


@torch.no_grad()
def multiview_errors(model, clip_feat, scene_feat, views: pd.DataFrame, *, n_views: int, combine: str,
                     top_provinces: int = 2, top_cells: int = 5) -> pd.DataFrame:
    """One row per place (group, split, lat, lon, error_km), predicted from its views 0..n_views-1.
    clip_feat/scene_feat: (len(views), D) aligned with the rows of ``views``."""
    mask = views["view"].to_numpy() < n_views
    sub = views[mask]
    codes, names = pd.factorize(sub["group"])
    device = next(model.parameters()).device
    feats = [t[torch.as_tensor(np.flatnonzero(mask))].to(device) for t in (clip_feat, scene_feat)]
    out = features_group_outputs(model, *feats, torch.as_tensor(codes), n_groups=len(names), combine=combine)
    pred = mixture_predict(model, out, top_provinces=top_provinces, top_cells=top_cells)
    truth = sub.drop_duplicates("group").set_index("group").loc[names]
    lat, lon = pred["lat"].cpu().numpy(), pred["lon"].cpu().numpy()
    return pd.DataFrame({"group": names, "split": truth["split"].to_numpy(), "lat": lat, "lon": lon,
                         "error_km": error_km(lat, lon, truth["latitude"].to_numpy(float),
                                              truth["longitude"].to_numpy(float))})


def multiview_table(model, clip_feat, scene_feat, views: pd.DataFrame, *, n_views=(1, 2, 4), combines=COMBINE,
                    top_provinces: int = 2, top_cells: int = 5) -> pd.DataFrame:
    """Rows (split, views, combine) with n, median/mean/p90 km and accuracy at 1/5/25/200/750 km.
    Counts above the set's views per place are skipped."""
    rows = []
    for k in [k for k in n_views if k <= int(views["view"].max()) + 1]:
        for combine in combines:
            e = multiview_errors(model, clip_feat, scene_feat, views, n_views=k, combine=combine,
                                 top_provinces=top_provinces, top_cells=top_cells)
            rows += [{"split": s, "views": k, "combine": combine, **summarize_errors(g["error_km"].to_numpy(float))}
                     for s, g in e.groupby("split", sort=False)]
    return pd.DataFrame(rows)


def rule_combine(errors: dict, blocks, *, default: str = DEFAULT_COMBINE) -> tuple[str, list[dict]]:
    """The combine rule the adoption rule keeps: the predictor's ``default`` unless another rule's
    paired validation interval (median difference, block bootstrap) lies below zero against it.

    errors: {combine: per-place validation errors (km), aligned with ``blocks``}.
    Returns (chosen rule, rows: option, against, val Δ median km, lo, hi, adopted)."""
    from geopak_lib.bootstrap import choose_simplest

    order = [default] + [c for c in COMBINE if c != default and c in errors]
    return choose_simplest({c: np.asarray(errors[c], float) for c in order}, blocks=np.asarray(blocks))


def option_row(option: str, val_without, val_with, test_without, *, test_with, how: str = "", val_blocks) -> dict:
    """A row of 06's 'which options are on' table, decided by the one rule (bootstrap.adopt).

    val_without, val_with: per-image validation errors (km) of the simpler choice and of the option,
    aligned with ``val_blocks``; test_*: per-image test errors (shown, never used to choose).
    ``adopted``: the paired validation interval of the median difference lies below zero, the only
    condition under which an option may be on by default; ``in_the_predictor``: what the predictor
    does with it (``how``, e.g. "on by default" or "with --group-by")."""
    from geopak_lib.bootstrap import adopt

    ok, ci = adopt(np.asarray(val_without, float), np.asarray(val_with, float), blocks=np.asarray(val_blocks))
    return {"option": option, "val_median_km_without": float(np.median(val_without)),
            "val_median_km_with": float(np.median(val_with)), "val Δ median km": ci.value,
            "val Δ 95% lo": ci.lo, "val Δ 95% hi": ci.hi, "adopted": ok,
            "test_median_km_without": float(np.median(test_without)),
            "test_median_km_with": float(np.median(test_with)), "in_the_predictor": how}


OPTION_COLUMNS = ["option", "val_median_km_without", "val_median_km_with", "val Δ median km", "val Δ 95% lo",
                  "val Δ 95% hi", "adopted", "test_median_km_without", "test_median_km_with", "in_the_predictor"]


