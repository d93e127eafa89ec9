"""Tables and markdown from the outputs of an executed notebook, read as JSON (nothing is run).

pandas writes its tables as HTML (``DataFrame.to_html``) into a notebook's outputs; this reads them
back with the standard library's parser, for ``benchmarks/doc_figures.py``.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd


class _TableParser(HTMLParser):
    """A pandas ``to_html`` table as (columns, rows of (index labels, values)); handles the rowspan
    pandas writes for a repeated outer index label."""

    def __init__(self):
        super().__init__()
        self.header, self.rows, self._row, self._cell, self._in = [], [], None, None, ""
        self._span = {}  # index position -> [label, rows left]

    def handle_starttag(self, tag, attrs):
        if tag in ("thead", "tbody"):
            self._in = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td") and self._row is not None:
            self._cell = [tag, "", int(dict(attrs).get("rowspan", 1))]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._finish_row(self._row)
            self._row = None

    def _finish_row(self, cells):
        if self._in == "thead":
            if not self.header:
                self.header = [text.strip() for _, text, _ in cells]
            return
        heads = [(text.strip(), span) for kind, text, span in cells if kind == "th"]
        values = [text.strip() for kind, text, _ in cells if kind == "td"]
        labels, pos = [], 0
        # An outer label with rowspan > 1 is written once; the rows below it lack that <th>.
        while heads or self._span.get(pos, ["", 0])[1] > 0:
            if self._span.get(pos, ["", 0])[1] > 0:
                labels.append(self._span[pos][0])
                self._span[pos][1] -= 1
            else:
                text, span = heads.pop(0)
                labels.append(text)
                if span > 1:
                    self._span[pos] = [text, span - 1]
            pos += 1
        self.rows.append((tuple(labels), values))


def parse_html_table(html: str) -> pd.DataFrame:
    """A DataFrame with string cells, its index the row labels joined by ' / '."""
    parser = _TableParser()
    parser.feed(html)
    if not parser.rows:
        return pd.DataFrame()
    n_values = len(parser.rows[0][1])
    columns = parser.header[-n_values:] if n_values else []
    index = [" / ".join(labels) for labels, _ in parser.rows]
    return pd.DataFrame([values for _, values in parser.rows], index=index, columns=columns)


def notebook_outputs(path: Path) -> tuple[list[pd.DataFrame], list[str]]:
    """(every HTML table, every markdown output) of an executed notebook, in order."""
    if not path.is_file():
        return [], []
    tables, markdown = [], []
    for cell in json.loads(path.read_text()).get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            html = "".join(data.get("text/html", []))
            if "<table" in html:
                tables.append(parse_html_table(html))
            if "text/markdown" in data:
                markdown.append("".join(data["text/markdown"]))
    return tables, markdown


def find_table(tables: list[pd.DataFrame], *, row: str = "", column: str = "") -> pd.DataFrame | None:
    """The first table with a row label containing *row* and a column named *column*."""
    for table in tables:
        if column and column not in table.columns:
            continue
        if row and not any(row in label for label in table.index):
            continue
        return table
    return None


def cell(table, row: str, column: str):
    """One cell as a float where it parses, by exact row label or else the first containing *row*."""
    if table is None or column not in table.columns:
        return None
    hits = [label for label in table.index if row == label] or [label for label in table.index if row in label]
    if not hits:
        return None
    try:
        return float(table.loc[hits[0], column])
    except ValueError:
        return table.loc[hits[0], column]
