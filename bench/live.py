"""Live fan-out benchmark: websocket subscribers to every vehicle while units report.

    python -m bench.live [--subscribers 1000] [--probes 4] [--units 1000]
                         [--rate 10000] [--seconds 10] [--naive-seconds 5]

Starts a throwaway PostGIS (or uses TRACKER_BENCH_DATABASE_URL) and runs the
server in a child process twice. Each time a child process of subscribers
connects first (``--subscribers`` in all, all to ``"*"``: raw readers that
offer permessage-deflate as browsers do and only count bytes, and
``--probes`` that parse every message), then a child process of GT06 units
sends ``--rate`` positions a second in all, paced, for ``--seconds``. After
the load the benchmark waits until the hub has delivered everything.

- **tracker**: the hub as built (``tracker.live``): each position encoded once,
  each tick's frames built once (deflated once when negotiated) and written to
  every subscriber with one ``transport.write``; subscribers that fall behind
  get the newest position per unit.
- **naive** (the baseline, same machine, same run): ``live_server.NaiveHub``, the
  textbook fan-out: every position encoded once per subscriber and sent by that
  subscriber's own coroutine with its own ``websocket.send_text`` (which the
  websocket stack frames, and compresses, once per subscriber); a subscriber
  that falls behind is coalesced the same way.

It reports positions stored and acknowledged per second, live messages
delivered per second (all subscribers together), unit-to-subscriber latency
(the unit's send time of each fix against the time a probe read it), split at
the unit's acknowledgement into the ingest part (read, store, commit) and the
fan-out part, coalesced and dropped messages, and how the send backlog moved;
the summary line adds bytes per message on the wire, CPU seconds per
process, and from the server's own histograms how late its event loop ran and
how long the store took to commit a batch. It fails (exit 1) when the hub
lost track of a message: for the tracker run, every published message must be
sent to every subscriber or counted as coalesced or dropped, the subscribers
must have read at least the bytes the hub wrote, and each probe must have read
every unit's fixes in order, including the newest, missing some only when the
server counted coalescing. The naive run is not checked: it never catches up.

Targets (issue 6): 10,000 positions/s with 1,000 subscribers, p99
unit-to-subscriber <= 200 ms, no backlog growth. The row "messages/s
delivered" has as target what full delivery of 10,000/s to every subscriber
needs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live_clients import FIRST_IMEI, imei, subscribers, units
from bench.live_server import Sample, serve
from bench.report import Figure, print_table
from bench.server_metrics import SCRAPE_TIMEOUT_S, describe, scrape
from tracker.store import Unit
from tracker.store.postgis import PostgisStore

TOKEN = "bench-live"
TARGET_RATE = 10_000  # issue 6: 1,000 subscribers while ingesting 10,000 positions/s
TARGET_P99_MS = 200.0


async def _prepare(database_url: str, count: int) -> None:
    """Register the units (once), and empty the positions of a previous run."""
    store = PostgisStore(database_url)
    await store.open()
    try:
        for n in range(count):
            vehicle_id = f"live-{n}"
            if await store.get_vehicle(vehicle_id) is None:
                units_ = [Unit(imei(n), vehicle_id)]
                await store.put_vehicle(
                    vehicle_id, plate=None, vin=None, loan_ref=None, units=units_
                )
    finally:
        await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE positions")
    finally:
        await conn.close()


@dataclass
class Result:
    name: str
    subscribers: int
    acked: int = 0
    sent: int = 0  # fixes the units sent
    load_s: float = float("nan")  # sending
    acked_s: float = float("nan")  # from the first fix sent until the last acknowledged
    deliver_s: float = float("nan")  # from the start of the load until all was delivered
    drained: bool = False
    live: dict[str, int] = field(default_factory=dict)  # live.* counters during the run
    latencies_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # of that: until the server read it
    ack_ms: list[float] = field(default_factory=list)  # ...until the unit had its ack
    fan_ms: list[float] = field(default_factory=list)  # from the ack to the subscriber
    max_pending_rows: int = 0  # positions read but not yet committed, at most
    cpu_s: dict[str, float] = field(default_factory=dict)
    server_metrics: str = ""  # the server's loop lag and commit time over the load
    backlog_growth_mb: float = float("nan")
    shed_per_s: float = float("nan")  # coalesced + dropped, second half of the load
    max_backlog_mb: float = float("nan")
    client_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ingest_rate(self) -> float:
        return self.acked / self.acked_s

    @property
    def delivered_rate(self) -> float:
        return self.live.get("live.sent", 0) / self.deliver_s

    def percentile(self, q: int) -> float:
        return _quantile(self.latencies_ms, q)


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1]


def _ask(conn: Connection, command: str, timeout: float = 30) -> Any:
    conn.send(command)
    if not conn.poll(timeout):
        raise TimeoutError(f"the server did not answer {command!r}")
    return conn.recv()


def _delta(before: dict[str, Any], after: dict[str, Any], prefix: str) -> int:
    """How much the server's counters starting with ``prefix`` grew."""
    grown: int = sum(v for k, v in after["live"].items() if k.startswith(prefix))
    had: int = sum(v for k, v in before["live"].items() if k.startswith(prefix))
    return grown - had


