"""The ``Store`` contract, run on both adapters: SQLite and a real PostGIS
(the ``store`` and ``store_url`` fixtures are in ``conftest.py``).

Events, geofences and webhooks: ``test_store_events.py``; users, keys, assignees,
shares, the audit log and retention: ``test_store_access.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest

from tracker import views
from tracker.store import (
    Store,
    StoredPosition,
    Unit,
    UnitConflict,
    UnknownSighting,
    UnknownUnit,
    open_store,
)
from tracker.store.base import migrations_dir
from tracker.store.postgis import POOL_BESIDE_WRITERS, PostgisStore
from tracker.store.sqlite import path_of

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def fix(unique_id: str, fix_time: datetime, **fields: Any) -> StoredPosition:
    defaults: dict[str, Any] = {
        "vehicle_id": "v1",
        "protocol": "gt06",
        "server_time": fix_time + SECOND,
        "lat": -1.286389,
        "lon": 36.817223,
    }
    return StoredPosition(unique_id=unique_id, fix_time=fix_time, **{**defaults, **fields})


async def register(store: Store, vehicle_id: str, *unique_ids: str) -> None:
    units = [Unit(u, vehicle_id) for u in unique_ids]
    await store.put_vehicle(vehicle_id, plate=None, vin=None, loan_ref=None, units=units)


# vehicles and units


async def test_put_vehicle_creates_then_replaces(store: Store) -> None:
    units = [Unit("862000000000002", "v1", "battery", 172800), Unit("862000000000001", "v1")]
    vehicle, created = await store.put_vehicle(
        "v1", plate="KDA 123A", vin="JTDBR32E720000001", loan_ref="L-1", units=units
    )
    assert created
    assert vehicle.updated_at is not None
    assert vehicle.updated_at.utcoffset() == timedelta(0)
    assert [u.unique_id for u in vehicle.units] == ["862000000000001", "862000000000002"]
    assert await store.get_vehicle("v1") == vehicle

    replaced, created = await store.put_vehicle(
        "v1",
        plate="KDA 999Z",
        vin=None,
        loan_ref="L-2",
        units=[Unit("862000000000002", "v1", "wired"), Unit("862000000000003", "v1")],
    )
    assert not created
    assert (replaced.plate, replaced.vin, replaced.loan_ref) == ("KDA 999Z", None, "L-2")
    assert replaced.units == (
        Unit("862000000000002", "v1", "wired", None),
        Unit("862000000000003", "v1"),
    )
    assert await store.get_vehicle("v1") == replaced
    assert await store.all_units() == list(replaced.units)


async def test_vehicle_rules_round_trip_and_are_replaced(store: Store) -> None:
    rules = {"long_stay_days": 7, "margin_m": 50.5, "dwell_fixes": 3}
    vehicle, _ = await store.put_vehicle(
        "v1", plate=None, vin=None, loan_ref=None, units=[], rules=rules
    )
    assert vehicle.rules == rules
    assert (await store.get_vehicle("v1")) == vehicle
    assert [v.rules for v in await store.list_vehicles(after=None, limit=10)] == [rules]
    stored = await store.get_vehicle("v1")
    assert stored is not None
    assert isinstance(stored.rules["long_stay_days"], int)
    assert isinstance(stored.rules["margin_m"], float)

    # PUT replaces the whole vehicle: rules not named again are gone
    replaced, created = await store.put_vehicle(
        "v1", plate=None, vin=None, loan_ref=None, units=[], rules={"towed_after_s": 60}
    )
    assert not created
    assert replaced.rules == {"towed_after_s": 60}
    assert (await store.get_vehicle("v1")) == replaced

    cleared, _ = await store.put_vehicle("v1", plate=None, vin=None, loan_ref=None, units=[])
    assert cleared.rules == {}
    stored = await store.get_vehicle("v1")
    assert stored is not None
    assert stored.rules == {}


async def test_a_vehicles_group_round_trips_and_is_replaced(store: Store) -> None:
    """Read back by each way a vehicle is read: one, a page, all at start-up."""
    vehicle, _ = await store.put_vehicle(
        "v1", plate=None, vin=None, loan_ref=None, units=[], group="fleet-a"
    )
    assert vehicle.group == "fleet-a"
    await store.put_vehicle("v2", plate=None, vin=None, loan_ref=None, units=[])
    got = await store.get_vehicle("v1")
    assert got is not None
    assert got.group == "fleet-a"
    assert [v.group for v in await store.list_vehicles(after=None, limit=10)] == ["fleet-a", None]
    assert [v.group for v in await store.all_vehicles()] == ["fleet-a", None]
    moved, _ = await store.put_vehicle(
        "v1", plate=None, vin=None, loan_ref=None, units=[], group="fleet-b"
    )
    left, _ = await store.put_vehicle("v2", plate=None, vin=None, loan_ref=None, units=[])
    assert (moved.group, left.group) == ("fleet-b", None)
    assert [v.group for v in await store.all_vehicles()] == ["fleet-b", None]


async def test_vehicle_without_rules_has_none(store: Store) -> None:
    await register(store, "v1", "u1")
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.rules == {}


async def test_units_are_stored_under_the_vehicle_named(store: Store) -> None:
    units = [Unit("u1", "elsewhere", "wired"), Unit("u1", "elsewhere", "battery")]
    vehicle, _ = await store.put_vehicle("v1", plate=None, vin=None, loan_ref=None, units=units)
    assert vehicle.units == (Unit("u1", "v1", "battery"),)  # the last one named wins
    assert await store.all_units() == [Unit("u1", "v1", "battery")]


async def test_unit_of_another_vehicle_is_a_conflict(store: Store) -> None:
    await register(store, "v1", "u1")
    await register(store, "v2", "u2")
    with pytest.raises(UnitConflict) as conflict:
        await store.put_vehicle(
            "v2", plate="NEW", vin=None, loan_ref=None, units=[Unit("u1", "v2"), Unit("u3", "v2")]
        )
    assert (conflict.value.unique_id, conflict.value.other_vehicle_id) == ("u1", "v1")
    with pytest.raises(UnitConflict):
        await store.put_vehicle("v3", plate=None, vin=None, loan_ref=None, units=[Unit("u2", "")])
    # Nothing of either failed call was kept.
    v2 = await store.get_vehicle("v2")
    assert v2 is not None
    assert (v2.plate, v2.units) == (None, (Unit("u2", "v2"),))
    assert await store.get_vehicle("v3") is None
    assert await store.all_units() == [Unit("u1", "v1"), Unit("u2", "v2")]


async def test_delete_vehicle_removes_units_but_keeps_positions(store: Store) -> None:
    await register(store, "v1", "u1", "u2")
    await register(store, "v2", "u3")
    await store.insert_positions([fix("u1", T0)])
    assert await store.delete_vehicle("v1")
    assert not await store.delete_vehicle("v1")
    assert await store.get_vehicle("v1") is None
    assert await store.all_units() == [Unit("u3", "v2")]
    assert await store.track(["u1"], start=T0, end=T0 + SECOND, limit=10) == [fix("u1", T0)]
    await register(store, "v9", "u1")  # the unit is free again


async def test_list_vehicles_pages_by_vehicle_id(store: Store) -> None:
    for vehicle_id in ["v3", "V2", "v1", "v10", "v2"]:
        await register(store, vehicle_id, f"unit-{vehicle_id}-b", f"unit-{vehicle_id}-a")
    pages: list[list[str]] = []
    after = None
    while page := await store.list_vehicles(after=after, limit=2):
        pages.append([v.vehicle_id for v in page])
        assert all(len(v.units) == 2 for v in page)
        assert all(v.units[0].unique_id == f"unit-{v.vehicle_id}-a" for v in page)
        after = page[-1].vehicle_id
    assert pages == [["V2", "v1"], ["v10", "v2"], ["v3"]]  # byte order
    assert await store.list_vehicles(after=None, limit=0) == []
    assert await store.list_vehicles(after="zzz", limit=5) == []


async def test_get_unknown_vehicle_is_none(store: Store) -> None:
    assert await store.get_vehicle("nope") is None


# positions


async def test_insert_counts_new_rows_and_skips_duplicates(store: Store) -> None:
    batch = [fix("u1", T0), fix("u1", T0 + SECOND), fix("u1", T0, lat=1.0), fix("u2", T0)]
    assert await store.insert_positions(batch) == 3  # one duplicate inside the batch
    assert await store.insert_positions([fix("u1", T0), fix("u1", T0 + 2 * SECOND)]) == 1
    assert await store.insert_positions(batch) == 0
    assert await store.insert_positions([]) == 0
    stored = await store.track(["u1", "u2"], start=T0, end=T0 + 3 * SECOND, limit=10)
    assert [(p.unique_id, p.fix_time) for p in stored] == [
        ("u1", T0),
        ("u2", T0),
        ("u1", T0 + SECOND),
        ("u1", T0 + 2 * SECOND),
    ]
    assert stored[0].lat == -1.286389  # the first row of a key is kept


async def test_rows_round_trip_exactly(store: Store) -> None:
    full = fix(
        "862000000000001",
        datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC),
        vehicle_id="v7",
        protocol="teltonika",
        server_time=datetime(2024, 5, 1, 12, 0, 1, 1, tzinfo=UTC),
        lat=-89.999999,
        lon=179.123456789,
        valid=False,
        speed_kmh=12.3,
        course_deg=359.5,
        altitude_m=1661.2,
        accuracy_m=4.5,
        satellites=11,
        attributes={"ignition": True, "battery_pct": 87, "odometer_m": 1234567.5,
                    "raw": {"io": [1, 2, None], "note": "ünïcode"}},
    )  # fmt: skip
    bare = fix("862000000000002", T0 - timedelta(days=400))
    east = datetime(2024, 5, 1, 15, 0, 0, 5, tzinfo=timezone(timedelta(hours=3)))
    other_zone = fix("862000000000003", east)
    assert await store.insert_positions([full, bare, other_zone]) == 3

    got = await store.track(
        [full.unique_id, bare.unique_id, other_zone.unique_id],
        start=datetime(2000, 1, 1, tzinfo=UTC),
        end=datetime(2100, 1, 1, tzinfo=UTC),
        limit=10,
    )
    assert got == [bare, other_zone, full]
    assert got[2].attributes == full.attributes
    assert (got[0].altitude_m, got[0].accuracy_m, got[0].satellites) == (None, None, None)
    for p in got:
        assert p.fix_time.utcoffset() == timedelta(0)
        assert p.server_time.utcoffset() == timedelta(0)
    assert got[1].fix_time == east
    assert got[1].fix_time.hour == 12


async def test_latest_is_newest_fix_of_each_registered_unit(store: Store) -> None:
    await register(store, "v1", "u1", "u2", "u3")  # u3 never reported
    newest = fix("u1", T0 + timedelta(hours=1), speed_kmh=50.0)
    await store.insert_positions([newest, fix("u2", T0)])
    # A unit replays its buffer: older fixes arrive after the newest one.
    await store.insert_positions([fix("u1", T0), fix("u1", T0 + SECOND), fix("u2", T0 - SECOND)])
    await store.insert_positions([fix("stray", T0 + timedelta(days=1), vehicle_id="gone")])
    assert await store.latest_positions() == [newest, fix("u2", T0)]


async def test_track_window_order_limit_and_cursor(store: Store) -> None:
    rows = [fix(u, T0 + i * SECOND) for i in range(10) for u in ("u2", "u1")]
    rows.append(fix("u3", T0 + SECOND))  # not asked for
    await store.insert_positions(rows)
    start, end = T0 + SECOND, T0 + 9 * SECOND  # start included, end excluded
    everything = await store.track(["u1", "u2"], start=start, end=end, limit=100)
    assert [(p.fix_time, p.unique_id) for p in everything] == [
        (T0 + i * SECOND, u) for i in range(1, 9) for u in ("u1", "u2")
    ]
    pages: list[StoredPosition] = []
    after: tuple[datetime, str] | None = None
    while page := await store.track(["u1", "u2"], start=start, end=end, limit=3, after=after):
        assert len(page) <= 3
        pages += page
        after = (page[-1].fix_time, page[-1].unique_id)
    assert pages == everything
    assert await store.track(["u1"], start=start, end=end, limit=0) == []
    assert await store.track([], start=start, end=end, limit=10) == []
    assert await store.track(["nobody"], start=start, end=end, limit=10) == []


async def test_track_rows_are_the_track_as_rest_sends_it(store: Store) -> None:
    # views.track_items builds each item from a TrackRow; views.position from a
    # StoredPosition. Every field, time format and attribute shape must agree.
    times = [
        T0,  # microseconds
        T0.replace(microsecond=0) + 2 * SECOND,  # whole seconds: no fraction at all
        T0.replace(microsecond=120_000) + 3 * SECOND,  # trailing zeros (PostgreSQL cuts them)
        T0.replace(microsecond=999) + 4 * SECOND,  # below a millisecond: ".000"
    ]
    attributes: list[dict[str, Any]] = [
        {},
        {"ignition": True, "odometer_km": 12345.5, "alarm": None},
        {"nested": {"a": [1, 2.25, "ü ✓"]}, "big": 2**53 + 1},
        {"text": 'quote " and \\ backslash'},
    ]
    rows = [
        fix("u1", t, server_time=t + timedelta(microseconds=1500 * i), attributes=a,
            speed_kmh=12.3, course_deg=271.5, altitude_m=None if i else 1650.2,
            accuracy_m=4.5 if i else None, satellites=i or None, valid=i != 2)
        for i, (t, a) in enumerate(zip(times, attributes, strict=True))
    ]  # fmt: skip
    rows.append(fix("u2", times[1], vehicle_id="v2", protocol="jt808", lat=-90.0, lon=180.0))
    await store.insert_positions(rows)
    start, end = T0 - SECOND, T0 + 10 * SECOND
    positions = await store.track(["u1", "u2"], start=start, end=end, limit=100)
    assert len(positions) == 5
    track_rows = await store.track_rows(["u1", "u2"], start=start, end=end, limit=100)
    items = views.track_items(track_rows)
    assert orjson.loads(orjson.dumps(items)) == [views.position(p) for p in positions]
    assert [views.track_key(r) for r in track_rows] == [
        (p.fix_time, p.unique_id) for p in positions
    ]

    pages: list[Any] = []  # paged by the key of each page's last row
    after: tuple[datetime, str] | None = None
    while page := await store.track_rows(["u1", "u2"], start=start, end=end, limit=2, after=after):
        pages += page
        after = views.track_key(page[-1])
    assert [tuple(r) for r in pages] == [tuple(r) for r in track_rows]
    assert await store.track_rows(["u1"], start=start, end=end, limit=0) == []
    assert await store.track_rows([], start=start, end=end, limit=10) == []


async def test_positions_across_months_and_years(store: Store) -> None:
    times = [
        datetime(2011, 3, 4, 5, 6, 7, tzinfo=UTC),  # a unit with a very old buffer
        datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
    ]
    assert await store.insert_positions([fix("u1", t) for t in times]) == len(times)
    assert await store.insert_positions([fix("u1", t) for t in times]) == 0
    assert await store.insert_positions([fix("u2", t) for t in times[1:3]]) == 2
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    got = await store.track(["u1"], start=start, end=end, limit=100)
    assert [p.fix_time for p in got] == times
    january = await store.track(
        ["u1", "u2"], start=times[2], end=datetime(2024, 2, 1, tzinfo=UTC), limit=100
    )
    assert [(p.unique_id, p.fix_time) for p in january] == [
        ("u1", times[2]),
        ("u2", times[2]),
        ("u1", times[3]),
    ]


async def test_concurrent_batches_in_a_new_month(store: Store) -> None:
    month = datetime(2030, 7, 1, tzinfo=UTC)
    batches = [[fix(f"u{b}", month + i * SECOND) for i in range(50)] for b in range(4)]
    counts = await asyncio.gather(*(store.insert_positions(b) for b in batches))
    assert counts == [50, 50, 50, 50]
    got = await store.track(["u0", "u3"], start=month, end=month + timedelta(days=1), limit=1000)
    assert len(got) == 100


# unknown units


async def test_unknown_units_are_counted_most_recent_first(store: Store) -> None:
    await store.record_unknown(
        [
            UnknownSighting("imei-a", "gt06", "10.0.0.1:4000", T0),
            UnknownSighting("imei-b", "h02", "10.0.0.2:4000", T0 + SECOND),
            UnknownSighting("imei-a", "gt06", "10.0.0.3:4001", T0 + 2 * SECOND),
        ]
    )
    await store.record_unknown([UnknownSighting("imei-c", "jt808", "10.0.0.4:1", T0)])
    await store.record_unknown([])
    assert await store.unknown_units(limit=10) == [
        UnknownUnit("imei-a", "gt06", "10.0.0.3:4001", T0, T0 + 2 * SECOND, 2),
        UnknownUnit("imei-b", "h02", "10.0.0.2:4000", T0 + SECOND, T0 + SECOND, 1),
        UnknownUnit("imei-c", "jt808", "10.0.0.4:1", T0, T0, 1),
    ]
    assert [u.unique_id for u in await store.unknown_units(limit=1)] == ["imei-a"]


# lifecycle


async def test_data_survives_reopening(store: Store, store_url: str) -> None:
    await register(store, "v1", "u1")
    await store.insert_positions([fix("u1", T0)])
    await store.close()
    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert [u.unique_id for u in await reopened.all_units()] == ["u1"]
        assert await reopened.latest_positions() == [fix("u1", T0)]
        assert await reopened.insert_positions([fix("u1", T0)]) == 0
    finally:
        await reopened.close()
    await reopened.close()  # closing twice is harmless


async def test_vehicles_from_before_rules_get_none(
    store_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0003 on a database with vehicles in it: they read back with rules {}."""
    old = tmp_path / "migrations"
    for sub in ("", "sqlite"):
        (old / sub).mkdir(parents=True, exist_ok=True)
        for path in migrations_dir(sub).glob("000[12]_*.sql"):
            shutil.copy(path, old / sub / path.name)
    monkeypatch.setenv("TRACKER_MIGRATIONS_DIR", str(old))
    before = open_store(store_url)
    await before.open()
    await before.close()
    # a vehicle as the code before 0003 stored it
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(path_of(store_url))
        with conn:
            conn.execute("INSERT INTO vehicles (vehicle_id, updated_at) VALUES ('v1', 0)")
            conn.execute("INSERT INTO units (unique_id, vehicle_id) VALUES ('u1', 'v1')")
        conn.close()
    else:
        pg = await asyncpg.connect(store_url)
        try:
            await pg.execute("INSERT INTO vehicles (vehicle_id) VALUES ('v1')")
            await pg.execute("INSERT INTO units (unique_id, vehicle_id) VALUES ('u1', 'v1')")
        finally:
            await pg.close()
    monkeypatch.delenv("TRACKER_MIGRATIONS_DIR")
    after = open_store(store_url)
    await after.open()
    try:
        vehicle = await after.get_vehicle("v1")
        assert vehicle is not None
        assert (vehicle.rules, [u.unique_id for u in vehicle.units]) == ({}, ["u1"])
        assert await after.migrate() == []
    finally:
        await after.close()


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.migrate() == []
    assert await store.migrate() == []


