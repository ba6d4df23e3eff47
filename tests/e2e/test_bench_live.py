"""The live fan-out benchmark still runs (tiny and bounded; figures not asserted)
and its correctness checks pass: every message sent, coalesced or dropped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.postgis]

TINY = "--subscribers 6 --probes 2 --units 5 --rate 200 --seconds 1 --naive-seconds 0.5"


def test_live_benchmark_delivers_everything_it_published(postgis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.live", *TINY.split()],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TRACKER_BENCH_DATABASE_URL": postgis_url},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "live messages/s delivered, 6 subscribers to every vehicle" in out
    assert "unit-to-subscriber latency p99" in out
    assert "tracker: 200 published, 1,200 sent, 0 coalesced" in out
    assert re.search(r"; event loop late p50 ~\d+\.\d ms, p99 ~\d+\.\d ms; batch commit", out)
    assert "ERROR" not in out
