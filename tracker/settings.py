"""Settings: one frozen dataclass from a TOML file plus ``TRACKER_*`` variables.

Nothing else in the server reads ``os.environ``. Every key has a dotted name
(``http.port``, ``protocols.gt06.port``); the matching environment variable is
``TRACKER_`` plus the name upper-cased with dots as underscores
(``TRACKER_HTTP_PORT``, ``TRACKER_PROTOCOLS_GT06_PORT``). Environment wins over
the file. A bad value raises ``ConfigError`` naming the key; the CLI prints it
on one line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.rules import RuleSettings

# Default ports follow the most widely deployed open tracking server, so a unit
# configured for it works unchanged.
DEFAULT_PORTS: dict[str, int] = {
    "gt06": 5023,
    "jt808": 5015,
    "h02": 5013,
    "teltonika": 5027,
    "osmand": 5055,
    "tk103": 5002,
    "queclink": 5004,
    "meitrack": 5020,
    "watch": 5093,
}
HTTP_PROTOCOLS = frozenset({"osmand"})
DEFAULT_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_LOGIN_TIMEOUT_S = 30.0


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    name: str
    port: int | None  # None: not listening; 0: any free port
    host: str = "0.0.0.0"
    accept_bad_crc: bool = False
    udp: bool = False  # also listen for UDP datagrams on the same port number
    speed_unit: str = "kn"  # OsmAnd only: kn, kmh, mps, mph
    # TCP: close a connection silent this long, or not identified (no login) this long after
    # it opened; UDP: forget a peer silent this long. Not used by HTTP protocols.
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    login_timeout_s: float = DEFAULT_LOGIN_TIMEOUT_S
    # HTTP protocols only: each request carries the unit's secret= (tracker/unit_secrets.py)
    require_secret: bool = False


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Limits on TCP connections of units, shared by every binary protocol (``gateway.*``)."""

    max_connections: int = 100_000
    max_connections_per_ip: int = 100  # units behind one carrier NAT share an address
    max_bytes_before_login: int = 4096  # without a message from a known unit: close
    max_frames_per_s: int = 200  # per connection, bursts of one second's worth; then pushback


@dataclass(frozen=True, slots=True)
class Settings:
    http_host: str = "127.0.0.1"
    http_port: int = 8082
    database_url: str = "sqlite:///var/tracker.db"
    data_dir: Path = Path("var")
    admin_key: str | None = None
    register_unknown_units: bool = False
    batch_max_rows: int = 2000
    batch_max_delay_ms: float = 5.0
    batch_writers: int = 2  # batches written at once, each on a store connection of its own
    # positions held unacknowledged while the store is down; past it, units are not read
    max_pending_rows: int = 100_000
    shutdown_grace_s: float = 10.0  # SIGTERM: time to store and acknowledge what is in flight
    future_limit_s: int = 86_400
    map_tile_url: str = DEFAULT_TILE_URL  # the live map's base layer; markers work without it
    rules: RuleSettings = field(default_factory=RuleSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    # recovery and viewer users see positions only of vehicles in these loan states
    position_loan_states: frozenset[str] = frozenset({"delinquent", "recovery"})
    retention_positions_days: float = 180.0
    retention_closed_purge_days: float = 30.0
    retention_reindex_closed_months: bool = True  # PostGIS: once a month is over
    metrics_token: str | None = None  # GET /metrics wants "Authorization: Bearer <it>" when set
    log_format: str = "text"  # or "json": one object per line
    log_level: str = "INFO"
    protocols: tuple[ProtocolSettings, ...] = field(
        default_factory=lambda: tuple(
            ProtocolSettings(name, port, udp=name in _udp_protocols())
            for name, port in DEFAULT_PORTS.items()
        )
    )

    def protocol(self, name: str) -> ProtocolSettings | None:
        return next((p for p in self.protocols if p.name == name), None)


def _port(value: Any) -> int | None:
    # careful: 0 == False in Python, and 0 means "any free port"
    if value is None or value is False or str(value).strip().lower() in ("", "off", "none"):
        return None
    port = _int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port 0-65535 (0: any free port), got {value!r}")
    return port


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected an integer, got {value!r}")  # int() would cut 1.5 to 1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected an integer, got {value!r}") from None


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def _positive_float(value: Any) -> float:
    number = _float(value)
    if number <= 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _database_url(value: Any) -> str:
    url = _str(value)
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError(f"expected sqlite:///path or postgresql://..., got {url!r}")
    return url


