"""In-process pub/sub for live positions and events: ``publish`` never awaits.

Fan-out is the cost that matters: 1,000 subscribers to every vehicle at
10,000 positions/s are 10 million websocket messages a second, which no
per-message send (a ``send_text`` each, a ``transport.write`` each) can do in
Python. So the hub works in ticks of ``tick_s``:

- ``publish`` only files the message (and nothing at all is built while
  nobody watches its vehicle: the body may be a function, called on demand);
- once per tick each message is encoded once (orjson), and the websocket
  frames of the whole tick are built once per distinct filter and encoding;
- each subscriber that keeps up gets that one shared buffer with one
  ``transport.write``: still one websocket message per position.

Frames go out compressed when the client negotiated permessage-deflate with
context takeover (browsers and ``websockets`` do): one fresh deflate stream per
tick, shared by every subscriber that gets the whole tick. Its messages refer
only to each other, never to what the client's decompressor saw before, so the
same bytes are right for every such subscriber (frames without RSV1, and the
connection's own compressed messages before them, stay valid beside them:
RFC 7692 lets a sender compress some messages and not others). A GT06
position shrinks from about 400 bytes to 40-75 against its neighbours (the
level depends on how many share the frames, see THOROUGH_FROM), and bytes
through the kernel, not Python, are what the fan-out costs once it is shared.

A subscriber whose transport buffer passes ``high_water`` is behind: it keeps
only the newest position per unit (coalesced), so its backlog is bounded by
the number of units it watches, never by the rate of positions. Once its
buffer drains to ``low_water`` it gets what it kept (uncompressed: built once
per message and shared, no per-subscriber compression) and the shared frames
again. Late replays of old buffered fixes and events go into a small bounded
queue; when it overflows, the oldest are dropped (counted).

Subscribers without a ``Sink`` (another ASGI server than ours) are served the
same coalescing way through ``next_batch``, one ``send_text`` per message.

Every message carries a ``cursor``. The hub keeps the last ``window``
messages, so a client that reconnects with the cursor of the last message it
saw gets what it missed, then live data; a cursor from before the window (or
from before a restart: cursors name the process) gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

import orjson
from zlib_ng import zlib_ng

ALL = "*"
TICK_S = 0.025  # delivery tick: the wait a position may add; longer ticks, fewer writes
HIGH_WATER = 256 * 1024  # bytes waiting in a subscriber's transport: it is behind
LOW_WATER = 64 * 1024  # ...drained to this: it gets what it kept, then live frames again

Body = dict[str, Any] | Callable[[], dict[str, Any]]

# RFC 6455 5.2: FIN + opcode 1 (text); RSV1 marks a compressed message (RFC 7692 6).
TEXT, TEXT_DEFLATED = 0x81, 0xC1
SYNC_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.1: the sender removes it from each message
# zlib-ng's level 1 ("quick": static codes, no lazy matching) with a sync flush a
# message: 1.1 us for a 400-byte position where the standard zlib took 6.9 at
# level 6 and 4.2 even at level 1, for 74 bytes against 58 in a tick of 250.
QUICK, THOROUGH = 1, 9
# Frames shared by this many subscribers get zlib-ng's level 9: 6 us more per
# message, once per tick, for about 12 bytes less per message to every one of
# them, sent by the server and received by the client (level 6 saves only 4).
# With 1,000 subscribers that pays (bench.live: 40 bytes a message against 52,
# the subscribers' CPU 5.8 s against 6.8); a dashboard or two watching
# everything keeps the quick level, where the bytes are cheap and the CPU not.
THOROUGH_FROM = 256


def frame_header(first: int, size: int) -> bytes:
    """A server-to-client frame header: unmasked (RFC 6455 5.1)."""
    if size < 126:
        return bytes((first, size))
    if size < 1 << 16:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


def deflated_frames(payloads: Iterable[bytes], window_bits: int, level: int = QUICK) -> bytes:
    """Text frames compressed with one fresh deflate stream: each message may
    refer to the ones before it in this call, and to nothing earlier."""
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -window_bits, 8)
    parts: list[bytes] = []
    for payload in payloads:
        data = compressor.compress(payload) + compressor.flush(zlib_ng.Z_SYNC_FLUSH)
        data = data[:-4]  # always SYNC_TAIL after a sync flush
        parts += (frame_header(TEXT_DEFLATED, len(data)), data)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Sink:
    """A subscriber's own websocket transport, which the hub writes frames to.

    ``deflate_bits``: the server's window when the connection negotiated
    permessage-deflate with context takeover (frames go out compressed); None
    for plain frames. The writer guarantees nothing else sends data frames on
    the connection once attached (pings and the close frame are fine)."""

    transport: asyncio.WriteTransport
    deflate_bits: int | None = None


class Message:
    """One published message, encoded at most once, when first needed."""

    __slots__ = ("_body", "_boot", "_frame", "_payload", "key", "latest", "seq", "vehicle_id")

    def __init__(
        self, seq: int, vehicle_id: str, key: str, latest: bool, body: Body, boot: str
    ) -> None:
        self.seq, self.vehicle_id, self.key, self.latest = seq, vehicle_id, key, latest
        self._body: Body | None = body
        self._boot = boot
        self._payload: bytes | None = None
        self._frame: bytes | None = None

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            body = self._body() if callable(self._body) else self._body
            assert body is not None
            body["cursor"] = f"{self._boot}-{self.seq}"
            self._payload, self._body = orjson.dumps(body), None
        return self._payload

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def frame(self) -> bytes:
        """The uncompressed websocket frame, shared by whoever needs it."""
        if self._frame is None:
            payload = self.payload
            self._frame = frame_header(TEXT, len(payload)) + payload
        return self._frame


class Subscriber:
    """One websocket's view of the hub: live (its sink gets the shared frames)
    or queued (newest per unit, plus a bounded queue of replays and events)."""

    def __init__(
        self,
        vehicle_ids: frozenset[str] | None,
        since: int,
        stats: Counter[str],
        *,
        max_extra: int = 256,
    ) -> None:
        self.vehicle_ids = vehicle_ids  # None: every vehicle
        self.since = since  # messages up to this one came before it subscribed
        self.sink: Sink | None = None
        self.live = False  # sink attached and caught up
        self._latest: dict[str, Message] = {}
        self._extra: deque[Message] = deque(maxlen=max_extra)
        self._ready = asyncio.Event()
        self._stats = stats
        self.sent = self.coalesced = self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._latest) + len(self._extra)

    def queue(self, newest: dict[str, Message], extra: list[Message], superseded: int) -> None:
        """Keep a tick's messages: ``newest`` per key (``superseded`` others of
        the tick were replaced by them), and the replays/events in ``extra``."""
        kept = len(self._latest)
        self._latest.update(newest)
        coalesced = superseded + kept + len(newest) - len(self._latest)
        if coalesced:
            self.coalesced += coalesced
            self._stats["live.coalesced"] += coalesced
        if extra:
            dropped = len(self._extra) + len(extra) - (self._extra.maxlen or 0)
            if dropped > 0:
                self.dropped += dropped
                self._stats["live.dropped"] += dropped
            self._extra.extend(extra)
        self._ready.set()

    def take(self) -> list[Message]:
        """All it kept, replays first."""
        batch = [*self._extra, *self._latest.values()]
        self._extra.clear()
        self._latest.clear()
        self._ready.clear()
        self.sent += len(batch)
        return batch

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop what it kept for vehicles it may no longer watch."""
        self._latest = {k: m for k, m in self._latest.items() if keep(m.vehicle_id)}
        extra = [m for m in self._extra if keep(m.vehicle_id)]
        self._extra.clear()
        self._extra.extend(extra)

    async def next_batch(self) -> list[str]:
        """Without a sink: wait for messages; return all pending ones, replays first."""
        while not self.pending:
            await self._ready.wait()
            self._ready.clear()
        batch = self.take()
        self._stats["live.sent"] += len(batch)
        return [message.text for message in batch]


