"""Faults of a real PostGIS that are not outages: a row it will never take must
not hold back the other units' rows in the same batch, and a value PostgreSQL
cannot hold (NUL in text) must not make a unit's fix unstorable."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from protocols import Position
from tracker.cache import LatestState
from tracker.ingest import Pipeline, StoreUnavailable
from tracker.live import Hub
from tracker.store import StoredPosition, Unit
from tracker.store.postgis import PostgisStore

pytestmark = [pytest.mark.reliability, pytest.mark.postgis]

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
UNITS = [Unit(f"86300000000000{n}", f"veh-{n}") for n in range(4)]


@pytest.fixture
async def store(postgis_url: str) -> AsyncIterator[PostgisStore]:
    store = PostgisStore(postgis_url)
    await store.open()
    for unit in UNITS:
        await store.put_vehicle(unit.vehicle_id, plate=None, vin=None, loan_ref=None, units=[unit])
    yield store
    await store.close()


@pytest.fixture
async def pipeline(store: PostgisStore) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(store, LatestState(), Hub(), Counter(), max_delay_s=0.05)
    pipeline.start()
    yield pipeline
    await pipeline.stop(timeout_s=5)


def row(pipeline: Pipeline, unit: Unit, **fields: object) -> StoredPosition:
    values: dict[str, object] = {"lat": 10.0, "lon": 20.0} | fields
    position = Position(unique_id=unit.unique_id, fix_time=T0, **values)  # type: ignore[arg-type]
    stored = pipeline.accept(unit, "gt06", position)
    assert stored is not None
    return stored


async def test_a_row_postgis_rejects_fails_alone(pipeline: Pipeline, store: PostgisStore) -> None:
    good = [row(pipeline, unit) for unit in UNITS[:3]]
    bad = dataclasses.replace(row(pipeline, UNITS[3]), satellites=70_000)  # beyond smallint
    commits = [asyncio.create_task(pipeline.commit([r])) for r in [*good, bad]]
    done = await asyncio.wait_for(asyncio.gather(*commits, return_exceptions=True), 10)
    assert done[:3] == [None, None, None]
    assert isinstance(done[3], StoreUnavailable)
    assert pipeline.store_healthy
    assert pipeline.stats["positions_refused"] == 1
    ids = [unit.unique_id for unit in UNITS]
    stored = await store.track(ids, start=T0, end=T0 + timedelta(seconds=1), limit=10)
    assert sorted(r.unique_id for r in stored) == ids[:3]


async def test_nul_in_an_attribute_does_not_make_a_fix_unstorable(
    pipeline: Pipeline, store: PostgisStore
) -> None:
    fix = row(pipeline, UNITS[0], attributes={"note": "a\x00b"}, raw={"k\x00": "v"})
    await asyncio.wait_for(pipeline.commit([fix]), 10)
    [stored] = await store.track(
        [UNITS[0].unique_id], start=T0, end=T0 + timedelta(seconds=1), limit=10
    )
    assert stored.attributes == {"note": "a\ufffdb", "raw": {"k\ufffd": "v"}}