LOAN_STATES = ("current", "delinquent", "recovery", "closed")


def _loan_states(value: Any) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of loan states, got {value!r}")
    states = frozenset(str(item).strip() for item in items if str(item).strip())
    if unknown := sorted(states - set(LOAN_STATES)):
        raise ValueError(f"unknown loan state {unknown[0]!r}; use {', '.join(LOAN_STATES)}")
    return states


def _tile_url(value: Any) -> str:
    url = _str(value)
    if any(part not in url for part in ("{z}", "{x}", "{y}")):
        raise ValueError(f"expected a tile URL template with {{z}}, {{x}} and {{y}}, got {url!r}")
    if not url.startswith(("https://", "http://", "/")):
        raise ValueError(f"expected an http(s):// or /path tile URL, got {url!r}")
    return url


def _speed_unit(value: Any) -> str:
    unit = _str(value)
    if unit not in ("kn", "kmh", "mps", "mph"):
        raise ValueError(f"expected one of kn, kmh, mps, mph, got {value!r}")
    return unit


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_format(value: Any) -> str:
    text = _str(value).lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return text


def _log_level(value: Any) -> str:
    level = _str(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


# dotted key -> parser. Protocol keys are added per known protocol below.
_KEYS: dict[str, Callable[[Any], Any]] = {
    "http.host": _str,
    "http.port": _port,
    "database.url": _database_url,
    "data_dir": _str,
    "admin_key": _str,
    "register_unknown_units": _bool,
    "store.batch_max_rows": _positive_int,
    "store.batch_max_delay_ms": _float,
    "store.batch_writers": _positive_int,
    "store.max_pending_rows": _positive_int,
    "server.shutdown_grace_s": _float,
    "filters.future_limit_s": _positive_int,
    "map.tile_url": _tile_url,
    "access.position_loan_states": _loan_states,
    "retention.positions_days": _float,
    "retention.closed_purge_days": _float,
    "retention.reindex_closed_months": _bool,
    "gateway.max_connections": _positive_int,
    "gateway.max_connections_per_ip": _positive_int,
    "gateway.max_bytes_before_login": _positive_int,
    "gateway.max_frames_per_s": _positive_int,
    "metrics.token": _str,
    "log.format": _log_format,
    "log.level": _log_level,
}
_PROTOCOL_KEYS: dict[str, Callable[[Any], Any]] = {
    "port": _port,
    "host": _str,
    "accept_bad_crc": _bool,
    "udp": _bool,
    "speed_unit": _speed_unit,
    "idle_timeout_s": _positive_float,
    "login_timeout_s": _positive_float,
}
# Keys of the HTTP protocols only: a TCP unit has no way to send a secret.
_HTTP_PROTOCOL_KEYS: dict[str, Callable[[Any], Any]] = {"require_secret": _bool}


def _rule_keys() -> dict[str, Callable[[Any], Any]]:
    keys: dict[str, Callable[[Any], Any]] = {}
    for item in dataclasses.fields(RuleSettings):
        keys[f"rules.{item.name}"] = _positive_int if item.type in ("int", int) else _float
    return keys


def _known_protocols() -> list[str]:
    from protocols import CODECS

    return sorted(set(CODECS) | HTTP_PROTOCOLS)


def _udp_protocols() -> frozenset[str]:
    from protocols import UDP

    return UDP


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from an optional TOML file and the environment.

    Raises:
        ConfigError: unreadable file, unknown key or bad value; names the key.
    """
    environ = os.environ if environ is None else environ
    keys = dict(_KEYS) | _rule_keys()
    for proto in _known_protocols():
        for key, parse in _PROTOCOL_KEYS.items():
            keys[f"protocols.{proto}.{key}"] = parse
        if proto in HTTP_PROTOCOLS:
            for key, parse in _HTTP_PROTOCOL_KEYS.items():
                keys[f"protocols.{proto}.{key}"] = parse

    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                raw = _flatten(tomllib.load(file))
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: not valid TOML: {exc}") from None
        for key in raw:
            if key not in keys:
                raise ConfigError(f"{key}: unknown key in {str(path)!r}")
    for key in keys:
        env_name = "TRACKER_" + key.upper().replace(".", "_")
        if env_name in environ:
            raw[key] = environ[env_name]

    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = keys[key](value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return _build(values)


def _build(values: dict[str, Any]) -> Settings:
    defaults = Settings()
    protocols = []
    for proto in _known_protocols():
        prefix = f"protocols.{proto}."
        port_key = prefix + "port"
        port = values[port_key] if port_key in values else DEFAULT_PORTS.get(proto)
        protocols.append(
            ProtocolSettings(
                name=proto,
                port=port,
                host=values.get(prefix + "host", "0.0.0.0"),
                accept_bad_crc=values.get(prefix + "accept_bad_crc", False),
                udp=values.get(prefix + "udp", proto in _udp_protocols()),
                speed_unit=values.get(prefix + "speed_unit", "kn"),
                idle_timeout_s=values.get(prefix + "idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S),
                login_timeout_s=values.get(prefix + "login_timeout_s", DEFAULT_LOGIN_TIMEOUT_S),
                require_secret=values.get(prefix + "require_secret", False),
            )
        )
    http_port = values.get("http.port", defaults.http_port)
    if http_port is None:
        raise ConfigError("http.port: the REST API needs a port (0: any free port)")
    return Settings(
        http_host=values.get("http.host", defaults.http_host),
        http_port=http_port,
        database_url=values.get("database.url", defaults.database_url),
        data_dir=Path(values.get("data_dir", str(defaults.data_dir))),
        admin_key=values.get("admin_key"),
        register_unknown_units=values.get("register_unknown_units", False),
        batch_max_rows=values.get("store.batch_max_rows", defaults.batch_max_rows),
        batch_max_delay_ms=values.get("store.batch_max_delay_ms", defaults.batch_max_delay_ms),
        batch_writers=values.get("store.batch_writers", defaults.batch_writers),
        max_pending_rows=values.get("store.max_pending_rows", defaults.max_pending_rows),
        shutdown_grace_s=values.get("server.shutdown_grace_s", defaults.shutdown_grace_s),
        future_limit_s=values.get("filters.future_limit_s", defaults.future_limit_s),
        map_tile_url=values.get("map.tile_url", defaults.map_tile_url),
        protocols=tuple(protocols),
        position_loan_states=values.get(
            "access.position_loan_states", defaults.position_loan_states
        ),
        retention_positions_days=values.get(
            "retention.positions_days", defaults.retention_positions_days
        ),
        retention_closed_purge_days=values.get(
            "retention.closed_purge_days", defaults.retention_closed_purge_days
        ),
        retention_reindex_closed_months=values.get(
            "retention.reindex_closed_months", defaults.retention_reindex_closed_months
        ),
        metrics_token=values.get("metrics.token"),
        log_format=values.get("log.format", defaults.log_format),
        log_level=values.get("log.level", defaults.log_level),
        rules=RuleSettings(
            **{k.removeprefix("rules."): v for k, v in values.items() if k.startswith("rules.")}
        ),
        gateway=GatewaySettings(
            **{k.removeprefix("gateway."): v for k, v in values.items() if k.startswith("gateway.")}
        ),
    )
