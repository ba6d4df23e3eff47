"""Unit secrets: derived from the unit id and the server secret, checked in
constant time, taken out of OsmAnd requests before decoding."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from tracker import settings
from tracker.osmand_http import take_secret
from tracker.unit_secrets import FILE_NAME, SECRET_CHARS, UnitSecrets, server_secret


def test_a_unit_secret_is_the_hmac_of_its_id(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("server-secret\n")
    expected = hmac.new(b"server-secret", b"48241179", hashlib.sha256).hexdigest()[:32]
    secrets = UnitSecrets(tmp_path)
    assert secrets.secret("48241179") == expected
    assert secrets.check("48241179", expected)
    assert not secrets.check("48241180", expected)
    assert not secrets.check("48241179", expected[:-1])
    assert not secrets.check("48241179", "\u00e9" * SECRET_CHARS)


def test_the_server_secret_is_made_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    first = server_secret(data_dir)
    assert len(first) >= 32
    assert server_secret(data_dir) == first
    assert (data_dir / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_an_empty_server_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("\n")
    with pytest.raises(ValueError, match="delete it"):
        UnitSecrets(tmp_path).secret("1")


def test_secret_is_taken_out_of_query_and_form() -> None:
    query = "id=1&secret=abc&lat=52.5&timestamp=2026-01-01T10:00:00+02:00"
    secret, rest, body = take_secret("GET", query, b"", None)
    assert secret == "abc"
    assert "secret" not in rest
    assert body == b""
    secret, rest, body = take_secret("POST", "id=1", b"lat=1&secret=xyz&lon=2", None)
    assert (secret, rest, body) == ("xyz", "id=1", b"lat=1&lon=2")
    # a JSON body is not a form: only the query can carry the secret
    json_body = b'{"secret": "no"}'
    assert take_secret("POST", "", json_body, "application/json") == (None, "", json_body)


def test_require_secret_is_a_key_of_http_protocols_only() -> None:
    loaded = settings.load(environ={"TRACKER_PROTOCOLS_OSMAND_REQUIRE_SECRET": "true"})
    osmand = loaded.protocol("osmand")
    assert osmand is not None
    assert osmand.require_secret is True
    default = settings.load(environ={}).protocol("osmand")
    assert default is not None
    assert default.require_secret is False


def test_require_secret_on_a_tcp_protocol_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text("[protocols.gt06]\nrequire_secret = true\n")
    with pytest.raises(settings.ConfigError, match=r"protocols\.gt06\.require_secret"):
        settings.load(config, environ={})
