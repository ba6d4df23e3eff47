"""The cold-start benchmark still runs (tiny and bounded; its figures are not asserted)."""

from __future__ import annotations

import pytest

from .test_bench_smoke import bench

pytestmark = [pytest.mark.e2e, pytest.mark.postgis]


def test_coldstart_benchmark_loads_and_answers_everything(postgis_url: str) -> None:
    out = bench(
        "bench.coldstart",
        "--units",
        "2000",
        "--alerts",
        "20",
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )
    assert "cold start to ready, 2,000 units" in out
    assert "server RSS once ready" in out
    assert "naive: one thing at a time" in out
    assert "ERROR" not in out
