"""The track benchmark runs end to end, tiny and bounded (figures not asserted)."""

from __future__ import annotations

import pytest

from tests.e2e.test_bench_smoke import bench

pytestmark = [pytest.mark.e2e, pytest.mark.postgis]


def test_track_benchmark_reads_whole_days_through_store_and_rest(postgis_url: str) -> None:
    # 2 units x 1.2 days: every read is a full day that may straddle the month boundary
    out = bench(
        "bench.track",
        "--rows", "41000",
        "--vehicles", "2",
        "--queries", "4",
        "--rest-queries", "3",
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )  # fmt: skip
    assert "track one day (8,640 fixes), Store.track, p99" in out
    assert "track one day (8,640 fixes), REST, p99" in out
    assert "ERROR" not in out


def test_track_benchmark_with_indexes_filled_as_rows_arrive_then_rebuilt(postgis_url: str) -> None:
    out = bench(
        "bench.track",
        "--rows", "41000",
        "--vehicles", "2",
        "--queries", "2",
        "--rest-queries", "2",
        "--no-naive",
        "--index-as-loaded",
        "--reindex",
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )  # fmt: skip
    assert "indexes filled as the rows went in" in out
    assert "rebuilt the indexes of positions_y2026m10, positions_y2026m11 in" in out
    assert "track one day (8,640 fixes), REST, p99" in out
    assert "ERROR" not in out
