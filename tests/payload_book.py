"""Script payloads for the book-level markup test (tests/test_book_smoke.py): a smoke dataset whose
ids, image file names and a free-text column carry HTML that runs when it is written as markup.

Ids may not hold '/' or '..' (data/ids.py), so the payloads that pass validation are attribute
handlers (``<img src=x onerror=...>``, ``<svg onload=...>``); two extra rows carry a ``<script>``
id with '/', which validation rejects and the rejects table must still show as text.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd

PAYLOAD_MARK = "PWNED"
# each sets the frame's title when it runs; the browser check reads every frame's title
PAYLOADS = (f"<img src=x onerror=\"document.title='{PAYLOAD_MARK}-img'\">",
            f"<svg onload=\"document.title='{PAYLOAD_MARK}-svg'\">",
            f"<b onmouseover=alert(1) id='{PAYLOAD_MARK}-b'>")
REJECTED_PAYLOAD = f"<script>document.title='{PAYLOAD_MARK}-script'</script>"
RAW_RE = re.compile(r"<(img src=x onerror|svg onload|b onmouseover|script>document\.title)", re.I)
SRCDOC_RE = re.compile(r"""\ssrcdoc=(?:"([^"]*)"|'([^']*)')""", re.S)


def add_payloads(folder: Path, every: int = 10) -> None:
    """Rewrite a copy of the smoke dataset in place: every ``every``-th row gets a payload in its id
    and in its image's file name (the file renamed), all rows a ``note`` column with one, and two
    extra rows with an id that validation rejects."""
    folder = Path(folder)
    samples = pd.read_csv(folder / "samples.csv", dtype=str)
    meta = pd.read_csv(folder / "demo_meta.csv", dtype=str)
    renamed = {}
    for i in range(0, len(samples), every):
        payload = PAYLOADS[(i // every) % len(PAYLOADS)]
        old_id, old_image = samples.at[i, "id"], samples.at[i, "image"]
        new_id, new_image = f"{old_id}{payload}", f"{Path(old_image).stem}{payload}.jpg"
        shutil.move(folder / "images" / old_image, folder / "images" / new_image)
        samples.at[i, "id"], samples.at[i, "image"] = new_id, new_image
        renamed[old_id] = new_id
    meta["id"] = meta["id"].map(lambda v: renamed.get(v, v))
    meta.loc[meta["id"].isin(renamed.values()), "town"] = PAYLOADS[1]
    samples["note"] = PAYLOADS[0]
    extra = samples.iloc[[1, 2]].copy()
    extra["id"] = [f"x{k}{REJECTED_PAYLOAD}" for k in range(2)]
    extra["image"] = "missing.jpg"  # not a copy of a kept row's image: no duplicate to reject
    pd.concat([samples, extra]).to_csv(folder / "samples.csv", index=False)
    meta.to_csv(folder / "demo_meta.csv", index=False)


def raw_payloads_in(page: str) -> list[str]:
    """Payload markup in an HTML page or in the documents of its iframes' srcdoc attributes (which
    the browser parses after unescaping the attribute once)."""
    hits = [m.group(0) for m in RAW_RE.finditer(page)]
    for m in SRCDOC_RE.finditer(page):
        hits += raw_payloads_in(html.unescape(m.group(1) if m.group(1) is not None else m.group(2)))
    return hits


def titles_after_loading(pages, wait_ms: int = 1500) -> dict:
    """{page: [title of each frame]} after each page loads in headless Chromium (skips the test
    when Chromium or playwright is absent)."""
    import pytest

    chromium = shutil.which("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    if not chromium:
        pytest.skip("no headless Chromium (apt-get install chromium)")
    titles = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        for path in pages:
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            page.wait_for_timeout(wait_ms)
            titles[str(path)] = [f.evaluate("document.title") for f in page.frames if not f.is_detached()]
        browser.close()
    return titles
