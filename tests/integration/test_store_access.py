"""The ``Store`` contract for loan states, users, API keys, assignees, share links,
the audit log and retention, run on both adapters (fixtures in ``conftest.py``)."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from tracker.store import ApiKey, AuditEntry, Share, Store, StoredPosition, Unit, User, open_store
from tracker.store.base import migrations_dir
from tracker.store.sqlite import path_of

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# what the driver raises when the database refuses a statement
REFUSED = (sqlite3.DatabaseError, asyncpg.PostgresError)


def user(user_id: str, role: Any = "recovery", name: str | None = None) -> User:
    return User(user_id, name or f"User {user_id}", role, T0)


def key(key_id: str, user_id: str, created_at: datetime = T0) -> ApiKey:
    return ApiKey(key_id, user_id, f"hash-{key_id}", f"trk_{key_id}", created_at)


def share(share_id: str, vehicle_id: str = "v1", created_at: datetime = T0) -> Share:
    return Share(
        share_id, vehicle_id, f"token-{share_id}", "admin", created_at, created_at + DAY, 2.5
    )


def entry(
    actor: str, action: str, vehicle_id: str | None, at: datetime, **details: Any
) -> AuditEntry:
    return AuditEntry(at, actor, action, vehicle_id, "192.0.2.7", details)


def fix(unique_id: str, fix_time: datetime, vehicle_id: str = "v1") -> StoredPosition:
    return StoredPosition(
        unique_id, vehicle_id, "gt06", fix_time, fix_time + SECOND, -1.286389, 36.817223
    )


async def put(store: Store, vehicle_id: str, **fields: Any) -> Any:
    defaults: dict[str, Any] = {"plate": None, "vin": None, "loan_ref": None, "units": []}
    return await store.put_vehicle(vehicle_id, **{**defaults, **fields})


async def execute(url: str, sql: str) -> None:
    """Run one statement on the store's database behind its back."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_of(url))
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(url)
        try:
            await pg.execute(sql)
        finally:
            await pg.close()


# loan states


async def test_loan_state_since_moves_only_when_the_state_changes(store: Store) -> None:
    before = datetime.now(UTC)
    created, is_new = await put(store, "v1")
    assert is_new
    assert created.loan_state == "current"
    assert created.loan_state_since is not None
    assert before - SECOND <= created.loan_state_since <= datetime.now(UTC) + SECOND
    assert created.loan_state_since.utcoffset() == timedelta(0)
    assert await store.get_vehicle("v1") == created

    same, is_new = await put(store, "v1", plate="KDA 123A", loan_state="current")
    assert not is_new
    assert (same.plate, same.loan_state) == ("KDA 123A", "current")
    assert same.loan_state_since == created.loan_state_since  # kept
    assert await store.get_vehicle("v1") == same

    changed, _ = await put(store, "v1", loan_state="delinquent")
    assert changed.loan_state == "delinquent"
    assert changed.loan_state_since is not None
    assert changed.loan_state_since > created.loan_state_since  # moved
    assert await store.get_vehicle("v1") == changed

    # a PUT without a state names "current" again: a change too
    back, _ = await put(store, "v1")
    assert back.loan_state == "current"
    assert back.loan_state_since is not None
    assert back.loan_state_since > changed.loan_state_since
    assert await store.list_vehicles(after=None, limit=10) == [back]


async def test_vehicle_created_in_a_state(store: Store) -> None:
    vehicle, _ = await put(store, "v1", loan_state="closed")
    assert vehicle.loan_state == "closed"
    assert vehicle.loan_state_since is not None
    assert await store.get_vehicle("v1") == vehicle


async def test_unknown_loan_state_is_refused(store: Store) -> None:
    with pytest.raises(REFUSED):
        await put(store, "v1", loan_state="written_off")
    assert await store.get_vehicle("v1") is None


