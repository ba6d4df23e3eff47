"""The hub's own frames: built once per tick and shared, parsed by a real
client (the ``websockets`` sans-I/O protocol, with and without
permessage-deflate), filtered per subscriber, coalesced for one that is behind."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from tracker import live
from tracker.live import Hub, Sink, deflated_frames


class Transport(asyncio.WriteTransport):
    """Collects what the hub writes; says how full its buffer is."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def connection(deflate: bool) -> tuple[ClientProtocol, ServerProtocol, Sink, Transport]:
    """A client and a server past the opening handshake, negotiated as uvicorn
    does (permessage-deflate, server window 12 bits), and the server's sink."""
    client = ClientProtocol(
        parse_uri("ws://tracker/api/v1/live"),
        extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
    )
    server = ServerProtocol(
        extensions=[
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        ]
    )
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    bits = None
    for extension in server.extensions:
        assert isinstance(extension, PerMessageDeflate)
        bits = extension.local_max_window_bits
    transport = Transport()
    return client, server, Sink(transport, bits), transport


def received(client: ClientProtocol, data: bytes) -> list[Any]:
    client.receive_data(data)
    frames = [e for e in client.events_received() if isinstance(e, Frame)]
    assert all(f.opcode is Opcode.TEXT for f in frames)
    return [orjson.loads(f.data) for f in frames]


def fix(n: int, unit: str = "u1") -> dict[str, Any]:
    return {"type": "position", "unique_id": unit, "n": n, "text": "ünïcode ✓" * (n % 3)}


@pytest.mark.parametrize("deflate", [False, True])
async def test_frames_are_what_a_real_client_reads(deflate: bool) -> None:
    client, server, sink, transport = connection(deflate)
    assert (sink.deflate_bits is not None) is deflate
    hub = Hub()
    subscriber = hub.subscribe(None)
    # the snapshot goes through the connection's own (context-keeping) compressor
    server.send_text(orjson.dumps({"type": "snapshot", "positions": []}))
    assert received(client, b"".join(server.data_to_send()))[0]["type"] == "snapshot"
    assert hub.attach(subscriber, sink)
    for tick in range(3):
        for n in range(200):
            hub.publish("car-1", f"u{n % 7}", fix(tick * 1000 + n, f"u{n % 7}"))
        hub.flush()
        if tick == 1:  # a ping between ticks, from the connection itself
            server.send_ping(b"ping")
            client.receive_data(b"".join(server.data_to_send()))
            assert [e.opcode for e in client.events_received()] == [Opcode.PING]  # type: ignore[union-attr]
    server.send_text(b'{"after": true}')  # the connection's compressor still agrees
    got = [m for data in transport.writes for m in received(client, data)]
    assert [m["n"] for m in got] == [t * 1000 + n for t in range(3) for n in range(200)]
    assert got[5]["text"] == "ünïcode ✓" * 2
    assert received(client, b"".join(server.data_to_send())) == [{"after": True}]
    assert len(transport.writes) == 3  # one write per tick
    assert hub.stats["live.sent"] == 600
    if deflate:  # neighbours compress well against each other
        assert sum(map(len, transport.writes)) < 600 * len(orjson.dumps(fix(1))) / 3


async def test_one_encoding_per_tick_shared_by_subscribers() -> None:
    hub = Hub()
    sinks = [connection(True)[2] for _ in range(3)] + [connection(False)[2]]
    for sink in sinks:
        hub.attach(hub.subscribe(None), sink)
    hub.flush()  # caught up: live from now on
    built = 0

    def body() -> dict[str, Any]:
        nonlocal built
        built += 1
        return fix(1)

    hub.publish("car-1", "u1", body)
    hub.flush()
    writes = [s.transport.writes[-1] for s in sinks]  # type: ignore[attr-defined]
    assert writes[0] is writes[1] is writes[2]  # the same bytes object for every deflate client
    assert writes[3] != writes[0]  # plain frames for the one without deflate
    assert built == 1


async def test_frames_shared_by_many_are_compressed_harder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "THOROUGH_FROM", 3)
    hub = Hub()
    crowd = [connection(True) for _ in range(3)]  # all share one filter: thorough
    alone = connection(True)  # its own filter: quick
    for _, _, sink, _ in crowd:
        hub.attach(hub.subscribe(None), sink)
    hub.attach(hub.subscribe(frozenset({"car-1"})), alone[2])
    hub.flush()  # caught up: live from now on
    for n in range(200):
        hub.publish("car-1", f"u{n % 7}", fix(n, f"u{n % 7}"))
    hub.flush()
    for (client, _, _, transport), level in [*((c, live.THOROUGH) for c in crowd), (alone, 1)]:
        [data] = transport.writes
        got = received(client, data)
        assert [m["n"] for m in got] == list(range(200))
        assert data == deflated_frames([orjson.dumps(m) for m in got], 12, level)
    assert len(crowd[0][3].writes[0]) < 0.9 * len(alone[3].writes[0])


