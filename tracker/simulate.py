"""Fake GT06 units for demos and load: ``tracker simulate`` and ``bench/``.

The frame builders follow the Concox GT06 layout (PROTOCOLS.md section 1):
``78 78 | LEN | PROTO | CONTENT | SERIAL | CRC-ITU | 0D 0A``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from datetime import UTC, datetime

from protocols.binary import crc16_x25

LOGIN = 0x01
HEARTBEAT = 0x13
LOCATION = 0x22
ACK_BYTES = 10  # 78 78 05 PROTO SERIAL(2) CRC(2) 0D 0A


def gt06_frame(proto: int, content: bytes, serial: int) -> bytes:
    body = bytes([len(content) + 5, proto]) + content + (serial & 0xFFFF).to_bytes(2, "big")
    return b"\x78\x78" + body + crc16_x25(body).to_bytes(2, "big") + b"\r\n"


def gt06_login(imei: str, serial: int = 1) -> bytes:
    return gt06_frame(LOGIN, bytes.fromhex(imei.rjust(16, "0")), serial)


def gt06_heartbeat(serial: int, *, ignition: bool = True) -> bytes:
    info = 0x40 | 0x04 | (0x02 if ignition else 0)  # GPS fixed, charging, ACC
    return gt06_frame(HEARTBEAT, bytes([info, 6, 4, 0, 2]), serial)


def gt06_location(
    fix_time: datetime,
    lat: float,
    lon: float,
    *,
    serial: int,
    speed_kmh: int = 0,
    course_deg: int = 0,
    valid: bool = True,
    ignition: bool = True,
) -> bytes:
    t = fix_time.astimezone(UTC)
    status = (int(course_deg) % 360) | (0x1000 if valid else 0)
    status |= 0x0400 if lat >= 0 else 0  # bit10: north
    status |= 0x0800 if lon < 0 else 0  # bit11: west
    content = (
        bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC9])
        + round(abs(lat) * 1_800_000).to_bytes(4, "big")
        + round(abs(lon) * 1_800_000).to_bytes(4, "big")
        + bytes([max(0, min(255, speed_kmh))])
        + status.to_bytes(2, "big")
        + bytes.fromhex("01fe0a0001000001")  # MCC, MNC, LAC, cell id
        + bytes([1 if ignition else 0, 0, 0])  # ACC, upload mode, re-upload flag
    )
    return gt06_frame(LOCATION, content, serial)


class Route:
    """A car driving circles around a centre, one step per fix."""

    def __init__(self, lat: float, lon: float, *, radius_m: float = 800, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.lat0, self.lon0 = lat, lon
        self.radius_deg = radius_m / 111_320
        self.angle = rng.uniform(0, 2 * math.pi)
        self.step = rng.uniform(0.01, 0.03)

    def next(self) -> tuple[float, float, int]:
        self.angle += self.step
        lat = self.lat0 + self.radius_deg * math.sin(self.angle)
        lon = self.lon0 + self.radius_deg * math.cos(self.angle) / math.cos(math.radians(lat))
        course = int(math.degrees(math.atan2(math.cos(self.angle), -math.sin(self.angle)))) % 360
        return lat, lon, course


async def drive(
    host: str,
    port: int,
    imei: str,
    route: Route,
    *,
    interval_s: float,
    until: float,
) -> int:
    """One unit: log in, then send a fix every ``interval_s`` until ``until``
    (monotonic seconds); return how many fixes were acknowledged."""
    reader, writer = await asyncio.open_connection(host, port)
    acked = 0
    try:
        writer.write(gt06_login(imei))
        await reader.readexactly(ACK_BYTES)
        serial = 2
        while time.monotonic() < until:
            lat, lon, course = route.next()
            frame = gt06_location(
                datetime.now(UTC), lat, lon, serial=serial, speed_kmh=40, course_deg=course
            )
            writer.write(frame)
            await reader.readexactly(ACK_BYTES)
            acked += 1
            serial += 1
            await asyncio.sleep(interval_s)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return acked


async def run_simulation(
    *,
    host: str,
    port: int,
    units: int,
    interval_s: float,
    duration_s: float,
    first_imei: int,
    lat: float,
    lon: float,
) -> None:
    until = time.monotonic() + duration_s
    imeis = [str(first_imei + n) for n in range(units)]
    print(f"simulate: {units} GT06 units ({imeis[0]}..{imeis[-1]}) -> {host}:{port}", flush=True)
    results = await asyncio.gather(
        *(
            drive(host, port, imei, Route(lat, lon, seed=n), interval_s=interval_s, until=until)
            for n, imei in enumerate(imeis)
        ),
        return_exceptions=True,
    )
    acked = sum(r for r in results if isinstance(r, int))
    failed = [r for r in results if isinstance(r, BaseException)]
    print(f"simulate: {acked} fixes acknowledged; {len(failed)} units failed", flush=True)
    for error in failed[:5]:
        print(f"simulate: unit failed: {error!r}", flush=True)
