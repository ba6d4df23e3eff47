"""The recovery team's live map at ``/`` (and a share link's view at ``/share/{token}``).

The page is plain static files in ``tracker/static`` (HTML, JS, CSS; no build
step), served at ``/static/app``. Leaflet and Leaflet.markercluster come from
their xstatic packages, a real dependency rather than a copied file, and no CDN.
The one thing the server fills in is the tile URL (``map.tile_url``), as a
``<meta name="tile-url">`` the script reads.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

import xstatic.pkg.leaflet as leaflet
import xstatic.pkg.leaflet_markercluster as markercluster
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tracker.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
TILE_URL_SLOT = "{{tile_url}}"


def mount_static(app: FastAPI) -> None:
    app.mount("/static/app", StaticFiles(directory=STATIC_DIR), name="app")
    app.mount("/static/leaflet", StaticFiles(directory=leaflet.BASE_DIR), name="leaflet")
    app.mount(
        "/static/markercluster",
        StaticFiles(directory=markercluster.BASE_DIR),
        name="markercluster",
    )


@cache
def _template() -> str:
    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if TILE_URL_SLOT not in text:
        raise RuntimeError(f"{STATIC_DIR / 'index.html'} lost its {TILE_URL_SLOT} slot")
    return text


def page_html(settings: Settings) -> str:
    """index.html with this server's tile URL in it (HTML-escaped)."""
    return _template().replace(TILE_URL_SLOT, html.escape(settings.map_tile_url, quote=True))
