"""TCP listeners: socket bytes <-> codec; acknowledgements only after commit.

One connection, one task, so a unit's messages stay in order. The loop reads,
feeds the codec, lets the ``Session`` handle the messages (which waits for the
batch holding its positions to commit), then writes the replies. While it
waits it does not read, so a unit that floods is pushed back by TCP.

Hostile and broken input (``tracker.limits``): connections over the caps per
address and in all are closed at once; a connection is closed when it stays
silent for ``idle_timeout_s``, when no known unit has spoken on it within
``login_timeout_s`` of connecting or within ``max_bytes_before_login`` bytes;
one sending more than ``max_frames_per_s`` is not read for a moment. Each
closing is counted as ``connections_rejected.<protocol>.<reason>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import cast

import protocols
from protocols import Heartbeat, Message, Position, ProtocolError
from tracker.aio import cancel_all
from tracker.devices import Registry
from tracker.ingest import Pipeline, StoreUnavailable
from tracker.limits import Connections, Guard, Refusals, Refused
from tracker.settings import GatewaySettings, ProtocolSettings
from tracker.store import StoredPosition, Unit

log = logging.getLogger(__name__)

READ_SIZE = 65536
# after a restart every unit reconnects at once; the default 100 drops SYNs
BACKLOG = 4096


class Session:
    """Binds one connection to a registered unit and handles its messages."""

    def __init__(self, protocol: str, peer: str, registry: Registry, pipeline: Pipeline) -> None:
        self.protocol = protocol
        self.peer = peer
        self._registry = registry
        self._pipeline = pipeline
        self.stats = pipeline.stats
        self.unit: Unit | None = None
        self.refused = False  # an unknown unit: close after its login
        self.frames = 0  # decoded or dropped by the codec, for the frame-rate limit
        self.committed = 0  # positions the last feed stored: their ack latency is measured

    @property
    def log_extra(self) -> dict[str, str | None]:
        """``extra`` for log lines about this connection's unit."""
        return {"unique_id": self.unit.unique_id if self.unit else None, "protocol": self.protocol}

    async def feed(self, codec: protocols.Codec, data: bytes) -> list[bytes]:
        """Decode ``data`` and handle what it completes; return the replies.

        Raises:
            ProtocolError: the codec cannot frame the stream.
            StoreUnavailable: positions were not stored; send nothing.
        """
        try:
            messages = codec.feed(data)
        finally:
            for reason, count in codec.stats.items():
                self.stats[f"frames_dropped.{self.protocol}.{reason}"] += count
                self.frames += count if reason != "garbage_bytes" else 0
            codec.stats.clear()
        self.frames += len(messages)
        replies = await self.handle(messages)
        self.stats[f"replies.{self.protocol}"] += len(replies)
        return replies

    async def handle(self, messages: list[Message]) -> list[bytes]:
        """Handle decoded messages in order; return the replies to send.

        Raises:
            StoreUnavailable: positions were not stored; send nothing.
        """
        replies: list[bytes] = []
        rows: list[StoredPosition] = []
        self.stats[f"messages.{self.protocol}"] += len(messages)
        now = self._pipeline.clock() if messages else None
        if (
            self.unit is not None
            and (bound := self._registry.unit_for(self.unit.unique_id)) is not self.unit
        ):
            self._rebind(bound)  # its vehicle was replaced, or deleted, since it logged in
        positions = 0
        for message in messages:
            # A connection belongs to the unit that identified itself first: a message
            # (or a second login) naming another unit is dropped, never stored under
            # either of them.
            unit = self.unit
            if unit is None:
                if not self.refused:
                    unit = await self._unit_for(message)
            elif message.unique_id not in (None, unit.unique_id):
                # another unit's login or message: dropped, and the connection closed, so
                # that a unit whose link was mixed up logs in afresh instead of waiting
                # for acks that never come
                self.stats[f"messages_dropped.{self.protocol}.other_unit"] += 1
                log.info(
                    "closed %s (%s) from %s: a message of unit %s on its connection",
                    unit.unique_id,
                    self.protocol,
                    self.peer,
                    message.unique_id,
                    extra=self.log_extra,
                )
                self.refused = True
                break
            if unit is None:
                if self.refused:
                    break
                self.stats[f"messages_dropped.{self.protocol}.before_login"] += 1
                continue
            if isinstance(message, Position):
                positions += 1
                if (row := self._pipeline.accept(unit, self.protocol, message, now)) is not None:
                    rows.append(row)
                else:  # dropped by a filter, but the unit is alive
                    self._pipeline.saw(unit.unique_id)
            else:
                attributes = message.attributes if isinstance(message, Heartbeat) else None
                self._pipeline.saw(unit.unique_id, attributes)
            if message.reply is not None:
                replies.append(message.reply)
        self.stats[f"positions.{self.protocol}"] += positions
        await self._pipeline.commit(rows)
        self.committed = len(rows)
        return replies

    def _rebind(self, unit: Unit | None) -> None:
        """The registry's unit now: the same unit of a changed vehicle (rows go
        under the vehicle it is on now), or none, when it was taken off every
        vehicle: the connection is then refused, as for an unknown unit."""
        if unit is None:
            assert self.unit is not None
            self.stats[f"units_refused.{self.protocol}"] += 1
            log.info(
                "refused unit %s (%s) from %s: no longer registered",
                self.unit.unique_id,
                self.protocol,
                self.peer,
                extra=self.log_extra,
            )
            self.refused = True
        self.unit = unit

    async def _unit_for(self, message: Message) -> Unit | None:
        """The unit that this message, on a connection no unit has bound yet,
        identifies and binds (None: it names none, or one refused)."""
        unique_id = message.unique_id
        if unique_id is not None:
            unit = self._registry.unit_for(unique_id)
            if unit is None:
                now: datetime = self._pipeline.clock()
                unit = await self._registry.knock(unique_id, self.protocol, self.peer, now)
            if unit is None:
                self.stats[f"units_refused.{self.protocol}"] += 1
                log.info(
                    "refused unknown unit %s (%s) from %s",
                    unique_id,
                    self.protocol,
                    self.peer,
                    extra={"unique_id": unique_id, "protocol": self.protocol},
                )
                self.refused = True
                return None
            self.unit = unit
            return unit
        return None


