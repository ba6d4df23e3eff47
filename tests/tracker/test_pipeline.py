"""The pipeline on a real SQLite store: filters, group commit, ack after commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from protocols import Position
from tracker import ingest
from tracker.aio import cancel_all
from tracker.cache import LatestState
from tracker.filters import stored_row
from tracker.ingest import RULES_AT_ONCE, Pipeline, StoreUnavailable
from tracker.live import Hub
from tracker.store import Store, StoredPosition, Unit
from tracker.store.sqlite import SqliteStore

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
UNIT = Unit("123", "veh-1", "wired")


def fix(seconds: int, **overrides: object) -> Position:
    fields: dict[str, object] = {
        "unique_id": "123",
        "fix_time": NOW + timedelta(seconds=seconds),
        "lat": 1.0 + seconds / 1e4,
        "lon": 2.0,
    }
    fields.update(overrides)
    return Position(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    await store.put_vehicle("veh-1", plate=None, vin=None, loan_ref=None, units=[UNIT])
    yield store
    await store.close()


@pytest.fixture
async def pipeline(store: Store) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(
        store, LatestState(), Hub(), Counter(), max_rows=100, max_delay_s=0.01, clock=lambda: NOW
    )
    pipeline.start()
    yield pipeline
    await pipeline.stop()


async def test_filters_drop_and_count(pipeline: Pipeline) -> None:
    assert pipeline.accept(UNIT, "gt06", fix(0, valid=False)) is None
    assert pipeline.accept(UNIT, "gt06", fix(0, lat=0.0, lon=0.0)) is None
    assert pipeline.accept(UNIT, "gt06", fix(2 * 86_400)) is None
    row = pipeline.accept(UNIT, "gt06", fix(0, raw={"cell": b"\x01\x02"}))
    assert row is not None
    assert row.attributes == {"raw": {"cell": "0102"}}
    await pipeline.commit([row])
    assert pipeline.accept(UNIT, "gt06", fix(0)) is None  # same fix time as the cached one
    assert {k: v for k, v in pipeline.stats.items() if k.startswith("positions_dropped")} == {
        "positions_dropped.invalid_fix": 1,
        "positions_dropped.zero_coordinates": 1,
        "positions_dropped.future_time": 1,
        "positions_dropped.duplicate": 1,
    }


async def test_commit_returns_once_durable_and_batches_concurrent_writers(
    pipeline: Pipeline, store: Store
) -> None:
    import asyncio

    rows = [pipeline.accept(UNIT, "gt06", fix(n)) for n in range(60)]
    assert all(rows)
    await asyncio.gather(*(pipeline.commit([r]) for r in rows if r is not None))
    stored = await store.track(["123"], start=NOW, end=NOW + timedelta(hours=1), limit=100)
    assert len(stored) == 60
    assert pipeline.stats["positions_stored"] == 60
    assert pipeline.stats["batches"] <= 2  # 60 writers shared one or two commits


class Recorder:
    """An observer that notes when the rules took rows, and which."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.calls: list[list[datetime]] = []

    def committed(self, rows: Sequence[StoredPosition]) -> None:
        self.order.append(f"rules saw {len(rows)}")
        self.calls.append([row.fix_time for row in rows])

    def reported(self, unique_id: str, when: datetime, attributes: dict[str, object]) -> None:
        pass


async def test_a_batch_is_acknowledged_before_the_rules_take_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "RULES_TICK_S", 0.5)  # no tick before the first look
    order: list[str] = []
    pipeline.observer = Recorder(order)
    watcher = pipeline._hub.subscribe(None)
    rows = [r for n in range(3) if (r := pipeline.accept(UNIT, "gt06", fix(n)))]
    await pipeline.commit(rows)
    order.append(f"acked, {pipeline._hub.stats['live.published']} published")
    assert pipeline.accept(UNIT, "gt06", fix(2)) is None  # the cache has the batch already
    await asyncio.sleep(0)
    assert order == ["acked, 3 published"]  # a small batch waits for the rules' tick
    await asyncio.sleep(0.6)
    assert order == ["acked, 3 published", "rules saw 3"]
    pipeline._hub.flush()
    assert watcher.pending == 1  # the newest of the unit, queued for a subscriber without a sink


async def test_small_batches_reach_the_rules_together_in_commit_order(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "RULES_TICK_S", 0.5)  # three commits fit in it, however slow
    recorder = Recorder([])
    pipeline.observer = recorder
    for first in (0, 3, 6):  # three commits, one after the other, within a tick
        await pipeline.commit([r for n in range(first, first + 3) if (r := accepted(pipeline, n))])
    assert pipeline.stats["batches"] == 3
    await asyncio.sleep(0.6)
    assert recorder.calls == [[NOW + timedelta(seconds=n) for n in range(9)]]


