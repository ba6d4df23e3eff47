"""The one path a position takes after its codec: filter, store, cache, publish.

``Pipeline.accept`` filters a decoded fix and turns it into a row;
``Pipeline.commit`` hands rows to the group commit and returns only once the
batch holding them is durable, the latest-state cache is updated and the live
hub has the messages. Only then may the caller acknowledge the unit.

Group commit: the first row to arrive while a writer is idle starts a short
timer (``max_delay_s``); a full batch (``max_rows``) is written at once; rows
that arrive while a batch is being written form the next batch. ``writers``
batches are written at a time, each on a store connection of its own: while
one is in the store, the server makes the previous one's cache entries, live
messages and rule checks, and PostgreSQL works on two COPYs with its two
cores (one writer left both waiting on each other: about 35 us of store and 9
of after-commit per row, one after the other). A unit's rows are never in two
batches at once, since its connection waits for its commit before it reads
more, so each unit's rows are stored, cached and checked in order.

Outages: a batch the store does not take is kept and written again, after
``retry_first_s`` doubling to ``retry_max_s``, until it commits (the store's
connection pool reconnects by itself). Meanwhile the commits waiting on it do
not return, so nothing is acknowledged, and their connections read nothing
more: TCP pushes back on the units, which keep their fixes. At most
``max_pending_rows`` rows are held (the batch being retried included); a
commit that would hold more waits for room before its rows join. When the
store blames the rows instead (``Store.rejects_rows``: a value or constraint
it will never accept), or keeps failing a batch while it answers pings, each
commit's rows are written alone, and only those it still refuses while it
takes the others raise ``StoreUnavailable``. ``store_healthy`` says whether
the last write or ping worked (the writer pings when idle, for ``/readyz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from protocols import Position
from tracker import views
from tracker.aio import cancel_all
from tracker.cache import LatestState
from tracker.filters import drop_reason, stored_row
from tracker.live import Hub
from tracker.store import Store, StoredPosition, Unit
from tracker.store_health import StoreHealth, describe

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
PROBE_EVERY_S = 5.0  # an idle writer pings the store this often, so readiness follows it
WRITE_TIMEOUT_S = 30.0  # a batch taking longer is taken for a hung store, and retried
# A batch failing this many times while the store answers pings is written one
# commit at a time: rows the store will never take must not hold back the rest.
ISOLATE_AFTER = 3
# The rules take committed rows once a tick, or at once when this many wait: their
# work costs about 7 us a row in calls of 100 rows (paced at 20,000/s), 5.9 in 500.
RULES_TICK_S = 0.025
RULES_AT_ONCE = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


class Observer(Protocol):
    """Who hears about committed positions and other reports (the rules)."""

    def committed(self, rows: Sequence[StoredPosition]) -> None: ...

    def reported(self, unique_id: str, when: datetime, attributes: dict[str, Any]) -> None: ...


class StoreUnavailable(Exception):
    """These positions were not stored (the pipeline stopped first, or the store
    refuses these very rows): do not acknowledge them."""


# The rows of one commit() call and the future its caller waits on.
Group = tuple[list[StoredPosition], asyncio.Future[None]]


class Pipeline:
    def __init__(
        self,
        store: Store,
        cache: LatestState,
        hub: Hub,
        stats: Counter[str],
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.005,
        max_pending_rows: int = 100_000,
        writers: int = 2,
        future_limit: timedelta = timedelta(days=1),
        clock: Callable[[], datetime] = utcnow,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
        probe_every_s: float = PROBE_EVERY_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._cache = cache
        self._hub = hub
        self.stats = stats
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_pending_rows = max_pending_rows
        self.writers = writers
        self.future_limit = future_limit
        self.clock = clock
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.probe_every_s = probe_every_s
        self.write_timeout_s = write_timeout_s
        self._pending: deque[Group] = deque()  # joined the buffer, not yet taken
        self._pending_rows = 0
        # per writer: the batch it is writing (or retrying), and its rows
        self._writing: list[tuple[list[Group], int]] = [([], 0)] * writers
        self._waiting: deque[Group] = deque()  # no room in the buffer yet
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._drained = asyncio.Event()  # nothing pending, writing or waiting
        self._drained.set()
        self._writer_tasks: list[asyncio.Task[None]] = []
        self._closed = False  # stopping: no new rows
        self._committers = 0  # commit() calls not yet returned
        self._no_committers = asyncio.Event()
        self._no_committers.set()
        self.health = StoreHealth(store, stats, lambda: self.pending_rows, probe_every_s)
        self.abandoned_rows = 0  # rows left unwritten by stop(): never acknowledged
        self.observer: Observer | None = None
        self._for_rules: list[StoredPosition] = []  # committed, not yet seen by the rules
        self._rules_handle: asyncio.Handle | None = None
        # metrics: (rows, seconds, ok) of each batch the store was asked to commit
        self.on_batch: Callable[[int, float, bool], None] = lambda rows, seconds, ok: None

    @property
    def pending_rows(self) -> int:
        """Rows held for the store: queued and being written (at most
        ``max_pending_rows``, unless one commit alone is larger)."""
        return self._pending_rows + self._writing_rows

    @property
    def _writing_rows(self) -> int:
        return sum(rows for _, rows in self._writing)

    @property
    def store_healthy(self) -> bool:
        """Whether the last write or ping worked."""
        return self.health.healthy

    @property
    def store_error(self) -> str | None:
        return self.health.error

    @property
    def waiting_commits(self) -> int:
        """Commits waiting for room in the buffer; their connections read nothing meanwhile."""
        return len(self._waiting)

    def accept(
        self, unit: Unit, protocol: str, position: Position, now: datetime | None = None
    ) -> StoredPosition | None:
        """The row to store for this fix, or None if a filter drops it (counted).

        ``now``: the server time of the read that brought it (default: the clock),
        one clock reading for all the fixes of one read."""
        now = self.clock() if now is None else now
        last = self._cache.unit(unit.unique_id)
        reason = drop_reason(position, last, now, future_limit=self.future_limit)
        if reason is not None:
            self.stats[f"positions_dropped.{reason}"] += 1
            return None
        return stored_row(unit, protocol, position, now)

    def saw(self, unique_id: str, attributes: dict[str, Any] | None = None) -> None:
        """The unit said something that is not a stored position (heartbeat,
        login, a dropped fix); a heartbeat's ``attributes`` may carry alarms."""
        now = self.clock()
        self._cache.saw(unique_id, now)
        if self.observer is not None:
            self.observer.reported(unique_id, now, attributes or {})

    async def commit(self, rows: list[StoredPosition]) -> None:
        """Return once ``rows`` are durable, cached and published.

        While the store is down this waits (the batch is retried); while the
        buffer is full it first waits for room. Either way the caller, not
        having returned, reads nothing more from its unit.

        Raises:
            StoreUnavailable: the rows were not stored: the pipeline is stopping
                or stopped, or the store refuses these rows while it takes
                others. The caller must not acknowledge them.
        """
        if not rows:
            return
        if not self._writer_tasks or self._closed:
            raise StoreUnavailable("the server is stopping" if self._closed else "not running")
        group: Group = (rows, asyncio.get_running_loop().create_future())
        self.stats["positions_in"] += len(rows)
        if self._waiting or not self._has_room(len(rows)):
            self._waiting.append(group)  # first come, first in, as the buffer drains
            self._drained.clear()
            self.stats["commits_waited_for_room"] += 1
        else:
            self._join(group)
        self._committers += 1
        self._no_committers.clear()
        try:
            # Cancelled (the server stops), this cancels the group's own future only:
            # its rows are written with the batch all the same, or dropped unread
            # while still waiting for room; every writer skips a future that is done.
            await group[1]
        finally:
            self._committers -= 1
            if not self._committers:
                self._no_committers.set()

    def start(self) -> None:
        self._closed = False
        self._writer_tasks = [
            asyncio.create_task(self._write_loop(n), name=f"group-commit-{n}")
            for n in range(self.writers)
        ]

    async def stop(self, timeout_s: float | None = None) -> None:
        """Take no more rows; write those already handed over (retrying while the
        store is down) for at most ``timeout_s`` (None: no limit), then stop the
        writer. Rows still unwritten then are abandoned: their commits raise
        ``StoreUnavailable`` (counted in ``abandoned_rows``). Returns once every
        commit has returned, so that their callers have written their acks
        before anyone closes the connections, and the rules have taken every
        stored row."""
        if not self._writer_tasks:
            return
        self._closed = True
        self._full.set()  # nobody else is coming: no group-commit delay
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            log.error(
                "stopping: %d positions not stored within %.1f s (store: %s)",
                self.pending_rows + sum(len(rows) for rows, _ in self._waiting),
                timeout_s,
                self.store_error or "slow",
            )
        # the writers forget their batches as they are cancelled
        writing = [group for groups, _ in self._writing for group in groups]
        await cancel_all(self._writer_tasks)
        self._writer_tasks = []
        self._abandon([*writing, *self._pending, *self._waiting])
        self._writing = [([], 0)] * self.writers
        self._pending.clear()
        self._pending_rows = 0
        self._waiting.clear()
        self._has_work.clear()
        self._drained.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # each is runnable already: one loop pass or two
                await self._no_committers.wait()
        if self._rules_handle is not None:  # stored rows the rules have not seen yet
            self._rules_handle.cancel()
            self._rules()

    def _abandon(self, groups: list[Group]) -> None:
        rows = 0
        for group_rows, future in groups:
            if not future.done():
                rows += len(group_rows)
                future.set_exception(StoreUnavailable("the server stopped before storing them"))
        if rows:
            self.abandoned_rows += rows
            self.stats["positions_abandoned"] += rows
            log.warning("%d positions not stored and not acknowledged: units send them again", rows)

    # the buffer

    def _has_room(self, rows: int) -> bool:
        held = self.pending_rows
        return held == 0 or held + rows <= self.max_pending_rows

    def _join(self, group: Group) -> None:
        self._pending.append(group)
        self._pending_rows += len(group[0])
        self._drained.clear()
        self._has_work.set()
        if self._pending_rows >= self.max_rows:
            self._full.set()

    def _admit(self) -> None:
        """Let waiting commits in, in order, as far as there is room."""
        while self._waiting and self._has_room(len(self._waiting[0][0])):
            group = self._waiting.popleft()
            if not group[1].done():
                self._join(group)

    def _take_batch(self, writer: int, groups: list[Group] | None = None) -> list[Group]:
        """The next batch for ``writer``: ``groups`` (a batch being retried)
        topped up with pending commits, up to ``max_rows``."""
        groups = [] if groups is None else groups
        rows = sum(len(group_rows) for group_rows, _ in groups)
        while self._pending and (not rows or rows + len(self._pending[0][0]) <= self.max_rows):
            group = self._pending.popleft()
            groups.append(group)
            rows += len(group[0])
            self._pending_rows -= len(group[0])
        self._writing[writer] = (groups, rows)
        if not self._pending:
            self._has_work.clear()
        if self._pending_rows < self.max_rows:
            self._full.clear()
        return groups

    # the writer

    async def _write_loop(self, writer: int) -> None:
        idle = True
        while True:
            if not self._has_work.is_set():
                if not self._waiting and not self._writing_rows:
                    self._drained.set()
                try:
                    async with asyncio.timeout(self.probe_every_s):
                        await self._has_work.wait()
                except TimeoutError:
                    if writer == 0:  # one is enough
                        await self.health.probe()
                    continue
            wait = idle and self.max_delay_s > 0 and not self._closed  # closed: none to wait for
            if wait and self._pending_rows < self.max_rows:
                # the writer was idle: give other units a moment to join this batch
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_delay_s):
                        await self._full.wait()
            try:
                await self._write_batch(writer)
            except Exception:  # our bug: the writer must outlive it, or every unit waits
                log.exception("group commit failed")
                self.stats["writer_errors"] += 1
            idle = not self._pending

    async def _write_batch(self, writer: int) -> None:
        groups = self._take_batch(writer)
        if not groups:
            return
        try:
            await self._write(writer, groups)
        except Exception as exc:  # our bug: these commits must not wait forever
            for _, future in self._writing[writer][0]:
                if not future.done():
                    future.set_exception(StoreUnavailable(describe(exc)))
            raise
        finally:
            self._writing[writer] = ([], 0)
            self._admit()

    async def _write(self, writer: int, groups: list[Group]) -> None:
        """Write these commits' rows, however long the store is away. A batch that
        fails is retried with more pending commits added, so that one commit's bad
        rows are found out by writing each alone (see ``_write_alone``)."""
        delay = self.retry_first_s
        failures = 0
        while True:
            rows = [row for group_rows, _ in groups for row in group_rows]
            result = await self._insert(rows)
            if not isinstance(result, Exception):
                self._committed(groups, rows, result)
                return
            failures += 1
            rejected = self._store.rejects_rows(result)
            hung = isinstance(result, TimeoutError)
            answers = not rejected and not hung and await self.health.ping() is None
            if rejected or (answers and failures % ISOLATE_AFTER == 0):
                # the rows may be at fault, not the store: each commit alone
                self.stats["batches_failed"] += 1
                log.error(
                    "batch of %d positions failed (%s); writing each unit's rows alone",
                    len(rows),
                    describe(result),
                )
                groups, result = await self._write_alone(groups, result)
                self._writing[writer] = (groups, sum(len(rows) for rows, _ in groups))
                self._admit()
                if not groups:
                    return
            elif answers and failures == 1:
                continue  # most likely a pooled connection that broke (the pool drops it)
            self.health.down(result)
            self.stats["batch_retries"] += 1
            log.debug("batch of %d positions: retrying in %.1f s", len(rows), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
            groups = self._take_batch(writer, groups)

    async def _write_alone(
        self, groups: list[Group], error: Exception
    ) -> tuple[list[Group], Exception]:
        """Write each commit's rows on its own. Those the store rejects are refused
        (their commits raise ``StoreUnavailable``); so are those that fail while
        the store takes the others' rows. Returns the commits left to retry (the
        store took none), and why they failed."""
        failed: list[tuple[Group, Exception]] = []
        took_some = False
        for group in groups:
            rows = group[0]
            result = await self._insert(rows)
            if not isinstance(result, Exception):
                self._committed([group], rows, result)
                took_some = True
            elif self._store.rejects_rows(result):
                self._refuse(group, result)
            else:
                failed.append((group, result))
        if failed and took_some and await self.health.ping() is None:
            for group, result in failed:
                self._refuse(group, result)
            return [], error
        return [group for group, _ in failed], failed[-1][1] if failed else error

    def _refuse(self, group: Group, error: Exception) -> None:
        rows, future = group
        self.stats["positions_refused"] += len(rows)
        log.error(
            "%d positions of unit %s refused by the store, not acknowledged: %s",
            len(rows),
            rows[0].unique_id,
            describe(error),
            extra={"unique_id": rows[0].unique_id, "protocol": rows[0].protocol},
        )
        if not future.done():
            future.set_exception(StoreUnavailable(describe(error)))

    async def _insert(self, rows: list[StoredPosition]) -> int | Exception:
        """How many rows were new, or why the store did not take them."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.write_timeout_s):
                inserted = await self._store.insert_positions(rows)
        except Exception as exc:
            self.on_batch(len(rows), loop.time() - started, False)
            return exc
        self.on_batch(len(rows), loop.time() - started, True)
        self.health.up()
        return inserted

    def _committed(self, groups: list[Group], rows: list[StoredPosition], inserted: int) -> None:
        self.stats["batches"] += 1
        self.stats["positions_stored"] += inserted
        self.stats["positions_deduplicated"] += len(rows) - inserted
        try:
            self._after_commit(rows)
        finally:  # stored: acknowledge, whatever the cache or the hub made of it
            for _, future in groups:
                if not future.done():
                    future.set_result(None)
        # The rules take the rows after the units' tasks have sent their acks
        # (call_soon and call_later keep that order): a big batch's rules do
        # not hold its acks back, and small batches wait for a tick to share a call.
        if self.observer is not None:
            self._for_rules += rows
            loop = asyncio.get_running_loop()
            if len(self._for_rules) >= RULES_AT_ONCE:
                if self._rules_handle is not None:
                    self._rules_handle.cancel()
                self._rules_handle = loop.call_soon(self._rules)
            elif self._rules_handle is None:
                self._rules_handle = loop.call_later(RULES_TICK_S, self._rules)

    def _rules(self) -> None:
        """The rules take the committed rows that wait for them, in commit order."""
        self._rules_handle = None
        rows, self._for_rules = self._for_rules, []
        if not rows or self.observer is None:
            return
        try:
            self.observer.committed(rows)
        except Exception:  # a rule bug must not stop the next batch's rules
            log.exception("rules failed on a batch of %d positions", len(rows))
            self.stats["rule_failures"] += 1

    def _after_commit(self, rows: list[StoredPosition]) -> None:
        """The cache (which the filters read for each unit's next fix) and the
        hub (which files each message for its next tick: cheap; it builds and
        encodes them then, and only for a vehicle someone watches) take the rows."""
        for row in rows:
            before = self._cache.unit(row.unique_id)
            if before is not None and before.fix_time == row.fix_time:
                continue  # a resend of what the unit already gave us
            latest = self._cache.update(row)
            body = views.live_position_later(row, latest=latest)
            self._hub.publish(row.vehicle_id, row.unique_id, body, latest=latest)
