"""The last-known location fast lane answers only what the FastAPI route would
answer the same way, and the audit log it writes is group-committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tracker import views
from tracker.api_location import LocationFastLane
from tracker.auth import MAX_UNWRITTEN_AUDIT, Access, hash_secret
from tracker.cache import LatestState
from tracker.devices import Registry
from tracker.store import ApiKey, AuditEntry, StoredPosition, Unit, User, Vehicle

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ADMIN_KEY = "admin-key"
CAR = Vehicle("car-1", units=(Unit("111", "car-1"), Unit("222", "car-1", "battery")))
FIX = StoredPosition("111", "car-1", "gt06", T0, T0 + timedelta(seconds=1), -6.2, 106.8)


class FakeStore:
    """What ``Access`` asks of a store: keys and the audit log."""

    def __init__(self) -> None:
        self.batches: list[list[AuditEntry]] = []
        self.keys: dict[str, tuple[ApiKey, User]] = {}
        self.down = False
        self.gate: asyncio.Event | None = None  # writes wait for it when set

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("the store is down")
        self.batches.append(list(entries))

    async def key_by_hash(self, key_hash: str) -> tuple[ApiKey, User] | None:
        return self.keys.get(key_hash)

    @property
    def written(self) -> list[str]:
        return [e.actor for batch in self.batches for e in batch]


def make_access(store: FakeStore) -> Access:
    return Access(
        store,  # type: ignore[arg-type]
        ADMIN_KEY,
        position_loan_states=frozenset({"delinquent", "recovery"}),
        clock=lambda: T0,
    )


@pytest.fixture
def server() -> Any:
    store = FakeStore()
    registry = Registry(store)  # type: ignore[arg-type]
    registry.refresh(CAR)
    registry.refresh(Vehicle("no-fix", units=(Unit("333", "no-fix"),)))
    cache = LatestState()
    cache.load([FIX])
    return SimpleNamespace(
        store=store,
        registry=registry,
        cache=cache,
        access=make_access(store),
        clock=lambda: T0 + timedelta(minutes=1),
    )


class Exchange:
    """One request through the fast lane; what it sent, or whether it passed it on."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.passed_on = False

    async def __call__(
        self, server: Any, path: str, key: str | None = ADMIN_KEY, **scope: Any
    ) -> Exchange:
        async def fallback(scope: Any, receive: Any, send: Any) -> None:
            self.passed_on = True

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message)

        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        full: dict[str, Any] = {"type": "http", "method": "GET", "path": path}
        full |= {"headers": headers, "client": ("10.0.0.9", 4242), **scope}
        await LocationFastLane(fallback, server)(full, None, send)  # type: ignore[arg-type]
        return self

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> Any:
        return orjson.loads(self.sent[1]["body"])


async def test_known_key_and_vehicle_are_answered_as_the_route_would(server: Any) -> None:
    done = await Exchange()(server, "/api/v1/vehicles/car-1/location")
    assert not done.passed_on
    assert done.status == 200
    assert dict(done.sent[0]["headers"])[b"content-type"] == b"application/json"
    units = [(u, server.cache.unit(u.unique_id), server.cache.last_seen(u.unique_id))
             for u in CAR.units]  # fmt: skip
    assert done.body == orjson.loads(
        orjson.dumps(views.location("car-1", FIX, units, server.clock()))
    )
    assert done.body["age_s"] == 60.0
    [[entry]] = server.store.batches
    assert (entry.actor, entry.action, entry.vehicle_id) == ("admin", "location.read", "car-1")
    assert entry.remote_addr == "10.0.0.9:4242"


