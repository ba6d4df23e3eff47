"""Filters: drop fixes that would mislead a user. Pure; the pipeline counts drops."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from protocols import Position
from tracker.store import StoredPosition


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