async def test_a_big_batch_goes_to_the_rules_without_waiting_for_the_tick(store: Store) -> None:
    pipeline = Pipeline(store, LatestState(), Hub(), Counter(), max_rows=2000, clock=lambda: NOW)
    recorder = Recorder([])
    pipeline.observer = recorder
    pipeline.start()
    try:
        await pipeline.commit([r for n in range(RULES_AT_ONCE) if (r := accepted(pipeline, n))])
        await asyncio.sleep(0)  # one pass of the loop, not a tick
        assert [len(call) for call in recorder.calls] == [RULES_AT_ONCE]
    finally:
        await pipeline.stop()


async def test_stop_hands_the_rules_what_they_have_not_seen(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "RULES_TICK_S", 60.0)
    recorder = Recorder([])
    pipeline.observer = recorder
    await pipeline.commit([r for n in range(3) if (r := accepted(pipeline, n))])
    await asyncio.sleep(0.05)
    assert recorder.calls == []  # waiting for a tick
    await pipeline.stop()
    assert recorder.calls == [[NOW + timedelta(seconds=n) for n in range(3)]]


def accepted(pipeline: Pipeline, seconds: int) -> StoredPosition | None:
    return pipeline.accept(UNIT, "gt06", fix(seconds))


async def test_full_batch_splits_at_max_rows(pipeline: Pipeline) -> None:
    rows = [r for n in range(250) if (r := pipeline.accept(UNIT, "gt06", fix(n)))]
    import asyncio

    await asyncio.gather(*(pipeline.commit(rows[i : i + 10]) for i in range(0, 250, 10)))
    assert pipeline.stats["positions_stored"] == 250
    assert pipeline.stats["batches"] >= 3  # max_rows=100


async def test_commit_waits_out_a_store_outage(pipeline: Pipeline, store: Store) -> None:
    import asyncio

    row = pipeline.accept(UNIT, "gt06", fix(5))
    assert row is not None
    await store.close()  # the store goes away under the pipeline
    commit = asyncio.create_task(pipeline.commit([row]))
    await asyncio.sleep(0.3)
    assert not commit.done()  # not stored, so the caller cannot acknowledge yet
    assert not pipeline.store_healthy
    assert pipeline.pending_rows == 1
    assert pipeline.stats["positions_stored"] == 0
    assert pipeline.stats["batch_retries"] >= 1
    await store.open()  # back (the fixture closes it again): the batch is retried
    await asyncio.wait_for(commit, 5)
    assert pipeline.store_healthy
    assert pipeline.pending_rows == 0
    assert pipeline.stats["positions_stored"] == 1


async def test_stopped_pipeline_refuses_rows(pipeline: Pipeline) -> None:
    row = pipeline.accept(UNIT, "gt06", fix(5))
    assert row is not None
    await pipeline.stop()
    with pytest.raises(StoreUnavailable):
        await pipeline.commit([row])
    pipeline.start()  # the fixture stops it again


class GatedStore(SqliteStore):
    """SQLite whose batch writes wait, each, until the test opens its gate."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gates: list[asyncio.Event] = []  # one per insert_positions call, in order
        self.in_flight = 0
        self.most_in_flight = 0

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await gate.wait()
            return await super().insert_positions(rows)
        finally:
            self.in_flight -= 1


OTHER = Unit("456", "veh-2", "wired")


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[GatedStore]:
    store = GatedStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    await store.put_vehicle("veh-1", plate=None, vin=None, loan_ref=None, units=[UNIT])
    await store.put_vehicle("veh-2", plate=None, vin=None, loan_ref=None, units=[OTHER])
    yield store
    for gate in store.gates:
        gate.set()
    await store.close()


def gated_pipeline(store: GatedStore, writers: int) -> Pipeline:
    pipeline = Pipeline(
        store,
        LatestState(),
        Hub(),
        Counter(),
        max_delay_s=0.001,
        writers=writers,
        clock=lambda: NOW,
    )
    pipeline.start()
    return pipeline


async def until(condition: Callable[[], bool]) -> None:
    """Poll: the conditions are the pipeline's internals, with no event to wait on."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("writers", [1, 2, 3])
async def test_batches_are_written_as_many_at_once_as_there_are_writers(
    gated: GatedStore, writers: int
) -> None:
    pipeline = gated_pipeline(gated, writers)
    commits = []
    for n in range(4):  # each joins the buffer while the writers before it are busy
        unit = UNIT if n % 2 else OTHER
        row = pipeline.accept(unit, "gt06", fix(n, unique_id=unit.unique_id))
        assert row is not None
        commits.append(asyncio.create_task(pipeline.commit([row])))
        await until(lambda n=n: len(gated.gates) == min(n + 1, writers))
    await asyncio.sleep(0.05)
    assert gated.most_in_flight == len(gated.gates) == writers  # the rest wait their turn
    assert pipeline.pending_rows == 4
    while not all(commit.done() for commit in commits):
        for gate in gated.gates:
            gate.set()
        await asyncio.sleep(0.001)
    assert pipeline.stats["positions_stored"] == 4
    assert pipeline.pending_rows == 0
    await pipeline.stop()


