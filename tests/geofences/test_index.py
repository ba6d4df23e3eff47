"""FenceIndex: inside, outside or unsure, in metres, for one point or a batch."""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pyproj import Geod
from shapely.geometry import Point, Polygon

from geofences.index import METRES_PER_DEGREE, FenceIndex, Side
from geofences.model import Fence, FenceError, Shape, shape_from_request

GEOD = Geod(ellps="WGS84")
INSIDE, OUTSIDE, UNSURE = Side.INSIDE, Side.OUTSIDE, Side.UNSURE


def circle(lon: float, lat: float, radius_m: float) -> Shape:
    return shape_from_request(circle={"lon": lon, "lat": lat, "radius_m": radius_m})


def fence(fence_id: str, shape: Shape, vehicles: set[str] | None = None) -> Fence:
    return Fence(fence_id, "custom", shape, None if vehicles is None else frozenset(vehicles))


def moved(lon: float, lat: float, azimuth_deg: float, metres: float) -> tuple[float, float]:
    x, y, _ = GEOD.fwd(lon, lat, azimuth_deg, metres)
    return x, y


def side(index: FenceIndex, lon: float, lat: float, margin_m: float, fence_id: str) -> Side:
    return index.classify(lon, lat, margin_m).get(fence_id, OUTSIDE)


@pytest.mark.parametrize("lat", [0.0, 45.0, 60.0, 70.0, -33.9])
@pytest.mark.parametrize("azimuth_deg", [0, 45, 90, 200, 270])
@pytest.mark.parametrize(
    ("from_centre_m", "expected"),
    [(0, INSIDE), (900, INSIDE), (960, UNSURE), (1_000, UNSURE), (1_040, UNSURE), (1_100, OUTSIDE)],
)
def test_margin_in_metres_at_any_latitude(
    lat: float, azimuth_deg: float, from_centre_m: float, expected: Side
) -> None:
    index = FenceIndex([fence("c", circle(20.0, lat, 1_000))])
    lon, lat = moved(20.0, lat, azimuth_deg, from_centre_m)
    assert side(index, lon, lat, 50, "c") is expected


def test_margin_zero_is_plain_containment() -> None:
    index = FenceIndex([fence("c", circle(20.0, 60.0, 1_000))])
    assert side(index, *moved(20.0, 60.0, 90, 999), 0, "c") is INSIDE
    assert side(index, *moved(20.0, 60.0, 90, 1_001), 0, "c") is OUTSIDE


def test_jitter_along_an_edge_is_unsure_never_a_flip() -> None:
    # A car parked 3 m inside the east edge of a square at 60N; fixes scatter by up to 10 m.
    square = shapely.box(24.9, 60.0, 25.0, 60.05)
    index = FenceIndex([fence("yard", square)])
    rng = np.random.default_rng(4)
    edge_lon, lat = moved(25.0, 60.02, 270, 3)
    sides = set()
    for north_m, east_m in rng.uniform(-10, 10, size=(500, 2)):
        lon, lat_ = moved(*moved(edge_lon, lat, 0, north_m), 90, east_m)
        sides.add(side(index, lon, lat_, 25, "yard"))
    assert sides == {UNSURE}
    # Without a margin the same fixes flip in and out: what the margin is for.
    flips = {side(index, *moved(edge_lon, lat, 90, east_m), 0, "yard") for east_m in (-7, 7)}
    assert flips == {INSIDE, OUTSIDE}


def test_a_hole_is_outside_and_its_edge_unsure() -> None:
    ring = circle(5.0, 45.0, 1_000).difference(circle(5.0, 45.0, 400))
    assert isinstance(ring, Polygon)
    index = FenceIndex([fence("ring", ring)])
    assert side(index, 5.0, 45.0, 30, "ring") is OUTSIDE
    assert side(index, *moved(5.0, 45.0, 0, 410), 30, "ring") is UNSURE
    assert side(index, *moved(5.0, 45.0, 0, 700), 30, "ring") is INSIDE


