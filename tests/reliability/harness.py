"""What the reliability tests drive and check: GT06 units that remember every
acknowledgement, ``tracker serve`` as a child process, and the positions table.

A GT06 location ack echoes the serial of the frame it acknowledges (PROTOCOLS.md,
GT06 section), so a unit maps each serial it sends to the fix in that frame and
knows exactly which fixes the server acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from protocols import CODECS
from tracker.simulate import ACK_BYTES, LOCATION, LOGIN, gt06_location, gt06_login
from tracker.store import Unit
from tracker.store.postgis import PostgisStore

ADMIN_KEY = "reliability-admin-key"
FIRST_IMEI = 862000000000000
# Fixes an hour old and one second apart: well inside the filters' limits.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def imeis(count: int) -> list[str]:
    return [str(FIRST_IMEI + n) for n in range(count)]


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll until ``condition()`` holds: server state that has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


class Gt06Unit:
    """A GT06 unit on a real socket that sends fixes with up to ``window`` of them
    unacknowledged (units send their buffer in bursts), resends what was not
    acknowledged after a reconnect, and records every acknowledgement."""

    def __init__(self, imei: str, number: int, *, window: int = 8) -> None:
        self.imei = imei
        self.number = number  # keeps the units' coordinates apart
        self.window = window
        self.sent: list[datetime] = []  # every fix made, in order (resends not repeated)
        self.acked: Counter[datetime] = Counter()  # fix -> acknowledgements received
        self.ack_times: list[float] = []  # loop time of each location ack
        self.closed = asyncio.Event()  # the server ended the current connection
        self._serial = 1  # never reused, so an ack names one frame
        self._in_flight: dict[int, datetime] = {}  # serial -> fix, sent and not acked
        self._acked_now = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._receiver: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def unacked(self) -> list[datetime]:
        return [fix for fix in self.sent if fix not in self.acked]

    async def connect(self, port: int) -> None:
        """Open a connection (closing one left over) and log in."""
        await self.close()
        reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self.closed.clear()
        self._in_flight.clear()
        self._writer.write(gt06_login(self.imei, self._next_serial()))
        reply = await asyncio.wait_for(reader.readexactly(ACK_BYTES), 10)
        assert reply[3] == LOGIN, reply.hex()
        self._receiver = asyncio.create_task(self._receive(reader))

    async def stream(self, fixes: Iterator[datetime], stop: asyncio.Event | None = None) -> None:
        """Send ``fixes`` keeping at most ``window`` unacknowledged, until they run
        out, ``stop`` is set or the server ends the connection."""
        while True:
            while self.in_flight >= self.window and not self.closed.is_set():
                self._acked_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked_now.wait(), 0.05)
                if stop is not None and stop.is_set():
                    return
            if self.closed.is_set() or (stop is not None and stop.is_set()):
                return
            if (fix := next(fixes, None)) is None:
                return
            self._send(fix)
            try:
                assert self._writer is not None
                await self._writer.drain()
            except ConnectionError:
                return

    def new_fixes(self) -> Iterator[datetime]:
        """Fresh fixes, one second after another; each is recorded in ``sent`` as
        ``stream`` takes it to send it."""
        n = len(self.sent)
        while True:
            fix = START + timedelta(seconds=n)
            self.sent.append(fix)
            yield fix
            n += 1

    async def resend_unacked(self, port: int, timeout_s: float = 10) -> None:
        """What a unit that waits for acks does after a reconnect: send again
        every fix not acknowledged, and wait until all are."""
        await self.connect(port)
        await self.stream(iter(self.unacked()))
        await self.until_all_acked(timeout_s)
        await self.close()

    async def until_all_acked(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while self.unacked():
                if self.closed.is_set():
                    raise AssertionError(f"{self.imei}: closed with {self.unacked()} unacked")
                self._acked_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked_now.wait(), 0.05)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._receiver is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
            self._receiver = None

    def _next_serial(self) -> int:
        serial, self._serial = self._serial, self._serial + 1
        assert serial <= 0xFFFF, "serials would repeat"
        return serial

    def _send(self, fix: datetime) -> None:
        assert self._writer is not None
        serial = self._next_serial()
        k = int((fix - START).total_seconds())
        lat = 10.0 + self.number / 100 + k * 1e-5  # about a metre a second
        self._in_flight[serial] = fix
        self._writer.write(gt06_location(fix, lat, 20.0, serial=serial, speed_kmh=4))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                reply = await reader.readexactly(ACK_BYTES)
                assert reply[3] == LOCATION, reply.hex()
                fix = self._in_flight.pop(int.from_bytes(reply[4:6], "big"))
                self.acked[fix] += 1
                self.ack_times.append(loop.time())
                self._acked_now.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            self._acked_now.set()


async def register(url: str, unique_ids: Sequence[str]) -> None:
    """One vehicle per unit, ``veh-<n>``, straight into the store (migrating it)."""
    store = PostgisStore(url)
    await store.open()
    try:
        for n, unique_id in enumerate(unique_ids):
            unit = Unit(unique_id, f"veh-{n}")
            await store.put_vehicle(f"veh-{n}", plate=None, vin=None, loan_ref=None, units=[unit])
    finally:
        await store.close()


async def stored_fixes(url: str) -> Counter[tuple[str, datetime]]:
    """(unit, fix time) -> rows in the positions table, read past the server."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT unique_id, fix_time FROM positions")
    finally:
        await conn.close()
    return Counter((row["unique_id"], row["fix_time"]) for row in rows)


