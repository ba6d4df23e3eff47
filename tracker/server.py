"""Wiring: settings -> store, registry, cache, pipeline, hub, listeners, HTTP.

``Server.start`` brings everything up (ports 0 are resolved to the ones the
OS gave). ``Server.stop`` takes it down within ``shutdown_grace_s``, in the
order that keeps the promise "acknowledged means stored": listeners stop
accepting; the pipeline stores what units already sent while their
connections are still open to carry the acks; then connections close, then
the background writers and the store. ``serve`` runs it until SIGINT or
SIGTERM. Tests start the same ``Server`` on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import secrets
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from protocols import CODECS
from tracker.api_live import Kicks
from tracker.auth import Access
from tracker.cache import LatestState
from tracker.devices import Registry
from tracker.events import Events
from tracker.fences import Fences
from tracker.gateway import Gateway
from tracker.ingest import Pipeline, utcnow
from tracker.limits import Connections
from tracker.live import Hub
from tracker.metrics import Metrics
from tracker.retention import Retention
from tracker.rlimit import raise_open_files
from tracker.rules import RuleEngine
from tracker.settings import Settings
from tracker.store import Store, open_store
from tracker.webhooks import WebhookSender

log = logging.getLogger(__name__)

OTHER_FILES = 100  # besides units: database connections, HTTP clients, logs, listeners

# From this many vehicles on, what start-up loaded is kept out of garbage
# collection. (Small stores, as in tests that start many servers in one
# process, never are: a freeze also keeps whatever garbage happened to wait.)
FREEZE_HEAP_VEHICLES = 100_000
# Every position allocates a few dozen objects that live until its batch commits
# (a few ms). At Python's default of a young collection every 700 allocations,
# each one walks the batches in flight and promotes them, and the older
# generations fill with what is about to die anyway: about 30% of the server's
# CPU per position (48 -> 33 us without the database, the pipeline and rules of
# bench/ingest.py). Young collections every 50,000 allocations, older ones after
# 20 of the younger, cost a few MB of garbage awaiting collection.
GC_THRESHOLDS = (50_000, 20, 20)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our own loop: signals are ours to handle, not its."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def port(self) -> int:
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port


def admin_key(settings: Settings) -> str:
    """The configured key, or the one kept in the data dir (made on first start)."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.data_dir / "admin_key"
    if path.exists():
        return path.read_text().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


