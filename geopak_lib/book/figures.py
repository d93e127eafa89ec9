"""Figures and offline maps of the evaluation report (06_evaluation) and the predictor (07_predict).

Maps are folium maps on report.offline_map (no tiles, Leaflet inlined); show them with
report.ShowMap. Colours of errors use fixed km buckets so that maps of different runs compare.
"""

from __future__ import annotations

from html import escape

import folium
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.metrics import confusion_matrix
from geopak_lib.book.report import MAP_MAX_POINTS, PROVINCE_COLORS, add_map_note, offline_map
from geopak_lib.data.images import load_rgb
from geopak_lib.metrics import error_km

ERROR_BUCKETS = ((25, "#1a9850", "≤ 25 km"), (100, "#91cf60", "25–100 km"), (200, "#fee08b", "100–200 km"),
                 (750, "#fc8d59", "200–750 km"), (np.inf, "#d73027", "> 750 km"))


def error_color(km: float) -> str:
    return next(c for hi, c, _ in ERROR_BUCKETS if km <= hi)


def add_legend(m: folium.Map, title: str, items) -> folium.Map:
    """A fixed legend box (pure HTML, nothing fetched): items = [(colour, label)]."""
    rows = "".join(f'<div><span style="display:inline-block;width:12px;height:12px;background:{c};'
                   f'margin-right:6px;border:1px solid #555"></span>{label}</div>' for c, label in items)
    html = (f'<div style="position:absolute;top:10px;right:10px;z-index:1000;background:white;padding:6px 8px;'
            f'border:1px solid #999;font:12px sans-serif"><b>{title}</b>{rows}</div>')
    m.get_root().html.add_child(folium.Element(html))
    return m


def error_legend(m: folium.Map, title: str = "error") -> folium.Map:
    return add_legend(m, title, [(c, label) for _, c, label in ERROR_BUCKETS])


# --- figures ------------------------------------------------------------------------------------

