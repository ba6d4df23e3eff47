"""The narrow storage interface, and the records that cross it.

Two adapters implement ``Store``: ``postgis.PostgisStore`` (production,
asyncpg) and ``sqlite.SqliteStore`` (the embedded default). One contract test
suite (``tests/integration/test_store_contract.py``) runs against both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from protocols.messages import record

UnitKind = Literal["wired", "battery"]
LoanState = Literal["current", "delinquent", "recovery", "closed"]
Role = Literal["admin", "servicing", "recovery", "viewer"]


def migrations_dir(subdir: str = "") -> Path:
    """Where the SQL migrations live: ``$TRACKER_MIGRATIONS_DIR`` when set (an
    installed, non-editable package), else ``migrations/`` of this checkout.

    PostGIS files are at the top, SQLite's under ``sqlite/``.
    """
    root = os.environ.get("TRACKER_MIGRATIONS_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "migrations"
    path = base / subdir
    if not path.is_dir():
        raise FileNotFoundError(
            f"no migrations directory at {path}; set TRACKER_MIGRATIONS_DIR to the "
            "repository's migrations/ directory"
        )
    return path


@dataclass(frozen=True, slots=True)
class Unit:
    """A tracker installed in a vehicle. ``unique_id`` is what the unit says (IMEI)."""

    unique_id: str
    vehicle_id: str
    kind: UnitKind = "wired"
    silent_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Vehicle:
    """The collateral: a financed car with one or more units.

    ``rules`` overrides rule thresholds for this vehicle only: ``RuleSettings``
    field name -> value (``{"long_stay_days": 7, "margin_m": 50}``); a field
    not named keeps its global value. Empty: every global value applies.
    """

    vehicle_id: str
    plate: str | None = None
    vin: str | None = None
    loan_ref: str | None = None
    units: tuple[Unit, ...] = ()
    updated_at: datetime | None = None
    rules: dict[str, Any] = field(default_factory=dict)
    loan_state: LoanState = "current"
    loan_state_since: datetime | None = None  # when loan_state last changed
    assignees: tuple[str, ...] = ()  # user ids of the recovery agents on this car
    group: str | None = None  # fences may apply to a group (migration 0009)


@record
class StoredPosition:
    """A position as stored: one row of the positions table."""

    unique_id: str
    vehicle_id: str
    protocol: str
    fix_time: datetime  # aware, UTC
    server_time: datetime  # aware, UTC
    lat: float
    lon: float
    valid: bool = True
    speed_kmh: float = 0.0
    course_deg: float = 0.0
    altitude_m: float | None = None
    accuracy_m: float | None = None
    satellites: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


TrackRow = Sequence[Any]
"""A stored position as the REST track sends it: ``StoredPosition``'s fields in
order, but ``fix_time`` and ``server_time`` as UTC text, ``YYYY-MM-DD
HH:MM:SS[.ffffff]`` (a fraction may lose its trailing zeros, as PostgreSQL
prints it), and ``attributes`` as JSON text. A day of fixes goes out as JSON
without a datetime, a record and a dict built and read per row for it
(``views.track_items``); the text keeps every microsecond, so the page's
cursor is exact."""


@dataclass(frozen=True, slots=True)
class UnknownSighting:
    """An unregistered unit knocked: who, over which protocol, from where, when."""

    unique_id: str
    protocol: str
    remote_addr: str
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class UnknownUnit:
    unique_id: str
    protocol: str
    remote_addr: str
    first_seen: datetime
    last_seen: datetime
    count: int


class UnitConflict(Exception):
    """A unit named for one vehicle is already installed in another."""

    def __init__(self, unique_id: str, other_vehicle_id: str) -> None:
        super().__init__(
            f"unit {unique_id!r} belongs to vehicle {other_vehicle_id!r}; remove it there first"
        )
        self.unique_id = unique_id
        self.other_vehicle_id = other_vehicle_id


Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Event:
    """Something a lender should know about a vehicle. Immutable once stored.

    ``alert_key`` groups the events of one alert (``unit_silent:<unique_id>``,
    ``geofence:<fence id>``, ...): an event with ``clears=False`` opens the
    alert, one with ``clears=True`` closes it. An alert is open while the
    newest event with its key (per vehicle) does not clear. One-off events have
    no key. ``seq`` is the store's monotonically increasing sequence: the feed
    cursor. It is None until stored.
    """

    id: str
    type: str
    severity: Severity
    vehicle_id: str
    unique_id: str | None
    fix_time: datetime | None  # the triggering fix (or the missed deadline)
    detected_at: datetime
    lat: float | None = None
    lon: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    late: bool = False
    alert_key: str | None = None
    clears: bool = False
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class GeofenceRecord:
    """A fence as stored: its GeoJSON geometry (Polygon or MultiPolygon, lon/lat)."""

    id: str
    name: str
    category: str
    geometry: dict[str, Any]
    vehicle_ids: tuple[str, ...] | None  # None: every vehicle
    created_at: datetime
    details: dict[str, Any] = field(default_factory=dict)  # how it was drawn (circle, ...)


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    secret: str
    event_types: tuple[str, ...] | None  # None: every type
    created_at: datetime


DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one webhook: the outbox row. ``failed`` is final (gave up)."""

    id: int
    webhook_id: str
    event_seq: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    last_status_code: int | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A user's API key. Only ``key_hash`` (SHA-256 hex of the key) is stored."""

    id: str
    user_id: str
    key_hash: str
    prefix: str  # the key's first characters, to tell keys apart in a list
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Share:
    """A time-limited link for an outside agent to watch one vehicle."""

    id: str
    vehicle_id: str
    token_hash: str  # SHA-256 hex of the token
    created_by: str  # user id
    created_at: datetime
    expires_at: datetime
    history_h: float
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who read or shared a borrower's movements. Append-only; ``seq`` set by the store."""

    at: datetime
    actor: str  # user id, or "share:<share id>"
    action: str  # location.read, locations.read, track.read, live.subscribe, share.create, ...
    vehicle_id: str | None
    remote_addr: str
    details: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None


