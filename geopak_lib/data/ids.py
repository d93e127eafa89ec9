"""Row ids that are safe to carry: an id names files (06's several-photos set), joins every
artifact and appears in reports, so validate rejects ids that could leave a folder, hide in a
listing or stand for another id (docs/decisions/sharing.md)."""

from __future__ import annotations

import unicodedata

# reason -> (action, why); merged into validate.REJECT_POLICY after empty_id/duplicate_id.
ID_POLICY = {
    "id_path_separator": ("drop", "an id with '/' or '\\' would name a file in another folder"),
    "id_dot_dot": ("drop", "an id with '..' could climb out of the run folder when it names a file"),
    "id_control_char": ("drop", "control characters (newline, tab, NUL, ...) break CSVs, logs and file names"),
    "id_whitespace": ("drop", "leading/trailing spaces make 'abc ' and 'abc' look the same but differ"),
    "id_case_collision": ("drop", "ids equal ignoring case collide on case-insensitive file systems; "
                                  "the first row is kept and named"),
}


def unsafe_id_reasons(value: str) -> list[tuple[str, str]]:
    """(reason, detail) for every way one id is unsafe; [] when it is fine."""
    out = []
    if "/" in value or "\\" in value:
        out.append(("id_path_separator", f"id {value!r} contains a path separator"))
    if ".." in value:
        out.append(("id_dot_dot", f"id {value!r} contains '..'"))
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        out.append(("id_control_char", f"id {value!r} contains a control character"))
    if value != value.strip():
        out.append(("id_whitespace", f"id {value!r} has leading or trailing whitespace"))
    return out


def id_problems(ids, blank) -> list[tuple[int, str, str]]:
    """(position, reason, detail) for the id column: empty, duplicate, unsafe, case collision."""
    problems, first_row, first_fold = [], {}, {}
    for i, (is_blank, value) in enumerate(zip(blank, ids)):
        if is_blank:
            problems.append((i, "empty_id", "id is empty"))
            continue
        value = str(value)
        problems += [(i, r, d) for r, d in unsafe_id_reasons(value)]
        fold = value.casefold()
        if value in first_row:
            problems.append((i, "duplicate_id", f"id {value!r} already used by row {first_row[value] + 1}"))
        elif fold in first_fold:
            j = first_fold[fold]
            problems.append((i, "id_case_collision", f"id {value!r} equals {ids[j]!r} of row {j + 1} "
                                                     "ignoring case"))
        else:
            first_row[value], first_fold[fold] = i, i
    return problems
