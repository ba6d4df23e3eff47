"""The ``tracker`` command as an operator runs it: a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from protocols import CODECS

NAMES = [*CODECS, "osmand"]  # every listener on a free port

pytestmark = pytest.mark.e2e


def tracker(
    *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tracker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,  # type: ignore[call-overload]
    )


def test_serve_prints_where_it_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path}/var"
[http]
port = 0
[database]
url = "sqlite:///{tmp_path}/var/tracker.db"
"""
        + "".join(
            f'[protocols.{name}]\nport = 0\nhost = "127.0.0.1"\n' for name in [*CODECS, "osmand"]
        )
    )
    process = tracker("serve", "--config", str(config))
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while not (lines and "admin API key" in lines[-1]):
            line = process.stdout.readline()
            assert line, f"serve stopped early: {process.stderr.read() if process.stderr else ''}"
            lines.append(line)
        http_line = next(line for line in lines if "REST API" in line)
        base = http_line.split(" on ")[1].split()[0]
        key = lines[-1].rsplit(" ", 1)[-1].strip()
        assert key == (tmp_path / "var" / "admin_key").read_text().strip()
        request = urllib.request.Request(
            f"{base}/api/v1/server", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            info = json.loads(response.read())
        assert f"tracker: gt06 units on TCP port {info['ports']['gt06']}\n" in lines
        assert f"osmand units on HTTP port {info['ports']['osmand']}\n" in "".join(lines)
        assert info["store"] == "sqlite"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopping" in out


@pytest.mark.postgis
def test_migrate_creates_the_postgis_schema(postgis_url: str) -> None:
    process = tracker("migrate", env={"TRACKER_DATABASE_URL": postgis_url})
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "schema up to date" in out

    async def tables() -> set[str]:
        conn = await asyncpg.connect(postgis_url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            return {r["tablename"] for r in rows}
        finally:
            await conn.close()

    import asyncio

    assert {"vehicles", "units", "positions", "unknown_units"} <= asyncio.run(tables())


def test_decode_shows_a_pasted_packet() -> None:
    # GT06 login, shared/vectors/gt06.jsonl (traccar Gt06 test)
    process = tracker("decode", "gt06", "78780d01012345678901234500018cdd0d0a")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    decoded = json.loads(out)
    assert decoded["type"] == "login"
    assert decoded["unique_id"] == "123456789012345"
    assert decoded["reply"] == "787805010001d9dc0d0a"


def test_decode_json_lines_for_a_support_engineer() -> None:
    # GT06 0x12 location with a wrong CRC (shared/vectors/gt06.jsonl, traccar Gt06 test)
    frame = (
        "78 78 1f 12 0b 08 1d 11 2e 10 cc 02 7a c7 eb 0c 46 58 49 00 14 8f"
        " 01 cc 00 28 7d 00 1f b8 00 03 80 81 0d 0a"
    )
    refused = tracker("decode", "gt06", frame, "--json")
    out, err = refused.communicate(timeout=30)
    assert refused.returncode == 1
    assert out == ""
    assert "bad_crc" in err
    process = tracker("decode", "gt06", frame, "--json", "--accept-bad-crc")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    position, reply = (json.loads(line) for line in out.splitlines())
    assert position["type"] == "position"
    assert position["fix_time"] == "2011-08-29T17:46:16Z"
    assert round(position["lat"], 6) == 23.111668
    assert round(position["lon"], 6) == 114.409285
    assert position["speed_kmh"] == 0
    assert position["course"] == 143
    assert position["valid"] is True
    assert isinstance(position["attributes"], dict)
    assert reply == {"type": "reply", "reply": "787805120003903f0d0a"}


def test_decode_says_why_nothing_decoded() -> None:
    bad = tracker("decode", "gt06", "7878")
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 1
    assert "nothing decoded" in err
    unknown = tracker("decode", "nosuch", "00")
    _, err = unknown.communicate(timeout=30)
    assert unknown.returncode == 1
    assert "unknown protocol" in err
