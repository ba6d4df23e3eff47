"""Distances on the ground, for rules (geofences/ does the fence geometry)."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres; good to ~0.5 %."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def farther_than(lat1: float, lon1: float, lat2: float, lon2: float, metres: float) -> bool:
    """``distance_m(...) > metres`` (to rounding), without the trigonometry when
    the latitudes alone settle it: the great circle is never shorter than the
    meridian arc between the two latitudes."""
    if math.radians(abs(lat2 - lat1)) * EARTH_RADIUS_M > metres:
        return True
    return distance_m(lat1, lon1, lat2, lon2) > metres
