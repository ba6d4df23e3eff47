"""``GET /metrics`` on a real server: a GT06 unit's positions, drops, batches,
acknowledgements and connections show up as Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

import tracker
from tracker.server import Server
from tracker.simulate import gt06_location

from .conftest import ADMIN_KEY, ServerFactory
from .test_position_path import LOGIN_FRAME, LOGIN_REPLY, T0, ack, register, unit_connection

pytestmark = pytest.mark.e2e


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of ``/metrics``: (sample name, sorted labels) -> value."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, sample: str, /, **labels: str) -> float:
    return samples[(sample, tuple(sorted(labels.items())))]


async def test_a_units_positions_show_in_metrics(
    server: Server, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await register(api)
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
        invalid = gt06_location(T0, 11.0, 21.0, serial=3, valid=False)
        assert await unit.send(invalid) == ack(0x22, 3)  # dropped, but acknowledged
        samples = await scrape(api)
        assert value(samples, "tracker_connections_open", protocol="gt06") == 1
        assert value(samples, "tracker_connections_open", protocol="h02") == 0

    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["gt06"])
    writer.write(bytes(range(256)) * 64)  # nothing that frames
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed
    writer.close()
    server.stats["something_new.x"] += 3
    for _ in range(100):  # the rules take committed rows at their next tick
        if server.stats["rule_evaluations"]:
            break
        await asyncio.sleep(0.01)

    samples = await scrape(api)
    assert value(samples, "tracker_positions_in_total") == 1
    assert value(samples, "tracker_positions_stored_total") == 1
    assert value(samples, "tracker_positions_dropped_total", reason="invalid_fix") == 1
    assert value(samples, "tracker_positions_decoded_total", protocol="gt06") == 2
    assert value(samples, "tracker_batch_rows_count") >= 1
    assert value(samples, "tracker_batch_rows_sum") == 1
    assert value(samples, "tracker_batch_commit_seconds_count") >= 1
    assert value(samples, "tracker_batch_commit_seconds_sum") > 0
    # the position's ack only: the login and the dropped fix committed nothing
    assert value(samples, "tracker_ack_latency_seconds_count", protocol="gt06") == 1
    assert value(samples, "tracker_connections_accepted_total", protocol="gt06") == 2
    rejected = value(
        samples, "tracker_connections_rejected_total", protocol="gt06", reason="protocol_error"
    )
    assert rejected == 1
    assert value(samples, "tracker_rule_evaluations_total") == 1
    assert value(samples, "tracker_counter_total", name="something_new.x") == 3
    assert value(samples, "tracker_store_up") == 1
    assert value(samples, "tracker_live_subscribers") == 0
    assert value(samples, "tracker_info", version=tracker.__version__, store=server.store.kind) == 1
    # keys are never logged by the server, not even at DEBUG, nor when in a URL
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?token={ADMIN_KEY}"
    async with connect(url) as ws:
        await ws.send('{"subscribe": ["veh-1"]}')
        assert '"snapshot"' in await asyncio.wait_for(ws.recv(), 5)
    ours = [r for r in caplog.records if r.name.startswith(("tracker", "uvicorn"))]
    assert ours  # the refused garbage connection, at least
    assert not [r for r in ours if ADMIN_KEY in r.getMessage() or ADMIN_KEY in str(r.__dict__)]


async def test_a_busy_event_loop_shows_as_lag(server: Server, api: httpx.AsyncClient) -> None:
    def over_100ms(samples: Samples) -> float:
        within = value(samples, "tracker_event_loop_lag_seconds_bucket", le="0.1")
        return value(samples, "tracker_event_loop_lag_seconds_count") - within

    before = await scrape(api)
    time.sleep(0.4)  # noqa: ASYNC251  # the server shares this loop: all of it waits
    for _ in range(50):
        after = await scrape(api)
        if over_100ms(after) > over_100ms(before):
            break
        await asyncio.sleep(0.02)
    assert over_100ms(after) == over_100ms(before) + 1
    assert value(after, "tracker_event_loop_lag_seconds_sum") >= 0.25


async def test_store_up_follows_the_pipeline(
    server: Server, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = await scrape(api)
    assert value(samples, "tracker_store_up") == 1
    assert value(samples, "tracker_pending_rows") == 0

    async def unreachable() -> None:
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(server.store, "ping", unreachable)  # an idle probe agrees
    server.pipeline.health.healthy = False  # as after a failed write or ping
    assert value(await scrape(api), "tracker_store_up") == 0


async def test_metrics_token_when_set(server: Server, make_server: ServerFactory) -> None:
    # two servers in one process: each has its own registry
    guarded = await make_server(metrics_token="scrape-secret")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{guarded.ports['http']}") as client:
        response = await client.get("/metrics")
        assert response.status_code == 401
        assert "metrics token" in response.json()["detail"]
        for wrong in ("Bearer nope", f"Bearer {ADMIN_KEY}", "Basic scrape-secret"):
            response = await client.get("/metrics", headers={"Authorization": wrong})
            assert response.status_code == 401, wrong
        client.headers["Authorization"] = "Bearer scrape-secret"
        assert value(await scrape(client), "tracker_store_up") == 1
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}") as client:
        assert value(await scrape(client), "tracker_store_up") == 1  # no token: open