def test_only_fences_for_the_vehicle() -> None:
    shape = circle(2.0, 48.0, 500)
    index = FenceIndex(
        [fence("all", shape), fence("one", shape, {"car-1"}), fence("two", shape, {"car-2"})]
    )
    assert index.classify(2.0, 48.0, 20, "car-1") == {"all": INSIDE, "one": INSIDE}
    assert index.classify(2.0, 48.0, 20, "car-3") == {"all": INSIDE}
    assert index.classify(2.0, 48.0, 20) == {"all": INSIDE, "one": INSIDE, "two": INSIDE}
    assert index.applies("one", "car-1")
    assert not index.applies("one", "car-2")
    assert index.applies("all", "anyone")
    assert index.crossed(1.9, 48.0, 2.1, 48.0, "car-2") == ["all", "two"]


def test_crossed_finds_a_small_fence_between_two_sparse_fixes() -> None:
    index = FenceIndex([fence("pawnshop", circle(13.4, 52.5, 30))])
    west, east = moved(13.4, 52.5, 270, 200), moved(13.4, 52.5, 90, 200)
    assert index.classify(*west, 10) == {}
    assert index.classify(*east, 10) == {}
    assert index.crossed(*west, *east) == ["pawnshop"]
    north_west, north_east = moved(*west, 0, 100), moved(*east, 0, 100)
    assert index.crossed(*north_west, *north_east) == []


def test_crossed_needs_the_interior_not_just_the_boundary() -> None:
    index = FenceIndex([fence("a", shapely.box(0, 0, 1, 1)), fence("b", shapely.box(1, 0, 2, 1))])
    assert index.crossed(0.5, 0.5, 1.5, 0.5) == ["a", "b"]
    assert index.crossed(1.0, 0.2, 1.0, 0.8) == []  # along the shared edge
    assert index.crossed(0.2, 0.5, 0.4, 0.5) == ["a"]  # both fixes inside
    assert index.crossed(1.5, 0.5, 1.5, 0.5) == ["b"]  # the unit did not move
    assert index.crossed(1.0, 0.5, 1.0, 0.5) == []


def test_lookup_and_errors() -> None:
    a = fence("a", circle(0, 0, 10))
    index = FenceIndex([a])
    assert len(index) == 1
    assert list(index) == [a]
    assert index.fence("a") is a
    with pytest.raises(KeyError):
        index.fence("b")
    with pytest.raises(FenceError, match="repeated: a"):
        FenceIndex([a, a])
    with pytest.raises(ValueError, match=">= 0"):
        index.classify(0, 0, -1)
    with pytest.raises(ValueError, match="finite"):
        index.classify(math.nan, 0, 1)
    with pytest.raises(ValueError, match="same length"):
        index.classify_many(np.zeros(2), np.zeros(3), np.zeros(2))


def test_empty_index_and_empty_batch() -> None:
    empty = FenceIndex([])
    assert len(empty) == 0
    assert empty.classify(1, 2, 3) == {}
    assert empty.crossed(0, 0, 1, 1) == []
    index = FenceIndex([fence("a", circle(0, 0, 10))])
    assert index.classify_many(np.zeros(0), np.zeros(0), np.zeros(0)) == []


# Batches against single points ------------------------------------------------------


@cache
def small_town() -> FenceIndex:
    """40 fences, circles and squares, most overlapping, within 0.05 degrees."""
    rng = np.random.default_rng(7)
    fences = []
    for i in range(40):
        lon, lat = rng.uniform(10.0, 10.05), rng.uniform(50.0, 50.05)
        half = rng.uniform(1e-4, 5e-3)
        shape = (
            circle(lon, lat, rng.uniform(20, 800))
            if i % 2
            else shapely.box(lon - half, lat - half, lon + half, lat + half)
        )
        fences.append(fence(f"f{i}", shape, {f"car-{i % 3}"} if i % 5 == 0 else None))
    return FenceIndex(fences)