async def test_in_memory_sqlite() -> None:
    memory = open_store("sqlite:///:memory:")
    await memory.open()
    try:
        assert await memory.insert_positions([fix("u1", T0), fix("u1", T0)]) == 1
        assert await memory.track(["u1"], start=T0, end=T0 + SECOND, limit=5) == [fix("u1", T0)]
    finally:
        await memory.close()


@pytest.mark.postgis
@pytest.mark.parametrize("writers", [1, 2, 5])
async def test_postgis_pool_holds_a_connection_for_each_batch_writer(
    postgis_url: str, writers: int
) -> None:
    store = open_store(postgis_url, writers=writers)
    assert isinstance(store, PostgisStore)
    await store.open()
    try:
        assert store._pool.get_max_size() == writers + POOL_BESIDE_WRITERS
    finally:
        await store.close()


@pytest.mark.postgis
async def test_postgis_geometry_and_partitions(postgis_url: str) -> None:
    store = open_store(postgis_url)
    await store.open()
    try:
        await store.insert_positions(
            [fix("u1", T0, lat=-1.25, lon=36.75), fix("u1", datetime(2011, 3, 4, tzinfo=UTC))]
        )
    finally:
        await store.close()
    conn = await asyncpg.connect(postgis_url)
    try:
        row = await conn.fetchrow(
            "SELECT ST_X(geom) AS x, ST_Y(geom) AS y, ST_SRID(geom) AS srid, lon, lat"
            " FROM positions WHERE fix_time = $1",
            T0,
        )
        assert row is not None
        assert (row["x"], row["y"], row["srid"]) == (row["lon"], row["lat"], 4326)
        assert (row["x"], row["y"]) == (36.75, -1.25)
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'positions'::regclass ORDER BY 1"
        )
        assert [p["relname"] for p in partitions] == ["positions_y2011m03", "positions_y2024m05"]
        applied = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert [a["name"] for a in applied] == [
            "0001_initial.sql",
            "0002_events.sql",
            "0003_vehicle_rules.sql",
            "0004_access.sql",
            "0006_track_index.sql",
            "0007_reindexed_partitions.sql",
            "0008_audit_vehicles.sql",
            "0009_vehicle_groups.sql",
        ]
    finally:
        await conn.close()