async def test_a_batch_that_commits_is_acknowledged_while_another_is_still_in_the_store(
    gated: GatedStore,
) -> None:
    pipeline = gated_pipeline(gated, 2)
    first, second = (
        pipeline.accept(unit, "gt06", fix(1, unique_id=unit.unique_id)) for unit in (UNIT, OTHER)
    )
    assert first is not None
    assert second is not None
    slow = asyncio.create_task(pipeline.commit([first]))
    await until(lambda: len(gated.gates) == 1)
    fast = asyncio.create_task(pipeline.commit([second]))
    await until(lambda: len(gated.gates) == 2)
    gated.gates[1].set()
    await asyncio.wait_for(fast, 5)
    assert not slow.done()
    assert pipeline.pending_rows == 1
    gated.gates[0].set()
    await asyncio.wait_for(slow, 5)
    await pipeline.stop()


async def test_stop_waits_for_every_writer_and_abandons_nothing_written(
    gated: GatedStore,
) -> None:
    pipeline = gated_pipeline(gated, 2)
    commits = []
    for unit in (UNIT, OTHER):  # the second while the first writer is busy
        row = pipeline.accept(unit, "gt06", fix(1, unique_id=unit.unique_id))
        assert row is not None
        commits.append(asyncio.create_task(pipeline.commit([row])))
        await until(lambda: len(gated.gates) == len(commits))
    gated.gates[1].set()
    await until(lambda: commits[1].done())
    stopping = asyncio.create_task(pipeline.stop(timeout_s=5))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the other writer's batch is still in the store
    gated.gates[0].set()
    await asyncio.wait_for(stopping, 5)
    assert all(commit.done() and commit.exception() is None for commit in commits)
    assert pipeline.abandoned_rows == 0
    assert pipeline.stats["positions_stored"] == 2


async def test_a_cancelled_commit_leaves_its_batch_alone(gated: GatedStore) -> None:
    pipeline = gated_pipeline(gated, 1)
    rows = [pipeline.accept(u, "gt06", fix(1, unique_id=u.unique_id)) for u in (UNIT, OTHER)]
    commits = [asyncio.create_task(pipeline.commit([row])) for row in rows if row is not None]
    await until(lambda: len(gated.gates) == 1)  # one batch holds both
    commits[0].cancel()  # its unit's connection is torn down
    await asyncio.sleep(0.01)
    gated.gates[0].set()
    await asyncio.wait_for(commits[1], 5)
    assert commits[0].cancelled()
    assert pipeline.stats["positions_stored"] == 2  # written all the same, never acknowledged
    assert pipeline.pending_rows == 0
    await pipeline.stop()


@pytest.mark.parametrize(
    ("attributes", "stored"),
    [
        ({"ignition": True, "odometer_m": 12, "cell": {"mcc": 460}}, None),  # already plain
        ({"iccid": b"\x89\x01"}, {"iccid": "8901"}),
        ({"note": "a\x00b"}, {"note": "a\ufffdb"}),  # PostgreSQL text cannot hold NUL
        (
            {"nested": [{"at": datetime(2026, 1, 2, tzinfo=UTC)}]},
            {"nested": [{"at": "2026-01-02T00:00:00Z"}]},
        ),
        ({7: "seven"}, {"7": "seven"}),
    ],
)
def test_attributes_become_plain_json_and_plain_ones_are_kept_as_they_are(
    attributes: dict[object, object], stored: dict[str, object] | None
) -> None:
    pipeline = Pipeline(SqliteStore("sqlite:///:memory:"), LatestState(), Hub(), Counter())
    row = pipeline.accept(Unit("u1", "v1"), "gt06", fix(0, attributes=attributes, raw={}))
    assert row is not None
    assert row.attributes == (attributes if stored is None else stored)


async def test_writers_are_cancelled_even_if_one_swallows_it() -> None:
    # Python 3.11's wait_for and timeout can take a cancellation for their own
    # timeout and swallow it (gh-86296): stop() must not wait for such a writer forever.
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as that race does
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task]), 2)
    assert task.cancelled()


def test_stored_row_takes_every_field_from_its_fix() -> None:
    # stored_row passes StoredPosition's fields by position: each one distinct here
    paris = timezone(timedelta(hours=1))
    fix = Position(
        "123", datetime(2026, 11, 29, 13, 0, 5, tzinfo=paris), -6.25, 106.75, False,
        -3.0, 271.5, 812.5, 4.5, 7, {"ignition": True}, {"alarm": 2},
    )  # fmt: skip
    row = stored_row(UNIT, "gt06", fix, NOW)
    assert row == StoredPosition(
        unique_id="123",
        vehicle_id="veh-1",
        protocol="gt06",
        fix_time=datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC),
        server_time=NOW,
        lat=-6.25,
        lon=106.75,
        valid=False,
        speed_kmh=0.0,  # never negative
        course_deg=271.5,
        altitude_m=812.5,
        accuracy_m=4.5,
        satellites=7,
        attributes={"ignition": True, "raw": {"alarm": 2}},
    )
    assert row.fix_time.tzinfo is UTC
