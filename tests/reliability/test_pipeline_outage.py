"""The group commit when the store fails: retry with backoff, a bounded buffer,
rows the store refuses, readiness, and stopping with rows unwritten.

A real SQLite store that can be switched off stands for the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracker import ingest
from tracker.cache import LatestState
from tracker.ingest import Pipeline, StoreUnavailable
from tracker.live import Hub
from tracker.store import StoredPosition, Unit
from tracker.store.sqlite import SqliteStore

pytestmark = pytest.mark.reliability

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
UNIT = Unit("123", "veh-1", "wired")
POISON_LAT = 66.6  # FlakyStore rejects a batch holding this latitude, as a bad row
STRANGE_LAT = 77.7  # ...and fails one holding this one with an error it does not classify


class FlakyStore(SqliteStore):
    """SQLite that can be down (``down = True``: every call fails as a refused
    connection would) or read-only (it answers, but takes no write), and that
    rejects any batch holding a poisoned row."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = False
        self.read_only = False
        self.pipelines: list[Pipeline] = []  # stopped after the test
        self.attempts: list[float] = []  # loop time of each insert_positions call

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        self.attempts.append(asyncio.get_running_loop().time())
        if self.down:
            raise ConnectionRefusedError("connection refused")
        if self.read_only:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        if any(row.lat == POISON_LAT for row in rows):
            raise ValueError("a row the store will never take")
        if any(row.lat == STRANGE_LAT for row in rows):
            raise RuntimeError("something about these rows")
        return await super().insert_positions(rows)

    async def ping(self) -> None:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        await super().ping()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    store = FlakyStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    await store.put_vehicle("veh-1", plate=None, vin=None, loan_ref=None, units=[UNIT])
    yield store
    store.down = store.read_only = False
    for pipeline in store.pipelines:
        await pipeline.stop(timeout_s=1)
    await store.close()


def make_pipeline(
    store: FlakyStore,
    *,
    max_delay_s: float = 0.001,
    max_pending_rows: int = 100_000,
    retry_first_s: float = ingest.RETRY_FIRST_S,
    retry_max_s: float = ingest.RETRY_MAX_S,
    probe_every_s: float = ingest.PROBE_EVERY_S,
) -> Pipeline:
    pipeline = Pipeline(
        store,
        LatestState(),
        Hub(),
        Counter(),
        clock=lambda: NOW,
        max_rows=100,
        max_delay_s=max_delay_s,
        max_pending_rows=max_pending_rows,
        retry_first_s=retry_first_s,
        retry_max_s=retry_max_s,
        probe_every_s=probe_every_s,
    )
    pipeline.start()
    store.pipelines.append(pipeline)
    return pipeline


def rows(first: int, count: int, *, lat: float = 1.0) -> list[StoredPosition]:
    return [
        StoredPosition(
            "123", "veh-1", "gt06", NOW - timedelta(seconds=first + n + 1), NOW, lat, 2.0 + n / 1e4
        )
        for n in range(count)
    ]


async def stored(store: FlakyStore) -> int:
    return len(await store.track(["123"], start=NOW - timedelta(days=1), end=NOW, limit=10_000))


async def test_a_failed_batch_is_retried_with_doubling_delays(store: FlakyStore) -> None:
    pipeline = make_pipeline(store)
    store.down = True
    commit = asyncio.create_task(pipeline.commit(rows(0, 3)))
    await asyncio.sleep(0.8)  # attempts at about 0, 0.1, 0.3, 0.7 s
    assert not commit.done()
    assert not pipeline.store_healthy
    assert pipeline.store_error == "ConnectionRefusedError: connection refused"
    store.down = False
    await asyncio.wait_for(commit, 2)
    gaps = [b - a for a, b in zip(store.attempts, store.attempts[1:], strict=False)]
    assert len(gaps) >= 3
    for n, gap in enumerate(gaps[:3]):
        assert 0.1 * 2**n * 0.9 <= gap < 0.1 * 2**n + 0.1
    assert pipeline.store_healthy
    assert await stored(store) == 3
    assert pipeline.stats["batch_retries"] == len(gaps)
    assert pipeline.stats["store_outages"] == 1


async def test_the_delay_between_retries_is_capped(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, retry_first_s=0.01, retry_max_s=0.04)
    store.down = True
    commit = asyncio.create_task(pipeline.commit(rows(0, 1)))
    await asyncio.sleep(0.3)
    gaps = [b - a for a, b in zip(store.attempts, store.attempts[1:], strict=False)]
    # uncapped, the gaps after the third would be 0.08, 0.16 s; the median shrugs off one
    # scheduler hiccup on a busy machine, which a bound on the largest gap would not
    assert statistics.median(gaps[3:]) < 0.06
    assert sum(gap >= 0.04 for gap in gaps) >= 3  # most at the cap
    store.down = False
    await asyncio.wait_for(commit, 1)


