"""The connections benchmark runs end to end, tiny and bounded (figures not asserted)."""

from __future__ import annotations

import pytest

from tests.e2e.test_bench_smoke import bench

pytestmark = [pytest.mark.e2e, pytest.mark.postgis]


def test_connections_benchmark_holds_units_and_acknowledges_every_position(
    postgis_url: str,
) -> None:
    out = bench(
        "bench.connections",
        "--connections", "40",
        "--hold", "2",
        "--position-every", "0.5",
        "--heartbeat-every", "1",
        "--per-client", "25",  # two client processes
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )  # fmt: skip
    assert "units held by one process" in out
    assert "RSS extrapolated to 50,000 units" in out
    assert "connections lost 0, logins failed 0" in out
    assert "ERROR" not in out
