"""The REST benchmark still runs (tiny and bounded; its figures are not asserted)."""

from __future__ import annotations

import pytest

from .test_bench_smoke import bench

pytestmark = [pytest.mark.e2e, pytest.mark.postgis]


def test_rest_benchmark_answers_every_request_right(postgis_url: str) -> None:
    out = bench(
        "bench.rest",
        "--vehicles",
        "500",
        "--seconds",
        "0.5",
        "--warmup",
        "0.2",
        "--connections",
        "4",
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )
    assert "location requests/s, 500 vehicles" in out
    assert "location latency p99" in out
    assert "naive: database query per request" in out
    assert "ERROR" not in out