def error_cdf(curves: dict, title: str = "Error CDF on the test split"):
    """Fraction of images within d km against d (log x), one line per method; curves {name: errors km}."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, e) in enumerate(curves.items()):
        e = np.sort(np.asarray(e, float))
        ax.step(np.maximum(e, 0.1), np.arange(1, len(e) + 1) / len(e), where="post", lw=2.2 if i == 0 else 1.3,
                label=name, ls="-" if i < 4 else "--")
    for t in (1, 5, 25, 200, 750):
        ax.axvline(t, color="grey", lw=0.6, ls=":")
    ax.set(xscale="log", xlabel="error d (km, log scale)", ylabel="fraction of images with error ≤ d",
           ylim=(0, 1.01), title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def confusion_plot(true, pred, title: str = "Province confusion (test), rows normalised"):
    """Heat map of the row-normalised confusion matrix with counts in the cells."""
    cm = confusion_matrix(true, pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = cm / cm.sum(1, keepdims=True)
    short = [PROVINCE_SHORT[p] for p in PROVINCES]
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(short)):
        for j in range(len(short)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(short)), short, rotation=45, ha="right")
    ax.set_yticks(range(len(short)), short)
    ax.set(xlabel="predicted province", ylabel="true province", title=title)
    ax.grid(False)
    fig.tight_layout()
    return fig


def reliability_plot(bins_before: pd.DataFrame, bins_after: pd.DataFrame, temperature: float, ece: tuple):
    """Reliability diagram of province confidence: accuracy against confidence per bin, before and
    after temperature scaling; marker area ∝ images in the bin."""
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for bins, label, color in ((bins_before, f"T = 1 (ECE {ece[0]:.3f})", "#d73027"),
                               (bins_after, f"T = {temperature:.2f} (ECE {ece[1]:.3f})", "#1a9850")):
        b = bins[bins["n"] > 0]
        ax.plot(b["confidence"], b["accuracy"], "-", color=color, lw=1.2)
        ax.scatter(b["confidence"], b["accuracy"], s=10 + 200 * b["n"] / b["n"].sum(), color=color, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (probability of the predicted province)",
           ylabel="accuracy", title="Reliability of province confidence (test)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# --- maps ----------------------------------------------------------------------------------------

def error_map(frame: pd.DataFrame, title: str = "test error") -> folium.Map:
    """Test points at their true position, coloured by the mixture's error (at most MAP_MAX_POINTS,
    a seeded sample, with the count on the map: each marker costs ~1 kB of report HTML)."""
    m = offline_map()
    shown = frame if len(frame) <= MAP_MAX_POINTS else frame.sample(MAP_MAX_POINTS, random_state=0)
    add_map_note(m, len(shown), len(frame), "test images")
    layer = folium.FeatureGroup(name=f"test images ({len(shown)} of {len(frame)})")
    for r in shown.itertuples(index=False):
        folium.CircleMarker([r.latitude, r.longitude], radius=4, color="#333", weight=0.5, fill=True,
                            fill_color=error_color(r.error_km), fill_opacity=0.9,
                            popup=f"<b>{escape(str(r.id))}</b><br>{escape(str(r.province))}<br>error {r.error_km:.1f} km").add_to(layer)
    layer.add_to(m)
    return error_legend(m, title)


def worst_map(frame: pd.DataFrame, n: int = 15) -> folium.Map:
    """The n largest errors: truth (green), prediction (red) and a line between them."""
    m = offline_map()
    for r in frame.nlargest(n, "error_km").itertuples(index=False):
        # ids and provinces are dataset strings: Leaflet renders tooltips as HTML (docs/decisions/sharing.md)
        tip = f"{escape(str(r.id))}: {r.error_km:.0f} km ({escape(str(r.province))} → {PROVINCES[int(r.province_pred)]})"
        folium.PolyLine([[r.latitude, r.longitude], [r.mixture_lat, r.mixture_lon]], color="#555", weight=1.5,
                        tooltip=tip).add_to(m)
        folium.CircleMarker([r.latitude, r.longitude], radius=5, color="#1a9850", fill=True, fill_opacity=1,
                            tooltip="truth: " + tip).add_to(m)
        folium.CircleMarker([r.mixture_lat, r.mixture_lon], radius=5, color="#d73027", fill=True, fill_opacity=1,
                            tooltip="prediction: " + tip).add_to(m)
    return add_legend(m, f"{n} worst predictions", [("#1a9850", "truth"), ("#d73027", "prediction")])


def cell_error_map(frame: pd.DataFrame, cells: pd.DataFrame) -> folium.Map:
    """Mean error of the test images of each (true) geocell, as a circle of the cell's radius."""
    m = offline_map()
    agg = frame[frame["cell_id"] >= 0].groupby("cell_id")["error_km"].agg(["mean", "median", "size"])
    for cid, r in agg.iterrows():
        c = cells.loc[cells["cell_id"] == cid].iloc[0]
        tip = (f"cell {cid} ({escape(str(c['province']))}): {int(r['size'])} test images, mean error {r['mean']:.0f} km, "
               f"median {r['median']:.0f} km")
        folium.Circle([c["center_lat"], c["center_lon"]], radius=max(float(c["radius_km"]), 3.0) * 1000,
                      color=error_color(r["mean"]), weight=2, fill=True, fill_opacity=0.45, tooltip=tip).add_to(m)
    return error_legend(m, "mean error per cell")


