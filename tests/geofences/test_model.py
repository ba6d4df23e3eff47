"""Fence shapes from requests: ground distances, GeoJSON and every refusal."""

from __future__ import annotations

from typing import Any

import pytest
import shapely
from pyproj import Geod
from shapely.geometry import Point, Polygon

from geofences.model import (
    MAX_VERTICES,
    Fence,
    FenceError,
    shape_from_request,
    shape_to_geojson,
)

GEOD = Geod(ellps="WGS84")
SQUARE = [[[10.0, 50.0], [10.01, 50.0], [10.01, 50.01], [10.0, 50.01], [10.0, 50.0]]]
HOLE = [[10.004, 50.004], [10.006, 50.004], [10.006, 50.006], [10.004, 50.006], [10.004, 50.004]]


def polygon(*rings: Any) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def line(*positions: tuple[float, float]) -> dict[str, Any]:
    return {"type": "LineString", "coordinates": [list(p) for p in positions]}


def ground_distances(lon: float, lat: float, shape: Polygon) -> list[float]:
    xs, ys = shape.exterior.xy
    count = len(xs)
    _, _, distances = GEOD.inv([lon] * count, [lat] * count, list(xs), list(ys))
    return list(distances)


@pytest.mark.parametrize(("lon", "lat"), [(-0.7, 0.2), (24.9, 60.0), (10.5, -60.4)])
@pytest.mark.parametrize("radius_m", [50.0, 1_000.0, 250_000.0])
def test_circle_radius_is_metres_on_the_ground(lon: float, lat: float, radius_m: float) -> None:
    shape = shape_from_request(circle={"lon": lon, "lat": lat, "radius_m": radius_m})
    assert isinstance(shape, Polygon)
    assert shapely.is_valid(shape)
    distances = ground_distances(lon, lat, shape)
    assert min(distances) == pytest.approx(radius_m, rel=0.01)
    assert max(distances) == pytest.approx(radius_m, rel=0.01)
    assert shape.contains(Point(lon, lat))


def test_circle_at_60_degrees_is_twice_as_wide_in_longitude() -> None:
    west, south, east, north = shape_from_request(
        circle={"lon": 24.9, "lat": 60.0, "radius_m": 1_000}
    ).bounds
    assert (east - west) / (north - south) == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize(
    ("start", "end", "across_deg"),
    [((10.0, 0.0), (10.0, 0.2), 90.0), ((24.0, 60.0), (24.4, 60.0), 0.0)],
    ids=["north-south at the equator", "east-west at 60N"],
)
def test_corridor_width_is_metres_on_the_ground(
    start: tuple[float, float], end: tuple[float, float], across_deg: float
) -> None:
    shape = shape_from_request(corridor={"line": line(start, end), "width_m": 200})
    for t in (0.1, 0.5, 0.9):  # points along the line, then 100 m off it, each side
        lon = start[0] + t * (end[0] - start[0])
        lat = start[1] + t * (end[1] - start[1])
        for azimuth in (across_deg, across_deg + 180):
            for metres, inside in ((97.0, True), (103.0, False)):
                x, y, _ = GEOD.fwd(lon, lat, azimuth, metres)
                assert shape.contains(Point(x, y)) is inside, (t, azimuth, metres)


def test_corridor_follows_every_leg_of_its_line() -> None:
    legs = line((5.0, 45.0), (5.1, 45.05), (5.1, 45.2))
    shape = shape_from_request(corridor={"line": legs, "width_m": 50})
    assert shape.contains(shapely.LineString(legs["coordinates"]))
    assert not shape.contains(Point(5.05, 45.1))


@pytest.mark.parametrize(
    "geometry",
    [
        polygon(*SQUARE),
        polygon(SQUARE[0], HOLE),
        {
            "type": "MultiPolygon",
            "coordinates": [[SQUARE[0], HOLE], [[[11, 50], [11.1, 50], [11, 51], [11, 50]]]],
        },
    ],
    ids=["polygon", "with hole", "multipolygon"],
)
def test_geojson_round_trip(geometry: dict[str, Any]) -> None:
    shape = shape_from_request(geometry=geometry)
    assert shape_to_geojson(shape) == {
        "type": geometry["type"],
        "coordinates": _as_lists(geometry["coordinates"]),
    }
    assert shape_from_request(geometry=shape_to_geojson(shape)).equals_exact(shape, 0)


def _as_lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_as_lists(item) for item in value]
    return float(value)


def test_a_circle_and_a_corridor_come_back_as_geojson_polygons() -> None:
    circle = shape_from_request(circle={"lon": 1, "lat": 2, "radius_m": 10})
    corridor = shape_from_request(corridor={"line": line((1, 2), (1.1, 2)), "width_m": 10})
    for shape in (circle, corridor):
        geojson = shape_to_geojson(shape)
        assert geojson["type"] == "Polygon"
        assert shape_from_request(geometry=geojson).equals_exact(shape, 0)


def test_altitude_in_a_position_is_ignored() -> None:
    with_altitude = [[*p, 120.0] for p in SQUARE[0]]
    shape = shape_from_request(geometry=polygon(with_altitude))
    assert shape.equals_exact(Polygon(SQUARE[0]), 0)
    assert not shape.has_z


def test_fence_holds_its_shape() -> None:
    shape = shape_from_request(geometry=polygon(*SQUARE))
    fence = Fence("f1", "home", shape, frozenset({"car-1"}), name="Home")
    assert fence.geometry is shape
    assert fence == Fence("f1", "home", shape, frozenset({"car-1"}), name="Home")
    with pytest.raises(AttributeError):
        fence.id = "f2"  # type: ignore[misc]


