"""Track reads, on both adapters: positions with large attributes come back with the
rest, in order and across cursor pages. (On PostGIS they live in another index than
the small ones, migrations/0006_track_index.sql.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tracker import views
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


async def test_one_units_rows_merge_in_time_order_to_the_microsecond(store: Store) -> None:
    # On PostGIS the small and large rows are two reads, merged by fix time: for
    # track_rows by PostgreSQL's UTC text of it, which drops trailing zeros. Here
    # the two kinds alternate within each second, at fractions whose text sorts
    # wrongly if read as numbers of digits (.5 after .25, a whole second first).
    fractions = [0, 250_000, 500_000, 5, 999_999, 120_000]
    rows = [
        StoredPosition(
            unique_id="u1",
            vehicle_id="v1",
            protocol="teltonika",
            fix_time=T0 + second * SECOND + timedelta(microseconds=fraction),
            server_time=T0,
            lat=-1.25,
            lon=36.75,
            attributes=LARGE if (second + i) % 2 else {"n": i},
        )
        for second in range(3)
        for i, fraction in enumerate(fractions)
    ]
    await store.insert_positions(rows)
    start, end = T0, T0 + 10 * SECOND
    expected = sorted(rows, key=lambda r: r.fix_time)
    assert await store.track(["u1"], start=start, end=end, limit=100) == expected
    track_rows = await store.track_rows(["u1"], start=start, end=end, limit=100)
    assert [views.track_key(r) for r in track_rows] == [(r.fix_time, "u1") for r in expected]
    pages: list[Any] = []
    after: tuple[datetime, str] | None = None
    while page := await store.track_rows(["u1"], start=start, end=end, limit=4, after=after):
        pages += page
        after = views.track_key(page[-1])
    assert [tuple(r) for r in pages] == [tuple(r) for r in track_rows]
