"""The pipeline on a real SQLite store: filters, group commit, ack after commit."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protocols import Position
from tracker.cache import LatestState
from tracker.ingest import Pipeline, StoreUnavailable
from tracker.live import Hub
from tracker.store import Store, Unit
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