POINTS = st.lists(
    st.tuples(st.floats(9.99, 10.06), st.floats(49.99, 50.06), st.floats(0, 300) | st.just(0.0)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(POINTS)
def test_classify_many_equals_classify_point_by_point(
    points: list[tuple[float, float, float]],
) -> None:
    index = small_town()
    lons, lats, margins = (np.array(column) for column in zip(*points, strict=True))
    batch = index.classify_many(lons, lats, margins)
    assert [row[0] for row in batch] == sorted(row[0] for row in batch)
    for i, (lon, lat, margin) in enumerate(points):
        rows = [(fence_id, found) for point, fence_id, found in batch if point == i]
        assert dict(rows) == index.classify(lon, lat, margin)
        assert [fence_id for fence_id, _ in rows] == list(index.classify(lon, lat, margin))


def test_one_margin_for_the_whole_batch() -> None:
    index = small_town()
    lons, lats = np.linspace(10.0, 10.05, 200), np.linspace(50.0, 50.05, 200)
    assert index.classify_many(lons, lats, 40.0) == index.classify_many(
        lons, lats, np.full(200, 40.0)
    )


# The occupancy grid in front of the tree ------------------------------------------------


@cache
def scattered() -> FenceIndex:
    """Small squares tens of kilometres apart: most points are near none of them."""
    return FenceIndex(
        [
            fence(f"s{i}", shapely.box(lon, lat, lon + 0.003, lat + 0.002))
            for i, (lon, lat) in enumerate([(2.0, 48.0), (2.4137, 48.3), (2.8, 47.7), (3.5, 48.9)])
        ]
    )


# Points on, just inside and just outside the squares' edges (and far away), so that
# margin boxes touch a fence's box exactly, by a hair, or not at all.
EDGES = st.sampled_from([2.0, 2.003, 2.4137, 2.4167, 2.8, 2.803, 3.5, 3.503, 5.0])
EDGE_POINTS = st.lists(
    st.tuples(
        st.builds(lambda x, d: x + d, EDGES, st.sampled_from([0.0, 1e-12, -1e-12, 4e-4, -0.02])),
        st.builds(lambda y, d: y + d, st.sampled_from([48.0, 48.002, 48.3, 47.7, 48.9, 40.0]),
                  st.sampled_from([0.0, 1e-12, -1e-12, 3e-4, -0.02])),
        st.sampled_from([0.0, 1e-4, 30.0, 500.0, 3_000.0, 200_000.0]),
    ),
    min_size=1,
    max_size=40,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(EDGE_POINTS)
def test_grid_sets_aside_only_points_near_no_fence(
    points: list[tuple[float, float, float]],
) -> None:
    index = scattered()
    lons, lats, margins = (np.array(column) for column in zip(*points, strict=True))
    batch = index.classify_many(lons, lats, margins)
    for i, (lon, lat, margin) in enumerate(points):
        rows = {fence_id: found for point, fence_id, found in batch if point == i}
        assert rows == index.classify(lon, lat, margin), (lon, lat, margin)


def test_grid_lets_through_a_box_that_only_touches_a_fence() -> None:
    index = scattered()
    # 30 m east of the square's east edge, with a margin of 30 m plus a hair: UNSURE.
    ry = 30.0 / METRES_PER_DEGREE
    rx = ry / math.cos(math.radians(48.001))
    got = index.classify_many(np.array([2.003 + rx]), np.array([48.001]), np.array([30.001]))
    assert got == [(0, "s0", UNSURE)]
    far = index.classify_many(np.array([2.003 + 2 * rx]), np.array([48.001]), np.array([30.0]))
    assert far == []


def test_an_empty_fence_contains_nothing_and_spoils_nothing() -> None:
    square = fence("sq", shapely.box(2.0, 48.0, 2.01, 48.01))
    index = FenceIndex([fence("empty", Polygon()), square])
    got = index.classify_many(np.array([2.005, 30.0]), np.array([48.005, 10.0]), np.zeros(2))
    assert got == [(0, "sq", INSIDE)]
    only_empty = FenceIndex([fence("empty", Polygon())])
    assert only_empty.classify_many(np.array([0.0]), np.array([0.0]), np.array([10.0])) == []


def test_fences_around_the_world_coarsen_the_grid_not_the_answers() -> None:
    corners = [(-179.9, -80.0), (179.0, 80.0), (0.0, 0.0), (-70.0, 10.0)]
    index = FenceIndex(
        [fence(f"w{i}", circle(lon, lat, 500)) for i, (lon, lat) in enumerate(corners)]
    )
    lons = np.array([x for x, _ in corners] + [90.0])
    lats = np.array([y for _, y in corners] + [45.0])
    got = index.classify_many(lons, lats, np.zeros(5))
    assert got == [(i, f"w{i}", INSIDE) for i in range(4)]


# Ten thousand fences against a brute-force loop ---------------------------------------


def random_fences(count: int, rng: np.random.Generator) -> list[Fence]:
    """Circles, star-shaped polygons and rings over 2 x 2 degrees of the Alps' foothills."""
    fences = []
    for i in range(count):
        lon, lat = rng.uniform(5.0, 7.0), rng.uniform(45.0, 47.0)
        radius_m = rng.uniform(30, 800)
        shape: Shape
        if i % 3 == 0:
            shape = circle(lon, lat, radius_m)
        elif i % 3 == 1:
            # Star-shaped about the centre with no gap of half a turn: a simple polygon.
            corners = int(rng.integers(5, 12))
            angles = (np.arange(corners) + rng.uniform(0, 0.9, corners)) * 2 * math.pi / corners
            reach = rng.uniform(0.3, 1.0, corners) * radius_m / METRES_PER_DEGREE
            xs = lon + reach * np.cos(angles) / math.cos(math.radians(lat))
            shape = Polygon(np.column_stack([xs, lat + reach * np.sin(angles)]))
        else:
            outer, inner = circle(lon, lat, radius_m), circle(lon, lat, radius_m / 3)
            assert isinstance(outer, Polygon)
            assert isinstance(inner, Polygon)
            shape = Polygon(outer.exterior, [inner.exterior])
        assert shape.is_valid
        fences.append(fence(f"r{i}", shape))
    return fences


def brute_force(
    fences: list[Fence], bounds: NDArray[np.float64], lon: float, lat: float, margin_m: float
) -> dict[str, float]:
    """Fence id -> exact local distance (m) from the point to its boundary, negated when
    inside, for every fence near enough to matter. Every fence's bounds are looked at."""
    scale = np.array([METRES_PER_DEGREE * math.cos(math.radians(lat)), METRES_PER_DEGREE])
    reach = 2 * (margin_m + 1) / scale
    west, south, east, north = bounds.T
    close = (west - reach[0] <= lon) & (lon <= east + reach[0])
    close &= (south - reach[1] <= lat) & (lat <= north + reach[1])
    found = {}
    for i in np.flatnonzero(close).tolist():
        geometry = fences[i].geometry
        local = shapely.transform(geometry, lambda c: (c - (lon, lat)) * scale)
        distance = float(shapely.distance(local.boundary, Point(0, 0)))
        found[fences[i].id] = -distance if geometry.contains(Point(lon, lat)) else distance
    return found


def test_ten_thousand_fences_agree_with_a_brute_force_loop() -> None:
    rng = np.random.default_rng(11)
    fences = random_fences(10_000, rng)
    index = FenceIndex(fences)
    # Half the points anywhere, half a few tens of metres from some fence's boundary.
    near = [
        (x + dx, y + dy)
        for f in rng.choice(np.array(fences, dtype=object), 1_000)
        for x, y in [shapely.get_coordinates(f.geometry)[0]]
        for dx, dy in [rng.normal(0, 4e-4, 2)]
    ]
    anywhere = np.column_stack([rng.uniform(5, 7, 1_000), rng.uniform(45, 47, 1_000)])
    points = np.vstack([np.array(near), anywhere])
    margins = rng.choice([0.0, 10.0, 30.0, 80.0], len(points))

    bounds = shapely.bounds(np.array([f.geometry for f in fences]))
    got: dict[int, dict[str, Side]] = defaultdict(dict)
    for point, fence_id, found in index.classify_many(points[:, 0], points[:, 1], margins):
        got[point][fence_id] = found
    counts = dict.fromkeys(Side, 0)
    for i, ((lon, lat), margin) in enumerate(zip(points.tolist(), margins.tolist(), strict=True)):
        expected = brute_force(fences, bounds, lon, lat, margin)
        for fence_id in got[i].keys() | expected.keys():
            signed = expected.get(fence_id, math.inf)
            want = UNSURE if abs(signed) < margin else INSIDE if signed < 0 else OUTSIDE
            have = got[i].get(fence_id, OUTSIDE)
            counts[have] += 1
            # The margin disc is a 16-gon: its radius is right to within 1 %.
            assert have is want or abs(abs(signed) - margin) <= 0.01 * margin, (i, fence_id)
    assert counts[INSIDE] > 100
    assert counts[UNSURE] > 100