def _codec(settings: ProtocolSettings, transport: str) -> protocols.Codec:
    options: dict[str, object] = {}
    if settings.accept_bad_crc:
        options["accept_bad_crc"] = True
    if transport == "udp":
        options["transport"] = "udp"
    return protocols.open(settings.name, **options)


class Gateway:
    """One TCP listener per binary protocol (and a UDP one where ``settings.udp``).

    ``connections``: the caps, and the connections open under them, shared by all listeners.
    """

    def __init__(
        self,
        settings: ProtocolSettings,
        registry: Registry,
        pipeline: Pipeline,
        connections: Connections | None = None,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._pipeline = pipeline
        self.stats: Counter[str] = pipeline.stats
        self._open = connections or Connections(GatewaySettings())
        self._refusals = Refusals(self.stats, settings.name)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._udp: UdpListener | None = None
        # metrics: (protocol, seconds) from the read completing positions to their ack written
        self.on_ack: Callable[[str, float], None] = lambda protocol, seconds: None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def udp_port(self) -> int | None:
        return self._udp.port if self._udp is not None else None

    async def start(self) -> None:
        assert self.settings.port is not None
        self._server = await asyncio.start_server(
            self._accept, self.settings.host, self.settings.port, limit=READ_SIZE, backlog=BACKLOG
        )
        if self.settings.udp and self.name in protocols.UDP:
            # the same port number as TCP, as units are configured with one port
            assert self.port is not None
            self._udp = UdpListener(self.settings, self._registry, self._pipeline)
            await self._udp.start(self.port)

    def stop_accepting(self) -> None:
        """Close the TCP listening socket; open connections carry on (the first step
        of a graceful stop: they still get the acks for what the pipeline flushes)."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        if self._udp is not None:
            await self._udp.stop()
            self._udp = None
        if self._server is not None:
            self._server.close()
            await cancel_all(list(self._connections))
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        ip, peer = (peername[0], f"{peername[0]}:{peername[1]}") if peername else ("?", "?")
        if (reason := self._open.admit(ip)) is not None:
            self._refusals.count(reason, peer)
            writer.transport.abort()  # at once: nothing to send, no buffers to keep
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            pass  # stopping: asyncio's stream callback must not see a cancelled task
        finally:
            self._connections.discard(task)
            self._open.release(ip)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        loop = asyncio.get_running_loop()
        codec = _codec(self.settings, "tcp")
        session = Session(self.name, peer, self._registry, self._pipeline)
        guard = Guard(self.settings, self._open.settings, loop.time())
        deadline = Deadline(loop, lambda reason: reader.set_exception(Refused(reason)))
        self.stats[f"connections.{self.name}"] += 1
        first_bytes = b""
        try:
            while data := await self._read(reader, guard, session.unit is not None, deadline):
                first_bytes = first_bytes or data[:32]
                read_at, frames = loop.time(), session.frames
                replies = await session.feed(codec, data)
                if replies:
                    writer.write(b"".join(replies))
                    await self._drain(writer)
                    if session.committed:
                        self.on_ack(self.name, loop.time() - read_at)
                if session.refused:
                    break
                guard.received(len(data), session.unit is not None)
                over, pause_s = guard.frames(session.frames - frames, loop.time())
                if over:  # pushback: TCP holds the rest while we do not read
                    self.stats[f"frames_throttled.{self.name}"] += over
                    await asyncio.sleep(pause_s)
                elif session.unit is None:
                    await asyncio.sleep(0)  # a stranger waits its turn (Guard.STRANGER_READ)
        except Refused as exc:
            self._refusals.count(exc.reason, peer, exc.detail, session.log_extra)
        except ProtocolError as exc:
            detail = f"{exc}; first bytes {first_bytes.hex()}"
            self._refusals.count("protocol_error", peer, detail, session.log_extra)
        except StoreUnavailable as exc:
            detail = f"positions not stored: {exc}"
            self._refusals.count("store_unavailable", peer, detail, session.log_extra)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s: connection failed", self.name, peer, extra=session.log_extra)
        finally:
            deadline.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(
        self, reader: asyncio.StreamReader, guard: Guard, identified: bool, deadline: Deadline
    ) -> bytes:
        """The next bytes, or b"" at the end of the stream.

        Raises:
            Refused: nothing came in time (``idle`` or ``login_timeout``).
        """
        deadline.wait(*guard.deadline(identified, asyncio.get_running_loop().time()))
        try:
            return await reader.read(guard.read_size(identified, READ_SIZE))
        finally:
            deadline.waited()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the unit takes our replies, as long as it may stay silent.

        Raises:
            Refused: ``idle``, it stopped reading.
        """
        if not writer.transport.get_write_buffer_size():
            return  # all sent already (nearly always): no timer to set up
        try:
            async with asyncio.timeout(self.settings.idle_timeout_s):
                await writer.drain()
        except TimeoutError:
            raise Refused("idle", "not reading its replies") from None


class Deadline:
    """How long a connection (or UDP peer) may keep us waiting for its next
    bytes: one timer for it, not one for each read.

    An ``asyncio.timeout`` around each read would set a timer and cancel it
    again, about 6 us a read in the loop's heap (``asyncio.wait_for``, with its
    task, 8-10), for a deadline that nearly never passes. Here a read notes its
    deadline (``wait``) and sets the timer only when none is set. The timer is
    never due after the deadline of the read waiting when it fires (a later
    read's deadline is never earlier): it calls ``expire(reason)`` then, or
    sets itself again for that read's deadline, or, between reads, lapses.
    """

    __slots__ = ("_at", "_expire", "_handle", "_loop", "_reason")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[str], None]) -> None:
        self._loop, self._expire = loop, expire
        self._at, self._reason = math.inf, ""  # no read waiting
        self._handle: asyncio.TimerHandle | None = None

    def wait(self, at: float, reason: str) -> None:
        """A read starts waiting, until ``at`` (loop time) at most."""
        self._at, self._reason = at, reason
        if self._handle is None:
            self._handle = self._loop.call_at(at, self._due)

    def waited(self) -> None:
        """The read is over, with bytes or without."""
        self._at = math.inf

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        if self._at == math.inf:
            return  # between reads: the next one sets the timer
        if self._loop.time() >= self._at:
            self._expire(self._reason)
        else:
            self._handle = self._loop.call_at(self._at, self._due)