async def test_subscriber_gets_only_its_vehicles_in_order() -> None:
    hub = Hub()
    client, _, sink, transport = connection(True)
    other_client, _, other_sink, other_transport = connection(True)
    hub.attach(hub.subscribe(frozenset({"car-2", "car-3"})), sink)
    hub.attach(hub.subscribe(frozenset({"car-1"})), other_sink)
    hub.flush()
    for n in range(30):
        hub.publish(f"car-{n % 4}", f"u{n % 4}", fix(n, f"u{n % 4}"))
    hub.flush()
    got = [m["n"] for data in transport.writes for m in received(client, data)]
    assert got == [n for n in range(30) if n % 4 in (2, 3)]
    other = [m["n"] for data in other_transport.writes for m in received(other_client, data)]
    assert other == [n for n in range(30) if n % 4 == 1]


def test_nothing_is_built_for_a_vehicle_nobody_watches() -> None:
    hub = Hub()
    hub.subscribe(frozenset({"car-1"}))
    seen = hub.cursor
    calls = 0

    def body() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return fix(7)

    hub.publish("car-2", "u2", body)
    assert calls == 0
    assert [orjson.loads(m)["n"] for m in hub.missed(seen, None) or []] == [7]  # built when asked
    assert calls == 1


async def test_slow_subscriber_gets_newest_per_unit_then_live_frames_again() -> None:
    hub = Hub(high_water=1000, low_water=100)
    client, _, sink, transport = connection(True)
    subscriber = hub.subscribe(None)
    hub.attach(subscriber, sink)
    hub.flush()
    hub.publish("car-1", "u1", fix(0))
    hub.flush()
    transport.buffered = 5000  # the client stopped reading
    for n in range(1, 100):
        hub.publish("car-1", f"u{n % 3}", fix(n, f"u{n % 3}"))
        hub.publish(
            "car-2", "event:1", {"type": "event", "n": n}, latest=False
        ) if n == 50 else None
        if n % 10 == 0:
            hub.flush()
    hub.flush()
    assert len(transport.writes) == 1  # nothing more while it is behind
    assert hub.backlog() == {"bytes": 5000, "messages": 4, "behind": 1}
    transport.buffered = 50  # drained
    hub.flush()  # with nothing new published, the hub still comes back for it
    got = [m["n"] for data in transport.writes for m in received(client, data)]
    assert got == [0, 50, 97, 98, 99]  # the event first, then the newest of each unit
    assert subscriber.coalesced == 99 - 3
    assert hub.stats["live.coalesced"] == 96
    assert hub.stats["live.fell_behind"] == 1
    hub.publish("car-1", "u1", fix(100))
    hub.flush()
    assert [m["n"] for m in received(client, transport.writes[-1])] == [100]


async def test_hub_comes_back_for_a_subscriber_behind_by_itself() -> None:
    hub = Hub(tick_s=0.001, high_water=1000, low_water=100)
    _, _, sink, transport = connection(False)
    subscriber = hub.subscribe(None)
    hub.attach(subscriber, sink)
    transport.buffered = 5000
    hub.publish("car-1", "u1", fix(1))
    await asyncio.sleep(0.02)
    assert transport.writes == []
    transport.buffered = 0
    await asyncio.sleep(0.02)
    assert len(transport.writes) == 1
    assert subscriber.live


async def test_a_fresh_subscriber_gets_only_what_came_after_it() -> None:
    hub = Hub()
    hub.subscribe(None)  # someone else, so the first message waits in the tick
    hub.publish("car-1", "u1", fix(1))
    client, _, sink, transport = connection(False)
    subscriber = hub.subscribe(None)  # its snapshot or cursor covers the first
    hub.publish("car-1", "u1", fix(2))
    hub.attach(subscriber, sink)
    hub.flush()
    assert [m["n"] for m in received(client, b"".join(transport.writes))] == [2]


async def test_closed_or_unsubscribed_sockets_get_nothing() -> None:
    hub = Hub()
    _, _, sink, transport = connection(False)
    _, _, gone_sink, gone = connection(False)
    kicked = hub.subscribe(None)
    hub.attach(kicked, sink)
    hub.attach(hub.subscribe(None), gone_sink)
    hub.flush()
    gone.closing = True
    hub.unsubscribe(kicked)  # what the route does before sending the close frame
    hub.publish("car-1", "u1", fix(1))
    hub.flush()
    assert transport.writes == gone.writes == []
    assert hub.subscriber_count == 1


async def test_narrowed_subscriber_forgets_what_it_may_no_longer_see() -> None:
    hub = Hub()
    subscriber = hub.subscribe(frozenset({"car-1", "car-2"}))
    hub.publish("car-1", "u1", fix(1, "u1"))
    hub.publish("car-2", "u2", fix(2, "u2"))
    hub.flush()
    hub.refilter(subscriber, frozenset({"car-2"}))
    hub.publish("car-1", "u1", fix(3, "u1"))
    hub.flush()
    assert [orjson.loads(m)["n"] for m in await subscriber.next_batch()] == [2]
