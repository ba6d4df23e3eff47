"""Users, API keys, assignees, share links and the audit log on SQLite.

``AccessDb`` holds the blocking half (a mixin of ``SqliteDb``: it needs the
connection and its ``transaction``), ``SqliteAccess`` the coroutines of
``SqliteStore`` that run it on the store's worker thread. The audit log is
append-only: triggers (migration 0004) abort every UPDATE and DELETE of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import orjson

from tracker.store.base import ApiKey, AuditEntry, Share, User
from tracker.store.sqlite_codec import from_us, from_us_or_none, json_text, to_us, to_us_or_none

P = ParamSpec("P")
T = TypeVar("T")

USER_FIELDS = "u.id, u.name, u.role, u.created_at"
# In ApiKey's, Share's and AuditEntry's field orders.
KEY_FIELDS = "k.id, k.user_id, k.key_hash, k.prefix, k.created_at, k.revoked_at"
SHARE_FIELDS = (
    "s.id, s.vehicle_id, s.token_hash, s.created_by, s.created_at, s.expires_at, s.history_h,"
    " s.revoked_at"
)
AUDIT_FIELDS = "a.at, a.actor, a.action, a.vehicle_id, a.remote_addr, a.details, a.seq"

# not INSERT OR REPLACE: that deletes the row first, and its keys and assignments with it
UPSERT_USER = """
INSERT INTO users (id, name, role, created_at) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE
SET name = excluded.name, role = excluded.role, created_at = excluded.created_at
"""

KEY_BY_HASH = f"""
SELECT {KEY_FIELDS}, {USER_FIELDS}
FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE k.key_hash = ? AND k.revoked_at IS NULL
"""


class AccessDb:
    """The blocking half: ``SqliteDb`` provides ``conn`` and ``transaction``."""

    conn: sqlite3.Connection

    def transaction(
        self, begin: str = "BEGIN IMMEDIATE"
    ) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SqliteDb's

    def put_user(self, user: User) -> None:
        with self.transaction() as conn:
            conn.execute(UPSERT_USER, (user.id, user.name, user.role, to_us(user.created_at)))

    def users(self, where: str, *args: Any) -> list[User]:
        rows = self.conn.execute(f"SELECT {USER_FIELDS} FROM users u {where}", args)
        return [_user(r) for r in rows]

    def add_key(self, key: ApiKey) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key.id, key.user_id, key.key_hash, key.prefix, to_us(key.created_at),
                 to_us_or_none(key.revoked_at)),
            )  # fmt: skip

    def revoke(self, table: str, row_id: str, at: datetime) -> bool:
        """Revoke an API key or a share, unless it is revoked already."""
        with self.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (to_us(at), row_id),
            )
        return cursor.rowcount > 0

    def user_keys(self, user_id: str) -> list[ApiKey]:
        rows = self.conn.execute(
            f"SELECT {KEY_FIELDS} FROM api_keys k WHERE k.user_id = ? ORDER BY k.created_at, k.id",
            (user_id,),
        )
        return [_key(r) for r in rows]

    def key_by_hash(self, key_hash: str) -> tuple[ApiKey, User] | None:
        row = self.conn.execute(KEY_BY_HASH, (key_hash,)).fetchone()
        return None if row is None else (_key(row[:6]), _user(row[6:]))

    def set_assignees(self, vehicle_id: str, user_ids: Sequence[str]) -> bool:
        with self.transaction() as conn:
            found = conn.execute("SELECT 1 FROM vehicles WHERE vehicle_id = ?", (vehicle_id,))
            if found.fetchone() is None:
                return False
            conn.execute("DELETE FROM vehicle_assignees WHERE vehicle_id = ?", (vehicle_id,))
            # an unknown user id: the foreign key's IntegrityError, nothing changed
            conn.executemany(
                "INSERT INTO vehicle_assignees (vehicle_id, user_id) VALUES (?, ?)",
                [(vehicle_id, user_id) for user_id in sorted(set(user_ids))],
            )
        return True

    def add_share(self, share: Share) -> None:
        with self.transaction() as conn:
            conn.execute(
                f"INSERT INTO shares ({SHARE_FIELDS.replace('s.', '')})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (share.id, share.vehicle_id, share.token_hash, share.created_by,
                 to_us(share.created_at), to_us(share.expires_at), share.history_h,
                 to_us_or_none(share.revoked_at)),
            )  # fmt: skip

    def shares(self, where: str, *args: Any) -> list[Share]:
        rows = self.conn.execute(f"SELECT {SHARE_FIELDS} FROM shares s {where}", args)
        return [
            Share(sid, vid, token_hash, created_by, from_us(created_at), from_us(expires_at),
                  history_h, from_us_or_none(revoked_at))
            for sid, vid, token_hash, created_by, created_at, expires_at, history_h, revoked_at
            in rows
        ]  # fmt: skip

    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO audit_log (at, actor, action, vehicle_id, remote_addr, details)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (to_us(e.at), e.actor, e.action, e.vehicle_id, e.remote_addr,
                     json_text(e.details))
                    for e in entries
                ],
            )  # fmt: skip

    def audit(
        self,
        actor: str | None,
        vehicle_id: str | None,
        action: str | None,
        since: datetime | None,
        until: datetime | None,
        before: int | None,
        limit: int,
    ) -> list[AuditEntry]:
        args: list[Any] = []
        where = ["1"]
        if vehicle_id is not None:  # its own entries, or one naming it among many
            args += [vehicle_id, vehicle_id]
            where.append(
                "(a.vehicle_id = ? OR EXISTS (SELECT 1 FROM json_each(a.details, '$.vehicles')"
                " WHERE value IN (?, '*')))"
            )
        for condition, value in [
            ("a.actor = ?", actor),
            ("a.action = ?", action),
            ("a.at >= ?", to_us_or_none(since)),
            ("a.at < ?", to_us_or_none(until)),
            ("a.seq < ?", before),
        ]:
            if value is not None:
                args.append(value)
                where.append(condition)
        rows = self.conn.execute(
            f"SELECT {AUDIT_FIELDS} FROM audit_log a WHERE {' AND '.join(where)}"
            " ORDER BY a.seq DESC LIMIT ?",
            (*args, limit),
        )
        return [
            AuditEntry(from_us(at), actor, action, vid, addr, orjson.loads(details), seq)
            for at, actor, action, vid, addr, details, seq in rows
        ]


class SqliteAccess:
    """The coroutines: ``SqliteStore`` provides ``_db`` and ``_run`` (its worker thread)."""

    @property
    def _db(self) -> AccessDb:
        raise NotImplementedError  # SqliteStore's

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError  # SqliteStore's

    # users, keys, assignees

    async def put_user(self, user: User) -> None:
        await self._run(self._db.put_user, user)

    async def get_user(self, user_id: str) -> User | None:
        users = await self._run(self._db.users, "WHERE u.id = ?", user_id)
        return users[0] if users else None

    async def list_users(self) -> list[User]:
        return await self._run(self._db.users, "ORDER BY u.id")

    async def add_key(self, key: ApiKey) -> None:
        await self._run(self._db.add_key, key)

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        return await self._run(self._db.revoke, "api_keys", key_id, at)

    async def user_keys(self, user_id: str) -> list[ApiKey]:
        return await self._run(self._db.user_keys, user_id)

    async def key_by_hash(self, key_hash: str) -> tuple[ApiKey, User] | None:
        return await self._run(self._db.key_by_hash, key_hash)

    async def set_assignees(self, vehicle_id: str, user_ids: Sequence[str]) -> bool:
        return await self._run(self._db.set_assignees, vehicle_id, list(user_ids))

    # share links

    async def add_share(self, share: Share) -> None:
        await self._run(self._db.add_share, share)

    async def get_share(self, share_id: str) -> Share | None:
        shares = await self._run(self._db.shares, "WHERE s.id = ?", share_id)
        return shares[0] if shares else None

    async def share_by_hash(self, token_hash: str) -> Share | None:
        shares = await self._run(self._db.shares, "WHERE s.token_hash = ?", token_hash)
        return shares[0] if shares else None

    async def revoke_share(self, share_id: str, at: datetime) -> bool:
        return await self._run(self._db.revoke, "shares", share_id, at)

    async def list_shares(self, *, vehicle_id: str | None = None) -> list[Share]:
        order = "ORDER BY s.created_at DESC, s.id DESC"
        if vehicle_id is None:
            return await self._run(self._db.shares, order)
        return await self._run(self._db.shares, f"WHERE s.vehicle_id = ? {order}", vehicle_id)

    # audit log

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if entries:
            await self._run(self._db.append_audit, list(entries))

    async def audit(
        self,
        *,
        actor: str | None = None,
        vehicle_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        db, limit = self._db, max(limit, 0)
        return await self._run(db.audit, actor, vehicle_id, action, since, until, before, limit)


def _user(row: Sequence[Any]) -> User:
    user_id, name, role, created_at = row
    return User(user_id, name, role, from_us(created_at))


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, user_id, key_hash, prefix, created_at, revoked_at = row
    return ApiKey(
        key_id, user_id, key_hash, prefix, from_us(created_at), from_us_or_none(revoked_at)
    )
