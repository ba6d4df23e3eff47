"""The store under test: every contract test runs on SQLite and on a real PostGIS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tracker.store import Store, open_store


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