async def test_past_max_pending_rows_commits_wait_for_room(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, max_pending_rows=10)
    store.down = True
    commits = [asyncio.create_task(pipeline.commit(rows(10 * k, 4))) for k in range(5)]
    await asyncio.sleep(0.05)
    assert pipeline.pending_rows == 8  # two commits; a third would make 12
    assert pipeline.waiting_commits == 3  # their callers read nothing more meanwhile
    assert pipeline.stats["commits_waited_for_room"] == 3
    assert not any(commit.done() for commit in commits)
    store.down = False
    await asyncio.wait_for(asyncio.gather(*commits), 2)
    assert await stored(store) == 20
    assert pipeline.pending_rows == 0
    assert pipeline.waiting_commits == 0


async def test_one_commit_larger_than_the_buffer_still_gets_in(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, max_pending_rows=2)
    await asyncio.wait_for(pipeline.commit(rows(0, 5)), 1)
    assert await stored(store) == 5


async def test_a_store_that_answers_but_cannot_write_is_waited_for(store: FlakyStore) -> None:
    """Pings work, writes do not (a read-only node after a failover, a full
    disk): that is the store's fault, not the rows'; they are kept and retried."""
    pipeline = make_pipeline(store)
    store.read_only = True
    commit = asyncio.create_task(pipeline.commit(rows(0, 2)))
    await asyncio.sleep(0.3)
    assert not commit.done()
    assert not pipeline.store_healthy
    assert "readonly" in (pipeline.store_error or "")
    store.read_only = False
    await asyncio.wait_for(commit, 2)
    assert await stored(store) == 2
    assert pipeline.stats["positions_refused"] == 0


async def test_rows_the_store_rejects_fail_alone(store: FlakyStore) -> None:
    """The store blames the rows of a batch: each commit is written on its own,
    and only the one holding the bad row is not acknowledged."""
    pipeline = make_pipeline(store, max_delay_s=0.05)
    good = [asyncio.create_task(pipeline.commit(rows(10 * k, 2))) for k in range(3)]
    bad = asyncio.create_task(pipeline.commit(rows(100, 2, lat=POISON_LAT)))
    await asyncio.wait_for(asyncio.gather(*good), 2)
    with pytest.raises(StoreUnavailable, match="never take"):
        await asyncio.wait_for(bad, 2)
    assert await stored(store) == 6
    assert pipeline.store_healthy
    assert pipeline.stats["batches_failed"] == 1
    assert pipeline.stats["positions_refused"] == 2


async def test_rows_failing_for_a_reason_the_store_does_not_name_fail_alone(
    store: FlakyStore,
) -> None:
    """An error the store does not blame on the rows, while it answers pings and
    takes other units' rows: after a few attempts, the rows are the suspects."""
    pipeline = make_pipeline(store)
    bad = asyncio.create_task(pipeline.commit(rows(100, 1, lat=STRANGE_LAT)))
    await asyncio.sleep(0)  # alone in its batch: retried with the next commits
    good = [asyncio.create_task(pipeline.commit(rows(10 * k, 2))) for k in range(3)]
    await asyncio.wait_for(asyncio.gather(*good), 2)
    with pytest.raises(StoreUnavailable, match="something about these rows"):
        await asyncio.wait_for(bad, 2)
    assert await stored(store) == 6
    assert pipeline.stats["positions_refused"] == 1


async def test_readiness_follows_the_store_while_idle(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, probe_every_s=0.05)
    store.down = True
    await asyncio.sleep(0.2)
    assert not pipeline.store_healthy  # no write was tried: the idle writer pinged
    store.down = False
    await asyncio.sleep(0.2)
    assert pipeline.store_healthy


async def test_stop_writes_what_is_pending(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, max_delay_s=0.5)
    commits = [asyncio.create_task(pipeline.commit(rows(10 * k, 2))) for k in range(4)]
    await asyncio.sleep(0)
    await asyncio.wait_for(pipeline.stop(timeout_s=2), 1)  # not the 0.5 s delay
    assert all(commit.done() and commit.exception() is None for commit in commits)
    assert await stored(store) == 8
    assert pipeline.abandoned_rows == 0
    with pytest.raises(StoreUnavailable):
        await pipeline.commit(rows(100, 1))


async def test_stop_gives_up_on_a_store_that_stays_down(store: FlakyStore) -> None:
    pipeline = make_pipeline(store, max_pending_rows=2)
    store.down = True
    commits = [asyncio.create_task(pipeline.commit(rows(10 * k, 2))) for k in range(3)]
    await asyncio.sleep(0.05)  # one held, two waiting for room
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pipeline.stop(timeout_s=0.3)
    assert loop.time() - started < 0.5
    for commit in commits:  # nothing stored, so nothing may be acknowledged
        with pytest.raises(StoreUnavailable):
            await commit
    assert pipeline.abandoned_rows == 6
    assert pipeline.pending_rows == 0
