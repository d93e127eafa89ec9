"""The explorer of 08_explore: pick a test image (by id, the worst N, the most confidently wrong) or
upload a photo, and see the image, the prediction with its radius, the hypotheses map and, where
the predictor gives them, concept scores; top provinces, top cells and TTA re-draw the map.

:class:`Explorer` holds the state and does the work (tested without a browser); :class:`ExplorerApp`
wires it to ipywidgets, with the folium map re-rendered into an ``Output``. The model's outputs
for the current image are kept per TTA setting, so moving a slider re-runs only the mixture
(milliseconds), and TTA runs the encoders once more (five views).
"""

from __future__ import annotations

import html
import io

import ipywidgets as w
from branca.element import MacroElement
from folium.template import Template
import numpy as np
import pandas as pd
from IPython.display import Markdown
from PIL import Image, ImageOps, UnidentifiedImageError

from geopak_lib.book.figures import describe_prediction, hypotheses_map
from geopak_lib.book.report import ShowMap
from geopak_lib.book.tables import bounded_table
from geopak_lib.constants import NUM_PROVINCES, PROVINCES
from geopak_lib.data.augment import clean_transform
from geopak_lib.data.images import load_rgb
from geopak_lib.analysis.frame import predictor_frames
from geopak_lib.analysis.prediction_files import read_test_predictions, save_test_predictions
from geopak_lib.training.inputs import load_data
from geopak_lib.utils import softmax

PICKS = {"worst": "worst N (largest error)", "confident_wrong": "most confident, wrong province", "id": "by id"}


def load_test_predictions(predictor, run_dir, batch_size: int = 64, num_workers: int = 0) -> pd.DataFrame:
    """The test predictions of ``predictor``'s checkpoint: 06's saved frame, or computed once (the
    encoders on every test image, in batches) and saved for the next time."""
    frame = read_test_predictions(run_dir, predictor.checkpoint)
    if frame is None:
        table = load_data(run_dir).table
        frame = predictor_frames(predictor, table, splits=("test",), batch_size=batch_size,
                                 num_workers=num_workers)["test"]
        save_test_predictions(run_dir, frame, predictor.checkpoint)
    return frame


def pick_ids(frame: pd.DataFrame, pick: str, *, n: int = 10, temperature: float = 1.0,
             error_col: str = "error_km") -> list[str]:
    """Test ids for a pick: 'worst' (n largest ``error_col``), 'confident_wrong' (the n wrong
    provinces with the highest confidence, softmax(logits / temperature)) or 'id' (every id, sorted)."""
    if pick == "worst":
        return frame.nlargest(n, error_col)["id"].tolist()
    if pick == "confident_wrong":
        conf = softmax(frame[[f"logit_{p}" for p in range(NUM_PROVINCES)]].to_numpy(float) / temperature).max(1)
        wrong = frame.assign(confidence=conf)[frame["province_pred"] != frame["province_id"]]
        return wrong.nlargest(n, "confidence")["id"].tolist()
    if pick == "id":
        return sorted(frame["id"])
    raise ValueError(f"pick must be one of {list(PICKS)}, got {pick!r}")


def uploaded_image(value) -> tuple[Image.Image, str]:
    """A FileUpload value (ipywidgets 8: a tuple of {name, content, ...}) -> (RGB image, file name),
    the last file uploaded. ValueError with one line when it is not an image Pillow reads."""
    if not value:
        raise ValueError("no file uploaded")
    item = value[-1]
    name = item.get("name", "upload")
    try:
        img = Image.open(io.BytesIO(bytes(item["content"])))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{name}: not an image Pillow can read ({type(exc).__name__})") from None
    return ImageOps.exif_transpose(img).convert("RGB"), name


def png_bytes(img: Image.Image, size: int = 256) -> bytes:
    """The image as PNG, at most ``size`` px on its longer side (for the widget)."""
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def concepts_table(result: dict) -> pd.DataFrame | None:
    """What the predictor says the image shows, when it says anything (else None): one row per
    (concept, class) of the concept heads' top classes ({concept: [(class, probability), ...]}) and
    of the zero-shot text probes ([(phrase, cosine similarity)], concept "text probe"), each
    concept's best first."""
    rows = [(name, cls, p) for name, top in (result.get("concepts") or {}).items() for cls, p in top]
    rows += [("text probe", phrase, s) for phrase, s in result.get("probes") or []]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["concept", "class", "score"])


