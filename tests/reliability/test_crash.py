"""SIGKILL under load: every acknowledged position is in the store, exactly once.

``tracker serve`` runs on PostGIS in a child process; simulated GT06 units send
as fast as acknowledgements allow and remember each one. The server is killed
at several points of the load, started again on the same database, and the
positions table is read directly. Then the units resend what was never
acknowledged (what a unit that waits for acks does) and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from .harness import Gt06Unit, TrackerProcess, config, imeis, register, stored_fixes

pytestmark = [pytest.mark.reliability, pytest.mark.postgis, pytest.mark.e2e]

UNITS = 20
WINDOW = 16


@pytest.mark.parametrize("kill_after_s", [0.2, 0.6, 1.2])
async def test_acknowledged_positions_survive_sigkill(
    postgis_url: str, tmp_path: Path, kill_after_s: float
) -> None:
    ids = imeis(UNITS)
    await register(postgis_url, ids)
    conf = config(tmp_path, postgis_url)
    server = await TrackerProcess.start(conf, tmp_path / "serve.log")
    units = [Gt06Unit(imei, n, window=WINDOW) for n, imei in enumerate(ids)]
    try:
        await asyncio.gather(*(unit.connect(server.gt06) for unit in units))
        load = [asyncio.create_task(unit.stream(unit.new_fixes())) for unit in units]
        await asyncio.sleep(kill_after_s)
        in_flight = sum(unit.in_flight for unit in units)
        server.kill()
        await server.wait()
        async with asyncio.timeout(5):  # each unit stops when its connection drops
            await asyncio.gather(*load)
    finally:
        await server.stop()
        await asyncio.gather(*(unit.close() for unit in units))
    acked = {(unit.imei, fix) for unit in units for fix in unit.acked}
    assert len(acked) > UNITS, "the load had not started when the server was killed"
    assert in_flight > 0, "no position was in flight at the kill"

    server = await TrackerProcess.start(conf, tmp_path / "serve.log")
    try:
        stored = await stored_fixes(postgis_url)
        lost = sorted(key for key in acked if stored[key] == 0)
        assert not lost, f"{len(lost)} acknowledged positions lost, first {lost[:3]}"
        assert all(stored[key] == 1 for key in acked)

        # units that wait for acks send the rest again; resends are stored once
        await asyncio.gather(*(unit.resend_unacked(server.gt06) for unit in units))
        sent = Counter((unit.imei, fix) for unit in units for fix in unit.sent)
        assert await stored_fixes(postgis_url) == sent
    finally:
        await server.stop()
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