@pytest.mark.parametrize(
    ("path", "key", "scope"),
    [
        ("/api/v1/vehicles/car-1/location", "some-other-key", {}),  # not looked up yet
        ("/api/v1/vehicles/car-1/location", None, {}),  # 401 is the route's
        ("/api/v1/vehicles/nobody/location", ADMIN_KEY, {}),  # 404
        ("/api/v1/vehicles/no-fix/location", ADMIN_KEY, {}),  # 404, but audited first
        ("/api/v1/vehicles/car 1/location", ADMIN_KEY, {}),  # 422
        ("/api/v1/vehicles/" + "x" * 129 + "/location", ADMIN_KEY, {}),  # 422
        ("/api/v1/vehicles//location", ADMIN_KEY, {}),
        ("/api/v1/vehicles/location", ADMIN_KEY, {}),
        ("/api/v1/vehicles/car-1/location", ADMIN_KEY, {"method": "POST"}),  # 405
        ("/api/v1/vehicles/car-1/track", ADMIN_KEY, {}),
        ("/api/v1/vehicles/car-1/location", ADMIN_KEY, {"root_path": "/tracker"}),
    ],
)
async def test_anything_unusual_goes_to_the_route(
    server: Any, path: str, key: str | None, scope: dict[str, Any]
) -> None:
    done = await Exchange()(server, path, key, **scope)
    assert done.passed_on
    assert done.sent == []
    assert server.store.batches == []


async def test_a_cached_key_is_used_until_it_is_revoked(server: Any) -> None:
    key = "servicing-key"
    server.store.keys[hash_secret(key)] = (
        ApiKey("k1", "sam", hash_secret(key), "trk_", T0),
        User("sam", "Sam", "servicing", T0),
    )
    assert (await Exchange()(server, "/api/v1/vehicles/car-1/location", key)).passed_on
    await server.access.principal(key)  # the route looked it up
    assert (await Exchange()(server, "/api/v1/vehicles/car-1/location", key)).status == 200
    server.access.forget_key("k1")
    assert (await Exchange()(server, "/api/v1/vehicles/car-1/location", key)).passed_on


async def test_positions_kept_from_recovery_users_go_to_the_route(server: Any) -> None:
    key = "recovery-key"
    server.store.keys[hash_secret(key)] = (
        ApiKey("k2", "rita", hash_secret(key), "trk_", T0),
        User("rita", "Rita", "recovery", T0),
    )
    await server.access.principal(key)
    # not assigned, loan current: the route answers 403
    assert (await Exchange()(server, "/api/v1/vehicles/car-1/location", key)).passed_on
    server.registry.refresh(
        Vehicle("car-1", units=CAR.units, loan_state="recovery", assignees=("rita",))
    )
    assert (await Exchange()(server, "/api/v1/vehicles/car-1/location", key)).status == 200


async def test_a_full_audit_backlog_is_refused_not_skipped(server: Any) -> None:
    server.store.down = True
    server.access._unwritten = [AuditEntry(T0, "x", "location.read", "car-1", "?")] * (
        MAX_UNWRITTEN_AUDIT
    )
    done = await Exchange()(server, "/api/v1/vehicles/car-1/location")
    assert done.status == 503
    assert b"audit" in done.sent[1]["body"]


# the audit log's group commit


async def test_concurrent_reads_share_audit_writes_and_wait_for_theirs() -> None:
    store = FakeStore()
    access = make_access(store)
    store.gate = asyncio.Event()
    first = asyncio.ensure_future(access.audit("r0", "location.read", "v", "?"))
    await asyncio.sleep(0)  # its write has started and waits on the store
    rest = [
        asyncio.ensure_future(access.audit(f"r{n}", "location.read", "v", "?"))
        for n in range(1, 20)
    ]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in [first, *rest])  # nothing answered unwritten
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(batch) for batch in store.batches] == [1, 19]
    assert store.written == [f"r{n}" for n in range(20)]


async def test_audit_entries_are_kept_while_the_store_is_down() -> None:
    store = FakeStore()
    access = make_access(store)
    store.down = True
    await access.audit("a", "location.read", "v", "?")  # answered, kept in memory
    await access.audit("b", "location.read", "v", "?")
    assert store.batches == []
    store.down = False
    await access.audit("c", "location.read", "v", "?")
    assert store.written == ["a", "b", "c"]
    await access.flush_audit()  # nothing left: no empty write
    assert len(store.batches) == 1


async def test_a_caller_that_goes_away_does_not_lose_the_write() -> None:
    store = FakeStore()
    access = make_access(store)
    store.gate = asyncio.Event()
    task = asyncio.ensure_future(access.audit("gone", "location.read", "v", "?"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate.set()
    await access.flush_audit()
    assert store.written == ["gone"]
