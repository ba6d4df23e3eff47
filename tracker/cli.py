"""The ``tracker`` command: serve, migrate, decode, simulate."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

import tracker
from protocols.messages import Heartbeat, Message, Other, Position
from tracker import logs
from tracker import settings as settings_module
from tracker.settings import ConfigError, Settings

EXIT_CONFIG = 2


def _load(args: argparse.Namespace) -> Settings:
    try:
        return settings_module.load(args.config)
    except ConfigError as exc:
        print(f"tracker: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    from tracker.server import serve

    settings = _load(args)
    logs.configure(settings.log_format, (args.log_level or settings.log_level).upper())
    try:
        status: int = _run(serve(settings))  # 1: stopped before storing all it was sent
    except OSError as exc:
        print(f"tracker: cannot start: {exc}", file=sys.stderr)
        return 1
    return status


def cmd_migrate(args: argparse.Namespace) -> int:
    from tracker.server import _prepare_sqlite_path
    from tracker.store import open_store

    settings = _load(args)

    async def migrate() -> list[str]:
        if settings.database_url.startswith("sqlite:"):
            _prepare_sqlite_path(settings.database_url)
        store = open_store(settings.database_url)
        await store.open()  # open() applies what is pending
        try:
            return await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    print(f"tracker: schema up to date ({settings.database_url.split('://')[0]})")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _message_json(message: Message) -> dict[str, Any]:
    """One decoded message as ``tracker decode --json`` prints it."""
    body: dict[str, Any] = {"type": type(message).__name__.lower(), "unique_id": message.unique_id}
    if isinstance(message, Position):
        body |= {
            "fix_time": message.fix_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "lat": message.lat,
            "lon": message.lon,
            "speed_kmh": message.speed_kmh,
            "course": message.course_deg,
            "valid": message.valid,
            "satellites": message.satellites,
            "altitude_m": message.altitude_m,
            "accuracy_m": message.accuracy_m,
            "attributes": message.attributes,
        }
    elif isinstance(message, Heartbeat):
        body["attributes"] = message.attributes
    elif isinstance(message, Other):
        body["kind"] = message.kind
    body["raw"] = message.raw
    return body


def _packet(text: str, force_text: bool) -> bytes:
    """Hex (spaces, colons and a 0x prefix allowed) unless it is not hex or ``--text``."""
    if not force_text:
        compact = text.strip().removeprefix("0x").replace(" ", "").replace(":", "")
        try:
            return bytes.fromhex(compact)
        except ValueError:
            pass
    return text.encode().decode("unicode_escape").encode("latin-1")  # \r\n typed as such


def cmd_decode(args: argparse.Namespace) -> int:
    import protocols
    from protocols import osmand

    messages: list[Message]
    if args.protocol == "osmand":
        query = args.data.split("?", 1)[-1]
        try:
            messages = [osmand.decode("GET", query, b"", None, now=datetime.now(UTC))]
        except osmand.OsmandError as exc:
            print(f"tracker: nothing decoded: {exc}", file=sys.stderr)
            return 1
        dropped: dict[str, int] = {}
    else:
        try:
            options = {"accept_bad_crc": True} if args.accept_bad_crc else {}
            codec = protocols.open(args.protocol, **options)
        except ValueError as exc:
            print(f"tracker: {exc}", file=sys.stderr)
            return 1
        try:
            messages = codec.feed(_packet(args.data, args.text))
        except protocols.ProtocolError as exc:
            print(f"tracker: nothing decoded: {exc}", file=sys.stderr)
            return 1
        dropped = dict(codec.stats)
    if not messages:
        why = f" (dropped: {dropped})" if dropped else " (an incomplete frame?)"
        print(f"tracker: nothing decoded from that {args.protocol} data{why}", file=sys.stderr)
        return 1
    for message in messages:
        body = _jsonable(_message_json(message))
        reply = message.reply.hex() if message.reply is not None else None
        if args.json:
            print(json.dumps(body))
            if reply is not None:
                print(json.dumps({"type": "reply", "reply": reply}))
        else:
            print(json.dumps(body | {"reply": reply}, indent=2))
    if dropped:
        print(f"tracker: also dropped: {dropped}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tracker.simulate import run_simulation

    asyncio.run(
        run_simulation(
            host=args.host,
            port=args.port,
            units=args.units,
            interval_s=args.interval,
            duration_s=args.duration,
            first_imei=args.first_imei,
            lat=args.lat,
            lon=args.lon,
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tracker", description=tracker.__doc__)
    top.add_argument("--version", action="version", version=tracker.__version__)
    top.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING (default: the log.level setting, INFO)"
    )
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server until Ctrl-C / SIGTERM")
    serve.add_argument("--config", help="TOML file; TRACKER_* variables override it")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.add_argument("--config", help="TOML file; TRACKER_* variables override it")
    migrate.set_defaults(func=cmd_migrate)

    decode = commands.add_parser("decode", help="show what a pasted packet decodes to")
    decode.add_argument("protocol", help="gt06, osmand, ...")
    decode.add_argument(
        "data", help="hex bytes (spaces allowed), text (text protocols), or the OsmAnd query/URL"
    )
    decode.add_argument("--text", action="store_true", help="take data as text even if it is hex")
    decode.add_argument(
        "--accept-bad-crc", action="store_true", help="decode frames whose checksum is wrong"
    )
    decode.add_argument(
        "--json", action="store_true", help="one JSON object per line: each message, its reply"
    )
    decode.set_defaults(func=cmd_decode)

    simulate = commands.add_parser("simulate", help="fake GT06 units driving around")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=5023)
    simulate.add_argument("--units", type=int, default=5)
    simulate.add_argument("--interval", type=float, default=10.0, help="seconds between fixes")
    simulate.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    simulate.add_argument("--first-imei", type=int, default=860000000000001)
    simulate.add_argument("--lat", type=float, default=-6.2)
    simulate.add_argument("--lon", type=float, default=106.8)
    simulate.set_defaults(func=cmd_simulate)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure("text", (args.log_level or "INFO").upper())  # serve: log.format, log.level
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
