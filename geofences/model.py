"""Fences: an id, a category and a lon/lat (WGS84) polygon, built from a request.

A fence arrives as one of three shapes (``shape_from_request``):

- ``geometry``: a GeoJSON Polygon or MultiPolygon, positions ``[lon, lat]``;
- ``circle``: ``{"lon", "lat", "radius_m"}``;
- ``corridor``: ``{"line": <GeoJSON LineString>, "width_m"}``, ``width_m`` being
  the total width (the line is buffered by half of it on each side).

Circles and corridors are measured on the ground: they are buffered in a local
azimuthal equidistant projection (``+proj=aeqd``, WGS84 ellipsoid) centred near
the shape, then turned back into lon/lat vertices. That projection keeps
distances from its centre exact and distorts others by at most
``1 + rho**2 / (6 * R**2)`` at ``rho`` from the centre: 0.1 % at 500 km, 1.7 %
at 2,000 km (a corridor that long is better sent as several).
Projection centres are snapped to whole degrees so that nearby shapes share one
cached transformer; the shape itself keeps its exact position.

Edges are straight lines in lon/lat, as the index reads them. A corridor's line
is first split into pieces of at most ``CORRIDOR_STEP_DEG`` so that its edges
and the edges of its buffer stay within 10 cm of that reading.

Anything a client sent wrong raises ``FenceError`` with a message saying what to
fix; the REST layer returns it as a 422.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon

__all__ = [
    "MAX_DISTANCE_M",
    "MAX_VERTICES",
    "MIN_DISTANCE_M",
    "Category",
    "Fence",
    "FenceError",
    "Shape",
    "shape_from_request",
    "shape_to_geojson",
]

MAX_VERTICES = 10_000
"""Most vertices a fence may have, all rings together (a GeoJSON closing position counts)."""
MIN_DISTANCE_M = 1.0
"""Smallest circle radius or corridor width: below it a circle collapses in lon/lat."""
MAX_DISTANCE_M = 500_000.0
"""Largest circle radius or corridor width: anything wider is a mistake, not a fence."""
CIRCLE_QUAD_SEGS = 16
"""Segments per quarter circle: 64 vertices; an edge's midpoint is 0.12 % short of the radius."""
CORRIDOR_STEP_DEG = 0.02
"""Longest piece of a corridor's line before buffering (about 2 km)."""

Category = Literal["allowed_area", "risk_site", "home", "work", "custom"]
Shape = Polygon | MultiPolygon


