"""Figures, tables and maps of the geographic concepts (climate, land cover, urban): their
distribution per province in 00_data_audit. Labels come from geopak_lib.data.concepts."""

from __future__ import annotations

import html

import folium
import pandas as pd

from geopak_lib.book.report import MAP_MAX_POINTS, samples_map
from geopak_lib.constants import PROVINCES
from geopak_lib.data.concepts import OTHER, UNKNOWN, concept_by_province

# One colour per class name, close to the usual map colours (Köppen: red A, orange B, green C,
# blue D, grey E; IGBP: greens for forest, yellows for crops, red urban, white-blue snow).
CONCEPT_COLORS = {
    "A tropical": "#d7191c", "B arid": "#fdae61", "C temperate": "#1a9641", "D cold": "#2b83ba",
    "E polar": "#7b3294",
    "water": "#1f78b4", "evergreen needleleaf forest": "#05450a", "evergreen broadleaf forest": "#086a10",
    "deciduous needleleaf forest": "#54a708", "deciduous broadleaf forest": "#78d203", "mixed forest": "#009900",
    "forest": "#0b6e0b", "closed shrubland": "#c6b044", "open shrubland": "#dcd159", "shrubland": "#c9b84a",
    "woody savanna": "#dade48", "savanna": "#fbff13", "grassland": "#b6ff05", "permanent wetland": "#27ff87",
    "cropland": "#c24f44", "urban": "#a5a5a5", "cropland/natural mosaic": "#ff6d4c", "snow and ice": "#69fff8",
    "barren": "#f9ffa4", "rural": "#4daf4a", OTHER: "#cab2d6", UNKNOWN: "#000000",
}


def concept_color(name: str) -> str:
    return CONCEPT_COLORS.get(name, "#666666")


def concept_shares(manifest: pd.DataFrame, concept: str) -> pd.DataFrame:
    """Per province (rows, PROVINCES order, plus 'all'): the count of each class and its share in %,
    as 'n (s%)' strings, with the province's n. The table 00 shows for each concept."""
    counts = concept_by_province(manifest, concept, PROVINCES)
    counts.loc["all"] = counts.sum()
    share = 100 * counts.div(counts.sum(axis=1), axis=0)
    table = counts.astype(int).astype(str) + " (" + share.round(0).astype(int).astype(str) + "%)"
    table.insert(0, "n", counts.sum(axis=1).astype(int))
    return table.rename_axis(index="province", columns=concept)


def concept_province_chart(manifest: pd.DataFrame, concept: str, ax=None):
    """Horizontal stacked bars: the share of each class of ``concept`` in each province. -> figure."""
    import matplotlib.pyplot as plt

    counts = concept_by_province(manifest, concept, PROVINCES)
    share = 100 * counts.div(counts.sum(axis=1), axis=0)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.45 * len(share) + 1.4))
    left = pd.Series(0.0, index=share.index)
    for name in share.columns:
        ax.barh(share.index, share[name], left=left, color=concept_color(name), edgecolor="#444", lw=0.3,
                label=name)
        left += share[name]
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the province's samples")
    ax.set_title(f"{concept.replace('_', ' ')} per province (from the location)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def concept_map(manifest: pd.DataFrame, concept: str, max_points: int = MAP_MAX_POINTS) -> folium.Map:
    """Offline map of the samples, one layer (and colour) per class of ``concept``, with a legend."""
    classes = manifest[concept].value_counts()
    colors = {name: concept_color(name) for name in classes.index}
    m = samples_map(manifest, group_col=concept, colors=colors, popup_cols=("id", "province", concept),
                    max_points=max_points)
    rows = "".join(f'<div><span style="display:inline-block;width:12px;height:12px;background:{colors[n]};'
                   f'margin-right:6px;border:1px solid #555"></span>{html.escape(str(n))} ({k})</div>' for n, k in classes.items())
    # bottom left: the layer control (one layer per class) sits top right
    m.get_root().html.add_child(folium.Element(
        f'<div style="position:absolute;bottom:24px;left:10px;z-index:1000;background:white;padding:6px 8px;'
        f'border:1px solid #999;font:12px sans-serif"><b>{concept.replace("_", " ")}</b>{rows}</div>'))
    return m
