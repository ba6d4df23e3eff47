"""SIGTERM under load: ``tracker serve`` stops accepting, stores what units sent,
acknowledges it on the connections still open, closes them and exits 0 within
``server.shutdown_grace_s``."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from .harness import Gt06Unit, TrackerProcess, config, imeis, register, stored_fixes

pytestmark = [pytest.mark.reliability, pytest.mark.postgis, pytest.mark.e2e]

UNITS = 20
WINDOW = 16
GRACE_S = 5.0


async def test_sigterm_acknowledges_everything_stored_then_exits(
    postgis_url: str, tmp_path: Path
) -> None:
    ids = imeis(UNITS)
    await register(postgis_url, ids)
    server = await TrackerProcess.start(
        config(tmp_path, postgis_url, grace_s=GRACE_S), tmp_path / "serve.log"
    )
    units = [Gt06Unit(imei, n, window=WINDOW) for n, imei in enumerate(ids)]
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(unit.connect(server.gt06) for unit in units))
        load = [asyncio.create_task(unit.stream(unit.new_fixes())) for unit in units]
        await asyncio.sleep(0.5)
        in_flight = sum(unit.in_flight for unit in units)
        signalled_at = loop.time()
        server.terminate()
        async with asyncio.timeout(GRACE_S):  # the units keep sending until closed
            await asyncio.gather(*load)
            await asyncio.gather(*(unit.closed.wait() for unit in units))
        returncode = await server.wait(GRACE_S)
        took_s = loop.time() - signalled_at
    finally:
        await server.stop()
        await asyncio.gather(*(unit.close() for unit in units))
    assert returncode == 0, server.log.read_text()[-3000:]
    assert took_s < GRACE_S
    assert "tracker: stopping\n" in server.output
    assert in_flight > 0, "no position was in flight at SIGTERM"

    stored = await stored_fixes(postgis_url)
    acked = Counter((unit.imei, fix) for unit in units for fix in unit.acked)
    assert all(count == 1 for count in acked.values())  # each frame acked once
    # Stored exactly once, and acknowledged before the close. What was sent after
    # the flush began was neither: the units still have it, to send again.
    assert stored == acked
