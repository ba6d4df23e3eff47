"""PostgreSQL goes away under load and comes back.

While it is away: unit connections stay open and get no acknowledgement, the
server holds at most ``store.max_pending_rows`` positions and stops reading
the units beyond that, ``/readyz`` says 503 while ``/healthz`` says 200, and
the REST API answers from memory, heartbeats are still answered, and an alarm
event found meanwhile is kept. Once it is back: every acknowledged position
is stored exactly once, the backlog drains, acks resume on the same
connections, and the event is stored.

The outage lasts a few seconds here, not the minute of the issue: nothing in
the server counts time while the store is away; the writer retries with a
backoff capped at 5 s, so a longer outage means more retries of the same
batch, and at most 5 s between the store's return and the next attempt.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.pgserver import ENV_URL, PgServer
from tracker.server import Server
from tracker.settings import ProtocolSettings, Settings
from tracker.simulate import ACK_BYTES, HEARTBEAT, LOGIN, gt06_frame, gt06_login

from .harness import ADMIN_KEY, Gt06Unit, imeis, stored_fixes, until

# Terminal info 0x64: GPS fixed, charging, alarm bits 5-3 = 100 (SOS) [GT06 VL03 §2].
SOS_HEARTBEAT = gt06_frame(HEARTBEAT, bytes([0x40 | 0b100 << 3 | 0x04, 6, 4, 0, 2]), 7)

pytestmark = [pytest.mark.reliability, pytest.mark.postgis, pytest.mark.e2e]

UNITS = 12
WINDOW = 4
MAX_PENDING_ROWS = 8  # < UNITS: some connections must wait for room
OUTAGE_S = 2.0


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL of this test's own, to stop and start again."""
    if os.environ.get(ENV_URL):
        pytest.skip(f"with {ENV_URL} set there is no server of our own to stop")
    with PgServer(fsync=False) as pg:
        yield pg


@pytest.fixture
async def server(own_pg: PgServer, tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(
        http_port=0,
        database_url=own_pg.create_database("outage"),
        data_dir=tmp_path / "var",
        admin_key=ADMIN_KEY,
        batch_max_delay_ms=2.0,
        max_pending_rows=MAX_PENDING_ROWS,
        shutdown_grace_s=3.0,
        protocols=(ProtocolSettings("gt06", 0, host="127.0.0.1"),),
    )
    server = Server(settings)
    await server.start()
    yield server
    await server.stop()


async def test_units_wait_out_a_database_outage(
    own_pg: PgServer, server: Server, tmp_path: Path
) -> None:
    url = server.settings.database_url
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.ports['http']}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    *ids, sos_imei = imeis(UNITS + 1)
    units = [Gt06Unit(imei, n, window=WINDOW) for n, imei in enumerate(ids)]
    stop_sending = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with api:
        for n, imei in enumerate([*ids, sos_imei]):  # the last sends an alarm, no positions
            body = {"units": [{"unique_id": imei}]}
            assert (await api.put(f"/api/v1/vehicles/veh-{n}", json=body)).status_code == 201
        await asyncio.gather(*(unit.connect(server.ports["gt06"]) for unit in units))
        load = [asyncio.create_task(unit.stream(unit.new_fixes(), stop_sending)) for unit in units]
        try:
            await until(lambda: min(len(unit.acked) for unit in units) >= 5)  # flowing

            await asyncio.to_thread(own_pg.stop_server)
            stopped_at = loop.time()
            await until(lambda: not server.pipeline.store_healthy)
            await asyncio.sleep(0.5)  # every unit has a commit held by now
            acked_then = [len(unit.acked) for unit in units]

            ready = await api.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body == {
                "status": "degraded",
                "store": "unavailable",
                "pending_rows": body["pending_rows"],
            }
            assert 0 < body["pending_rows"] <= MAX_PENDING_ROWS
            assert server.pipeline.waiting_commits > 0  # these connections are not read
            assert (await api.get("/healthz")).status_code == 200
            info = (await api.get("/api/v1/server")).json()
            assert info["store_healthy"] is False
            location = await api.get("/api/v1/vehicles/veh-0/location")  # from memory
            assert location.status_code == 200, location.text
            newest = max(units[0].acked).isoformat().replace("+00:00", "Z")
            assert location.json()["fix_time"] == newest
            track = await api.get("/api/v1/vehicles/veh-0/track")  # needs the database
            assert track.status_code == 503
            assert "database is unavailable" in track.json()["detail"]

            reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["gt06"])
            writer.write(gt06_login(sos_imei) + SOS_HEARTBEAT)
            replies = await asyncio.wait_for(reader.readexactly(2 * ACK_BYTES), 5)
            assert replies[3] == LOGIN  # neither needs the store: both answered
            assert replies[ACK_BYTES + 3] == HEARTBEAT
            writer.close()
            await writer.wait_closed()

            await asyncio.sleep(OUTAGE_S)
            assert [len(unit.acked) for unit in units] == acked_then  # no ack meanwhile
            assert not any(unit.closed.is_set() for unit in units)  # nor a closed connection
            assert server.pipeline.pending_rows <= MAX_PENDING_ROWS
            late = [t for unit in units for t in unit.ack_times if t > stopped_at + 0.2]
            assert not late

            await asyncio.to_thread(own_pg.start_again)
            stop_sending.set()
            await asyncio.gather(*load)
            # the backlog drains and acks resume, on the connections opened before
            await asyncio.gather(*(unit.until_all_acked(15) for unit in units))
            assert not any(unit.closed.is_set() for unit in units)
        finally:
            stop_sending.set()
            await asyncio.gather(*load, return_exceptions=True)
            await asyncio.gather(*(unit.close() for unit in units))

        assert server.pipeline.store_healthy
        assert server.pipeline.pending_rows == 0
        ready = await api.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "store": "available", "pending_rows": 0}
        await until(lambda: server.stats["events.sos"] == 1)
        assert server.stats["event_batches_failed"] > 0  # the events writer retried it
        events = (await api.get("/api/v1/events")).json()["items"]
        assert [(e["type"], e["unique_id"]) for e in events] == [("sos", sos_imei)]
    stored = await stored_fixes(url)
    acked = Counter((unit.imei, fix) for unit in units for fix in unit.acked)
    assert stored == Counter(dict.fromkeys(acked, 1))  # every ack stored, once
    assert server.stats["batch_retries"] > 0