class FenceError(ValueError):
    """The fence a client sent cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Fence:
    id: str
    category: Category
    geometry: Shape
    """Lon/lat degrees, WGS84; edges are straight in lon/lat."""
    vehicle_ids: frozenset[str] | None
    """The vehicles it applies to; None: every vehicle."""
    name: str = ""


def shape_from_request(
    *,
    geometry: Mapping[str, Any] | None = None,
    circle: Mapping[str, Any] | None = None,
    corridor: Mapping[str, Any] | None = None,
) -> Shape:
    """The lon/lat polygon for exactly one of ``geometry``, ``circle`` or ``corridor``.

    Raises:
        FenceError: none or several shapes given, or the one given is malformed,
            out of range, self-intersecting, too large or too complex.
    """
    given = [
        name
        for name, value in (("geometry", geometry), ("circle", circle), ("corridor", corridor))
        if value is not None
    ]
    if len(given) != 1:
        got = " and ".join(given) if given else "none"
        raise FenceError(f"give exactly one of geometry, circle or corridor (got {got})")
    if geometry is not None:
        shape = _from_geojson(geometry)
        _check_valid(shape, "geometry")
        return shape
    if circle is not None:
        return _circle(circle)
    assert corridor is not None
    return _corridor(corridor)


def shape_to_geojson(shape: Shape) -> dict[str, Any]:
    """The GeoJSON geometry of ``shape``, lists all the way down (ready for JSON)."""
    if isinstance(shape, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coordinates(shape)}
    if isinstance(shape, MultiPolygon):
        return {
            "type": "MultiPolygon",
            "coordinates": [_polygon_coordinates(part) for part in shape.geoms],
        }
    raise TypeError(f"a fence is a Polygon or MultiPolygon, not {shape.geom_type}")


def _polygon_coordinates(polygon: Polygon) -> list[list[list[float]]]:
    rings = [polygon.exterior, *polygon.interiors]
    return [[[x, y] for x, y in ring.coords] for ring in rings]


# GeoJSON ---------------------------------------------------------------------


def _from_geojson(geometry: Mapping[str, Any]) -> Shape:
    if not isinstance(geometry, Mapping):
        raise FenceError("geometry must be a GeoJSON object with 'type' and 'coordinates'")
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        raise FenceError(f"geometry type must be Polygon or MultiPolygon, not {kind!r}")
    if not isinstance(coordinates, list | tuple):
        raise FenceError(f"geometry has no 'coordinates' list: a {kind} needs one")
    budget = _Budget()
    if kind == "Polygon":
        return _polygon(coordinates, "", budget)
    if not coordinates:
        raise FenceError("a MultiPolygon needs at least one polygon")
    return MultiPolygon(
        [_polygon(part, f"polygon {i} ", budget) for i, part in enumerate(coordinates)]
    )


class _Budget:
    """Counts vertices as they are read, to stop early on a huge geometry."""

    def __init__(self) -> None:
        self.vertices = 0

    def take(self, count: int) -> None:
        self.vertices += count
        if self.vertices > MAX_VERTICES:
            raise FenceError(_too_complex(self.vertices, "or more "))


def _too_complex(vertices: int, more: str = "") -> str:
    return (
        f"the fence has {vertices} {more}vertices; at most {MAX_VERTICES} are allowed: simplify it"
    )


def _polygon(rings: Any, where: str, budget: _Budget) -> Polygon:
    if not isinstance(rings, list | tuple) or not rings:
        raise FenceError(f"{where or 'the polygon '}needs a list of rings (exterior first)")
    shell, *holes = (_ring(ring, f"{where}ring {i}", budget) for i, ring in enumerate(rings))
    return Polygon(shell, holes)


def _ring(ring: Any, where: str, budget: _Budget) -> list[tuple[float, float]]:
    if not isinstance(ring, list | tuple):
        raise FenceError(f"{where} must be a list of [lon, lat] positions")
    if len(ring) < 4:
        raise FenceError(
            f"{where} has {len(ring)} positions; a ring needs at least 4 "
            "(3 corners and the first repeated at the end)"
        )
    budget.take(len(ring))
    positions = _positions(ring, where)
    if positions[0] != positions[-1]:
        raise FenceError(f"{where} is not closed: its last position must equal its first")
    return positions


def _positions(values: Sequence[Any], where: str) -> list[tuple[float, float]]:
    return [_position(value, f"{where} position {i}") for i, value in enumerate(values)]


def _position(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise FenceError(f"{where}: a position is [lon, lat], got {value!r}")
    lon = _number(value[0], f"{where}: longitude")
    lat = _number(value[1], f"{where}: latitude")
    _check_lon_lat(lon, lat, where)
    return lon, lat


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FenceError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FenceError(f"{what} must be finite, got {value!r}")
    return float(value)


def _check_lon_lat(lon: float, lat: float, where: str) -> None:
    if not -180.0 <= lon <= 180.0:
        raise FenceError(f"{where}: longitude {lon:g} is out of range -180..180")
    if not -90.0 <= lat <= 90.0:
        raise FenceError(f"{where}: latitude {lat:g} is out of range -90..90")


def _check_valid(shape: Shape, what: str) -> None:
    if not shapely.is_valid(shape):
        raise FenceError(
            f"{what} is invalid: {shapely.is_valid_reason(shape)}; rings must not cross "
            "themselves or each other, and holes must lie inside their polygon"
        )


# Circles and corridors -----------------------------------------------------------


def _fields(value: Any, what: str, names: tuple[str, ...]) -> None:
    if not isinstance(value, Mapping):
        raise FenceError(f"{what} must be an object with {', '.join(names)}")
    if missing := [name for name in names if name not in value]:
        raise FenceError(f"{what} is missing {', '.join(missing)}")
    if unknown := sorted(set(value) - set(names)):
        raise FenceError(f"{what} has unknown fields {', '.join(map(str, unknown))}")


def _distance(value: Any, name: str) -> float:
    metres = _number(value, name)
    if metres <= 0:
        raise FenceError(f"{name} must be > 0 metres, got {metres:g}")
    if metres < MIN_DISTANCE_M:
        raise FenceError(
            f"{name} must be at least {MIN_DISTANCE_M:g} metre (GPS cannot tell less apart), "
            f"got {metres:g}"
        )
    if metres > MAX_DISTANCE_M:
        raise FenceError(f"{name} must be at most {MAX_DISTANCE_M:.0f} metres, got {metres:g}")
    return metres


def _circle(circle: Mapping[str, Any]) -> Shape:
    _fields(circle, "circle", ("lon", "lat", "radius_m"))
    lon = _number(circle["lon"], "circle lon")
    lat = _number(circle["lat"], "circle lat")
    _check_lon_lat(lon, lat, "circle centre")
    radius_m = _distance(circle["radius_m"], "radius_m")
    forward, back = _transformers(round(lon), round(lat))
    x, y = forward.transform(lon, lat)
    disc = Point(x, y).buffer(radius_m, quad_segs=CIRCLE_QUAD_SEGS)
    return _back_to_lon_lat(disc, back, "circle")


def _corridor(corridor: Mapping[str, Any]) -> Shape:
    _fields(corridor, "corridor", ("line", "width_m"))
    line = corridor["line"]
    if not isinstance(line, Mapping) or line.get("type") != "LineString":
        kind = line.get("type") if isinstance(line, Mapping) else type(line).__name__
        raise FenceError(f"corridor line must be a GeoJSON LineString, not {kind!r}")
    coordinates = line.get("coordinates")
    if not isinstance(coordinates, list | tuple) or len(coordinates) < 2:
        raise FenceError("corridor line needs at least 2 positions")
    _Budget().take(len(coordinates))
    width_m = _distance(corridor["width_m"], "width_m")
    positions = _positions(coordinates, "corridor line")
    lonlat = shapely.segmentize(LineString(positions), CORRIDOR_STEP_DEG)
    west, south, east, north = lonlat.bounds
    forward, back = _transformers(round((west + east) / 2), round((south + north) / 2))
    projected = shapely.transform(lonlat, _through(forward))
    return _back_to_lon_lat(projected.buffer(width_m / 2), back, "corridor")


def _back_to_lon_lat(projected: Polygon, back: Transformer, what: str) -> Shape:
    shape = shapely.transform(projected, _through(back))
    assert isinstance(shape, Polygon)
    west, _, east, _ = shape.bounds
    if not all(map(math.isfinite, shape.bounds)) or east - west > 180:
        raise FenceError(
            f"the {what} crosses the antimeridian or covers a pole: split it into "
            "polygons on either side"
        )
    _check_valid(shape, what)
    vertices = shapely.get_num_coordinates(shape)
    if vertices > MAX_VERTICES:
        raise FenceError(_too_complex(int(vertices)))
    return shape


@lru_cache(maxsize=256)
def _transformers(lon: int, lat: int) -> tuple[Transformer, Transformer]:
    """lon/lat -> metres and back, azimuthal equidistant around whole degrees ``lon, lat``."""
    aeqd = f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m"
    return (
        Transformer.from_crs("EPSG:4326", aeqd, always_xy=True),
        Transformer.from_crs(aeqd, "EPSG:4326", always_xy=True),
    )


def _through(
    transformer: Transformer,
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    def apply(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return apply