TOO_MANY = [[10 + i * 1e-5, 50.0] for i in range(MAX_VERTICES)] + [[10.0, 50.1], [10.0, 50.0]]
BOWTIE = [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({}, "give exactly one of geometry, circle or corridor (got none)"),
    (
        {"geometry": polygon(*SQUARE), "circle": {"lon": 0, "lat": 0, "radius_m": 1}},
        "(got geometry and circle)",
    ),
    ({"geometry": {"type": "Point", "coordinates": [1, 2]}}, "not 'Point'"),
    ({"geometry": {"type": "Feature"}}, "must be Polygon or MultiPolygon, not 'Feature'"),
    ({"geometry": {"type": "Polygon"}}, "no 'coordinates' list"),
    ({"geometry": polygon()}, "needs a list of rings"),
    ({"geometry": {"type": "MultiPolygon", "coordinates": []}}, "at least one polygon"),
    ({"geometry": {"type": "MultiPolygon", "coordinates": [SQUARE, []]}}, "polygon 1 needs a list"),
    ({"geometry": polygon()}, "the polygon needs a list of rings"),
    ({"geometry": polygon([[0, 0], [1, 0], [0, 0]])}, "ring 0 has 3 positions"),
    ({"geometry": polygon(SQUARE[0], HOLE[:3])}, "ring 1 has 3 positions; a ring needs at least 4"),
    ({"geometry": polygon([[0, 0], [1, 0], [1, 1], [0, 1]])}, "ring 0 is not closed"),
    ({"geometry": polygon([[0, 0], [1, 0], "x", [0, 0]])}, "ring 0 position 2: a position is"),
    ({"geometry": polygon([[0, 0], [1, 0], [True, 1], [0, 0]])}, "longitude must be a number"),
    ({"geometry": polygon([[0, 0], [1, 0], [1, float("nan")], [0, 0]])}, "must be finite"),
    (
        {"geometry": polygon([[0, 0], [1, 0], [200.5, 1], [0, 0]])},
        "ring 0 position 2: longitude 200.5 is out of range -180..180",
    ),
    (
        {
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [SQUARE, [[[0, 0], [1, 0], [1, -91], [0, 0]]]],
            }
        },
        "polygon 1 ring 0 position 2: latitude -91 is out of range -90..90",
    ),
    ({"geometry": polygon(BOWTIE)}, "geometry is invalid: Self-intersection[0.5 0.5]"),
    (
        {"geometry": polygon(SQUARE[0], [[p[0] + 1, p[1]] for p in HOLE])},
        "geometry is invalid: Hole lies outside shell",
    ),
    ({"geometry": polygon(TOO_MANY)}, f"at most {MAX_VERTICES} are allowed: simplify it"),
    ({"circle": {"lon": 0, "lat": 0}}, "circle is missing radius_m"),
    ({"circle": {"lon": 0, "lat": 0, "radius": 5}}, "circle is missing radius_m"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": 5, "x": 1}}, "unknown fields x"),
    ({"circle": [0, 0, 5]}, "circle must be an object with lon, lat, radius_m"),
    ({"circle": {"lon": 0, "lat": 95, "radius_m": 5}}, "latitude 95 is out of range"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": 0}}, "radius_m must be > 0 metres, got 0"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": -3}}, "radius_m must be > 0 metres, got -3"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": 6e5}}, "at most 500000 metres, got 600000"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": 1e-9}}, "at least 1 metre (GPS cannot"),
    ({"circle": {"lon": 0, "lat": 0, "radius_m": "5"}}, "radius_m must be a number"),
    ({"circle": {"lon": 179.99, "lat": 0, "radius_m": 5e3}}, "crosses the antimeridian"),
    ({"circle": {"lon": 0, "lat": 89.99, "radius_m": 5e3}}, "covers a pole"),
    ({"corridor": {"line": line((0, 0), (1, 0))}}, "corridor is missing width_m"),
    ({"corridor": {"line": polygon(*SQUARE), "width_m": 5}}, "LineString, not 'Polygon'"),
    ({"corridor": {"line": line((0, 0)), "width_m": 5}}, "at least 2 positions"),
    ({"corridor": {"line": line((0, 0), (0, 91)), "width_m": 5}}, "position 1: latitude 91"),
    ({"corridor": {"line": line((0, 0), (1, 0)), "width_m": 0}}, "width_m must be > 0"),
    ({"corridor": {"line": line((0, 0), (1, 0)), "width_m": 5e5 + 1}}, "width_m must be at most"),
    ({"corridor": {"line": line((0, 0), (300, 0)), "width_m": 5}}, "longitude 300 is out of"),
    (
        {
            "corridor": {
                "line": line(*((i * 1e-4, 0) for i in range(MAX_VERTICES + 1))),
                "width_m": 5,
            }
        },
        "simplify it",
    ),
]


@pytest.mark.parametrize(("request_", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_refused_with_a_message_saying_what_to_fix(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(FenceError) as refused:
        shape_from_request(**request_)
    assert message in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_shape_to_geojson_refuses_other_geometries() -> None:
    with pytest.raises(TypeError, match="not Point"):
        shape_to_geojson(Point(0, 0))  # type: ignore[arg-type]


def test_multipolygon_parts_sharing_an_edge_are_invalid() -> None:
    right = [[[10.01, 50.0], [10.02, 50.0], [10.02, 50.01], [10.01, 50.01], [10.01, 50.0]]]
    geometry = {"type": "MultiPolygon", "coordinates": [SQUARE, right]}
    with pytest.raises(FenceError, match="geometry is invalid"):
        shape_from_request(geometry=geometry)
