"""Prometheus metrics for ``GET /metrics``, one registry per ``Server``.

Most numbers already live in the server's ``stats`` Counter under dotted keys
(``positions_dropped.duplicate``, ``connections_rejected.gt06.protocol_error``).
``Metrics.collect`` turns them into labelled counter families at scrape time
by the ``COUNTERS`` table; a key it does not know is still exported, as
``tracker_counter_total{name="<key>"}``. Latencies are real histograms, fed by
the hooks ``Pipeline.on_batch`` and ``Gateway.on_ack``, and by ``LoopLag``,
which times the event loop itself. Gauges (open connections, live subscribers,
store health, held rows) are read when scraped.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import tracker

if TYPE_CHECKING:
    from tracker.server import Server

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
LOOP_LAG_EVERY_S = 0.1


class Family(NamedTuple):
    name: str  # without the _total the exposition adds
    labels: tuple[str, ...]  # one per dotted part after the key
    documentation: str


# stats key (its leading dotted parts) -> counter family; the parts after it are the labels
COUNTERS: dict[str, Family] = {
    "positions_in": Family("tracker_positions_in", (), "positions handed to the group commit"),
    "positions_stored": Family("tracker_positions_stored", (), "positions written to the store"),
    "positions_deduplicated": Family(
        "tracker_positions_deduplicated", (), "positions the store had already (resent)"
    ),
    "positions_dropped": Family(
        "tracker_positions_dropped", ("reason",), "positions a filter dropped, by reason"
    ),
    "positions": Family("tracker_positions_decoded", ("protocol",), "positions units sent"),
    "positions_refused": Family(
        "tracker_positions_refused", (), "positions the store refused (not acknowledged)"
    ),
    "positions_abandoned": Family(
        "tracker_positions_abandoned", (), "positions not stored when stopping (not acknowledged)"
    ),
    "batches": Family("tracker_batches", (), "group commits written"),
    "batches_failed": Family("tracker_batches_failed", (), "group commits the store refused"),
    "batch_retries": Family("tracker_batch_retries", (), "group commits retried, store away"),
    "commits_waited_for_room": Family(
        "tracker_commits_waited_for_room", (), "commits that waited for room among held rows"
    ),
    "store_outages": Family("tracker_store_outages", (), "times the store became unavailable"),
    "messages": Family("tracker_messages", ("protocol",), "messages decoded"),
    "messages_dropped": Family(
        "tracker_messages_dropped", ("protocol", "reason"), "decoded messages not handled"
    ),
    "frames_dropped": Family(
        "tracker_frames_dropped", ("protocol", "reason"), "frames a codec skipped"
    ),
    "frames_throttled": Family(
        "tracker_frames_throttled", ("protocol",), "frames over the rate limit (reading paused)"
    ),
    "replies": Family("tracker_replies", ("protocol",), "replies sent to units"),
    "units_refused": Family("tracker_units_refused", ("protocol",), "unknown units turned away"),
    "units_unauthorized": Family(
        "tracker_units_unauthorized",
        ("protocol",),
        "units turned away for a missing or wrong secret",
    ),
    "connections": Family(
        "tracker_connections_accepted", ("protocol",), "TCP connections accepted"
    ),
    "connections_rejected": Family(
        "tracker_connections_rejected", ("protocol", "reason"), "connections closed by us"
    ),
    "datagrams_dropped": Family(
        "tracker_datagrams_dropped", ("protocol", "reason"), "UDP datagrams not handled"
    ),
    "udp_peers": Family("tracker_udp_peers", ("protocol",), "UDP peers seen (new addresses)"),
    "requests": Family("tracker_http_unit_requests", ("protocol",), "HTTP requests from units"),
    "bad_requests": Family(
        "tracker_http_unit_bad_requests", ("protocol",), "unit HTTP requests refused as unreadable"
    ),
    "rule_evaluations": Family("tracker_rule_evaluations", (), "positions the rules evaluated"),
    "rule_failures": Family("tracker_rule_failures", (), "batches the rules failed on (our bug)"),
    "events": Family("tracker_events", ("type",), "events stored, by type"),
    "event_batches_failed": Family(
        "tracker_event_batches_failed", (), "event writes the store refused (retried)"
    ),
    "webhook_deliveries": Family(
        "tracker_webhook_deliveries", ("status",), "webhook deliveries settled, by status"
    ),
    "webhook_attempts_failed": Family(
        "tracker_webhook_attempts_failed", (), "webhook POSTs that did not get a 2xx"
    ),
    "retention.positions_deleted": Family(
        "tracker_retention_positions_deleted", (), "positions deleted past retention"
    ),
    "retention.closed_loan_positions_purged": Family(
        "tracker_retention_closed_loan_positions_purged", (), "positions of closed loans purged"
    ),
    "retention.partitions_reindexed": Family(
        "tracker_retention_partitions_reindexed", (), "closed months whose indexes were rebuilt"
    ),
}
# totals kept beside a labelled family: not exported, Prometheus sums the family
SUMS = frozenset({"events"})
OTHER = Family("tracker_counter", ("name",), "other internal counters, by stats key")


def family_of(key: str) -> tuple[Family, tuple[str, ...]] | None:
    """The family of a stats key and its label values (``OTHER`` when unknown);
    None for the keys in ``SUMS``."""
    if key in SUMS:
        return None
    parts = key.split(".")
    for size in range(len(parts), 0, -1):
        family = COUNTERS.get(".".join(parts[:size]))
        if family is not None and len(family.labels) == len(parts) - size:
            return family, tuple(parts[size:])
    return OTHER, (key,)


def counters(stats: Counter[str]) -> Iterator[Metric]:
    """The ``stats`` Counter as counter families (see ``COUNTERS``)."""
    families: dict[str, CounterMetricFamily] = {}
    for key, value in sorted(stats.items()):
        found = family_of(key)
        if found is None:
            continue
        family, values = found
        metric = families.get(family.name)
        if metric is None:
            metric = families[family.name] = CounterMetricFamily(
                family.name, family.documentation, labels=family.labels
            )
        metric.add_metric(values, value)
    yield from families.values()


class Metrics(Collector):
    """The registry of one server. ``on_batch`` and ``on_ack`` feed its
    histograms; as a collector it reads ``stats`` and the gauges when scraped."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_rows = Histogram(
            "tracker_batch_rows",
            "positions per group commit",
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "tracker_batch_commit_seconds",
            "time the store took to commit a batch of positions",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "tracker_ack_latency_seconds",
            "from the read (or request) completing a position to its acknowledgement written",
            ["protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._ack_children: dict[str, Histogram] = {}
        self.loop_lag_seconds = Histogram(
            "tracker_event_loop_lag_seconds",
            f"how late the event loop ran a timer due every {LOOP_LAG_EVERY_S:g} s",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.loop_lag = LoopLag(self.loop_lag_seconds.observe)
        self.registry.register(self)
        server.pipeline.on_batch = self.on_batch
        for gateway in server.gateways:
            gateway.on_ack = self.on_ack

    def on_batch(self, rows: int, seconds: float, ok: bool) -> None:
        if ok:  # failures: tracker_store_up and the batch counters tell
            self.batch_rows.observe(rows)
            self.commit_seconds.observe(seconds)

    def on_ack(self, protocol: str, seconds: float) -> None:
        # once per read that stored positions: the labelled child is looked up once
        if (child := self._ack_children.get(protocol)) is None:
            child = self._ack_children[protocol] = self.ack_seconds.labels(protocol)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition, of type ``CONTENT_TYPE``."""
        return generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        server = self._server
        yield from counters(server.stats)
        info = GaugeMetricFamily(
            "tracker_info", "this server: version and store", labels=("version", "store")
        )
        info.add_metric((tracker.__version__, server.store.kind), 1)
        yield info
        open_now = GaugeMetricFamily(
            "tracker_connections_open", "TCP connections open now", labels=("protocol",)
        )
        for gateway in server.gateways:
            open_now.add_metric((gateway.name,), gateway.open_connections)
        yield open_now
        yield GaugeMetricFamily(
            "tracker_live_subscribers", "live websocket subscribers", server.hub.subscriber_count
        )
        yield GaugeMetricFamily(
            "tracker_store_up",
            "1 while the last write or ping of the store worked, else 0",
            1 if server.pipeline.store_healthy else 0,
        )
        yield GaugeMetricFamily(
            "tracker_pending_rows",
            "positions received and not yet committed (held while the store is away)",
            server.pipeline.pending_rows,
        )


class LoopLag:
    """Times the event loop: how late it runs a timer due every ``every_s``.

    One process serves every unit, so a loop that runs late holds up every read,
    acknowledgement and live frame by as much; this is the server's own queue,
    apart from the store's (``tracker_batch_commit_seconds``). A lag that grows
    with the load means the process is short of CPU."""

    def __init__(self, observe: Callable[[float], None], every_s: float = LOOP_LAG_EVERY_S) -> None:
        self._observe = observe
        self.every_s = every_s
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        if self._timer is None:
            self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.every_s
        self._timer = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # the loop may run a timer up to its clock resolution early: that is no lag
        self._observe(max(0.0, loop.time() - self._due))
        self._arm(loop)
