"""The live map in headless Chromium on a phone-sized screen, against a real
server: GT06 units on TCP move the markers, an SOS alarm raises an alert, a
share link opens one vehicle until it is revoked. No map tiles are reachable."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.test_position_path import LOGIN_FRAME, unit_connection
from tracker.server import Server
from tracker.simulate import gt06_frame, gt06_location, gt06_login

from .conftest import ADMIN_KEY, OFFLINE_TILES, PHONE, ServerFactory

pytestmark = pytest.mark.e2e

IMEI = "123456789012345"  # the unit of LOGIN_FRAME
OTHER_IMEIS = ("860000000000002", "860000000000003")
JAKARTA = (-6.2, 106.816666)


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.ports['http']}"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)  # GT06 times have whole seconds


async def register(
    api: httpx.AsyncClient, vehicle_id: str, imei: str, plate: str, vin: str, loan_ref: str
) -> None:
    body = {
        "plate": plate,
        "vin": vin,
        "loan_ref": loan_ref,
        "units": [{"unique_id": imei, "kind": "wired"}],
    }
    response = await api.put(f"/api/v1/vehicles/{vehicle_id}", json=body)
    assert response.status_code in (200, 201), response.text


async def register_fleet(api: httpx.AsyncClient) -> None:
    await register(api, "veh-1", IMEI, "B 1234 XYZ", "MHF11KF8040000001", "L-2026-001")
    await register(api, "veh-2", OTHER_IMEIS[0], "D 777 AB", "JTDBR32E720000002", "L-2026-002")
    await register(api, "veh-3", OTHER_IMEIS[1], "F 42 QQ", "WVWZZZ1JZ3W000003", "L-2026-003")


def gt06_sos(fix_time: datetime, lat: float, lon: float, *, serial: int) -> bytes:
    """Alarm 0x16: GPS block, LBS (length counts itself), terminal info,
    voltage, GSM, alarm 01 (SOS) + language 02."""
    t = fix_time.astimezone(UTC)
    status = 0x1000 | (0x0400 if lat >= 0 else 0) | (0x0800 if lon < 0 else 0)  # valid, N, W
    content = (
        bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC9])
        + round(abs(lat) * 1_800_000).to_bytes(4, "big")
        + round(abs(lon) * 1_800_000).to_bytes(4, "big")
        + bytes([0])
        + status.to_bytes(2, "big")
        + bytes.fromhex("0901fe0a0001000001")
        + bytes([0x46, 6, 4, 1, 2])
    )
    return gt06_frame(0x16, content, serial)


async def drive(server: Server, imei: str, fixes: list[bytes]) -> None:
    """One unit logs in and sends fixes; each is acknowledged, so stored."""
    async with unit_connection(server) as unit:
        login = LOGIN_FRAME if imei == IMEI else gt06_login(imei)
        assert len(await unit.send(login)) == 10
        for fix in fixes:
            assert len(await unit.send(fix)) == 10


async def sign_in(page: Page, server: Server) -> None:
    await page.goto(base(server) + "/", wait_until="domcontentloaded")
    await page.fill("#key", ADMIN_KEY)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_function("window.tracker.state.connected === true")


async def marker_at(page: Page, vehicle_id: str) -> dict[str, float]:
    latlng: dict[str, float] = await page.evaluate(
        "(id) => window.tracker.markers[id].getLatLng()", vehicle_id
    )
    return latlng


async def wait_marker_at(page: Page, vehicle_id: str, lat: float, lon: float) -> None:
    await page.wait_for_function(
        """([id, lat, lon]) => {
            const m = window.tracker.markers[id];
            if (!m) return false;
            const p = m.getLatLng();
            return Math.abs(p.lat - lat) < 1e-5 && Math.abs(p.lng - lon) < 1e-5;
        }""",
        arg=[vehicle_id, lat, lon],
    )


def row(page: Page, vehicle_id: str) -> Any:
    return page.locator(f'#vehicles li[data-id="{vehicle_id}"]')


async def test_sign_in_lists_vehicles_with_status_and_search(
    server: Server, api: httpx.AsyncClient, page: Page
) -> None:
    await register_fleet(api)
    t = now()
    await drive(server, IMEI, [gt06_location(t, *JAKARTA, serial=2, speed_kmh=42, course_deg=90)])
    await drive(server, OTHER_IMEIS[0], [gt06_location(t, -6.21, 106.83, serial=2, speed_kmh=0)])

    await page.goto(base(server) + "/", wait_until="domcontentloaded")
    await page.fill("#key", "not-the-key")
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("not valid")
    await expect(page.locator("#app")).to_be_hidden()

    await page.fill("#key", ADMIN_KEY)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_function("window.tracker.state.connected === true")
    assert await page.evaluate("sessionStorage.getItem('tracker-key')") == ADMIN_KEY
    await expect(page.locator("#vehicles li")).to_have_count(3)
    await expect(page.locator("#vehicle-count")).to_have_text("(3)")
    await expect(row(page, "veh-1")).to_have_attribute("data-status", "moving")
    await expect(row(page, "veh-2")).to_have_attribute("data-status", "parked")
    await expect(row(page, "veh-3")).to_have_attribute("data-status", "offline")
    await expect(row(page, "veh-1")).to_contain_text("B 1234 XYZ")
    await expect(row(page, "veh-1")).to_contain_text("L-2026-001")
    await expect(row(page, "veh-1")).to_contain_text(re.compile(r"last seen (just now|\d+ s ago)"))
    await expect(row(page, "veh-3")).to_contain_text("never reported")
    assert set(await page.evaluate("Object.keys(window.tracker.markers)")) == {"veh-1", "veh-2"}

    search = page.locator("#search")
    visible = page.locator("#vehicles li:not([hidden])")
    for query, expected in [
        ("777", ["veh-2"]),  # plate
        ("b1234", ["veh-1"]),  # plate without its spaces
        ("WVWZZZ", ["veh-3"]),  # VIN
        ("l-2026-00", ["veh-1", "veh-2", "veh-3"]),  # loan reference
        ("L-2026-002", ["veh-2"]),
        ("nothing-like-it", []),
        ("", ["veh-1", "veh-2", "veh-3"]),
    ]:
        await search.fill(query)
        await expect(visible).to_have_count(len(expected))
        assert [await li.get_attribute("data-id") for li in await visible.all()] == expected
    await search.fill("nothing-like-it")
    await expect(page.locator("#no-match")).to_be_visible()
    await search.fill("")

    # the colour rules, including those the fleet above does not reach
    minute = 60_000
    statuses = await page.evaluate(
        """(minute) => {
            const t = Date.now();
            const v = (id, fixAgo, seenAgo, speed) => ({id, seen: t - seenAgo,
                pos: fixAgo === null ? null : {fix: t - fixAgo, speed}});
            return [
                v('a', minute, minute, 30),            // fresh and fast
                v('b', minute, minute, 2),             // fresh and slow
                v('c', 10 * minute, 10 * minute, 50),  // not fresh: not moving
                v('d', 40 * minute, 40 * minute, 0),   // not heard for 40 min
                v('e', 25 * 60 * minute, 25 * 60 * minute, 0),  // more than a day
                v('f', null, null, 0),                 // never reported
                v('g', 40 * minute, minute, 0),        // old fix, unit heard just now
            ].map((x) => window.tracker.statusOf(x, t));
        }""",
        minute,
    )
    assert statuses == ["moving", "parked", "parked", "silent", "offline", "offline", "parked"]


async def test_marker_moves_with_live_positions_and_follows(
    server: Server, api: httpx.AsyncClient, page: Page
) -> None:
    await register_fleet(api)
    await sign_in(page, server)
    await expect(row(page, "veh-1")).to_have_attribute("data-status", "offline")
    assert await page.evaluate("window.tracker.markers['veh-1']") is None

    t = now()
    path = [(-6.2, 106.8), (-6.201, 106.802), (-6.2025, 106.804)]
    async with unit_connection(server) as unit:
        await unit.send(LOGIN_FRAME)
        lat, lon = path[0]
        await unit.send(gt06_location(t, lat, lon, serial=2, speed_kmh=35, course_deg=120))
        await wait_marker_at(page, "veh-1", lat, lon)  # a new marker, no reload
        await expect(row(page, "veh-1")).to_have_attribute("data-status", "moving")

        await row(page, "veh-1").locator("button").click()
        await expect(page.locator("#card")).to_be_visible()
        await expect(page.locator("#card-plate")).to_have_text("B 1234 XYZ")
        await expect(page.locator("#follow")).to_have_attribute("aria-pressed", "true")
        await expect(page.locator("#card-speed")).to_have_text("35 km/h · 120° SE")
        await expect(page.locator("#card-fix")).to_contain_text("9 satellites")

        for k, (lat, lon) in enumerate(path[1:], start=1):
            fix = gt06_location(t + timedelta(seconds=10 * k), lat, lon, serial=2 + k, speed_kmh=40)
            await unit.send(fix)
            await wait_marker_at(page, "veh-1", lat, lon)

    # follow mode keeps the car in the middle of the map
    await page.wait_for_function(
        """([lat, lon]) => {
            const c = window.tracker.map.getCenter();
            return Math.abs(c.lat - lat) < 1e-4 && Math.abs(c.lng - lon) < 1e-4;
        }""",
        arg=list(path[-1]),
    )
    # the trail of the last hour: every fix so far
    await page.wait_for_function("window.tracker.trail.getLatLngs().length === 3")

    lat, lon = path[-1]
    where = f"{lat:.6f},{lon:.6f}"
    navigate = await page.locator("#navigate").get_attribute("href")
    assert navigate == f"geo:{where}?q={where}(B%201234%20XYZ)"
    web = await page.locator("#webmap").get_attribute("href")
    assert web == f"https://www.google.com/maps/dir/?api=1&destination={where}"

    # the user drags the map: follow lets go
    box = await page.locator("#map").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + 100, box["y"] + 100)
    await page.mouse.down()
    await page.mouse.move(box["x"] + 200, box["y"] + 180, steps=5)
    await page.mouse.up()
    await expect(page.locator("#follow")).to_have_attribute("aria-pressed", "false")

    # no tiles could be had, and the page says so and goes on
    assert await page.evaluate("window.tracker.tiles._url") == OFFLINE_TILES
    await expect(page.locator("#tiles-note")).to_be_visible()


async def test_sos_alarm_shows_in_the_events_panel(
    server: Server, api: httpx.AsyncClient, page: Page
) -> None:
    await register_fleet(api)
    t = now()
    await drive(server, OTHER_IMEIS[0], [gt06_location(t, -6.21, 106.83, serial=2)])
    await sign_in(page, server)
    await page.click("#tabs [data-tab=alerts]")
    await expect(page.locator("#no-alerts")).to_be_visible()
    await expect(page.locator("#alert-count")).to_be_hidden()

    await drive(server, IMEI, [gt06_sos(t, *JAKARTA, serial=2)])
    sos = page.locator('#alerts li[data-type="sos"]')
    await expect(sos).to_have_count(1)
    await expect(sos).to_contain_text("SOS")
    await expect(sos).to_contain_text("B 1234 XYZ")
    await expect(sos).to_contain_text("critical")
    await expect(page.locator("#alert-count")).to_have_text("1")

    await sos.locator("button").click()
    await expect(page.locator("#card-plate")).to_have_text("B 1234 XYZ")
    await expect(page.locator("#card-event")).to_contain_text("SOS")

    # the search narrows the panel to the vehicles shown
    await page.click("#tabs [data-tab=vehicles]")
    await page.fill("#search", "777")
    await page.click("#tabs [data-tab=alerts]")
    await expect(sos).to_have_count(0)
    await expect(page.locator("#no-alerts")).to_be_visible()

    # open alerts come from the API after a reload, newest first
    await drive(
        server, OTHER_IMEIS[0], [gt06_sos(t + timedelta(seconds=5), -6.21, 106.83, serial=3)]
    )
    await page.reload(wait_until="domcontentloaded")
    await page.wait_for_function("window.tracker.state.connected === true")
    await page.click("#tabs [data-tab=alerts]")
    alerts = page.locator("#alerts li")
    await expect(alerts).to_have_count(2)
    assert [await li.get_attribute("data-vehicle") for li in await alerts.all()] == [
        "veh-2",
        "veh-1",
    ]


async def test_silent_unit_turns_the_vehicle_silent(make_server: ServerFactory, page: Page) -> None:
    offset = [timedelta(0)]
    server = await make_server(
        clock=lambda: datetime.now(UTC) + offset[0], map_tile_url=OFFLINE_TILES
    )
    async with httpx.AsyncClient(
        base_url=base(server), headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as api:
        await register_fleet(api)
    await drive(server, IMEI, [gt06_location(now(), *JAKARTA, serial=2)])
    await sign_in(page, server)
    await expect(row(page, "veh-1")).to_have_attribute("data-status", "parked")

    offset[0] = timedelta(minutes=31)  # the wired unit's 30 minutes pass on the server
    await expect(row(page, "veh-1")).to_have_attribute("data-status", "silent", timeout=10_000)
    await page.click("#tabs [data-tab=alerts]")
    await expect(page.locator('#alerts li[data-type="unit_silent"]')).to_contain_text("Unit silent")


async def test_replay_plays_the_track_and_marks_stops(
    server: Server, api: httpx.AsyncClient, page: Page
) -> None:
    await register_fleet(api)
    start = now() - timedelta(minutes=40)
    fixes = []
    lon = 106.8
    for k in range(18):
        moving = not 6 <= k < 12  # drives 6 min, stands 6 min, drives on
        lon += 0.003 if moving else 0.0
        fixes.append(
            gt06_location(
                start + timedelta(minutes=k),
                -6.2,
                lon,
                serial=2 + k,
                speed_kmh=40 if moving else 0,
                course_deg=90,
            )
        )
    stop_lon = 106.8 + 6 * 0.003
    await drive(server, IMEI, fixes)
    await sign_in(page, server)

    await page.click("#tabs [data-tab=replay]")
    await expect(page.locator("#replay-none")).to_be_visible()
    await page.click("#tabs [data-tab=vehicles]")
    await row(page, "veh-1").locator("button").click()
    await page.click("#card-replay")
    await expect(page.locator("#replay-title")).to_have_text("Replay B 1234 XYZ")
    await page.click("#replay-form [data-hours='1']")
    await page.click("#replay-form button[type=submit]")
    await expect(page.locator("#replay-player")).to_be_visible()
    await expect(page.locator("#replay-summary")).to_have_text("18 positions over 17 min, 1 stop")
    replay = await page.evaluate(
        "({points: tracker.replay.points.length, stops: tracker.replay.stops})"
    )
    assert replay["points"] == 18
    [stop] = replay["stops"]
    assert stop["lat"] == pytest.approx(-6.2, abs=1e-6)
    assert stop["lon"] == pytest.approx(stop_lon, abs=1e-6)
    assert stop["end"] - stop["start"] == 6 * 60_000
    await expect(page.locator("#replay-stops li")).to_have_count(1)
    await expect(page.locator("#replay-stops li")).to_contain_text("6 min")

    async def slide(value: int) -> dict[str, float]:
        await page.eval_on_selector(
            "#replay-slider",
            "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }",
            value,
        )
        at: dict[str, float] = await page.evaluate("tracker.replay.marker.getLatLng()")
        return at

    assert (await slide(0))["lng"] == pytest.approx(106.803, abs=1e-6)
    assert (await slide(1000))["lng"] == pytest.approx(lon, abs=1e-6)
    middle = await slide(500)  # minute 8.5 of 17: standing at the stop
    assert middle["lng"] == pytest.approx(stop_lon, abs=1e-6)

    await slide(0)
    await page.select_option("#replay-speed", "300")
    await page.click("#replay-play")
    await expect(page.locator("#replay-play")).to_have_text("Pause")
    await page.wait_for_function("Number(document.getElementById('replay-slider').value) > 50")
    await page.click("#replay-play")
    await expect(page.locator("#replay-play")).to_have_text("Play")

    await page.click("#replay-exit")
    await expect(page.locator("#replay-player")).to_be_hidden()
    assert await page.evaluate("window.tracker.replay") is None


async def test_dark_at_night_and_a_toggle_that_sticks(server: Server, browser: Browser) -> None:
    for hour, theme in [(23, "dark"), (3, "dark"), (12, "light")]:
        context = await browser.new_context(viewport=PHONE, timezone_id="UTC", color_scheme="light")
        page = await context.new_page()
        await page.clock.set_fixed_time(datetime(2026, 11, 29, hour, 30, tzinfo=UTC))
        await page.goto(base(server) + "/", wait_until="domcontentloaded")
        await expect(page.locator("html")).to_have_attribute("data-theme", theme)
        if hour == 12:
            await page.fill("#key", ADMIN_KEY)
            await page.click("#signin-form button[type=submit]")
            await page.click("#theme")
            await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
            await page.reload(wait_until="domcontentloaded")
            await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
            await page.click("#theme")
            await expect(page.locator("html")).to_have_attribute("data-theme", "light")
        await context.close()


async def test_sign_out_forgets_the_key(server: Server, page: Page) -> None:
    await sign_in(page, server)
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('tracker-key')") is None
    await page.reload(wait_until="domcontentloaded")
    await expect(page.locator("#signin")).to_be_visible()


async def test_share_link_shows_one_vehicle_until_revoked(
    server: Server, api: httpx.AsyncClient, page: Page, browser: Browser
) -> None:
    await register_fleet(api)
    t = now()
    history = [(-6.2, 106.8), (-6.2, 106.801), (-6.2, 106.802)]
    await drive(
        server,
        IMEI,
        [
            gt06_location(t - timedelta(minutes=3 - k), lat, lon, serial=2 + k, speed_kmh=30)
            for k, (lat, lon) in enumerate(history)
        ],
    )
    await drive(server, OTHER_IMEIS[0], [gt06_location(t, -6.3, 106.9, serial=2)])
    response = await api.post(
        "/api/v1/shares", json={"vehicle_id": "veh-1", "expires_in_s": 3600, "history_h": 1}
    )
    assert response.status_code == 201, response.text
    share = response.json()
    share_url = base(server) + "/share/" + share["token"]

    await page.goto(share_url, wait_until="domcontentloaded")
    await page.wait_for_function("window.tracker.state.connected === true")
    await expect(page.locator("#title")).to_have_text("B 1234 XYZ")
    await expect(page.locator("#expires")).to_contain_text("expires in 59 min")
    await expect(page.locator("#tabs")).to_be_hidden()
    await expect(page.locator("#signout")).to_be_hidden()
    await expect(page.locator("#card")).to_be_visible()
    assert await page.evaluate("Object.keys(window.tracker.markers)") == ["veh-1"]
    await wait_marker_at(page, "veh-1", *history[-1])
    assert await page.evaluate("window.tracker.trail.getLatLngs().length") == 3
    assert (await page.locator("#navigate").get_attribute("href") or "").startswith(
        "geo:-6.200000,106.802000"
    )

    async with unit_connection(server) as unit:
        await unit.send(LOGIN_FRAME)
        await unit.send(gt06_location(t + timedelta(seconds=5), -6.2, 106.803, serial=9))
    await wait_marker_at(page, "veh-1", -6.2, 106.803)
    await page.wait_for_function("window.tracker.trail.getLatLngs().length === 4")

    # revoked: the open page says so at once (the socket closes with 4410)
    assert (await api.delete(f"/api/v1/shares/{share['id']}")).status_code == 204
    await expect(page.locator("#gone")).to_be_visible()
    await expect(page.locator("#gone-title")).to_have_text("This link was revoked")
    await expect(page.locator("#app")).to_be_hidden()

    # and a fresh visit gets the same message (HTTP 410)
    other = await page.context.new_page()
    await other.goto(share_url, wait_until="domcontentloaded")
    await expect(other.locator("#gone-title")).to_have_text("This link was revoked")
    await other.close()


async def test_phone_screenshot(
    server: Server, api: httpx.AsyncClient, page: Page, tmp_path: Path
) -> None:
    """One look at the page as a recovery agent sees it (TRACKER_MAP_SCREENSHOT=/tmp/map.png)."""
    await register_fleet(api)
    t = now()
    await drive(
        server,
        IMEI,
        [
            gt06_location(t - timedelta(seconds=40 - 10 * k), -6.2, 106.8 + k / 2000, serial=2 + k)
            for k in range(4)
        ]
        + [gt06_sos(t, -6.2, 106.8025, serial=9)],
    )
    await drive(server, OTHER_IMEIS[0], [gt06_location(t, -6.203, 106.806, serial=2)])
    await sign_in(page, server)
    await row(page, "veh-1").locator("button").click()
    await page.wait_for_function("window.tracker.trail.getLatLngs().length >= 4")
    await page.wait_for_function(  # follow mode: the car sits in the middle of the map
        """() => {
            const map = window.tracker.map, size = map.getSize();
            const at = map.latLngToContainerPoint(window.tracker.markers['veh-1'].getLatLng());
            const box = window.tracker.markers['veh-1'].getElement().getBoundingClientRect();
            const mapBox = document.getElementById('map').getBoundingClientRect();
            const middle = {x: box.left + box.width / 2 - mapBox.left,
                            y: box.top + box.height / 2 - mapBox.top};
            return Math.abs(at.x - size.x / 2) < 2 && Math.abs(at.y - size.y / 2) < 2
                && Math.abs(middle.x - size.x / 2) < 2 && Math.abs(middle.y - size.y / 2) < 2;
        }"""
    )
    path = Path(os.environ.get("TRACKER_MAP_SCREENSHOT") or tmp_path / "map.png")
    picture = await page.screenshot(path=str(path))
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    marker = page.locator(".vm-selected")
    await expect(marker).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


async def test_share_link_counts_down_and_expires(
    server: Server, api: httpx.AsyncClient, page: Page
) -> None:
    await register_fleet(api)
    await drive(server, IMEI, [gt06_location(now(), *JAKARTA, serial=2)])
    response = await api.post("/api/v1/shares", json={"vehicle_id": "veh-1", "expires_in_s": 90})
    assert response.status_code == 201, response.text
    await page.clock.install()
    await page.goto(
        base(server) + "/share/" + response.json()["token"], wait_until="domcontentloaded"
    )
    await page.wait_for_function("window.tracker.state.connected === true")
    await expect(page.locator("#expires")).to_have_text(re.compile(r"expires in 1 min (29|30) s"))
    await expect(page.locator("#expires")).to_have_class(re.compile("soon"))
    await page.clock.run_for(91_000)
    await expect(page.locator("#gone")).to_be_visible()
    await expect(page.locator("#gone-title")).to_have_text("This link has expired")


async def test_many_vehicles_cluster(server: Server, api: httpx.AsyncClient, page: Page) -> None:
    t = now()
    for n in range(30):
        imei = f"8610000000{n:05d}"
        await register(api, f"car-{n:02d}", imei, f"B {1000 + n} CL", f"VIN{n:014d}", f"L-{n}")
        await drive(server, imei, [gt06_location(t, -6.2 + n / 20000, 106.8, serial=2)])
    await sign_in(page, server)
    assert await page.evaluate("window.tracker.cluster instanceof L.MarkerClusterGroup")
    assert await page.evaluate("Object.keys(window.tracker.markers).length") == 30
    await page.evaluate("window.tracker.map.setView([-6.2, 106.8], 12, {animate: false})")
    await expect(page.locator(".cluster").first).to_be_visible()
    await expect(page.locator(".vm")).to_have_count(0)
    await row(page, "car-07").locator("button").click()  # zooms in: the car stands alone
    await expect(page.locator(".vm-selected")).to_be_visible()