class UdpListener(asyncio.DatagramProtocol):
    """UDP units: one codec and session per peer address, one task per peer so a
    peer's datagrams stay in order; replies go back to the address they came from.
    A peer silent for ``idle_timeout_s`` is forgotten; at most ``MAX_PEERS`` at once."""

    MAX_PEERS = 100_000
    QUEUE = 64  # datagrams waiting per peer; more are dropped (the unit resends)

    def __init__(self, settings: ProtocolSettings, registry: Registry, pipeline: Pipeline) -> None:
        self.settings = settings
        self._registry = registry
        self._pipeline = pipeline
        self.stats = pipeline.stats
        self._transport: asyncio.DatagramTransport | None = None
        self._peers: dict[tuple[str, int], asyncio.Queue[bytes | None]] = {}  # None: forget it
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def port(self) -> int | None:
        if self._transport is None:
            return None
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.settings.host, port))

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await cancel_all(list(self._tasks))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (on Python 3.11 the selector transport does not subclass DatagramTransport)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        queue = self._peers.get(addr)
        if queue is None:
            if len(self._peers) >= self.MAX_PEERS:
                self.stats[f"datagrams_dropped.{self.name}.too_many_peers"] += 1
                return
            queue = self._peers[addr] = asyncio.Queue(self.QUEUE)
            task = asyncio.create_task(self._serve_peer(addr, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            self.stats[f"datagrams_dropped.{self.name}.backlog"] += 1

    async def _serve_peer(self, addr: tuple[str, int], queue: asyncio.Queue[bytes | None]) -> None:
        loop = asyncio.get_running_loop()
        peer = f"{addr[0]}:{addr[1]}"
        codec = _codec(self.settings, "udp")
        session = Session(self.name, peer, self._registry, self._pipeline)
        self.stats[f"udp_peers.{self.name}"] += 1

        def forget(reason: str) -> None:
            if queue.empty():  # else a datagram came as the timer fired
                queue.put_nowait(None)

        deadline = Deadline(loop, forget)
        try:
            while True:
                deadline.wait(loop.time() + self.settings.idle_timeout_s, "idle")
                try:
                    data = await queue.get()
                finally:
                    deadline.waited()
                if data is None:
                    if queue.empty():
                        return  # forgotten: its next datagram finds a new peer
                    continue
                try:
                    replies = await session.feed(codec, data)
                except ProtocolError as exc:
                    self.stats[f"datagrams_dropped.{self.name}.protocol_error"] += 1
                    log.warning(
                        "%s udp %s: %s; first bytes %s",
                        self.name,
                        peer,
                        exc,
                        data[:32].hex(),
                        extra=session.log_extra,
                    )
                    codec = _codec(self.settings, "udp")
                    continue
                except StoreUnavailable:
                    self.stats[f"datagrams_dropped.{self.name}.store_unavailable"] += 1
                    continue
                if self._transport is not None:
                    for reply in replies:
                        self._transport.sendto(reply, addr)
                if session.refused:  # an unknown unit may be registered later
                    session = Session(self.name, peer, self._registry, self._pipeline)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s udp %s: peer failed", self.name, peer, extra=session.log_extra)
        finally:
            deadline.cancel()
            self._peers.pop(addr, None)
