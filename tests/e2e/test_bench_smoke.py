"""The benchmarks still run (tiny and bounded; the figures are not asserted)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from bench.server_metrics import quantile_ms

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
    # every protocol of the mix, fences, the live subscriber and all three runs, tiny
    out = bench(
        "bench.ingest",
        *("--units", "6", "--window", "4", "--burst", "2", "--seconds", "1"),
        *("--naive-seconds", "0.5", "--rate", "200", "--fences", "50"),
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for run in ("naive", "tracker", "paced"):
        acked = int(rows[run][1].replace(",", ""))
        assert acked > 0, out
    assert "ingest, positions/s stored + acked (3-protocol mix)" in out
    for run in ("tracker", "paced"):  # the server's own histograms over each run
        numbers = r"p50 ~\d+\.\d ms, p99 ~\d+\.\d ms"
        line = rf"^{run}: event loop late {numbers}; batch commit {numbers} "
        assert re.search(line, out, re.MULTILINE), out
        wal = rf"^{run}: PostgreSQL wrote ([\d,]+) bytes of WAL a position$"
        found = re.search(wal, out, re.MULTILINE)
        assert found, out
        assert int(found[1].replace(",", "")) > 100, out  # a stored row's worth
    assert "ERROR" not in out


@pytest.mark.postgis
def test_ingest_benchmark_sets_up_only_the_postgresql_it_starts(postgis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--pg", "wal_compression=lz4"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRACKER_BENCH_DATABASE_URL": postgis_url},
        check=False,
    )
    assert result.returncode == 2
    assert "--pg sets up the PostgreSQL the benchmark starts" in result.stderr
    malformed = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--pg", "wal_compression"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert malformed.returncode == 2
    assert "--pg takes SETTING=VALUE" in malformed.stderr


def test_server_metrics_quantiles_come_from_the_runs_own_observations() -> None:
    name = "tracker_batch_commit_seconds"
    before = {name: [(0.01, 5.0), (0.1, 5.0), (1.0, 5.0), (math.inf, 5.0)]}
    # the run: 90 commits under 10 ms, 10 between 10 and 100 ms
    after = {name: [(0.01, 95.0), (0.1, 105.0), (1.0, 105.0), (math.inf, 105.0)]}
    assert quantile_ms(before, after, name, 0.5) == pytest.approx(10 * 50 / 90)
    assert quantile_ms(before, after, name, 0.99) == pytest.approx(10 + 90 * 9 / 10)
    assert math.isnan(quantile_ms(after, after, name, 0.99))  # nothing observed between
    beyond = {name: [(0.01, 5.0), (0.1, 5.0), (1.0, 5.0), (math.inf, 6.0)]}
    assert quantile_ms(before, beyond, name, 0.99) == 1000  # past the last bound: that bound


@pytest.mark.postgis
def test_ingest_benchmark_deals_units_out_between_server_processes(postgis_url: str) -> None:
    out = bench(
        "bench.ingest",
        *("--units", "6", "--window", "4", "--burst", "2", "--seconds", "1", "--servers", "2"),
        *("--naive-seconds", "0.5", "--rate", "200", "--fences", "50"),
        env={"TRACKER_BENCH_DATABASE_URL": postgis_url},
    )
    assert "one live subscriber to all of each of 2 server processes" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for run in ("tracker", "paced"):
        assert int(rows[run][1].replace(",", "")) > 0, out
        assert int(rows[run][5].replace(",", "")) > 0, out  # both subscribers together
    assert "ERROR" not in out


def test_rules_benchmark_prints_fences_and_silence() -> None:
    out = bench("bench.rules", "--seconds", "0.05", "--naive-seconds", "0.05")
    assert "positions/s classified, 100,000 fences, one core" in out
    assert "silence deadlines, 1,000,000 units" in out
