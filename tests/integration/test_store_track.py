"""Track reads, on both adapters: positions with large attributes come back with the
rest, in order and across cursor pages. (On PostGIS they live in another index than
the small ones, migrations/0006_track_index.sql.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tracker.store import Store, StoredPosition

T0 = datetime(2026, 10, 31, 23, 59, 50, tzinfo=UTC)  # the reads cross into November
SECOND = timedelta(seconds=1)
LARGE: dict[str, Any] = {
    "raw": {"io": {str(n): "ab" * 40 for n in range(40)}},
    "ignition": True,
}  # ~4 kB
ODD: dict[str, Any] = {
    "note": 'é\u2028"quoted" \\ {not json}',
    "n": [1, 2.5, None, True],
    "empty": {},
}


def fix(unique_id: str, n: int, attributes: dict[str, Any]) -> StoredPosition:
    return StoredPosition(
        unique_id=unique_id,
        vehicle_id="v1",
        protocol="teltonika",
        fix_time=T0 + n * SECOND,
        server_time=T0 + n * SECOND,
        lat=-1.25,
        lon=36.75,
        speed_kmh=12.3,
        attributes=attributes,
    )


async def test_large_and_small_attributes_come_back_in_order(store: Store) -> None:
    rows = [
        fix(unit, n, LARGE if n % 3 == 0 else ODD if n % 3 == 1 else {})
        for n in range(30)
        for unit in ("u1", "u2")
    ]
    await store.insert_positions(rows)
    start, end = T0, T0 + 30 * SECOND
    everything = await store.track(["u1", "u2"], start=start, end=end, limit=100)
    assert everything == sorted(rows, key=lambda r: (r.fix_time, r.unique_id))
    pages: list[StoredPosition] = []
    after: tuple[datetime, str] | None = None
    while page := await store.track(["u2", "u1"], start=start, end=end, limit=7, after=after):
        pages += page
        after = (page[-1].fix_time, page[-1].unique_id)
    assert pages == everything
    assert await store.track(["u1"], start=start, end=end, limit=2) == rows[:4:2]
