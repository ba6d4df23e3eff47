"""The page's files and its one server-side value, without a browser."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from tracker.page import mount_static, page_html
from tracker.settings import DEFAULT_TILE_URL, ConfigError, Settings, load


def test_the_tile_url_is_a_setting() -> None:
    assert load(environ={}).map_tile_url == DEFAULT_TILE_URL
    custom = "https://tiles.example.net/dark/{z}/{x}/{y}@2x.png?key=a&style=night"
    assert load(environ={"TRACKER_MAP_TILE_URL": custom}).map_tile_url == custom
    with pytest.raises(ConfigError, match=r"map\.tile_url: .*\{z\}"):
        load(environ={"TRACKER_MAP_TILE_URL": "https://tiles.example.net/map.png"})
    with pytest.raises(ConfigError, match=r"map\.tile_url: .*http"):
        load(environ={"TRACKER_MAP_TILE_URL": "javascript:alert(1)//{z}{x}{y}"})


def test_page_carries_the_tile_url_escaped() -> None:
    url = 'https://tiles.example.net/{z}/{x}/{y}.png?a=1&b="2"'
    html = page_html(Settings(map_tile_url=url))
    assert (
        '<meta name="tile-url" '
        'content="https://tiles.example.net/{z}/{x}/{y}.png?a=1&amp;b=&quot;2&quot;">' in html
    )
    assert "{{" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/leaflet/leaflet.js" in assets
    assert "/static/markercluster/leaflet.markercluster.js" in assets
    assert "/static/app/app.js" in assets
    assert all(a.startswith("/static/") for a in assets), assets  # no CDN


async def test_static_files_are_served() -> None:
    app = FastAPI()
    mount_static(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
        for path in (
            "/static/app/index.html",
            "/static/app/app.js",
            "/static/app/app.css",
            "/static/leaflet/leaflet.js",
            "/static/leaflet/leaflet.css",
            "/static/markercluster/leaflet.markercluster.js",
            "/static/markercluster/MarkerCluster.css",
        ):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert len(response.content) > 500, path
