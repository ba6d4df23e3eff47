"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against a
real server on free ports with its embedded SQLite store. Never `playwright
install`: scripts/ensure-chromium.sh installs the distribution's package."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright

from tests.e2e.conftest import ADMIN_KEY, ServerFactory, api, make_server
from tracker.server import Server

__all__ = ["ADMIN_KEY", "ServerFactory", "api", "make_server"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Nothing listens on the discard port: the page must work with no tiles at all.
OFFLINE_TILES = "http://127.0.0.1:9/{z}/{x}/{y}.png"
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/tracker.db"


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server(map_tile_url=OFFLINE_TILES)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/ensure-chromium.sh` (root)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A phone: 390x844, touch, UTC, a dark system theme."""
    context = await browser.new_context(
        viewport=PHONE, has_touch=True, is_mobile=True, timezone_id="UTC", color_scheme="dark"
    )
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page that fails the test on any uncaught script error."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await page.close()
    assert errors == [], f"script errors on the page: {errors}"