class Explorer:
    """State of the explorer: the chosen image (a test row or an upload), the mixture settings, and
    the model outputs for that image per TTA setting."""

    def __init__(self, predictor, frame: pd.DataFrame, *, top_provinces: int = 2, top_cells: int = 5,
                 tta: bool = False):
        self.predictor, self.frame = predictor, frame.set_index("id", drop=False)
        self.top_provinces, self.top_cells, self.tta = top_provinces, top_cells, tta
        self.image, self.title, self.truth, self._outputs = None, "", None, {}
        self.max_cells = int(np.bincount(predictor.model.cell_province_id.cpu().numpy()).max())
        # the error of what the explorer shows: refined when the predictor refines and 06 saved refined figures
        refined = predictor.gallery is not None and "refined_error_km" in self.frame
        self.error_col, self.error_kind = ("refined_error_km", "refined") if refined else ("error_km", "plain")

    @property
    def temperature(self) -> float:
        block = self.predictor.calibration_block()  # the block of the predictor's mode, or uncalibrated
        return block.temperature if block is not None else 1.0

    def label(self, image_id: str) -> str:
        """A dropdown label: id, true -> predicted province, error (refined or plain, as the predictor
        predicts; error_kind), confidence, as 06 computed them (single view)."""
        r = self.frame.loc[image_id]
        return (f"{image_id} · {r['province']} → {PROVINCES[int(r['province_pred'])]} · "
                f"{r[self.error_col]:.0f} km {self.error_kind} · conf {r['confidence']:.2f}")

    def choose_test(self, image_id: str) -> dict:
        if image_id not in self.frame.index:
            raise KeyError(f"{image_id!r} is not a test image of this run")
        r = self.frame.loc[image_id]
        return self._set(load_rgb(r["image_path"]), f"test image {image_id} ({r['province']})",
                         (float(r["latitude"]), float(r["longitude"])))

    def choose_upload(self, value) -> dict:
        img, name = uploaded_image(value)
        return self._set(img, f"your image {name}", None)

    def _set(self, image, title, truth) -> dict:
        self.image, self.title, self.truth, self._outputs = image, title, truth, {}
        return self.result()

    def set_options(self, top_provinces: int | None = None, top_cells: int | None = None,
                    tta: bool | None = None) -> dict:
        self.top_provinces = self.top_provinces if top_provinces is None else int(top_provinces)
        self.top_cells = self.top_cells if top_cells is None else int(top_cells)
        self.tta = self.tta if tta is None else bool(tta)
        return self.result()

    def result(self) -> dict:
        """The predictor's result dict for the current image and settings (see GeopakPredictor.predict)."""
        if self.image is None:
            raise ValueError("no image chosen yet")
        p = self.predictor
        if self.tta not in self._outputs:  # the encoders run only here
            view = clean_transform(p.image_size)(self.image).unsqueeze(0)
            self._outputs[self.tta] = p.forward_images(view, tta=self.tta)
        p.top_provinces, p.top_cells, p.tta = self.top_provinces, self.top_cells, self.tta  # tta: its calibration
        return p.results_from_outputs(self._outputs[self.tta])[0]

    def summary(self, result: dict) -> str:
        """Markdown: title, prediction, radius, error (test images) and the settings."""
        # the title carries a dataset id or an uploaded file name: data, never markup (docs/decisions/sharing.md)
        return (f"**{html.escape(self.title)}**: " + describe_prediction(result, self.truth) +
                f" Mixture of the top {self.top_provinces} provinces × top {self.top_cells} cells"
                f" ({len(result['hypotheses'])} hypotheses), TTA {'on' if self.tta else 'off'}.")

    def map(self, result: dict):
        """The hypotheses map, without 07's heat layer: in a widget ``Output`` the map's page runs
        before its frame has a size, and Leaflet.heat then fails (getImageData of a 0-wide canvas),
        stopping the script before the markers are drawn. The circles (area ∝ weight) remain."""
        m = hypotheses_map(result, self.truth, heat=False)
        m.add_child(RedrawOnResize())
        return m


class RedrawOnResize(MacroElement):
    """Redraw a map when its container changes size. A map re-rendered into a widget ``Output`` can
    start in a frame of no size, and Leaflet's canvas layers (outlines, circles) then stay empty
    until ``invalidateSize`` (seen once in headless Chromium after a slider move: only the markers
    were drawn; not reproduced since, so this is a guard, and tests/test_lab.py checks the pixels)."""

    _template = Template("""{% macro script(this, kwargs) %}
        new ResizeObserver(function () { {{ this._parent.get_name() }}.invalidateSize(); })
            .observe({{ this._parent.get_name() }}.getContainer());
    {% endmacro %}""")