def config(tmp_path: Path, database_url: str, *, grace_s: float = 10.0) -> Path:
    """A TOML file: gt06 and the REST API on free ports, every other listener off."""
    path = tmp_path / "tracker.toml"
    listeners = "".join(
        f'[protocols.{name}]\nport = 0\nhost = "127.0.0.1"\n'
        if name == "gt06"
        else f'[protocols.{name}]\nport = "off"\n'
        for name in [*CODECS, "osmand"]
    )
    path.write_text(
        f"""
data_dir = "{tmp_path}/var"
admin_key = "{ADMIN_KEY}"
[http]
host = "127.0.0.1"
port = 0
[database]
url = "{database_url}"
[store]
batch_max_delay_ms = 2
[server]
shutdown_grace_s = {grace_s}
[gateway]
max_frames_per_s = 100000
{listeners}"""
    )
    return path


GT06_PORT = re.compile(r"gt06 units on TCP port (\d+)")
HTTP_PORT = re.compile(r"REST API and live map on http://[\d.]+:(\d+)")


class TrackerProcess:
    """``python -m tracker serve`` in a child process; its log goes to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.gt06 = 0
        self.http = 0
        self.output: list[str] = []

    @classmethod
    async def start(cls, config_path: Path, log: Path) -> TrackerProcess:
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tracker", "serve", "--config", str(config_path),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=dict(os.environ),
            )  # fmt: skip
        server = cls(process, log)
        try:
            async with asyncio.timeout(60):
                await server._read_ports()
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return server

    async def _read_ports(self) -> None:
        assert self.process.stdout is not None
        while not (self.gt06 and self.http):
            line = (await self.process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"serve stopped early:\n{self.log.read_text()[-3000:]}")
            self.output.append(line)
            if match := GT06_PORT.search(line):
                self.gt06 = int(match[1])
            if match := HTTP_PORT.search(line):
                self.http = int(match[1])

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; the crash the tests are about."""
        self.process.kill()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float = 30) -> int:
        async with asyncio.timeout(timeout_s):
            returncode = await self.process.wait()
            if self.process.stdout is not None:
                self.output += (await self.process.stdout.read()).decode().splitlines(True)
        return returncode

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.terminate()
            try:
                await self.wait()
            except TimeoutError:
                self.kill()
                await self.process.wait()
