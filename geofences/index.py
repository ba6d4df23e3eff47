"""FenceIndex: which fences a position is inside, outside or too near to call.

A GPS fix wanders by metres even when the car stands still; a fix that near a
fence's edge says nothing about which side the car is on. ``classify`` gives
each fence one of three answers for a point and a margin in metres:

- ``INSIDE``: inside the fence and at least ``margin_m`` from its boundary;
- ``UNSURE``: within ``margin_m`` of the boundary, on either side;
- ``OUTSIDE``: outside by at least ``margin_m`` (never returned: absent means outside).

This is what hysteresis needs: if only INSIDE and OUTSIDE change a vehicle's
state, jitter along an edge cannot make it flap between enter and exit.

Distances use the local metric at the point, an equirectangular approximation:
one degree of latitude is 111,320 m and one degree of longitude
``111,320 * cos(lat)`` m. Against the WGS84 ellipsoid this is within 0.7 % north
to south and 0.4 % east to west at any latitude; a margin is a disc at the point
in that metric, drawn as a 16-gon whose edges lie within 1 % of the true radius.
A margin of 50 m is thus right to within a metre. The approximation is local:
it holds for margins up to a few kilometres, away from the poles and the
antimeridian. Fence edges and ``crossed`` segments are straight in lon/lat.

The index is immutable: build a new one when fences change. Candidate fences
come from a ``shapely.STRtree`` over their bounding boxes; the fences' prepared
geometries decide. Before the tree, a coarse grid of the cells the fences'
bounding boxes touch (numpy, no geometry made) sets aside the points whose
margin box meets none: most cars are far from every fence, and making each
one's query box in GEOS cost more than the rest of a batch's classification.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import LineString, Point

from geofences.model import Fence, FenceError

__all__ = ["METRES_PER_DEGREE", "FenceIndex", "Side"]

METRES_PER_DEGREE = 111_320.0
"""Metres per degree of latitude (and of longitude at the equator), the local scale."""
_MIN_COS_LAT = 1e-6
"""Keeps the longitude scale finite at the poles."""
_MIN_MARGIN_M = 0.001
"""Margins under a millimetre count as none: plain containment."""
_DISC_VERTICES = 16
# The polygon's vertices sit at r * _DISC_SCALE and its edge midpoints at
# r * _DISC_SCALE * cos(pi / n): the true radius r lies halfway, within 1 % of both.
_DISC_SCALE = 2.0 / (1.0 + math.cos(math.pi / _DISC_VERTICES))
_ANGLES = np.linspace(0.0, 2.0 * math.pi, _DISC_VERTICES + 1)
_UNIT_DISC = np.column_stack([np.cos(_ANGLES), np.sin(_ANGLES)]) * _DISC_SCALE
_UNIT_DISC[-1] = _UNIT_DISC[0]  # closed exactly


_GRID_CELL_DEG = 0.01
"""The occupancy grid's smallest cell, about a kilometre: near a typical fence's size."""
_GRID_MAX_CELLS = 1 << 22
"""Fences spread wider get coarser cells: the grid stays within 4 MB."""


class _Occupancy:
    """Which cells of a regular lon/lat grid some fence's bounding box touches.

    A point whose box touches no such cell is OUTSIDE every fence. ``near``
    never sets aside a point whose box meets a fence's box; it lets through
    some that meet none (a cell is coarser than the boxes in it).
    """

    __slots__ = ("_cell", "_cells", "_x0", "_y0")

    def __init__(self, bounds: NDArray[np.float64]) -> None:
        bounds = bounds[np.isfinite(bounds).all(axis=1)]  # an empty geometry has none
        if not len(bounds):  # one empty cell: nothing is near
            self._x0, self._y0, self._cell = 0.0, 0.0, 1.0
            self._cells = np.zeros((1, 1), dtype=bool)
            return
        x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
        width, height = bounds[:, 2].max() - x0, bounds[:, 3].max() - y0
        cell = max(_GRID_CELL_DEG, math.sqrt(width * height / _GRID_MAX_CELLS))
        cell = max(cell, width / _GRID_MAX_CELLS, height / _GRID_MAX_CELLS)  # a thin strip
        self._x0, self._y0, self._cell = float(x0), float(y0), cell
        first = np.floor((bounds[:, :2] - (x0, y0)) / cell).astype(np.int64).tolist()
        last = np.floor((bounds[:, 2:] - (x0, y0)) / cell).astype(np.int64).tolist()
        shape = (max(y for _, y in last) + 1, max(x for x, _ in last) + 1)
        self._cells = np.zeros(shape, dtype=bool)
        for (ix0, iy0), (ix1, iy1) in zip(first, last, strict=True):
            self._cells[iy0 : iy1 + 1, ix0 : ix1 + 1] = True

    def _index(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Cell column and row, -1 or the count past either side of the grid.

        Subtraction and division round monotonically: a box edge at or past a
        fence's edge never lands in a cell before that fence's (the same
        arithmetic placed the fences)."""
        rows, columns = self._cells.shape
        ix = np.clip(np.floor((x - self._x0) / self._cell), -1, columns).astype(np.int64)
        iy = np.clip(np.floor((y - self._y0) / self._cell), -1, rows).astype(np.int64)
        return ix, iy

    def near(
        self,
        x: NDArray[np.float64],
        y: NDArray[np.float64],
        rx: NDArray[np.float64],
        ry: NDArray[np.float64],
    ) -> NDArray[np.bool_]:
        """Whether each box [x - rx, x + rx] x [y - ry, y + ry] may meet a fence's box."""
        ix0, iy0 = self._index(x - rx, y - ry)
        ix1, iy1 = self._index(x + rx, y + ry)
        rows, columns = self._cells.shape
        within = (ix1 >= 0) & (ix0 < columns) & (iy1 >= 0) & (iy0 < rows)
        wide = (ix1 - ix0 > 1) | (iy1 - iy0 > 1)  # more than 2 x 2 cells: not looked up
        # Spanning at most 2 x 2 cells, a box's four corner cells are all its cells.
        # Clipping keeps an index that is off the grid on a cell the box also covers.
        ix0, ix1 = np.clip(ix0, 0, columns - 1), np.clip(ix1, 0, columns - 1)
        iy0, iy1 = np.clip(iy0, 0, rows - 1), np.clip(iy1, 0, rows - 1)
        cells = self._cells
        touched = cells[iy0, ix0] | cells[iy0, ix1] | cells[iy1, ix0] | cells[iy1, ix1]
        return within & (wide | touched)


