"""The benchmarks still run (tiny and bounded; the figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def bench(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_codec_benchmark_prints_every_protocol() -> None:
    out = bench("bench.codecs", "--seconds", "0.05")
    for name in ("gt06", "jt808", "teltonika", "h02", "tk103", "queclink", "meitrack", "watch"):
        assert f"\n{name} " in out


@pytest.mark.postgis
def test_ingest_benchmark_stores_what_it_acknowledged(postgis_url: str) -> None:
    out = bench(
        "bench.ingest",
        "--units",
        "5",
        "--window",
        "2",
        "--seconds",
        "1",
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )
    assert "naive: INSERT + commit per position" in out
    assert "tracker: group commit, COPY batches" in out
    assert "ERROR" not in out


def test_rules_benchmark_prints_fences_and_silence() -> None:
    out = bench("bench.rules", "--seconds", "0.05", "--naive-seconds", "0.05")
    assert "100,000" in out
    assert "silence deadlines, 1,000,000 units" in out