class ExplorerApp:
    """The widgets around an :class:`Explorer`. Displayed, it is the live widget in JupyterLab and,
    for reports (which carry no widget JavaScript), a static HTML copy of its current state."""

    def __init__(self, explorer: Explorer, n: int = 10, pick: str = "worst", image_id: str = ""):
        self.explorer, self.n = explorer, n
        label, auto = {"description_width": "initial"}, w.Layout(width="auto")
        self.pick = w.ToggleButtons(options=[(v, k) for k, v in PICKS.items()], value=pick, description="pick",
                                    style={**label, "button_width": "auto"})
        self.images = w.Dropdown(description="test image", style=label, layout=w.Layout(width="640px"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload a photo", layout=auto)
        self.top_provinces = w.IntSlider(explorer.top_provinces, min=1, max=NUM_PROVINCES, description="top provinces",
                                         style=label)
        self.top_cells = w.IntSlider(explorer.top_cells, min=1, max=max(explorer.max_cells, 1), description="top cells",
                                     style=label)
        self.tta = w.Checkbox(explorer.tta, description="TTA (5 views)", style=label)
        self.image = w.Image(format="png", layout=w.Layout(width="256px"))
        self.info, self.concepts, self.map_out = w.Output(), w.Output(), w.Output()
        self.status, self.result, self._filling = w.HTML(), None, False
        self._fill_images(image_id)
        self.pick.observe(lambda _: self._fill_images(), "value")
        self.images.observe(lambda ch: ch["new"] and not self._filling and self.show_test(ch["new"]), "value")
        self.upload.observe(lambda ch: self.show_upload(ch["new"]), "value")
        for control in (self.top_provinces, self.top_cells, self.tta):
            control.observe(lambda _: self.update(), "value")
        self.widget = w.VBox([
            w.HBox([self.pick, self.upload]), self.images,
            w.HBox([self.top_provinces, self.top_cells, self.tta]), self.status,
            w.HBox([self.image, w.VBox([self.info, self.concepts], layout=w.Layout(flex="1"))]), self.map_out])
        self.widget.add_class("geopak-explorer")

    def _fill_images(self, image_id: str = "") -> None:
        ex = self.explorer
        ids = pick_ids(ex.frame, self.pick.value, n=self.n, temperature=ex.temperature, error_col=ex.error_col)
        if image_id and image_id not in ids:
            ids.insert(0, image_id)  # a test id asked for by the parameters; choose_test checks it
        first = ids[0] if ids else None
        self._filling = True  # new options move the value: show the first image once, below
        try:
            self.images.options = [(ex.label(i) if i in ex.frame.index else i, i) for i in ids]
            self.images.value = first
        finally:
            self._filling = False
        if first is None:
            self._say(f"no test image fits “{PICKS[self.pick.value]}”")
        else:
            self.show_test(first)

    def show_test(self, image_id: str) -> None:
        self._render(lambda: self.explorer.choose_test(image_id))

    def show_upload(self, value) -> None:
        if value:
            self._render(lambda: self.explorer.choose_upload(value))

    def update(self) -> None:
        self._render(lambda: self.explorer.set_options(self.top_provinces.value, self.top_cells.value, self.tta.value))

    def _say(self, text: str) -> None:
        self.status.value = f"<span style='color:#b00'>{html.escape(text)}</span>" if text else ""

    def _render(self, compute) -> None:
        """Compute a state and draw it; a bad upload or id is one line in the status, nothing else changes."""
        try:
            result = compute()
        except (ValueError, KeyError) as exc:
            self._say(str(exc).strip("'\""))
            return
        self._say("")
        ex = self.explorer
        self.result = result
        self.image.value = png_bytes(ex.image)
        _show(self.info, Markdown(ex.summary(result)))
        table = concepts_table(result)
        _show(self.concepts, *(() if table is None else (Markdown("**Concept scores**"), table.round(3))))
        _show(self.map_out, ShowMap(ex.map(result)))

    def static_html(self) -> str:
        """The current state as plain HTML: image, summary, concepts, map."""
        import base64

        import mistune

        ex, r = self.explorer, self.result
        img = f'<img src="data:image/png;base64,{base64.b64encode(png_bytes(ex.image)).decode()}" width="256">'
        table = concepts_table(r)
        extra = "" if table is None else "<b>Concept scores</b>" + bounded_table(table.round(3), index=False)._repr_html_()
        return (f'<div class="geopak-explorer-static"><div style="display:flex;gap:12px">{img}<div>'
                f"{mistune.html(ex.summary(r))}{extra}</div></div>{ShowMap(ex.map(r))._repr_html_()}</div>")

    def _repr_mimebundle_(self, **kwargs):
        return {**self.widget._repr_mimebundle_(**kwargs), "text/html": self.static_html()}


def _show(out: w.Output, *objects) -> None:
    """Replace what an Output widget shows (works with and without a kernel)."""
    out.outputs = ()
    for obj in objects:
        out.append_display_data(obj)
