"""What the REST API accepts, shared by its route modules: ids, one-line text,
times and sequence numbers, each with limits a database can hold.

The limits are part of the OpenAPI schema, so clients (and the fuzz test) see
them; ``PATTERN_HINTS`` turns a pattern mismatch into advice on what to send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, Field
from starlette.exceptions import HTTPException

from tracker.rules import EVENT_TYPES

ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
# A vehicle id is the servicing system's own key: anything on one line but '/'.
VEHICLE_ID_PATTERN = r"^[^/\s\x00-\x1f\x7f]+$"
# Names, plates, VINs: one line. PostgreSQL text cannot hold NUL, and no field is multi-line.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*$"

PATTERN_HINTS = {
    ID_PATTERN: "use only letters, digits and . _ : -",
    VEHICLE_ID_PATTERN: "use no '/', white space or control characters",
    TEXT_PATTERN: "use one line of text without control characters",
    EVENT_TYPE_PATTERN: "use an event type such as sos or geofence_enter",
}

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
# what a unit says it is (IMEI, phone id)
UniqueId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
VehicleId = Annotated[str, Field(min_length=1, max_length=128, pattern=VEHICLE_ID_PATTERN)]


def _known_event_type(name: str) -> str:
    """A misspelt type would filter out everything, or subscribe to nothing."""
    if name not in EVENT_TYPES:
        raise ValueError(
            f"unknown event type {name!r}; event types: {', '.join(sorted(EVENT_TYPES))}"
        )
    return name


EventType = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=EVENT_TYPE_PATTERN),
    AfterValidator(_known_event_type),
]

MAX_SEQ = 2**63 - 1  # sequence numbers are 64-bit in both stores
# Times a query may name. Wider would overflow date arithmetic (a day before year 1).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def aware(moment: datetime, name: str) -> datetime:
    """``moment`` in UTC; 400 when it has no time zone or is out of range."""
    if moment.tzinfo is None:
        raise HTTPException(400, f"{name} needs a time zone, e.g. 2026-01-31T12:00:00Z")
    try:
        utc: datetime | None = moment.astimezone(UTC)
    except OverflowError:  # its offset pushed it past year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise HTTPException(
            400, f"{name} must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)"
        )
    return utc


def aware_or_none(moment: datetime | None, name: str) -> datetime | None:
    return None if moment is None else aware(moment, name)


class ORJSONResponse(JSONResponse):
    """JSON by orjson: the API's default response class, and what routes with
    thousands of rows return directly, past FastAPI's encoding of each value."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