async def test_vehicles_from_before_loan_states(
    store_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0004 on a database with a vehicle in it: current, since unknown, no assignees."""
    old = tmp_path / "migrations"
    for sub in ("", "sqlite"):
        (old / sub).mkdir(parents=True, exist_ok=True)
        for path in migrations_dir(sub).glob("000[123]_*.sql"):
            shutil.copy(path, old / sub / path.name)
    monkeypatch.setenv("TRACKER_MIGRATIONS_DIR", str(old))
    before = open_store(store_url)
    await before.open()
    await before.close()
    # a vehicle as the code before 0004 stored it
    updated_at = "0" if store_url.startswith("sqlite") else "now()"
    await execute(
        store_url, f"INSERT INTO vehicles (vehicle_id, updated_at) VALUES ('v1', {updated_at})"
    )
    await execute(store_url, "INSERT INTO units (unique_id, vehicle_id) VALUES ('u1', 'v1')")
    monkeypatch.delenv("TRACKER_MIGRATIONS_DIR")
    after = open_store(store_url)
    await after.open()
    try:
        vehicle = await after.get_vehicle("v1")
        assert vehicle is not None
        assert (vehicle.loan_state, vehicle.loan_state_since, vehicle.assignees) == (
            "current",
            None,
            (),
        )
        assert [u.unique_id for u in vehicle.units] == ["u1"]
        same, _ = await put(after, "v1", units=[Unit("u1", "v1")])
        assert same.loan_state_since is None  # the state did not change
        changed, _ = await put(after, "v1", units=[Unit("u1", "v1")], loan_state="recovery")
        assert changed.loan_state_since is not None
        assert await after.migrate() == []
    finally:
        await after.close()


# users and keys


async def test_users_round_trip(store: Store) -> None:
    assert await store.list_users() == []
    assert await store.get_user("nobody") is None
    await store.put_user(user("zed", "viewer"))
    await store.put_user(user("amy", "admin"))
    await store.put_user(user("bob", "servicing"))
    assert await store.get_user("amy") == user("amy", "admin")
    assert [u.id for u in await store.list_users()] == ["amy", "bob", "zed"]
    stored = await store.get_user("zed")
    assert stored is not None
    assert stored.created_at == T0
    assert stored.created_at.utcoffset() == timedelta(0)

    # replaced by id, its keys and assignments kept
    await store.add_key(key("k1", "zed"))
    await put(store, "v1")
    assert await store.set_assignees("v1", ["zed"])
    await store.put_user(user("zed", "recovery", "Zed Renamed"))
    assert await store.get_user("zed") == user("zed", "recovery", "Zed Renamed")
    assert [k.id for k in await store.user_keys("zed")] == ["k1"]
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.assignees == ("zed",)


async def test_unknown_role_is_refused(store: Store) -> None:
    with pytest.raises(REFUSED):
        await store.put_user(user("amy", "superuser"))
    assert await store.get_user("amy") is None


async def test_keys_by_hash_and_revocation(store: Store) -> None:
    await store.put_user(user("amy", "admin"))
    await store.put_user(user("bob"))
    await store.add_key(key("k2", "amy", T0 + SECOND))
    await store.add_key(key("k1", "amy", T0))
    await store.add_key(key("k3", "bob"))

    assert await store.key_by_hash("hash-k2") == (
        key("k2", "amy", T0 + SECOND),
        user("amy", "admin"),
    )
    assert await store.key_by_hash("hash-k3") == (key("k3", "bob"), user("bob"))
    assert await store.key_by_hash("hash-unknown") is None
    assert await store.user_keys("amy") == [key("k1", "amy"), key("k2", "amy", T0 + SECOND)]
    assert await store.user_keys("nobody") == []

    revoked_at = T0 + HOUR
    assert await store.revoke_key("k1", revoked_at)
    assert not await store.revoke_key("k1", revoked_at + HOUR)  # revoked already
    assert not await store.revoke_key("unknown", revoked_at)
    assert await store.key_by_hash("hash-k1") is None  # revoked keys are not found
    assert await store.key_by_hash("hash-k2") is not None
    keys = await store.user_keys("amy")  # revoked ones too, oldest first
    assert keys == [
        ApiKey("k1", "amy", "hash-k1", "trk_k1", T0, revoked_at),
        key("k2", "amy", T0 + SECOND),
    ]


async def test_key_hash_is_unique(store: Store) -> None:
    await store.put_user(user("amy"))
    await store.add_key(key("k1", "amy"))
    with pytest.raises(REFUSED):
        await store.add_key(ApiKey("k2", "amy", "hash-k1", "trk_k2", T0))
    with pytest.raises(REFUSED):
        await store.add_key(key("k3", "nobody"))  # no such user
    assert [k.id for k in await store.user_keys("amy")] == ["k1"]


# assignees


async def test_assignees_are_set_replaced_and_cleared(store: Store) -> None:
    for user_id in ("ann", "bea", "cal"):
        await store.put_user(user(user_id))
    await put(store, "v1")
    await put(store, "v2")

    assert await store.set_assignees("v1", ["cal", "ann", "cal"])
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.assignees == ("ann", "cal")  # once each, ordered
    listed = {v.vehicle_id: v.assignees for v in await store.list_vehicles(after=None, limit=9)}
    assert listed == {"v1": ("ann", "cal"), "v2": ()}

    assert await store.set_assignees("v1", ["bea"])
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.assignees == ("bea",)

    # a PUT of the vehicle keeps them, and returns them
    replaced, _ = await put(store, "v1", plate="KDA 1")
    assert replaced.assignees == ("bea",)
    assert await store.get_vehicle("v1") == replaced

    assert await store.set_assignees("v1", [])
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.assignees == ()

    assert not await store.set_assignees("nope", ["ann"])


async def test_assigning_an_unknown_user_changes_nothing(store: Store) -> None:
    await store.put_user(user("ann"))
    await put(store, "v1")
    assert await store.set_assignees("v1", ["ann"])
    with pytest.raises(REFUSED):
        await store.set_assignees("v1", ["ann", "ghost"])
    vehicle = await store.get_vehicle("v1")
    assert vehicle is not None
    assert vehicle.assignees == ("ann",)


async def test_assignees_go_with_the_vehicle(store: Store) -> None:
    await store.put_user(user("ann"))
    await put(store, "v1")
    await store.set_assignees("v1", ["ann"])
    assert await store.delete_vehicle("v1")
    recreated, created = await put(store, "v1")
    assert created
    assert recreated.assignees == ()


# share links


async def test_shares_by_id_and_hash_and_revocation(store: Store) -> None:
    await store.add_share(share("s1"))
    await store.add_share(share("s2", "gone"))  # no such vehicle: allowed, shows nothing
    assert await store.get_share("s1") == share("s1")
    assert await store.get_share("nope") is None
    assert await store.share_by_hash("token-s2") == share("s2", "gone")
    assert await store.share_by_hash("token-nope") is None
    stored = await store.get_share("s1")
    assert stored is not None
    assert (stored.history_h, stored.expires_at.utcoffset()) == (2.5, timedelta(0))

    assert await store.revoke_share("s1", T0 + HOUR)
    assert not await store.revoke_share("s1", T0 + 2 * HOUR)
    assert not await store.revoke_share("nope", T0)
    revoked = await store.share_by_hash("token-s1")  # revoked ones are still found
    assert revoked is not None
    assert revoked.revoked_at == T0 + HOUR

    with pytest.raises(REFUSED):
        await store.add_share(Share("s3", "v1", "token-s1", "admin", T0, T0 + DAY, 1.0))


async def test_shares_are_listed_newest_first(store: Store) -> None:
    await store.add_share(share("a", "v1", T0 + 2 * HOUR))
    await store.add_share(share("b", "v2", T0 + 3 * HOUR))
    await store.add_share(share("c", "v1", T0))
    await store.add_share(share("d", "v1", T0 + 2 * HOUR))  # same time as a: higher id first
    assert [s.id for s in await store.list_shares()] == ["b", "d", "a", "c"]
    assert [s.id for s in await store.list_shares(vehicle_id="v1")] == ["d", "a", "c"]
    assert await store.list_shares(vehicle_id="v9") == []
    assert (await store.list_shares(vehicle_id="v2")) == [share("b", "v2", T0 + 3 * HOUR)]


# audit log


async def test_audit_is_appended_and_read_newest_first(store: Store) -> None:
    assert await store.audit() == []
    await store.append_audit([])
    await store.append_audit(
        [
            entry("amy", "location.read", "v1", T0, fields=["lat", "lon"]),
            entry("bob", "track.read", "v2", T0 + SECOND, hours=24.5),
        ]
    )
    east = datetime(2024, 5, 1, 15, 0, 2, tzinfo=timezone(timedelta(hours=3)))  # T0 + ~2 s
    await store.append_audit(
        [
            entry("share:s1", "live.subscribe", "v1", east),
            entry("amy", "users.read", None, T0 + 3 * SECOND),
        ]
    )
    log = await store.audit()
    assert [(e.actor, e.action) for e in log] == [
        ("amy", "users.read"),
        ("share:s1", "live.subscribe"),
        ("bob", "track.read"),
        ("amy", "location.read"),
    ]
    seqs = [e.seq for e in log if e.seq is not None]
    assert len(seqs) == 4
    assert seqs == sorted(seqs, reverse=True)
    oldest = log[-1]
    assert oldest == AuditEntry(
        T0, "amy", "location.read", "v1", "192.0.2.7", {"fields": ["lat", "lon"]}, seqs[-1]
    )
    assert log[2].details == {"hours": 24.5}
    assert log[1].at == east
    assert all(e.at.utcoffset() == timedelta(0) for e in log)


async def test_audit_filters_and_paging(store: Store) -> None:
    await store.append_audit(
        [
            entry("amy", "location.read", "v1", T0),
            entry("bob", "track.read", "v1", T0 + SECOND),
            entry("amy", "track.read", "v2", T0 + 2 * SECOND),
            entry("amy", "location.read", "v1", T0 + 3 * SECOND),
            entry("bob", "share.create", "v2", T0 + 4 * SECOND),
        ]
    )

    def ats(entries: list[AuditEntry]) -> list[int]:
        return [round((e.at - T0).total_seconds()) for e in entries]

    assert ats(await store.audit(actor="amy")) == [3, 2, 0]
    assert ats(await store.audit(vehicle_id="v1")) == [3, 1, 0]
    assert ats(await store.audit(action="track.read")) == [2, 1]
    assert ats(await store.audit(actor="amy", vehicle_id="v1")) == [3, 0]
    assert ats(await store.audit(since=T0 + SECOND, until=T0 + 3 * SECOND)) == [2, 1]
    assert await store.audit(actor="nobody") == []
    assert await store.audit(limit=0) == []

    # paging: each page's oldest seq is the next one's ``before``
    first = await store.audit(limit=2)
    assert ats(first) == [4, 3]
    assert first[-1].seq is not None
    second = await store.audit(limit=2, before=first[-1].seq)
    assert ats(second) == [2, 1]
    assert second[-1].seq is not None
    third = await store.audit(limit=2, before=second[-1].seq)
    assert ats(third) == [0]
    assert third[0].seq is not None
    assert await store.audit(before=third[0].seq) == []
    assert ats(await store.audit(actor="amy", before=first[-1].seq)) == [2, 0]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET actor = 'someone else'",
        "UPDATE audit_log SET details = '{}' WHERE action = 'track.read'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE actor = 'amy'",
    ],
)
async def test_audit_rows_cannot_be_changed(store: Store, store_url: str, sql: str) -> None:
    await store.append_audit([entry("amy", "track.read", "v1", T0, hours=1)])
    before = await store.audit()
    with pytest.raises(REFUSED, match="append-only"):
        await execute(store_url, sql)
    assert await store.audit() == before


@pytest.mark.postgis
async def test_postgis_audit_log_cannot_be_truncated(postgis_url: str) -> None:
    store = open_store(postgis_url)
    await store.open()
    try:
        await store.append_audit([entry("amy", "track.read", "v1", T0)])
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await execute(postgis_url, "TRUNCATE audit_log")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await execute(postgis_url, "DELETE FROM audit_log WHERE false")  # even no row
        assert len(await store.audit()) == 1
    finally:
        await store.close()


# retention


def months_of_fixes() -> list[StoredPosition]:
    """March (3 fixes), April (2) and May 2024 (2 before the 10th, 2 after)."""
    march, april, may = (datetime(2024, m, 1, tzinfo=UTC) for m in (3, 4, 5))
    return [
        fix("u1", march),
        fix("u1", march + 30 * DAY),
        fix("u2", march + 10 * DAY, "v2"),
        fix("u1", april + DAY),
        fix("u2", april + 29 * DAY + 23 * HOUR, "v2"),
        fix("u1", may),
        fix("u2", may + 8 * DAY + 23 * HOUR, "v2"),
        fix("u1", may + 9 * DAY + 1 * HOUR),
        fix("u2", may + 20 * DAY, "v2"),
    ]


async def stored_times(store: Store) -> list[datetime]:
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    track = await store.track(["u1", "u2"], start=start, end=end, limit=1000)
    return [p.fix_time for p in track]


async def test_delete_positions_before_a_cutoff(store: Store) -> None:
    fixes = months_of_fixes()
    assert await store.insert_positions(fixes) == len(fixes)
    cutoff = datetime(2024, 5, 10, tzinfo=UTC)
    assert await store.delete_positions_before(cutoff) == 7
    kept = sorted(p.fix_time for p in fixes if p.fix_time >= cutoff)
    assert await stored_times(store) == kept
    assert await store.delete_positions_before(cutoff) == 0

    # a fix of a month already deleted can be stored again
    again = fix("u1", datetime(2024, 3, 15, tzinfo=UTC))
    assert await store.insert_positions([again]) == 1
    assert await stored_times(store) == sorted([again.fix_time, *kept])
    assert await store.delete_positions_before(cutoff) == 1


async def test_delete_positions_before_a_month_boundary(store: Store) -> None:
    fixes = months_of_fixes()
    await store.insert_positions(fixes)
    may = datetime(2024, 5, 1, tzinfo=UTC)
    assert await store.delete_positions_before(may) == 5
    assert await stored_times(store) == sorted(p.fix_time for p in fixes if p.fix_time >= may)
    # nothing stored before it: nothing to do
    assert await store.delete_positions_before(datetime(2020, 1, 1, tzinfo=UTC)) == 0


async def test_delete_positions_before_an_offset_cutoff(store: Store) -> None:
    await store.insert_positions(months_of_fixes())
    # 2024-05-01 02:00 at +03:00 is April 30th, 23:00 UTC
    cutoff = datetime(2024, 5, 1, 2, 0, tzinfo=timezone(timedelta(hours=3)))
    assert await store.delete_positions_before(cutoff) == 4  # the last of April stays
    assert (await stored_times(store))[0] == datetime(2024, 4, 30, 23, tzinfo=UTC)


@pytest.mark.postgis
async def test_postgis_drops_whole_months(postgis_url: str) -> None:
    store = open_store(postgis_url)
    other = open_store(postgis_url)  # another process, sharing the database
    await store.open()
    await other.open()
    try:
        await store.insert_positions(months_of_fixes())
        await other.insert_positions([fix("u3", datetime(2024, 4, 2, tzinfo=UTC))])
        assert await store.delete_positions_before(datetime(2024, 5, 10, tzinfo=UTC)) == 8
        conn = await asyncpg.connect(postgis_url)
        try:
            partitions = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'positions'::regclass ORDER BY 1"
            )
            assert [p["relname"] for p in partitions] == ["positions_y2024m05"]
        finally:
            await conn.close()
        # the other process still believes April's partition exists
        assert await other.insert_positions([fix("u3", datetime(2024, 4, 3, tzinfo=UTC))]) == 1
        assert await store.insert_positions([fix("u1", datetime(2024, 3, 3, tzinfo=UTC))]) == 1
    finally:
        await other.close()
        await store.close()


async def test_purge_vehicle_positions(store: Store) -> None:
    fixes = months_of_fixes()
    await store.insert_positions(fixes)
    assert await store.purge_vehicle_positions("v2") == 4
    assert await store.purge_vehicle_positions("v2") == 0
    assert await store.purge_vehicle_positions("nope") == 0
    assert await stored_times(store) == sorted(p.fix_time for p in fixes if p.vehicle_id == "v1")
