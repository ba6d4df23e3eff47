"""Settings: TOML file, TRACKER_* overrides, one clear error naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tracker.settings import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracker.toml"
    path.write_text(text)
    return path


def test_defaults_listen_where_units_expect() -> None:
    settings = load(None, environ={})
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8082)
    assert settings.database_url == "sqlite:///var/tracker.db"
    gt06, osmand = settings.protocol("gt06"), settings.protocol("osmand")
    assert gt06 is not None
    assert gt06.port == 5023
    assert osmand is not None
    assert osmand.port == 5055
    assert settings.register_unknown_units is False


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
register_unknown_units = true
[http]
host = "0.0.0.0"
port = 9000
[database]
url = "postgresql://u@db/tracker"
[protocols.gt06]
port = 0
accept_bad_crc = true
[protocols.osmand]
port = 0
""",
    )
    settings = load(
        path,
        environ={
            "TRACKER_HTTP_PORT": "9100",
            "TRACKER_PROTOCOLS_GT06_PORT": "6023",
            "TRACKER_PROTOCOLS_OSMAND_PORT": "off",
        },
    )
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9100
    assert settings.database_url == "postgresql://u@db/tracker"
    assert settings.register_unknown_units is True
    gt06 = settings.protocol("gt06")
    assert gt06 is not None
    assert gt06.port == 6023
    assert gt06.accept_bad_crc
    osmand = settings.protocol("osmand")
    assert osmand is not None
    assert osmand.port is None


def test_port_zero_means_any_free_port(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "[http]\nport = 0\n[protocols.gt06]\nport = 0\n"), environ={})
    assert settings.http_port == 0
    gt06 = settings.protocol("gt06")
    assert gt06 is not None
    assert gt06.port == 0


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ("[http]\nport = 'abc'\n", {}, "http.port"),
        ("[http]\nport = 70000\n", {}, "http.port"),
        ("[http]\nport = 1.5\n", {}, "http.port"),  # not cut to port 1
        ("[store]\nbatch_max_rows = 2.7\n", {}, "store.batch_max_rows"),
        ("[database]\nurl = 'mysql://x'\n", {}, "database.url"),
        ("[htp]\nport = 1\n", {}, "htp.port"),
        ("", {"TRACKER_REGISTER_UNKNOWN_UNITS": "maybe"}, "register_unknown_units"),
        ("[protocols.gt06]\nport = -1\n", {}, "protocols.gt06.port"),
        ("[protocols.osmand]\nspeed_unit = 'furlongs'\n", {}, "protocols.osmand.speed_unit"),
        ("not toml [", {}, "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, text), environ=environ)


def test_cli_bad_config_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 'abc'\n")
    result = subprocess.run(
        [sys.executable, "-m", "tracker", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tracker: config error: http.port: expected an integer, got 'abc'"
    ]


def test_the_readme_example_config_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml", 1)[1].split("```", 1)[0]
    settings = load(write(tmp_path, example), environ={})
    assert settings.http_port == 8082
    gt06 = settings.protocol("gt06")
    assert gt06 is not None
    assert gt06.port == 5023


def test_outage_and_shutdown_settings(tmp_path: Path) -> None:
    assert load(None, environ={}).max_pending_rows == 100_000
    assert load(None, environ={}).shutdown_grace_s == 10.0
    path = write(tmp_path, "[store]\nmax_pending_rows = 5000\n[server]\nshutdown_grace_s = 2.5\n")
    settings = load(path, environ={"TRACKER_SERVER_SHUTDOWN_GRACE_S": "4"})
    assert (settings.max_pending_rows, settings.shutdown_grace_s) == (5000, 4.0)
    with pytest.raises(ConfigError, match=r"store\.max_pending_rows"):
        load(None, environ={"TRACKER_STORE_MAX_PENDING_ROWS": "0"})


def test_batch_writers(tmp_path: Path) -> None:
    assert load(None, environ={}).batch_writers == 2
    assert load(write(tmp_path, "[store]\nbatch_writers = 1\n"), environ={}).batch_writers == 1
    assert load(None, environ={"TRACKER_STORE_BATCH_WRITERS": "3"}).batch_writers == 3
    with pytest.raises(ConfigError, match=r"store\.batch_writers"):
        load(None, environ={"TRACKER_STORE_BATCH_WRITERS": "0"})


def test_closed_months_are_reindexed_unless_turned_off(tmp_path: Path) -> None:
    assert load(None, environ={}).retention_reindex_closed_months is True
    text = "[retention]\nreindex_closed_months = false\n"
    assert load(write(tmp_path, text), environ={}).retention_reindex_closed_months is False
