"""Webhooks against a real local HTTP receiver that fails, then recovers:
signatures, retries with backoff, the outbox across a restart, event type
filters, 410 Gone, network errors and a receiver that never answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tracker.server import Server
from tracker.simulate import gt06_frame, gt06_login
from tracker.webhooks import RetryPolicy

from .conftest import ADMIN_KEY, ServerFactory
from .test_position_path import register, unit_connection

pytestmark = pytest.mark.e2e

FAST = RetryPolicy(base_s=0.05, max_s=0.2)
WAIT_S = 8.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server on a free port. Per path: the statuses to
    answer in turn, then ``default[path]`` (200 when not set); "hang" never
    answers (until the receiver closes)."""

    answers: dict[str, list[int | str]] = field(default_factory=dict)
    default: dict[str, int | str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {}
            for line in head[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Request(path, headers, body, time.monotonic()))
            queued = self.answers.get(path)
            answer = queued.pop(0) if queued else self.default.get(path, 200)
            if answer == "hang":
                await self._release.wait()
                return
            text = b"ok" if answer == 200 else b"boom\n  try later"
            writer.write(
                f"HTTP/1.1 {answer} X\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n".encode()
                + text
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    it = Receiver()
    server = await asyncio.start_server(it._handle, "127.0.0.1", 0)
    it.port = server.sockets[0].getsockname()[1]
    try:
        yield it
    finally:
        it._release.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # let released handlers close their sockets


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.ports['http']}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ) as api:
        yield api


def verify(secret: str, request: Request) -> dict[str, Any]:
    """Check the Standard Webhooks signature independently; return the body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert expected in request.headers["webhook-signature"].split(" ")
    assert abs(time.time() - int(timestamp)) < 60
    assert request.headers["content-type"] == "application/json"
    body: dict[str, Any] = orjson.loads(request.body)
    return body


async def eventually(check: Callable[[], Awaitable[Any]]) -> Any:
    """Poll ``check`` until it returns something truthy (``WAIT_S`` at most)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.02)


