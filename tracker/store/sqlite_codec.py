"""How the SQLite store encodes values: times as unix microseconds (UTC), JSON
values as JSON text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Unix microseconds. A naive datetime is taken as local time, as asyncpg does."""
    if moment.tzinfo is None:
        moment = moment.astimezone(UTC)
    return (moment - EPOCH) // MICROSECOND


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def utc_text(us: int) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC, as a ``TrackRow`` holds a time."""
    return str(NAIVE_EPOCH + timedelta(microseconds=us))


def to_us_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def from_us_or_none(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()