Split = tuple[dict[str, Message], list[Message], int]
Share = tuple[frozenset[str] | None, int | None]  # a filter and a compression window


def split(messages: list[Message]) -> Split:
    """A tick's messages as a queued subscriber keeps them: the newest per key,
    the replays and events, and how many were superseded within the tick."""
    newest: dict[str, Message] = {}
    extra: list[Message] = []
    for message in messages:
        if message.latest:
            newest[message.key] = message
        else:
            extra.append(message)
    return newest, extra, len(messages) - len(newest) - len(extra)


class Hub:
    """Subscribers by what they watch, the current tick, and the replay window."""

    def __init__(
        self,
        *,
        window: int = 10_000,
        tick_s: float = TICK_S,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        stats: Counter[str] | None = None,
    ) -> None:
        """``stats``: where ``live.*`` counters go (the server's, for /metrics)."""
        self.tick_s, self.high_water, self.low_water = tick_s, high_water, low_water
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._subscribers: set[Subscriber] = set()
        self._everything = 0  # subscribers to every vehicle
        self._by_vehicle: dict[str, set[Subscriber]] = {}
        self._boot = secrets.token_hex(4)
        self._seq = 0
        self._recent: deque[Message] = deque(maxlen=window)
        self._tick: list[Message] = []  # published since the last flush, for someone
        self._timer: asyncio.TimerHandle | None = None

    def subscribe(self, vehicle_ids: frozenset[str] | None) -> Subscriber:
        subscriber = Subscriber(vehicle_ids, self._seq, self.stats)
        self._subscribers.add(subscriber)
        self._index(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivery at once (before the caller sends a close frame)."""
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            self._unindex(subscriber)
        subscriber.sink, subscriber.live = None, False

    def attach(self, subscriber: Subscriber, sink: Sink) -> bool:
        """From now on the hub writes this subscriber's frames to ``sink``
        itself, starting with what it kept since subscribing."""
        if subscriber not in self._subscribers:
            return False
        subscriber.sink = sink
        self._schedule()
        return True

    def refilter(self, subscriber: Subscriber, vehicle_ids: frozenset[str] | None) -> None:
        """Watch other vehicles from now on, and forget what was kept for the others."""
        subscribed = subscriber in self._subscribers
        if subscribed:
            self._unindex(subscriber)
        subscriber.vehicle_ids = vehicle_ids
        if subscribed:
            self._index(subscriber)
        if vehicle_ids is not None:
            subscriber.forget(vehicle_ids.__contains__)

    def _index(self, subscriber: Subscriber) -> None:
        if subscriber.vehicle_ids is None:
            self._everything += 1
        else:
            for vehicle_id in subscriber.vehicle_ids:
                self._by_vehicle.setdefault(vehicle_id, set()).add(subscriber)

    def _unindex(self, subscriber: Subscriber) -> None:
        if subscriber.vehicle_ids is None:
            self._everything -= 1
            return
        for vehicle_id in subscriber.vehicle_ids:
            watchers = self._by_vehicle.get(vehicle_id)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._by_vehicle[vehicle_id]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def cursor(self) -> str:
        """The cursor of the newest message (what a fresh client has seen)."""
        return f"{self._boot}-{self._seq}"

    def backlog(self) -> dict[str, int]:
        """What waits: bytes in subscribers' transports, messages kept by those
        behind (or waiting for the next tick), and how many are behind."""
        buffered, kept, behind = 0, len(self._tick), 0
        for subscriber in self._subscribers:
            if subscriber.sink is not None and not subscriber.sink.transport.is_closing():
                buffered += subscriber.sink.transport.get_write_buffer_size()
            kept += subscriber.pending
            behind += subscriber.sink is not None and not subscriber.live
        return {"bytes": buffered, "messages": kept, "behind": behind}

    def publish(self, vehicle_id: str, key: str, body: Body, *, latest: bool = True) -> None:
        """File ``body`` (a dict, or a function making it, called only if someone
        needs it) for the vehicle's watchers; the next tick delivers it. Messages
        with the same ``key`` (a unit's positions) replace each other while a
        subscriber is behind."""
        self._seq += 1
        message = Message(self._seq, vehicle_id, key, latest, body, self._boot)
        self._recent.append(message)
        self.stats["live.published"] += 1
        if self._everything or vehicle_id in self._by_vehicle:
            self._tick.append(message)
            if self._timer is None:
                self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # published outside an event loop: nobody awaits; deliver now
            self.flush()
            return
        self._timer = loop.call_later(self.tick_s, self.flush)

    def flush(self) -> None:
        """Deliver this tick's messages (the timer calls it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tick = _Tick(self._tick, self._sharing())
        self._tick = []
        sent = sent_bytes = fell_behind = 0
        behind = False
        for subscriber in tuple(self._subscribers):
            ids = subscriber.vehicle_ids
            messages = tick.select(ids)
            sink = subscriber.sink
            if subscriber.live and sink is not None:  # the common case: one shared write
                transport = sink.transport
                if not messages or transport.is_closing():
                    continue
                if transport.get_write_buffer_size() <= self.high_water:
                    data = tick.frames(ids, sink.deflate_bits)
                    transport.write(data)
                    subscriber.sent += len(messages)
                    sent += len(messages)
                    sent_bytes += len(data)
                    continue
                subscriber.live = False  # behind: keep the newest per unit instead
                fell_behind += 1
            fresh = bool(messages) and messages[0].seq <= subscriber.since
            if fresh:  # its first tick: what came before it is in its snapshot
                messages = [m for m in messages if m.seq > subscriber.since]
            if sink is not None and not sink.transport.is_closing():
                if sink.transport.get_write_buffer_size() <= self.low_water:
                    # caught up (or just attached): what it kept, this tick, then live
                    kept = subscriber.take()
                    parts = [message.frame for message in kept]
                    if messages:
                        bits = sink.deflate_bits
                        parts.append(
                            self._frames(messages, bits) if fresh else tick.frames(ids, bits)
                        )
                    data = b"".join(parts)
                    if data:
                        sink.transport.write(data)
                    subscriber.sent += len(messages)
                    sent += len(kept) + len(messages)
                    sent_bytes += len(data)
                    subscriber.live = True
                    continue
                behind = True
            elif sink is not None:
                continue  # closing: the route unsubscribes it
            if messages:
                subscriber.queue(*(split(messages) if fresh else tick.split(ids)))
        stats = self.stats
        stats["live.sent"] += sent
        stats["live.sent_bytes"] += sent_bytes
        stats["live.fell_behind"] += fell_behind
        if behind:  # come back for them even if nothing more is published
            self._schedule()

    def _sharing(self) -> Counter[Share]:
        """How many live subscribers share each filter and compression."""
        return Counter(
            (s.vehicle_ids, s.sink.deflate_bits)
            for s in self._subscribers
            if s.live and s.sink is not None and s.sink.deflate_bits is not None
        )

    @staticmethod
    def _frames(messages: list[Message], deflate_bits: int | None, level: int = QUICK) -> bytes:
        if deflate_bits is None:
            parts: list[bytes] = []
            for message in messages:
                payload = message.payload
                parts += (frame_header(TEXT, len(payload)), payload)
            return b"".join(parts)
        payloads = (message.payload for message in messages)
        return deflated_frames(payloads, deflate_bits, level)

    def missed(self, cursor: str, vehicle_ids: frozenset[str] | None) -> list[str] | None:
        """Messages after ``cursor`` for these vehicles, or None when the cursor
        is unknown or older than the window (the client needs a snapshot)."""
        boot, _, seq_text = cursor.partition("-")
        if boot != self._boot or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self._seq or (self._recent and seq < self._recent[0].seq - 1):
            return None
        return [
            message.text
            for message in self._recent
            if message.seq > seq and (vehicle_ids is None or message.vehicle_id in vehicle_ids)
        ]


class _Tick:
    """One tick's messages: selected, split and framed at most once per filter
    (and encoding), however many subscribers share that filter."""

    def __init__(self, messages: list[Message], sharing: Counter[Share]) -> None:
        self._selections: dict[frozenset[str] | None, list[Message]] = {None: messages}
        self._by_vehicle: dict[str, list[Message]] | None = None
        self._splits: dict[frozenset[str] | None, Split] = {}
        self._frames: dict[Share, bytes] = {}
        self._sharing = sharing

    def select(self, ids: frozenset[str] | None) -> list[Message]:
        messages = self._selections.get(ids)
        if messages is None:
            if self._by_vehicle is None:
                self._by_vehicle = {}
                for message in self._selections[None]:
                    self._by_vehicle.setdefault(message.vehicle_id, []).append(message)
            messages = self._selections[ids] = _select(self._by_vehicle, ids) if ids else []
        return messages

    def split(self, ids: frozenset[str] | None) -> Split:
        if ids not in self._splits:
            self._splits[ids] = split(self.select(ids))
        return self._splits[ids]

    def frames(self, ids: frozenset[str] | None, deflate_bits: int | None) -> bytes:
        share = ids, deflate_bits
        data = self._frames.get(share)
        if data is None:
            level = THOROUGH if self._sharing[share] >= THOROUGH_FROM else QUICK
            data = self._frames[share] = Hub._frames(self.select(ids), deflate_bits, level)
        return data


def _select(by_vehicle: dict[str, list[Message]], ids: frozenset[str]) -> list[Message]:
    """A tick's messages for these vehicles, in publishing order."""
    if len(ids) <= len(by_vehicle):
        hits = [by_vehicle[v] for v in ids if v in by_vehicle]
    else:
        hits = [messages for v, messages in by_vehicle.items() if v in ids]
    if len(hits) <= 1:
        return hits[0] if hits else []
    return sorted(chain.from_iterable(hits), key=attrgetter("seq"))
