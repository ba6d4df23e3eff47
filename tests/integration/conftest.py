"""The store under test: every contract test runs on SQLite and on a real PostGIS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tracker.store import Store, open_store
from tracker.store.postgis import PostgisStore


@pytest.fixture(params=["sqlite", pytest.param("postgis", marks=pytest.mark.postgis)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'tracker.db'}"
    url: str = request.getfixturevalue("postgis_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def postgis_store(postgis_url: str) -> AsyncIterator[PostgisStore]:
    """An open PostGIS store on a fresh database, for what only PostGIS does."""
    opened = PostgisStore(postgis_url)
    await opened.open()
    yield opened
    await opened.close()