async def create_webhook(api: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await api.post("/api/v1/webhooks", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliveries(api: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def newest_delivery(
    api: httpx.AsyncClient, webhook_id: str, when: Callable[[dict[str, Any]], bool]
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    """A check for ``eventually``: the webhook's newest delivery, once ``when`` holds."""

    async def check() -> dict[str, Any] | None:
        items = await deliveries(api, webhook_id)
        return items[0] if items and when(items[0]) else None

    return check


async def deliveries_where(
    api: httpx.AsyncClient, webhook_id: str, when: Callable[[dict[str, Any]], bool], count: int
) -> list[dict[str, Any]] | None:
    """The webhook's deliveries, once there are ``count`` and ``when`` holds for each."""
    items = await deliveries(api, webhook_id)
    return items if len(items) == count and all(when(d) for d in items) else None


async def press_sos(server: Server, api: httpx.AsyncClient, vehicle_id: str, imei: str) -> None:
    """A registered GT06 unit sends an SOS alarm: one ``sos`` event."""
    await register(api, vehicle_id, imei)
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    gps = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC9])
    gps += round(6.3 * 1_800_000).to_bytes(4, "big") + round(106.9 * 1_800_000).to_bytes(4, "big")
    gps += bytes([0]) + (0x1000 | 180).to_bytes(2, "big")  # valid, south, east
    # LBS, terminal info, voltage, GSM, alarm 01 (SOS), language 02
    alarm = gps + bytes.fromhex("0901fe0a0001000001") + bytes([0x46, 6, 4, 1, 2])
    async with unit_connection(server) as unit:
        await unit.send(gt06_login(imei))
        await unit.send(gt06_frame(0x16, alarm, 2))  # acked once stored


async def test_failing_receiver_is_retried_with_backoff_then_gets_a_signed_delivery(
    server: Server, api: httpx.AsyncClient
) -> None:
    server.webhooks.policy = FAST
    async with receiver() as hooks:
        hooks.default["/hook"] = 500
        webhook = await create_webhook(api, hooks.url("/hook"))
        assert webhook["secret"].startswith("whsec_")
        assert webhook["event_types"] is None
        await press_sos(server, api, "veh-1", "123456789012345")

        await eventually(lambda: asyncio.sleep(0, len(hooks.got("/hook")) >= 3))
        failing = await eventually(
            newest_delivery(api, webhook["id"], lambda d: d["last_status_code"] == 500)
        )
        assert failing["status"] == "pending"
        assert failing["attempts"] >= 1
        assert failing["last_error"] == "HTTP 500: boom try later"
        assert failing["delivered_at"] is None

        hooks.default["/hook"] = 200  # the receiver recovers
        done = await eventually(
            newest_delivery(api, webhook["id"], lambda d: d["status"] == "delivered")
        )

    received = hooks.got("/hook")
    assert done["attempts"] == len(received)
    assert done["last_status_code"] == 200
    assert done["last_error"] == "HTTP 500: boom try later"  # why the retries were needed
    assert done["delivered_at"] is not None
    # backoff: the gaps grow (0.05 s, 0.1 s, 0.2 s nominal, ±20 %)
    gaps = [b.at - a.at for a, b in itertools.pairwise(received)]
    assert gaps[0] >= 0.03
    assert gaps[1] >= 0.07
    bodies = [verify(webhook["secret"], r) for r in received]
    assert len({r.headers["webhook-id"] for r in received}) == 1  # receivers deduplicate
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["type"] == "sos"
    assert bodies[0]["data"]["vehicle_id"] == "veh-1"
    assert bodies[0]["data"]["id"] == received[0].headers["webhook-id"]
    assert bodies[0]["data"]["seq"] == done["event_seq"]
    assert bodies[0]["timestamp"] == bodies[0]["data"]["detected_at"]
    stats = (await api.get("/api/v1/server")).json()["stats"]
    assert stats["webhook_deliveries.delivered"] == 1
    assert stats["webhook_attempts_failed"] == len(received) - 1


async def test_pending_deliveries_survive_a_restart(make_server: ServerFactory) -> None:
    first = await make_server()
    first.webhooks.policy = RetryPolicy(base_s=0.5, max_s=0.5)
    async with receiver() as hooks:
        hooks.default["/hook"] = 503
        async with client(first) as api:
            webhook = await create_webhook(api, hooks.url("/hook"))
            await press_sos(first, api, "veh-1", "123456789012345")
            await eventually(
                newest_delivery(api, webhook["id"], lambda d: d["last_status_code"] == 503)
            )
        await first.stop()
        count = len(hooks.got("/hook"))
        hooks.default["/hook"] = 200

        second = await make_server()  # the same database
        async with client(second) as api:
            done = await eventually(
                newest_delivery(api, webhook["id"], lambda d: d["status"] == "delivered")
            )
    received = hooks.got("/hook")
    assert len(received) == count + 1
    assert done["attempts"] == count + 1
    assert received[-1].headers["webhook-id"] == received[0].headers["webhook-id"]
    verify(webhook["secret"], received[-1])


async def test_event_types_gone_and_network_errors(server: Server, api: httpx.AsyncClient) -> None:
    server.webhooks.policy = FAST
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    async with receiver() as hooks:
        hooks.default["/gone"] = 410
        gone = await create_webhook(api, hooks.url("/gone"), event_types=["sos"])
        other = await create_webhook(api, hooks.url("/other"), event_types=["power_cut"])
        every = await create_webhook(api, hooks.url("/all"), secret=secret)
        dead = await create_webhook(api, dead_url, event_types=["sos", "power_cut"])
        assert every["secret"] == secret
        await press_sos(server, api, "veh-1", "123456789012345")

        failed = await eventually(
            newest_delivery(api, gone["id"], lambda d: d["status"] == "failed")
        )
        assert failed["attempts"] == 1  # 410: the receiver unsubscribed, no retries
        assert failed["last_status_code"] == 410
        await eventually(newest_delivery(api, every["id"], lambda d: d["status"] == "delivered"))
        unreachable = await eventually(newest_delivery(api, dead["id"], lambda d: d["attempts"]))
        assert unreachable["status"] == "pending"
        assert unreachable["last_status_code"] is None
        assert unreachable["last_error"].startswith("ConnectError: ")
        assert await deliveries(api, other["id"]) == []
        await asyncio.sleep(0.2)
    assert len(hooks.got("/gone")) == 1
    assert hooks.got("/other") == []
    assert verify(secret, hooks.got("/all")[0])["type"] == "sos"


async def test_a_receiver_that_never_answers_does_not_hold_up_others(
    server: Server, api: httpx.AsyncClient
) -> None:
    server.webhooks.policy = RetryPolicy(base_s=30, max_s=30)
    server.webhooks.timeout_s = 2.0
    async with receiver() as hooks:
        hooks.default["/hang"] = "hang"
        hanging = await create_webhook(api, hooks.url("/hang"))
        healthy = await create_webhook(api, hooks.url("/ok"))
        for n in range(4):
            await press_sos(server, api, f"veh-{n}", f"86000000000000{n}")
        await eventually(lambda: asyncio.sleep(0, len(hooks.got("/ok")) == 4))
        await eventually(lambda: asyncio.sleep(0, len(hooks.got("/hang")) == 2))
        # delivered while the hanging attempts are still waiting for an answer
        assert all(d["attempts"] == 0 for d in await deliveries(api, hanging["id"]))

        # they time out; the others wait for the receiver's retry instead of timing out too
        waiting = await eventually(
            lambda: deliveries_where(api, hanging["id"], lambda d: d["last_error"] is not None, 4)
        )
    assert all(d["status"] == "pending" for d in waiting)
    tried = [d for d in waiting if d["attempts"] == 1]
    assert len(tried) == 2
    assert {d["last_error"] for d in tried} == {"no response within 2 s"}
    for d in waiting:
        if d["attempts"] == 0:
            assert (
                d["last_error"] == "not sent yet: the receiver is failing (no response within 2 s)"
            )
    assert len(hooks.got("/hang")) == 2  # at most two in flight to one receiver
    assert all(d["status"] == "delivered" for d in await deliveries(api, healthy["id"]))


async def test_gives_up_after_the_retry_window(server: Server, api: httpx.AsyncClient) -> None:
    # production: 25 h (retries at 10 s, 20 s, ... then hourly); here 0.5 s
    server.webhooks.policy = RetryPolicy(
        base_s=0.05, max_s=0.1, give_up_after=timedelta(seconds=0.5)
    )
    async with receiver() as hooks:
        hooks.default["/hook"] = 502
        webhook = await create_webhook(api, hooks.url("/hook"), event_types=["sos"])
        await press_sos(server, api, "veh-1", "123456789012345")
        failed = await eventually(
            newest_delivery(api, webhook["id"], lambda d: d["status"] == "failed")
        )
        count = len(hooks.got("/hook"))
        await asyncio.sleep(0.3)
    assert failed["attempts"] == count >= 3
    assert failed["last_status_code"] == 502
    assert len(hooks.got("/hook")) == count  # no more attempts


async def test_webhook_api(api: httpx.AsyncClient) -> None:
    for body, words in [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "example.com/hooks"}, "http:// or https://"),
        ({"url": "https://"}, "http:// or https://"),
        ({"url": "https://example.com/x", "secret": "hunter2"}, "whsec_"),
        ({"url": "https://example.com/x", "secret": "whsec_c2hvcnQ="}, "24 to 64"),
        ({"url": "https://example.com/x", "event_types": []}, "event_types"),
        ({"url": "https://example.com/x", "event_types": ["SOS!"]}, "event_types"),
        ({}, "url"),
    ]:
        response = await api.post("/api/v1/webhooks", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], (body, response.json())

    created = await create_webhook(
        api, "https://example.com/hooks?x=1", event_types=["sos", "power_cut", "sos"]
    )
    assert created["id"].startswith("wh_")
    assert created["event_types"] == ["sos", "power_cut"]
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 24
    shown = {k: v for k, v in created.items() if k != "secret"}
    assert (await api.get(f"/api/v1/webhooks/{created['id']}")).json() == shown
    assert (await api.get("/api/v1/webhooks")).json() == {"items": [shown]}
    assert await deliveries(api, created["id"]) == []

    assert (await api.delete(f"/api/v1/webhooks/{created['id']}")).status_code == 204
    for response in [
        await api.get(f"/api/v1/webhooks/{created['id']}"),
        await api.delete(f"/api/v1/webhooks/{created['id']}"),
        await api.get(f"/api/v1/webhooks/{created['id']}/deliveries"),
    ]:
        assert response.status_code == 404
        assert created["id"] in response.json()["detail"]
    assert (await api.get("/api/v1/webhooks")).json() == {"items": []}
    async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
        assert (await anonymous.get("/api/v1/webhooks")).status_code == 401