def hypotheses_map(result: dict, truth=None, heat: bool = True) -> folium.Map:
    """One prediction: hypotheses as circles (area ∝ weight, province colour), the final point, the
    calibrated radius, an optional heat layer of the hypothesis weights and the truth (lat, lon)."""
    from folium.plugins import HeatMap

    m = offline_map()
    if heat:
        HeatMap([[h["lat"], h["lon"], h["weight"]] for h in result["hypotheses"]], name="hypothesis density",
                radius=28, blur=22, min_opacity=0.25, max_zoom=7).add_to(m)
    for k, h in enumerate(result["hypotheses"], 1):
        folium.CircleMarker([h["lat"], h["lon"]], radius=3 + 25 * np.sqrt(h["weight"]),
                            color=PROVINCE_COLORS[h["province"]], weight=1.5, fill=True, fill_opacity=0.35,
                            tooltip=f"#{k} {escape(str(h['province']))}, cell {h['cell_id']}: weight {h['weight']:.3f}").add_to(m)
    folium.Circle([result["lat"], result["lon"]], radius=result["radius_km"] * 1000, color="#000", weight=1.5,
                  fill=False, dash_array="6 4",
                  tooltip=f"error radius {result['radius_km']:.0f} km"
                          + (" (80% calibrated)" if result["radius_calibrated"] else " (uncalibrated)")).add_to(m)
    folium.Marker([result["lat"], result["lon"]], tooltip=f"prediction {result['lat']:.3f}, {result['lon']:.3f}",
                  icon=folium.DivIcon(html='<div style="font-size:22px;color:#000;margin:-14px 0 0 -7px">✚</div>')
                  ).add_to(m)
    items = [("#000", "prediction ✚ and error radius")]
    if truth is not None:
        dot = ('<div style="width:12px;height:12px;margin:-8px 0 0 -8px;border-radius:50%;background:#1a9850;'
               'border:2px solid #fff;box-shadow:0 0 2px #000"></div>')  # a marker: drawn above the heat layer
        folium.Marker(list(truth), icon=folium.DivIcon(html=dot),
                      tooltip=f"truth {truth[0]:.3f}, {truth[1]:.3f}").add_to(m)
        items.append(("#1a9850", "truth"))
    return add_legend(m, "hypotheses (area ∝ weight)", items)


def where_text(result: dict) -> str:
    """", 12 km from Kotri (Jamshoro district, Sindh)" for a predictor result; the province alone
    (or nothing outside Pakistan) when the point has no place within data.places.PLACE_MAX_KM."""
    if result.get("place"):
        return (f", {result['place_km']:.0f} km from {escape(str(result['place']))} "
                f"({escape(str(result['district']))} district, {escape(str(result['place_province']))})")
    return (f", in {escape(str(result['place_province']))} (no named place nearby)"
            if result.get("place_province") else "")


def describe_prediction(result: dict, truth=None) -> str:
    """Markdown summary of one predictor result; with truth (lat, lon), the error too."""
    radius = (f"{result['radius_km']:.0f} km ({100 * result['radius_coverage']:.0f}% radius, calibrated on validation)"
              if result["radius_calibrated"] else f"{result['radius_km']:.0f} km (uncalibrated: run 06_evaluation)")
    text = (f"**{result['province']}** (confidence {result['confidence']:.2f}) at **{result['lat']:.4f}, "
            f"{result['lon']:.4f}**{where_text(result)}; error radius {radius}; fusion gate α = {result['alpha']:.2f}.")
    if truth is not None:
        err = float(error_km(result["lat"], result["lon"], truth[0], truth[1]))
        text += f" Truth: {truth[0]:.4f}, {truth[1]:.4f}, so the error is **{err:.1f} km**."
    if result.get("concepts"):  # the concept heads' top classes (docs/decisions/concepts.md)
        text += "\n\nConcepts the model reads in the image: " + "; ".join(
            f"{name.replace('_', ' ')}: " + ", ".join(f"{c} {p:.2f}" for c, p in top)
            for name, top in result["concepts"].items()) + "."
    if result.get("probes"):  # zero-shot text probes: cosine similarity to "a photo of …" (model/probes.py)
        text += "\n\nCLIP's text probes (cosine similarity): " + ", ".join(f"{c} {s:.2f}" for c, s in result["probes"]) + "."
    return text


def image_figure(path, title: str = ""):
    """The image itself, small, as a figure."""
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(load_rgb(path))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig
