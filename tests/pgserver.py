"""A throwaway PostgreSQL + PostGIS server for tests and benchmarks.

    with PgServer() as pg:                      # initdb + start, on 127.0.0.1
        url = pg.create_database("t1")           # a fresh database with PostGIS
        ...                                      # postgresql://postgres@127.0.0.1:PORT/t1

With ``TRACKER_TEST_DATABASE_URL`` set, that server is used instead: nothing is
started, and the databases created on it are dropped again by ``stop()``.

An outage, for the servers started here (same data, same port):

    pg.stop_server()                             # clients lose their sessions
    pg.start_again()

As root, the cluster is initialised and run as the ``postgres`` OS user (the
server refuses to run as root), in a temporary directory owned by it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import asyncpg

ENV_URL = "TRACKER_TEST_DATABASE_URL"
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MISSING = (
    "PostgreSQL with PostGIS is not installed ({what}). Run scripts/ensure-postgis.sh "
    "(installs postgresql-15 and postgresql-15-postgis-3), or set "
    f"{ENV_URL}=postgresql://... to a server with PostGIS."
)


class PgServer:
    """One PostgreSQL server: started by us, or the one ``TRACKER_TEST_DATABASE_URL`` names.

    ``fsync=True`` by default so timings are honest; tests may turn it off.
    ``settings`` adds ``postgresql.conf`` lines (e.g. ``{"shared_buffers": "256MB"}``).
    """

    def __init__(self, *, fsync: bool = True, settings: Mapping[str, str] | None = None) -> None:
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.url = ""  # postgresql://... of the maintenance database, once started
        self.external = False
        self.directory: Path | None = None  # the data and socket directory, when ours
        self.port: int | None = None  # when ours
        self._bin_dir: Path | None = None
        self._owner: str | None = None
        self._created: list[str] = []
        self._stop: weakref.finalize[..., PgServer] | None = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PgServer:
        if url := os.environ.get(ENV_URL):
            self.url, self.external = url, True
            return self
        bin_dir = find_bin_dir()
        owner = "postgres" if os.geteuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="tracker-pg-"))
        if owner:
            shutil.chown(directory, owner, owner)
        # Stops the server and removes the directory on stop(), or at exit at the latest.
        self._stop = weakref.finalize(self, _shutdown, bin_dir, directory, owner)
        try:
            port = self._init_and_start(bin_dir, directory, owner)
        except BaseException:
            self.stop()
            raise
        self.directory, self.port = directory, port
        self._bin_dir, self._owner = bin_dir, owner
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self

    def _init_and_start(self, bin_dir: Path, directory: Path, owner: str | None) -> int:
        data = directory / "data"
        run(owner, directory, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{directory}'",
            "fsync": "on" if self.fsync else "off",
            **self.settings,
        }
        with (data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        attempts = 3  # the free port may be taken before the server binds it
        while True:
            port = free_port()
            try:
                run(owner, directory, bin_dir / "pg_ctl", "start", "-D", data, "-w", "-t", "60",
                    "-l", directory / "server.log", "-o", f"-p {port}")  # fmt: skip
                return port
            except RuntimeError:
                attempts -= 1
                if not attempts:
                    raise

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data and port, for ``start_again``: an outage.
        ``fast`` ends every session (as a restart does); ``immediate`` is a crash."""
        directory, bin_dir = self._ours()
        run(self._owner, directory, bin_dir / "pg_ctl", "stop", "-D", directory / "data",
            "-m", mode, "-w")  # fmt: skip

    def start_again(self) -> None:
        """Start the server ``stop_server`` stopped, on the same port and data."""
        directory, bin_dir = self._ours()
        run(self._owner, directory, bin_dir / "pg_ctl", "start", "-D", directory / "data",
            "-w", "-t", "60", "-l", directory / "server.log", "-o", f"-p {self.port}")  # fmt: skip

    def _ours(self) -> tuple[Path, Path]:
        if self.external or self.directory is None or self._bin_dir is None:
            raise RuntimeError("only a server started by PgServer can be stopped and started")
        return self.directory, self._bin_dir

    def stop(self) -> None:
        """Stop the server and remove its directory (or drop the databases we created)."""
        if self.external:
            names, self._created = self._created, []
            for name in names:
                self.drop_database(name)
        if self._stop is not None:
            self._stop()
        self.directory = self.port = self._bin_dir = None

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` and return its URL. Without ``template``, the new
        database gets ``CREATE EXTENSION postgis``; with one, it is a copy of it."""
        for each in (name, template):
            if each is not None and not NAME.fullmatch(each):
                raise ValueError(f"database name {each!r}: use [a-z_][a-z0-9_]*")
        if not self.url:
            raise RuntimeError("PgServer is not started")
        sql = f'CREATE DATABASE "{name}"'
        execute(self.url, sql + (f' TEMPLATE "{template}"' if template else ""))
        self._created.append(name)
        url = self.database_url(name)
        if template is None:
            execute(url, "CREATE EXTENSION IF NOT EXISTS postgis")
        return url

    def drop_database(self, name: str) -> None:
        if not NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*")
        execute(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def database_url(self, name: str) -> str:
        return urlsplit(self.url)._replace(path=f"/{name}").geturl()


def find_bin_dir() -> Path:
    """The bin directory of the newest PostgreSQL that has PostGIS."""
    found = sorted(
        (Path(initdb).parent for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(MISSING.format(what="no /usr/lib/postgresql/*/bin/initdb"))
    for bin_dir in reversed(found):
        if Path(f"/usr/share/postgresql/{bin_dir.parent.name}/extension/postgis.control").exists():
            return bin_dir
    raise RuntimeError(MISSING.format(what=f"PostgreSQL in {found[-1]} but no postgis.control"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(owner: str | None, cwd: Path, *command: str | Path) -> None:
    """Run a server program, as ``owner`` when given; RuntimeError with its output on failure."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        user=owner,
        group=owner,
        extra_groups=[] if owner else None,
        env={**os.environ, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log = cwd / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{Path(str(command[0])).name} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}{tail}"
        )


def execute(url: str, *statements: str) -> None:
    """Run SQL statements on ``url``, from sync code, whether or not a loop is running."""

    async def main() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, main()).result()


def _shutdown(bin_dir: Path, directory: Path, owner: str | None) -> None:
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        for mode in ("fast", "immediate"):
            try:
                run(owner, directory, bin_dir / "pg_ctl", "stop", "-D", data, "-m", mode, "-w")
                break
            except RuntimeError:
                continue
    shutil.rmtree(directory, ignore_errors=True)
