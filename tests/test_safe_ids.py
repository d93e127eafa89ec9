"""Ids that cannot escape: validate rejects unsafe or colliding ids with a reason, and every file
named from data goes through utils.safe_child (docs/decisions/sharing.md)."""

from pathlib import Path

import pandas as pd
import pytest

from geopak_lib.book.demo_views import build_multiview_set
from geopak_lib.data.validate import REJECT_POLICY, validate_dataset
from geopak_lib.utils import safe_child, safe_name

KARACHI = (24.86, 67.01)


def test_validate_rejects_unsafe_and_case_colliding_ids_each_with_its_reason(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"not empty")
    ids = {"ok": set(), "ABC": set(), "abc": {"id_case_collision"}, "abc ": {"id_whitespace"},
           "a/b": {"id_path_separator"}, "a\\b": {"id_path_separator"}, "x..y": {"id_dot_dot"},
           "../../../../etc/evil": {"id_path_separator", "id_dot_dot"}, "tab\there": {"id_control_char"},
           "nul\x00": {"id_control_char"}, "ok2": set(), "OK2": {"id_case_collision"}, "ok2 ": {"id_whitespace"}}
    table = pd.DataFrame({"id": list(ids), "image": "a.jpg", "latitude": KARACHI[0], "longitude": KARACHI[1],
                          "province": "Sindh"})
    table.to_parquet(tmp_path / "data.parquet")  # parquet keeps tabs, NULs and trailing spaces as written
    result = validate_dataset(tmp_path / "data.parquet", tmp_path / "img", check_images=False, progress=False)
    got = result.rejects.groupby("id")["reason"].apply(set).to_dict()
    assert got == {i: r for i, r in ids.items() if r}
    assert set(result.manifest["id"]) == {"ok", "ABC", "ok2"}
    assert set(result.rejects["reason"]) <= set(REJECT_POLICY)
    collision = result.rejects[result.rejects["id"] == "abc"]["detail"].iloc[0]
    assert "'ABC'" in collision and "row 2" in collision  # names the first row it collides with
    assert result.summary().set_index(result.summary().columns[0]).shape[0] >= len(REJECT_POLICY)


@pytest.mark.parametrize("name, expected", [("t35_a-b.c", "t35_a-b.c"), ("abc", "abc")])
def test_safe_name_keeps_a_plain_name(name, expected):
    assert safe_name(name) == expected


def test_safe_name_replaces_unsafe_characters_and_tags_the_original():
    a, b = safe_name("a/b"), safe_name("a_b")
    assert b == "a_b" and a.startswith("a_b-") and len(a) == len("a_b-") + 8 and a != b
    assert safe_name("../../etc") .startswith("_._.._etc-")  # no leading dot, no separator
    assert "/" not in safe_name("x/" * 100) and len(safe_name("x" * 500)) == 89
    assert safe_name("..") != safe_name("_.")  # a changed name never equals a plain one


def test_safe_child_stays_inside_its_folder(tmp_path):
    assert safe_child(tmp_path, "../../../outside", "_v1.jpg").parent == tmp_path
    outside = tmp_path.parent / "elsewhere"
    (tmp_path / "link_v1.jpg").symlink_to(outside)
    with pytest.raises(ValueError, match="would leave"):
        safe_child(tmp_path, "link", "_v1.jpg")
    with pytest.raises(ValueError, match="would leave"):
        safe_child(tmp_path, "x", "/../../y")  # a caller's suffix cannot climb either


def test_multiview_set_writes_hostile_ids_inside_its_folder(demo_manifest, tmp_path):
    hostile = demo_manifest.copy()
    escape = "../" * 10 + str(tmp_path / "outside" / "x")
    hostile["id"] = [escape if k == 10 else f"a/b{k}" if k == 15 else i for k, i in enumerate(hostile["id"])]
    views = build_multiview_set(hostile, tmp_path / "mv", n_views=2, max_points=5, seed=0)
    written = [Path(p) for p in views.loc[views["view"] > 0, "image_path"]]
    assert len(written) == 10 and all(p.parent == tmp_path / "mv" / "views" and p.is_file() for p in written)
    assert not (tmp_path / "outside").exists()
    assert {escape, "a/b15"} <= set(views["group"])  # the table keeps the ids as they are