def _prepare_sqlite_path(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        store: Store | None = None,
    ) -> None:
        """``store``: another adapter than ``database.url`` names (benchmarks)."""
        self.settings = settings
        self.clock = clock
        self.stats: Counter[str] = Counter()
        if store is None and settings.database_url.startswith("sqlite:"):
            _prepare_sqlite_path(settings.database_url)
        self.store: Store = store or open_store(
            settings.database_url, writers=settings.batch_writers
        )
        self.registry = Registry(self.store, register_unknown_units=settings.register_unknown_units)
        self.cache = LatestState()
        self.hub = Hub(stats=self.stats)  # live.* counters in /api/v1/server and /metrics
        self.pipeline = Pipeline(
            self.store,
            self.cache,
            self.hub,
            self.stats,
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            max_pending_rows=settings.max_pending_rows,
            writers=settings.batch_writers,
            future_limit=timedelta(seconds=settings.future_limit_s),
            clock=clock,
        )
        self.engine = RuleEngine(
            settings.rules,
            unit=self.registry.unit_for,
            vehicle=self.registry.vehicle,
            latest=self.cache.unit,
        )
        self.webhooks = WebhookSender(self.store, self.stats, clock=clock)
        self.events = Events(
            self.store,
            self.engine,
            self.hub,
            self.stats,
            clock=clock,
            on_stored=lambda events: self.webhooks.wake(),
            latest_fixes=lambda: (
                (unit, row)
                for unit in self.registry.units()
                if (row := self.cache.unit(unit.unique_id)) is not None
            ),
        )
        self.pipeline.observer = self.events
        self.fences = Fences(self.store, self.engine, clock, members=self.registry.members)
        self.admin_key = admin_key(settings)
        self.access = Access(
            self.store,
            self.admin_key,
            position_loan_states=settings.position_loan_states,
            clock=clock,
        )
        self.kicks = Kicks()
        self.revoked_shares: set[str] = set()
        self.retention = Retention(
            self.store,
            self.registry,
            self.stats,
            positions_days=settings.retention_positions_days,
            closed_purge_days=settings.retention_closed_purge_days,
            clock=clock,
            reindex_closed_months=settings.retention_reindex_closed_months,
        )
        self.connections = Connections(settings.gateway)  # caps shared by every listener
        self.gateways = [
            Gateway(p, self.registry, self.pipeline, self.connections)
            for p in settings.protocols
            if p.port is not None and p.name in CODECS
        ]
        self._http: list[tuple[str, _EmbeddedUvicorn, asyncio.Task[None]]] = []
        self.ports: dict[str, int] = {}
        self.udp_ports: dict[str, int] = {}
        self.metrics = Metrics(self)  # last: it hooks into the pipeline and the gateways

    async def start(self) -> None:
        from tracker.api import create_app
        from tracker.osmand_http import create_osmand_app

        self._check_open_files()
        await self.store.open()
        await self._load()
        await self.webhooks.start()
        self.retention.start()
        self.pipeline.start()
        for gateway in self.gateways:
            await gateway.start()
            assert gateway.port is not None
            self.ports[gateway.name] = gateway.port
            if gateway.udp_port is not None:
                self.udp_ports[gateway.name] = gateway.udp_port
        osmand = self.settings.protocol("osmand")
        if osmand is not None and osmand.port is not None:
            app = create_osmand_app(self, speed_unit=osmand.speed_unit)
            self.ports["osmand"] = await self._start_http("osmand", app, osmand.host, osmand.port)
        self.ports["http"] = await self._start_http(
            "http", create_app(self), self.settings.http_host, self.settings.http_port
        )
        self.metrics.loop_lag.start()

    async def _load(self) -> None:
        """Registry, latest-state cache, fences, open alerts and silence deadlines
        from the store. With a million units this is most of start-up, so the
        latest positions (the database's longest read) are read while the
        registry and the rules load, and the garbage collector waits: it would
        otherwise walk the growing heap again and again. Once loaded, a large
        heap is frozen (``gc.freeze``): later full collections skip it instead
        of pausing the server for a second each."""
        risk_window = timedelta(days=self.settings.rules.risk_window_days)

        async def latest() -> None:
            self.cache.load(await self.store.latest_positions())

        async def registry_and_rules() -> None:
            await self.registry.load()
            await self.fences.load()
            await self.events.start(risk_window, units=self.registry.units())

        collecting = gc.isenabled()
        gc.disable()
        gc.set_threshold(*GC_THRESHOLDS)
        loads = [asyncio.ensure_future(latest()), asyncio.ensure_future(registry_and_rules())]
        try:
            await asyncio.gather(*loads)
            if len(self.registry.vehicle_ids()) >= FREEZE_HEAP_VEHICLES:
                gc.freeze()  # before collecting again: else the next one walks it all
        except BaseException:
            for load in loads:
                load.cancel()
            raise
        finally:
            if collecting:
                gc.enable()

    def _check_open_files(self) -> None:
        """Every unit holds a socket: raise our own open-file limit as far as allowed,
        and say so when it still cannot hold ``gateway.max_connections``."""
        soft, _ = raise_open_files()
        wanted = self.settings.gateway.max_connections + OTHER_FILES
        if soft < wanted:
            log.warning(
                "open-file limit %d is below gateway.max_connections + %d = %d: units past "
                "it are refused; raise LimitNOFILE (systemd) or ulimits (Docker)",
                soft,
                OTHER_FILES,
                wanted,
            )

    async def _start_http(self, name: str, app: Starlette, host: str, port: int) -> int:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # its records go to our handlers (log.format)
            lifespan="off",
            access_log=False,
            ws="websockets-sansio",
            ws_ping_interval=20.0,  # keeps live sockets open behind proxies
            ws_ping_timeout=20.0,
            timeout_graceful_shutdown=math.ceil(self.settings.shutdown_grace_s),
        )
        server = _EmbeddedUvicorn(config)
        task = asyncio.create_task(server.serve(), name=f"uvicorn-{name}")
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start (port in use, ...)
                raise RuntimeError(f"{name} server stopped during start-up")
            await asyncio.sleep(0.01)
        self._http.append((name, server, task))
        return server.port

    async def stop(self) -> None:
        """Stop accepting, store and acknowledge what units sent, then close.

        Positions still unstored when the grace period is nearly over (the store
        is down) are not acknowledged: units keep them and send them again.
        """
        if not self.ports:
            return  # not started, or stopped already
        self.metrics.loop_lag.stop()
        loop = asyncio.get_running_loop()
        grace_s = self.settings.shutdown_grace_s
        flush_by = loop.time() + grace_s - min(1.0, grace_s / 4)  # a moment kept for closing
        for gateway in self.gateways:
            gateway.stop_accepting()
        for _, server, _ in self._http:
            server.should_exit = True  # stops accepting; requests in flight finish
        await self.pipeline.stop(timeout_s=max(0.0, flush_by - loop.time()))
        for gateway in self.gateways:
            await gateway.stop()
        for _, _, task in self._http:
            with contextlib.suppress(Exception):
                await task
        self._http.clear()
        await self.retention.stop()
        await self.events.stop()
        await self.webhooks.stop()
        await self.access.flush_audit()
        await self.store.close()
        self.ports.clear()
        self.udp_ports.clear()

    def describe(self) -> str:
        http = f"http://{self.settings.http_host}:{self.ports['http']}"
        lines = [
            f"tracker: store {self.store.kind} ({_redact(self.settings.database_url)})",
            f"tracker: REST API and live map on {http}  (OpenAPI: {http}/docs)",
        ]
        for name, port in sorted(self.ports.items()):
            if name != "http":
                kind = "HTTP" if name == "osmand" else "TCP"
                kind += " and UDP" if name in self.udp_ports else ""
                lines.append(f"tracker: {name} units on {kind} port {port}")
        lines.append(f"tracker: admin API key: {self.admin_key}")
        return "\n".join(lines)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
    return url


async def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM, then stop within ``shutdown_grace_s``.

    Returns the exit status: 0 once everything units sent before the signal is
    stored and acknowledged; 1 when some of it was not (the store was down;
    units send it again) or stopping took longer than the grace period.
    """
    server = Server(settings)
    await server.start()
    print(server.describe(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("tracker: stopping", flush=True)
    try:
        async with asyncio.timeout(settings.shutdown_grace_s):
            await server.stop()
    except TimeoutError:
        log.error(
            "not stopped within server.shutdown_grace_s (%g s): exiting", settings.shutdown_grace_s
        )
        return 1
    return 1 if server.pipeline.abandoned_rows else 0