class Side(enum.Enum):
    """Where a point is relative to one fence, given a margin."""

    INSIDE = "inside"
    OUTSIDE = "outside"
    UNSURE = "unsure"


class FenceIndex:
    """The fences in force, indexed for many points at once. Immutable.

    Building it prepares the fences' shapely geometries in place (a cache inside
    each geometry; their values do not change).
    """

    __slots__ = ("_by_id", "_fences", "_geometries", "_grid", "_ids", "_tree")

    def __init__(self, fences: Sequence[Fence]) -> None:
        self._fences = tuple(fences)
        self._ids = [fence.id for fence in self._fences]
        self._by_id = {fence_id: i for i, fence_id in enumerate(self._ids)}
        if len(self._by_id) != len(self._fences):
            twice = sorted(i for i, n in Counter(self._ids).items() if n > 1)
            raise FenceError(f"fence ids must be unique; repeated: {', '.join(twice[:5])}")
        self._geometries = np.array([fence.geometry for fence in self._fences], dtype=object)
        shapely.prepare(self._geometries)
        self._tree = shapely.STRtree(self._geometries)
        self._grid = _Occupancy(shapely.bounds(self._geometries).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self._fences)

    def __iter__(self) -> Iterator[Fence]:
        return iter(self._fences)

    def fence(self, fence_id: str) -> Fence:
        """The fence with this id (KeyError if absent)."""
        return self._fences[self._by_id[fence_id]]

    def applies(self, fence_id: str, vehicle_id: str) -> bool:
        """Whether the fence watches this vehicle (its ``vehicle_ids`` is None or holds it)."""
        vehicle_ids = self.fence(fence_id).vehicle_ids
        return vehicle_ids is None or vehicle_id in vehicle_ids

    def classify(
        self, lon: float, lat: float, margin_m: float, vehicle_id: str | None = None
    ) -> dict[str, Side]:
        """Fence id -> INSIDE or UNSURE for the point; fences left out are OUTSIDE.

        Only fences that apply to ``vehicle_id`` are returned; None: every fence.
        The same answers as ``classify_many``, with less overhead for one point.
        """
        if not (math.isfinite(lon) and math.isfinite(lat) and math.isfinite(margin_m)):
            raise ValueError("lon, lat and margin_m must be finite")
        if margin_m < 0:
            raise ValueError("margin_m must be >= 0")
        if not self._fences:
            return {}
        ry = margin_m / METRES_PER_DEGREE
        rx = ry / max(math.cos(math.radians(lat)), _MIN_COS_LAT)
        has_margin = margin_m >= _MIN_MARGIN_M
        if has_margin:
            query: shapely.Geometry = shapely.box(lon - rx, lat - ry, lon + rx, lat + ry)
        else:
            query = Point(lon, lat)
        fences = np.sort(self._tree.query(query))
        if vehicle_id is not None:
            applies = [self.applies(self._ids[i], vehicle_id) for i in fences.tolist()]
            fences = fences[np.array(applies, dtype=bool)]
        geometries = self._geometries[fences]
        inside = shapely.contains_xy(geometries, lon, lat)
        sides, keep = inside.copy(), inside.copy()  # sides: INSIDE if True, else UNSURE
        if has_margin and fences.size:
            disc = shapely.polygons(_UNIT_DISC * (rx, ry) + (lon, lat))
            sides[inside] = shapely.contains_properly(geometries[inside], disc)
            keep[~inside] = shapely.intersects(geometries[~inside], disc)
        ids = self._ids
        return {
            ids[i]: Side.INSIDE if clear else Side.UNSURE
            for i, clear in zip(fences[keep].tolist(), sides[keep].tolist(), strict=True)
        }

    def classify_many(
        self, lons: ArrayLike, lats: ArrayLike, margins_m: ArrayLike
    ) -> list[tuple[int, str, Side]]:
        """(point index, fence id, INSIDE or UNSURE) for a batch of points, every fence.

        ``margins_m`` is one margin per point, or one for all. Rows come by point
        index, then in the order the fences were given. Pairs not listed are
        OUTSIDE. Vehicles are not filtered here: use ``applies``.
        """
        x = np.asarray(lons, dtype=np.float64)
        y = np.asarray(lats, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError("lons and lats must be 1-d arrays of the same length")
        margins = np.broadcast_to(np.asarray(margins_m, dtype=np.float64), x.shape)
        if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(margins).all()):
            raise ValueError("lons, lats and margins_m must be finite")
        if (margins < 0).any():
            raise ValueError("margins_m must be >= 0")
        if not self._fences or not x.size:
            return []

        points, fences, sides = self._pairs(x, y, margins)
        order = np.lexsort((fences, points))
        ids = self._ids
        inside = sides[order].tolist()
        return [
            (point, ids[fence], Side.INSIDE if is_inside else Side.UNSURE)
            for point, fence, is_inside in zip(
                points[order].tolist(), fences[order].tolist(), inside, strict=True
            )
        ]

    def crossed(
        self, lon1: float, lat1: float, lon2: float, lat2: float, vehicle_id: str | None = None
    ) -> list[str]:
        """Fences whose interior the straight lon/lat segment between two fixes meets.

        Catches a sparse unit that went through a fence with no fix inside it.
        Endpoints inside a fence count too: the caller decides what to make of
        that. Only fences that apply to ``vehicle_id`` (None: every fence), in
        the order the fences were given.
        """
        if (lon1, lat1) == (lon2, lat2):
            hits = self._tree.query(Point(lon1, lat1), predicate="within")
        else:
            segment = LineString([(lon1, lat1), (lon2, lat2)])
            hits = self._tree.query(segment, predicate="intersects")
            # Meeting only the boundary is not passing through the interior.
            hits = hits[~shapely.touches(self._geometries[hits], segment)]
        ids = [self._ids[i] for i in np.sort(hits).tolist()]
        return [i for i in ids if vehicle_id is None or self.applies(i, vehicle_id)]

    def _pairs(
        self, x: NDArray[np.float64], y: NDArray[np.float64], margins: NDArray[np.float64]
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
        """(point, fence, inside-and-clear) for every pair that is not OUTSIDE."""
        # Half-axes of each point's margin disc, in degrees.
        ry = margins / METRES_PER_DEGREE
        rx = ry / np.maximum(np.cos(np.radians(y)), _MIN_COS_LAT)
        has_margin = margins >= _MIN_MARGIN_M
        near = self._grid.near(x, y, np.where(has_margin, rx, 0.0), np.where(has_margin, ry, 0.0))
        if not near.all():  # classify only the points near some fence, then number them back
            chosen = np.flatnonzero(near)
            points, fences, sides = self._pairs_near(
                x[chosen], y[chosen], rx[chosen], ry[chosen], has_margin[chosen]
            )
            return chosen[points], fences, sides
        return self._pairs_near(x, y, rx, ry, has_margin)

    def _pairs_near(
        self,
        x: NDArray[np.float64],
        y: NDArray[np.float64],
        rx: NDArray[np.float64],
        ry: NDArray[np.float64],
        has_margin: NDArray[np.bool_],
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
        m = has_margin  # margin: the disc's bounding box; none: the point itself
        queries = np.empty(x.shape, dtype=object)
        queries[m] = shapely.box(x[m] - rx[m], y[m] - ry[m], x[m] + rx[m], y[m] + ry[m])
        if not m.all():  # points cost as much as boxes to make: only where needed
            queries[~m] = shapely.points(x[~m], y[~m])

        # Bounding boxes only: prepared fences then answer faster than prepared queries.
        points, fences = self._tree.query(queries)
        geometries = self._geometries[fences]
        inside = shapely.contains_xy(geometries, x[points], y[points])
        near = has_margin[points]
        # The margin discs, drawn only for points that met a fence's bounding box.
        discs = np.empty(x.shape, dtype=object)
        if near.any():
            drawn = np.unique(points[near])
            centre = np.column_stack([x[drawn], y[drawn]])[:, None, :]
            half_axes = np.column_stack([rx[drawn], ry[drawn]])[:, None, :]
            discs[drawn] = shapely.polygons(centre + _UNIT_DISC[None, :, :] * half_axes)
        sides = inside.copy()  # True: INSIDE; False: UNSURE; dropped: OUTSIDE

        clear = inside & near
        if clear.any():
            # Inside: INSIDE unless the disc reaches the boundary.
            sides[clear] = shapely.contains_properly(geometries[clear], discs[points[clear]])
        outside = ~inside & near
        keep = inside.copy()
        if outside.any():
            # Outside: UNSURE if the disc reaches the fence, else OUTSIDE (dropped).
            keep[outside] = shapely.intersects(geometries[outside], discs[points[outside]])
        return points[keep], fences[keep], sides[keep]