def _receive(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {what} within {timeout:.0f} s")
    return conn.recv()


def run_one(name: str, url: str, naive: bool, seconds: float, args: argparse.Namespace) -> Result:
    ctx = multiprocessing.get_context("spawn")
    result = Result(name, args.subscribers)
    asyncio.run(_prepare(url, args.units))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    control, theirs = ctx.Pipe()
    data_dir = tempfile.TemporaryDirectory(prefix="tracker-bench-live-")  # the admin key's
    server_args = (url, data_dir.name, TOKEN, naive, args.tick_ms / 1000, theirs)
    server = ctx.Process(target=serve, args=server_args)
    children = [server]
    server.start()
    try:
        ports = _receive(control, 60, "server start")
        clients, theirs = ctx.Pipe()
        raw = args.subscribers - args.probes
        children.append(
            ctx.Process(
                target=subscribers,
                args=(ports["http"], TOKEN, raw, args.probes, not args.plain, theirs),
            )
        )
        children[-1].start()
        _receive(clients, 600, "subscribers")
        generator, theirs = ctx.Pipe()
        load_args = (ports["gt06"], args.units, args.rate, seconds, base, theirs)
        children.append(ctx.Process(target=units, args=load_args))
        children[-1].start()
        _receive(generator, 300, "units logged in")
        before = _ask(control, "stats")
        histograms = asyncio.run(scrape(ports["http"]))
        generator.send("go")
        started = time.monotonic()
        load = _receive(generator, seconds + 120, "load")
        try:
            result.server_metrics = describe(histograms, asyncio.run(scrape(ports["http"])))
        except TimeoutError:
            if not naive:
                raise
            # the baseline's loop can be that far behind its subscribers' sends
            result.server_metrics = f"no answer from /metrics within {SCRAPE_TIMEOUT_S:.0f} s"
        result.acked, result.load_s = sum(map(len, load["acked_at"])), load["seconds"]
        last_ack = max((times[-1] for times in load["acked_at"] if times), default=started)
        result.acked_s = max(result.load_s, last_ack - load["started"])
        last = _ask(control, "stats")
        expected = sum(map(len, load["sent_at"]))  # every fix sent is published...
        # the baseline never catches up: a few seconds show how far behind it stays
        deadline = time.monotonic() + (min(args.drain_s, 3.0) if naive else args.drain_s)
        while time.monotonic() < deadline:  # ...and the hub has nothing left to deliver
            counted = _delta(before, last, "live.published") + _delta(before, last, "positions_dr")
            if counted >= expected and not any(last["backlog"].values()):
                result.drained = True
                break
            time.sleep(0.1)
            last = _ask(control, "stats")
        result.deliver_s = last["time"] - started
        result.cpu_s["server"] = last["cpu_s"] - before["cpu_s"]
        result.live = {k: v - before["live"].get(k, 0) for k, v in last["live"].items()}
        result.sent = sum(map(len, load["sent_at"]))
        samples = _ask(control, "samples")
        clients.send("stop")
        seen = _receive(clients, 120, "subscriber results")
    finally:
        if server.is_alive():
            control.send("stop")
        for child in reversed(children):
            child.join(10 if naive else 30)
            if child.is_alive():
                child.terminate()
                child.join(10)
        data_dir.cleanup()
    _measure(result, load, seen, samples, started, base)
    if not naive:
        _check(result, load, seen, base)
    return result


def _measure(
    result: Result,
    load: dict[str, Any],
    seen: dict[str, Any],
    samples: list[Sample],
    started: float,
    base: datetime,
) -> None:
    sent_at: list[list[float]] = load["sent_at"]
    acked_at: list[list[float]] = load["acked_at"]
    offset = seen["clock_offset"]  # wall clock - monotonic clock: server_time is wall clock
    for positions in seen["positions"]:
        for unique_id, fix_time, _, received, server_time in positions:
            n = int(unique_id) - FIRST_IMEI
            k = round((datetime.fromisoformat(fix_time) - base).total_seconds())
            result.latencies_ms.append((received - sent_at[n][k]) * 1000)
            if k < len(acked_at[n]):
                result.fan_ms.append((received - acked_at[n][k]) * 1000)
            read = datetime.fromisoformat(server_time).timestamp() - offset
            result.read_ms.append((read - sent_at[n][k]) * 1000)
    result.cpu_s |= {"units": load["cpu_s"], "subscribers": seen["cpu_s"]}
    result.ack_ms = [
        (acked - sent) * 1000
        for sent_times, acked_times in zip(sent_at, acked_at, strict=True)
        for sent, acked in zip(sent_times, acked_times, strict=False)
    ]
    result.max_pending_rows = max((s[5] for s in samples), default=0)
    result.client_bytes = seen["client_bytes"]
    total_sent = samples[-1][4] if samples else 0
    done = next((s[0] for s in samples if s[0] > started and s[4] == total_sent), None)
    if done is not None:  # the moment the last message went out (to the sampling period)
        result.deliver_s = min(result.deliver_s, done - started)
    during = [s for s in samples if started <= s[0] <= started + result.load_s]
    if len(during) >= 6:
        third = len(during) // 3
        first, final = during[:third], during[-third:]
        growth = statistics.fmean(s[1] for s in final) - statistics.fmean(s[1] for s in first)
        result.backlog_growth_mb = growth / 1e6
        half = during[len(during) // 2 :]
        result.shed_per_s = (half[-1][3] - half[0][3]) / max(half[-1][0] - half[0][0], 1e-9)
        result.max_backlog_mb = max(s[1] for s in during) / 1e6
    result.errors += seen["errors"]


def _check(result: Result, load: dict[str, Any], seen: dict[str, Any], base: datetime) -> None:
    live, errors = result.live, result.errors
    published = live.get("live.published", 0)
    accounted = sum(live.get(f"live.{k}", 0) for k in ("sent", "coalesced", "dropped"))
    if not result.drained:
        errors.append("the hub had not delivered everything by the end of --drain-s")
    if accounted != published * result.subscribers:
        errors.append(
            f"{published:,} messages to {result.subscribers} subscribers: {accounted:,} sent,"
            " coalesced or dropped instead of every one"
        )
    if result.client_bytes < live.get("live.sent_bytes", 0):
        errors.append(
            f"subscribers read {result.client_bytes:,} of {live['live.sent_bytes']:,} bytes"
        )
    shed = live.get("live.coalesced", 0) + live.get("live.dropped", 0)
    sent = [len(times) for times in load["sent_at"]]
    for p, positions in enumerate(seen["positions"]):
        newest: dict[str, str] = {}
        for unique_id, fix_time, latest, _, _ in positions:
            if latest and fix_time <= newest.get(unique_id, ""):
                errors.append(f"probe {p}: {unique_id} {fix_time} after {newest[unique_id]}")
                break
            newest[unique_id] = max(fix_time, newest.get(unique_id, ""))
        for n, count in enumerate(sent):
            want = (base + timedelta(seconds=count - 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            if count and newest.get(imei(n)) != want:
                errors.append(f"probe {p}: the newest fix of {imei(n)} ({want}) never arrived")
                break
        missed = sum(sent) - len(positions)
        if missed and not shed:
            errors.append(f"probe {p}: {missed} positions missing, none counted as coalesced")


def figures(ours: Result, naive: Result | None, args: argparse.Namespace) -> list[Figure]:
    def other(value: Callable[[Result], float]) -> float | None:
        return value(naive) if naive is not None else None

    n = ours.subscribers
    return [
        Figure(
            f"positions/s stored and acked, {args.units} GT06 units paced at {args.rate:,.0f}/s",
            ours.ingest_rate,
            "/s",
            target=TARGET_RATE,
            naive=other(lambda r: r.ingest_rate),
        ),
        Figure(
            f"live messages/s delivered, {n} subscribers to every vehicle",
            ours.delivered_rate,
            "/s",
            target=n * TARGET_RATE,
            naive=other(lambda r: r.delivered_rate),
        ),
        Figure(
            "unit-to-subscriber latency p50",
            ours.percentile(50),
            "ms",
            naive=other(lambda r: r.percentile(50)),
            higher_is_better=False,
        ),
        Figure(
            "unit-to-subscriber latency p99",
            ours.percentile(99),
            "ms",
            target=TARGET_P99_MS,
            naive=other(lambda r: r.percentile(99)),
            higher_is_better=False,
        ),
        Figure(
            "  of which unit to ack (read, store, commit) p99",
            _quantile(ours.ack_ms, 99),
            "ms",
            naive=other(lambda r: _quantile(r.ack_ms, 99)),
            higher_is_better=False,
        ),
        Figure(
            "  of which ack to subscriber (the fan-out) p99",
            _quantile(ours.fan_ms, 99),
            "ms",
            naive=other(lambda r: _quantile(r.fan_ms, 99)),
            higher_is_better=False,
        ),
        Figure(
            "messages coalesced or dropped/s, 2nd half of the load",
            ours.shed_per_s,
            "/s",
            target=0,
            naive=other(lambda r: r.shed_per_s),
            higher_is_better=False,
        ),
        Figure(
            "send backlog growth, last third - first third of the load",
            ours.backlog_growth_mb,
            "MB",
            target=1.0,
            naive=other(lambda r: r.backlog_growth_mb),
            higher_is_better=False,
        ),
    ]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--subscribers", type=int, default=1000, help="all of them, probes included"
    )
    parser.add_argument("--probes", type=int, default=4, help="subscribers that parse everything")
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10_000, help="positions/s, all units")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--naive-seconds", type=float, default=5.0, help="0: no baseline")
    parser.add_argument("--drain-s", type=float, default=15.0, help="wait for delivery after")
    parser.add_argument("--plain", action="store_true", help="subscribers offer no deflate")
    parser.add_argument("--tick-ms", type=float, default=25.0, help="the hub's delivery tick")
    args = parser.parse_args(argv)
    args.probes = max(1, min(args.probes, args.subscribers))
    return args


def measure(argv: list[str]) -> tuple[list[Figure], list[str]]:
    """Both runs; the figures and what failed the correctness checks."""
    args = _parse(argv)
    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench_live")
        assert url is not None
        ours = run_one("tracker", url, False, args.seconds, args)
        naive = (
            run_one("naive", url, True, args.naive_seconds, args) if args.naive_seconds else None
        )
    finally:
        if pg is not None:
            pg.stop()
    for r in (ours, naive):
        if r is not None:
            print(_summary(r))
    return figures(ours, naive, args), [f"{ours.name}: {e}" for e in ours.errors]


def _summary(r: Result) -> str:
    live = r.live
    sent = live.get("live.sent", 0)
    wire = live.get("live.sent_bytes", 0) / sent if sent and live.get("live.sent_bytes") else 0
    drained = "drained" if r.drained else "NOT drained"
    return (
        f"{r.name}: {live.get('live.published', 0):,} published, {sent:,} sent,"
        f" {live.get('live.coalesced', 0):,} coalesced, {live.get('live.dropped', 0):,} dropped,"
        f" {live.get('live.fell_behind', 0):,} times a subscriber fell behind;"
        f" {wire:.0f} bytes/message written by the hub; max send backlog {r.max_backlog_mb:.1f} MB;"
        f" {drained} {r.deliver_s - r.load_s:.1f} s after the load;"
        f" {len(r.latencies_ms):,} latencies; until the server read the fix p50"
        f" {_quantile(r.read_ms, 50):.0f} ms p99 {_quantile(r.read_ms, 99):.0f} ms,"
        f" until acked p50 {_quantile(r.ack_ms, 50):.0f} ms p99 {_quantile(r.ack_ms, 99):.0f} ms"
        f" (at most {r.max_pending_rows:,} rows waiting to commit);"
        f" CPU s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_s.items())
        + f"; {r.server_metrics}"
    )


def run(argv: list[str]) -> list[Figure]:
    """Both runs; prints the table (and any failed check); returns the figures.

    Raises:
        RuntimeError: a check failed (the ERROR lines say which).
    """
    figures_, errors = _report(argv)
    if errors:
        raise RuntimeError(f"{len(errors)} live fan-out check(s) failed")
    return figures_


def _report(argv: list[str]) -> tuple[list[Figure], list[str]]:
    figures_, errors = measure(argv)
    print_table(
        f"live fan-out: PostGIS and the server on this machine ({os.cpu_count()} cores),"
        " load and subscribers on loopback",
        figures_,
    )
    for error in errors:
        print(f"ERROR: {error}")
    return figures_, errors


def main(argv: list[str] | None = None) -> int:
    return 1 if _report(sys.argv[1:] if argv is None else argv)[1] else 0


if __name__ == "__main__":
    raise SystemExit(main())
