"""Storage: the ``Store`` interface and its adapters."""

from tracker.store.base import (
    ApiKey,
    AuditEntry,
    Delivery,
    Event,
    GeofenceRecord,
    LoanState,
    Role,
    Share,
    Store,
    StoredPosition,
    TrackRow,
    Unit,
    UnitConflict,
    UnknownSighting,
    UnknownUnit,
    User,
    Vehicle,
    Webhook,
)

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Delivery",
    "Event",
    "GeofenceRecord",
    "LoanState",
    "Role",
    "Share",
    "Store",
    "StoredPosition",
    "TrackRow",
    "Unit",
    "UnitConflict",
    "UnknownSighting",
    "UnknownUnit",
    "User",
    "Vehicle",
    "Webhook",
    "open_store",
]


def open_store(url: str, *, writers: int = 2) -> Store:
    """The adapter for a database URL: ``sqlite:///path`` or ``postgresql://...``.

    ``writers``: the pipeline's batch writers, each holding a connection while it
    writes (PostGIS keeps four more for reads, events and the audit log)."""
    if url.startswith("sqlite:"):
        from tracker.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from tracker.store.postgis import POOL_BESIDE_WRITERS, PostgisStore

        return PostgisStore(url, max_size=writers + POOL_BESIDE_WRITERS)
    raise ValueError(f"database.url must start with sqlite:/// or postgresql://, got {url!r}")
