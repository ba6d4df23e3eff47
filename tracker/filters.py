"""Filters: drop fixes that would mislead a user, and the row a kept fix
becomes. Pure; the pipeline counts drops."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from protocols import Position
from tracker import views
from tracker.store import StoredPosition, Unit


def drop_reason(
    position: Position,
    last: StoredPosition | None,
    now: datetime,
    *,
    future_limit: timedelta,
) -> str | None:
    """Why this fix should not be stored, or None to keep it."""
    if not position.valid:
        return "invalid_fix"
    if not (math.isfinite(position.lat) and math.isfinite(position.lon)):
        return "bad_coordinates"
    if position.lat == 0 and position.lon == 0:
        return "zero_coordinates"
    if position.fix_time > now + future_limit:
        return "future_time"
    if last is not None and last.fix_time == position.fix_time:
        return "duplicate"
    return None


def stored_row(unit: Unit, protocol: str, position: Position, now: datetime) -> StoredPosition:
    """The row a kept fix becomes: its unit's vehicle, UTC times, ``now`` as the
    server time, and attributes made JSON-plain with the codec's ``raw`` under "raw"."""
    attributes = dict(position.attributes)
    if position.raw:
        attributes["raw"] = position.raw
    # by position, in StoredPosition's field order: 14 keywords cost 0.4 us a row more
    return StoredPosition(
        unit.unique_id, unit.vehicle_id, protocol, position.fix_time.astimezone(UTC), now,
        position.lat, position.lon, position.valid, max(0.0, position.speed_kmh),
        position.course_deg, position.altitude_m, position.accuracy_m, position.satellites,
        views.plain(attributes),
    )  # fmt: skip
