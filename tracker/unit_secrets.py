"""Per-unit secrets for the OsmAnd HTTP endpoint, derived, not stored.

A unit's secret is HMAC-SHA256(server secret, unique_id) in hex, its first 32
characters (128 bits). The server secret is a random value in
``<data_dir>/unit_secret``, made on first use like the admin key. Deriving
means nothing to store per unit and nothing to migrate: registering a unit
gives it a secret already. Replacing the file changes every unit's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

FILE_NAME = "unit_secret"
SECRET_CHARS = 32


def server_secret(data_dir: Path) -> bytes:
    """The server secret in ``data_dir``, made (mode 0600) when it is not there yet."""
    path = data_dir / FILE_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty: delete it to have a new one made")
    return secret.encode()


class UnitSecrets:
    """Unit secrets of one data directory; reads (or makes) the server secret on first use."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._key: bytes | None = None

    def secret(self, unique_id: str) -> str:
        """The secret the unit ``unique_id`` sends as ``secret=``."""
        if self._key is None:
            self._key = server_secret(self._data_dir)
        digest = hmac.new(self._key, unique_id.encode(), hashlib.sha256).hexdigest()
        return digest[:SECRET_CHARS]

    def check(self, unique_id: str, given: str) -> bool:
        """Whether ``given`` is the unit's secret, compared in constant time."""
        expected = self.secret(unique_id).encode()
        return hmac.compare_digest(expected, given.encode("utf-8", "replace"))
