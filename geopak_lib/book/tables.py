"""Tables in the HTML reports stay small at 100k rows (docs/decisions/report_size.md).

pandas truncates a DataFrame's HTML past ``display.max_rows`` and prints "M rows × K columns" under
it, but a Styler renders every row (26 MB for 100,000 rows of two columns), and ``to_html`` ignores
the display options. ``table_options`` sets both limits for a notebook; ``bounded_table`` is the
explicit form: the first rows, and a line saying how many of how many are shown.
"""

from __future__ import annotations

import html

import pandas as pd

TABLE_MAX_ROWS = 80  # a report table longer than this shows its head and says so
TABLE_MIN_ROWS = 20  # rows pandas shows (head and tail) of a truncated DataFrame


def table_options(max_rows: int = TABLE_MAX_ROWS) -> None:
    """Display limits for DataFrames and Stylers in a notebook (the reports are its outputs)."""
    pd.set_option("display.max_rows", max_rows)
    pd.set_option("display.min_rows", min(TABLE_MIN_ROWS, max_rows))
    pd.set_option("display.show_dimensions", "truncate")
    pd.set_option("styler.render.max_rows", max_rows)


class BoundedTable:
    """Displays as the first ``max_rows`` rows of a DataFrame (or a Styler's data) with a note
    "showing N of M rows" when it is longer; short tables display whole, with no note."""

    def __init__(self, table, max_rows: int = TABLE_MAX_ROWS, **to_html_kwargs):
        self.frame = table.data if hasattr(table, "data") and not isinstance(table, pd.DataFrame) else table
        self.max_rows, self.kwargs = max_rows, to_html_kwargs

    @property
    def note(self) -> str:
        n = len(self.frame)
        return "" if n <= self.max_rows else f"showing {self.max_rows:,} of {n:,} rows"

    def _repr_html_(self) -> str:
        # to_html escapes cell text by default: dataset strings stay text
        body = self.frame.head(self.max_rows).to_html(**self.kwargs)
        return body + (f"<p><i>{html.escape(self.note)}</i></p>" if self.note else "")

    def __repr__(self) -> str:
        return repr(self.frame.head(self.max_rows)) + (f"\n{self.note}" if self.note else "")


def bounded_table(table, max_rows: int = TABLE_MAX_ROWS, **to_html_kwargs) -> BoundedTable:
    """``display(bounded_table(df))``: at most ``max_rows`` rows, and a note when some are left out."""
    return BoundedTable(table, max_rows, **to_html_kwargs)
