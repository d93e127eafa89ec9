"""07's map of one image predicted without and with refinement inside the cells (offline folium)."""

from __future__ import annotations

import folium

from geopak_lib.book.figures import add_legend
from geopak_lib.book.report import offline_map
from geopak_lib.metrics import error_km

PLAIN, REFINED, TRUTH = "#2166ac", "#d6604d", "#1a9850"


def _marker(m, lat, lon, colour, tooltip, size=12):
    dot = (f'<div style="width:{size}px;height:{size}px;margin:-{size // 2 + 2}px 0 0 -{size // 2 + 2}px;'
           f'border-radius:50%;background:{colour};border:2px solid #fff;box-shadow:0 0 2px #000"></div>')
    folium.Marker([lat, lon], icon=folium.DivIcon(html=dot), tooltip=tooltip).add_to(m)


def refinement_map(plain: dict, refined: dict, truth=None) -> folium.Map:
    """Both predictions (predictor results for the same image) with their hypotheses; an arrow-like
    line from each plain hypothesis to where refinement moved it (matched by cell)."""
    m = offline_map()
    moved = {h["cell_id"]: h for h in refined["hypotheses"]}
    for h in plain["hypotheses"]:
        r = moved.get(h["cell_id"])
        folium.CircleMarker([h["lat"], h["lon"]], radius=2 + 15 * h["weight"] ** 0.5, color=PLAIN, weight=1,
                            fill=True, fill_opacity=0.3, tooltip=f"plain: cell {h['cell_id']}, weight {h['weight']:.3f}"
                            ).add_to(m)
        if r is not None:
            folium.PolyLine([[h["lat"], h["lon"]], [r["lat"], r["lon"]]], color=REFINED, weight=1.5).add_to(m)
            folium.CircleMarker([r["lat"], r["lon"]], radius=2 + 15 * r["weight"] ** 0.5, color=REFINED, weight=1,
                                fill=True, fill_opacity=0.3,
                                tooltip=f"refined: cell {r['cell_id']}, weight {r['weight']:.3f}").add_to(m)
    items = []
    for res, colour, name in ((plain, PLAIN, "plain mixture"), (refined, REFINED, "refined")):
        err = "" if truth is None else f", error {float(error_km(res['lat'], res['lon'], *truth)):.1f} km"
        _marker(m, res["lat"], res["lon"], colour, f"{name}: {res['lat']:.3f}, {res['lon']:.3f}{err}", 14)
        folium.Circle([res["lat"], res["lon"]], radius=res["radius_km"] * 1000, color=colour, weight=1.2, fill=False,
                      dash_array="6 4", tooltip=f"{name} error radius {res['radius_km']:.0f} km").add_to(m)
        items.append((colour, f"{name} (hypotheses, prediction, radius){err}"))
    if truth is not None:
        _marker(m, truth[0], truth[1], TRUTH, f"truth {truth[0]:.3f}, {truth[1]:.3f}")
        items.append((TRUTH, "truth"))
    return add_legend(m, "plain vs refined", items)
