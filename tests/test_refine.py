"""Refinement inside the predicted cells (model/refine.py), against values worked out by hand.

On the equator one degree of longitude is pi * R / 180 = 111.195 km (R = 6371.0088 km), so moves
along it are easy to check: a move of d km ends at longitude d / 111.195 degrees."""

import math

import numpy as np
import pytest

from geopak_lib.model.refine import Gallery, move_towards, refine_hypotheses

KM_PER_DEG = math.pi * 6371.0088 / 180.0


def gallery(emb, lat, lon, cell, n_cells=3):
    return Gallery.from_items(np.array(emb, float), lat, lon, cell, n_cells=n_cells)


def refine(g, cell_id, lat, lon, weight, radius, query=((1.0, 0.0),), **kw):
    return refine_hypotheses(np.array(query), np.array([cell_id]), np.array([lat], float), np.array([lon], float),
                             weight=np.array([weight], float), gallery=g, cell_radius_km=np.array(radius, float), **kw)


def test_gallery_is_sorted_by_cell_with_offsets_and_drops_unassigned_items():
    g = gallery([[1, 0], [0, 2], [3, 4], [1, 1]], [1, 2, 3, 4], [10, 20, 30, 40], [2, 0, -1, 2])
    assert g.cell_start.tolist() == [0, 1, 1, 3]  # cell 0: 1 item, cell 1: none, cell 2: 2 items
    assert g.lat.tolist() == [2, 1, 4] and g.lon.tolist() == [20, 10, 40]  # stable within a cell
    np.testing.assert_allclose(g.embedding, [[0, 1], [1, 0], [2 ** -0.5, 2 ** -0.5]], atol=1e-7)  # unit rows
    with pytest.raises(ValueError, match="n_cells"):
        gallery([[1, 0]], [0], [0], [3])


def test_move_is_clamped_at_the_cell_radius():
    g = gallery([[1, 0]], [0.0], [1.0], [0])  # one image of cell 0, 111.195 km east of the hypothesis
    r = refine(g, [0], [0.0], [0.0], [1.0], radius=[50.0, 1, 1])
    assert r["lat"][0, 0] == pytest.approx(0.0, abs=1e-9)
    assert r["lon"][0, 0] == pytest.approx(50.0 / KM_PER_DEG, rel=1e-9)  # 0.44966 degrees
    assert r["moved_km"][0, 0] == pytest.approx(50.0)
    free = refine(g, [0], [0.0], [0.0], [1.0], radius=[200.0, 1, 1])  # radius larger than the distance
    assert free["lon"][0, 0] == pytest.approx(1.0) and free["moved_km"][0, 0] == pytest.approx(KM_PER_DEG)
    half = refine(g, [0], [0.0], [0.0], [1.0], radius=[200.0, 1, 1], step=0.5)
    assert half["lon"][0, 0] == pytest.approx(0.5) and half["moved_km"][0, 0] == pytest.approx(KM_PER_DEG / 2)


def test_move_towards_along_a_meridian_and_never_past_the_target():
    lat, lon, moved = move_towards(np.array([10.0]), np.array([70.0]), np.array([12.0]), np.array([70.0]),
                                   max_km=np.array([1e6]))
    assert (lat[0], lon[0], moved[0]) == pytest.approx((12.0, 70.0, 2 * KM_PER_DEG))
    lat, _, moved = move_towards(np.array([10.0]), np.array([70.0]), np.array([12.0]), np.array([70.0]),
                                 max_km=np.array([KM_PER_DEG]))
    assert lat[0] == pytest.approx(11.0) and moved[0] == pytest.approx(KM_PER_DEG)


def test_hypotheses_without_gallery_items_and_padding_are_left_unchanged():
    g = gallery([[1, 0]], [0.0], [1.0], [0])  # only cell 0 has an item
    r = refine(g, [0, 1, -1], [0.0, 5.0, 7.0], [0.0, 6.0, 8.0], [0.5, 0.3, 0.2], radius=[500.0, 500, 500],
               rescore_temperature=0.1)
    assert r["lat"][0, 1:].tolist() == [5.0, 7.0] and r["lon"][0, 1:].tolist() == [6.0, 8.0]
    assert r["moved_km"][0, 1:].tolist() == [0.0, 0.0] and np.isnan(r["score"][0, 1:]).all()
    # one hypothesis with items: its score is the row mean, so every factor is 1 and weights stay
    np.testing.assert_allclose(r["weight"][0], [0.5, 0.3, 0.2])


def test_top_k_target_is_the_softmax_weighted_spherical_mean():
    # item A (similarity 1) at lon +1, item B (similarity 0) at lon -1; T = 1 / ln 3 gives weights 3 : 1,
    # so the target is atan2(3 sin 1° - sin 1°, 3 cos 1° + cos 1°) = atan(tan(1°) / 2) on the equator
    g = gallery([[1, 0], [0, 1]], [0.0, 0.0], [1.0, -1.0], [0, 0])
    r = refine(g, [0], [0.0], [0.0], [1.0], radius=[1e4, 1, 1], k=2, temperature=1 / math.log(3))
    expected = math.degrees(math.atan(math.tan(math.radians(1.0)) / 2))
    assert r["lon"][0, 0] == pytest.approx(expected, rel=1e-6)  # float32 similarities
    assert r["score"][0, 0] == pytest.approx(1.0)
    one = refine(g, [0], [0.0], [0.0], [1.0], radius=[1e4, 1, 1], k=1)  # best image only: A
    assert one["lon"][0, 0] == pytest.approx(1.0)


def test_weights_are_rescored_by_cell_similarity():
    # cell 0 matches with cosine 1.0, cell 1 with 0.6, cell 2 has no item; mean of 1.0 and 0.6 = 0.8,
    # T = 0.1: factors e^2, e^-2 and 1 on weights 0.5, 0.3, 0.2
    g = gallery([[1, 0], [0.6, 0.8]], [0.0, 1.0], [0.0, 1.0], [0, 1])
    r = refine(g, [0, 1, 2], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.5, 0.3, 0.2], radius=[10.0, 10, 10],
               rescore_temperature=0.1)
    raw = np.array([0.5 * math.e ** 2, 0.3 * math.e ** -2, 0.2])
    np.testing.assert_allclose(r["weight"][0], raw / raw.sum(), rtol=1e-6)  # float32 similarities
    np.testing.assert_allclose(r["score"][0, :2], [1.0, 0.6], rtol=1e-6)
    kept = refine(g, [0, 1, 2], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.5, 0.3, 0.2], radius=[10.0, 10, 10])
    np.testing.assert_allclose(kept["weight"][0], [0.5, 0.3, 0.2])  # no rescoring asked for


def test_each_query_uses_only_its_own_cells_items_and_bad_settings_fail():
    # two queries in one batch, same cell: each moves towards the item it resembles
    g = gallery([[1, 0], [0, 1]], [0.0, 0.0], [1.0, -1.0], [0, 0])
    r = refine_hypotheses(np.array([[1.0, 0.1], [0.1, 1.0]]), np.array([[0], [0]]), np.zeros((2, 1)),
                          np.zeros((2, 1)), weight=np.ones((2, 1)), gallery=g, cell_radius_km=np.array([1e4, 1, 1]))
    assert r["lon"][:, 0] == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="step"):
        refine(g, [0], [0.0], [0.0], [1.0], radius=[1.0, 1, 1], step=1.5)