def vehicle_units(vehicle_id: str, units: Sequence[Unit]) -> tuple[Unit, ...]:
    """``units`` as ``put_vehicle`` stores them: under ``vehicle_id``, one per
    ``unique_id`` (the last one named wins), ordered by ``unique_id``."""
    by_id = {u.unique_id: Unit(u.unique_id, vehicle_id, u.kind, u.silent_after_s) for u in units}
    return tuple(sorted(by_id.values(), key=lambda u: u.unique_id))


class Store(Protocol):
    """Everything the server keeps. Every method is a coroutine; none is called
    per position except through ``insert_positions`` batches."""

    kind: str  # "postgis" | "sqlite"

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One round trip to the database; raises whatever keeps it from answering.
        The pipeline asks when a batch fails (a broken connection, or the store
        gone?) and when idle (is the store still there?)."""

    def rejects_rows(self, error: Exception) -> bool:
        """Whether ``error`` from ``insert_positions`` blames the rows (a value or
        constraint the store will never accept), not the store's ability to write
        now (connection, disk, read-only, shutdown): such rows are refused, not
        retried."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order; return the names applied now."""

    # vehicles and units
    async def put_vehicle(
        self,
        vehicle_id: str,
        *,
        plate: str | None,
        vin: str | None,
        loan_ref: str | None,
        units: Sequence[Unit],
        rules: Mapping[str, Any] | None = None,
        loan_state: LoanState = "current",
        group: str | None = None,
    ) -> tuple[Vehicle, bool]:
        """Create or replace a vehicle and its units; return it and whether it is new.

        Units of this vehicle not in ``units`` are removed from it; units in it
        are no longer listed as unknown. Each unit is
        stored under ``vehicle_id`` (its own ``vehicle_id`` field is ignored).
        ``rules`` (its threshold overrides, see ``Vehicle``) replaces the stored
        ones as given, not merged: None stores ``{}``. The store does not check
        the names or values; the API does. ``loan_state_since`` is set to now
        when the vehicle is new or its ``loan_state`` changes, kept otherwise.
        Assignees are kept (``set_assignees`` changes them).

        Raises:
            UnitConflict: a unit in ``units`` belongs to another vehicle.
        """

    async def get_vehicle(self, vehicle_id: str) -> Vehicle | None:
        """The vehicle with its units (ordered by ``unique_id``), or None."""

    async def delete_vehicle(self, vehicle_id: str) -> bool:
        """Remove a vehicle and its units (their stored positions stay)."""

    async def list_vehicles(self, *, after: str | None, limit: int) -> list[Vehicle]:
        """Vehicles ordered by ``vehicle_id``, those after ``after`` (keyset paging)."""

    async def all_units(self) -> list[Unit]:
        """Every registered unit, ordered by ``unique_id``."""

    async def all_vehicles(self) -> list[Vehicle]:
        """Every vehicle with its units and assignees, as ``list_vehicles`` pages
        them, all at once: start-up reads a million in a few seconds this way."""

    # positions
    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        """Store one batch in one transaction; skip rows whose (unique_id,
        fix_time) is already stored. Return how many were new. When it returns,
        the batch is durable."""

    async def latest_positions(self) -> list[StoredPosition]:
        """The newest stored position (by fix time) of every registered unit,
        ordered by ``unique_id``. Units no longer registered are left out.
        Start-up reads it once: one index probe per unit, not a scan of history."""

    async def track(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[StoredPosition]:
        """Positions of these units with start <= fix_time < end, ordered by
        (fix_time, unique_id), strictly after the ``after`` cursor, at most ``limit``."""

    async def track_rows(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> Sequence[TrackRow]:
        """``track``'s positions as ``TrackRow``s: what the REST track sends."""

    # unknown units
    async def record_unknown(self, sightings: Sequence[UnknownSighting]) -> None: ...

    async def unknown_units(self, *, limit: int) -> list[UnknownUnit]:
        """Most recently seen first.

        ``record_unknown`` counts each sighting; it keeps the earliest
        ``first_seen``, the latest ``last_seen`` and the protocol and address
        of the sighting recorded last."""

    # unit liveness (restart-safe silence detection)
    async def save_last_seen(self, seen: Sequence[tuple[str, datetime]]) -> None:
        """Remember when units last said anything; never moves a time backwards."""

    async def last_seen(self) -> dict[str, datetime]:
        """unique_id -> last time it said anything, for every unit remembered."""

    # events
    async def insert_events(self, events: Sequence[Event]) -> list[Event]:
        """Store events in one transaction, and queue one pending delivery per
        matching webhook (event type in its ``event_types``, or it takes all) in
        the same transaction, due at once (``next_attempt_at`` and ``created_at``
        are the event's ``detected_at``). Return the events with ``seq`` set,
        in order: increasing, never reused, and committed in order (a reader
        that sees ``seq`` n sees every stored event below it).

        An ``id`` already stored, or twice in the batch, fails the whole batch
        (the driver's unique-violation error): nothing of it is kept."""

    async def events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        vehicle_id: str | None = None,
        types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        newest_first: bool = False,
    ) -> list[Event]:
        """Events with seq > ``after`` (oldest first unless ``newest_first``),
        filtered by vehicle, types and ``since <= detected_at < until``, at most
        ``limit``. With ``newest_first``, ``after`` is still a lower bound (the
        newest events above it come first); ``types=[]`` matches nothing."""

    async def open_alerts(self) -> list[Event]:
        """For each (vehicle_id, alert_key), its newest event, when that one does
        not clear: the alerts open now, ordered by ``seq``."""

    # geofences
    async def put_geofence(self, fence: GeofenceRecord) -> None:
        """Create or replace by id."""

    async def get_geofence(self, fence_id: str) -> GeofenceRecord | None: ...

    async def list_geofences(self) -> list[GeofenceRecord]:
        """Every fence, ordered by id."""

    async def delete_geofence(self, fence_id: str) -> bool: ...

    # webhooks and their outbox
    async def put_webhook(self, webhook: Webhook) -> None:
        """Create or replace by id; a replaced webhook keeps its deliveries."""

    async def list_webhooks(self) -> list[Webhook]:
        """Every webhook, ordered by id."""

    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Remove it and its deliveries."""

    async def due_deliveries(
        self, now: datetime, *, limit: int
    ) -> list[tuple[Delivery, Webhook, Event]]:
        """Pending deliveries whose ``next_attempt_at`` <= now, oldest first
        (by ``next_attempt_at``, then id), at most ``limit``, each with its
        webhook and event."""

    async def update_delivery(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_error: str | None,
        last_status_code: int | None,
        delivered_at: datetime | None,
    ) -> None:
        """Record an attempt: set every field given (an unknown id is ignored)."""

    async def deliveries(self, webhook_id: str, *, limit: int) -> list[Delivery]:
        """The webhook's deliveries, newest (highest id) first, at most ``limit``."""

    # users, keys, assignees
    async def put_user(self, user: User) -> None:
        """Create or replace by id."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def list_users(self) -> list[User]:
        """Ordered by id."""

    async def add_key(self, key: ApiKey) -> None: ...

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        """Set ``revoked_at``; False when there is no such key or it is revoked already."""

    async def user_keys(self, user_id: str) -> list[ApiKey]:
        """Every key of the user, revoked ones too, oldest first."""

    async def key_by_hash(self, key_hash: str) -> tuple[ApiKey, User] | None:
        """The unrevoked key with this hash and its user."""

    async def set_assignees(self, vehicle_id: str, user_ids: Sequence[str]) -> bool:
        """Replace the vehicle's assignees; False when there is no such vehicle."""

    # share links
    async def add_share(self, share: Share) -> None: ...

    async def get_share(self, share_id: str) -> Share | None: ...

    async def share_by_hash(self, token_hash: str) -> Share | None:
        """The share with this token hash, revoked or expired ones too (the page
        says which)."""

    async def revoke_share(self, share_id: str, at: datetime) -> bool:
        """Set ``revoked_at``; False when there is no such share or it is revoked."""

    async def list_shares(self, *, vehicle_id: str | None = None) -> list[Share]:
        """Newest first."""

    # audit log
    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append in one transaction, in order; nothing ever updates or deletes them."""

    async def audit(
        self,
        *,
        actor: str | None = None,
        vehicle_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first; ``before``: only entries with seq < before (paging)."""

    # retention
    async def delete_positions_before(self, cutoff: datetime) -> int:
        """Delete positions whose fix_time < cutoff; return how many. PostGIS
        drops whole monthly partitions that end on or before the cutoff and
        deletes rows from the partition holding it."""

    async def purge_vehicle_positions(self, vehicle_id: str) -> int:
        """Delete every stored position of the vehicle; return how many."""

    async def reindex_closed_month(self, now: datetime) -> str | None:
        """PostGIS: rebuild the indexes of one monthly partition whose month is
        over, so a unit's day lies on consecutive index pages; return its name,
        or None when none is due. SQLite: None."""
