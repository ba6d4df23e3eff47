"""Fixtures shared by every test directory."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer

# Holds the PostGIS extension; each test's database is a copy of it (about 0.1 s).
# The process id keeps parallel runs apart on a shared TRACKER_TEST_DATABASE_URL server.
TEMPLATE = f"tracker_template_{os.getpid()}"
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL + PostGIS for the session (or ``TRACKER_TEST_DATABASE_URL``)."""
    with PgServer() as server:
        server.create_database(TEMPLATE)
        yield server


@pytest.fixture
def postgis_url(pg_server: PgServer) -> Iterator[str]:
    """The ``postgresql://`` URL of a fresh database with PostGIS and no tables,
    dropped after the test."""
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    url = pg_server.create_database(name, template=TEMPLATE)
    yield url
    pg_server.drop_database(name)
