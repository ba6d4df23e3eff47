"""Users, API keys, assignees, share links and the audit log on PostGIS.

``PostgisAccess`` is a mixin of ``PostgisStore``, needing only its asyncpg pool.
The audit log is append-only: a trigger (migration 0004) refuses every UPDATE,
DELETE and TRUNCATE of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from tracker.store.base import ApiKey, AuditEntry, Share, User

USER_FIELDS = "u.id, u.name, u.role, u.created_at"
# In ApiKey's, Share's and AuditEntry's field orders.
KEY_FIELDS = "k.id, k.user_id, k.key_hash, k.prefix, k.created_at, k.revoked_at"
SHARE_FIELDS = (
    "s.id, s.vehicle_id, s.token_hash, s.created_by, s.created_at, s.expires_at, s.history_h,"
    " s.revoked_at"
)
AUDIT_FIELDS = "a.at, a.actor, a.action, a.vehicle_id, a.remote_addr, a.details, a.seq"

UPSERT_USER = """
INSERT INTO users (id, name, role, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE
SET name = EXCLUDED.name, role = EXCLUDED.role, created_at = EXCLUDED.created_at
"""

KEY_BY_HASH = f"""
SELECT {KEY_FIELDS}, {USER_FIELDS}
FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL
"""

INSERT_SHARE = """
INSERT INTO shares (id, vehicle_id, token_hash, created_by, created_at, expires_at, history_h,
                    revoked_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""

# seq is drawn in the batch's order (ORDER BY ord).
INSERT_AUDIT = """
INSERT INTO audit_log (at, actor, action, vehicle_id, remote_addr, details)
SELECT at, actor, action, vehicle_id, remote_addr, details::jsonb
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
     WITH ORDINALITY AS t(at, actor, action, vehicle_id, remote_addr, details, ord)
ORDER BY ord
"""


class PostgisAccess:
    """The access half of ``PostgisStore`` (see the module docstring)."""

    @property
    def _pool(self) -> asyncpg.Pool[asyncpg.Record]:
        raise NotImplementedError  # PostgisStore's

    # users, keys, assignees

    async def put_user(self, user: User) -> None:
        await self._pool.execute(UPSERT_USER, user.id, user.name, user.role, user.created_at)

    async def get_user(self, user_id: str) -> User | None:
        row = await self._pool.fetchrow(
            f"SELECT {USER_FIELDS} FROM users u WHERE u.id = $1", user_id
        )
        return None if row is None else User(*row)

    async def list_users(self) -> list[User]:
        rows = await self._pool.fetch(f"SELECT {USER_FIELDS} FROM users u ORDER BY u.id")
        return [User(*r) for r in rows]

    async def add_key(self, key: ApiKey) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at, revoked_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            key.id,
            key.user_id,
            key.key_hash,
            key.prefix,
            key.created_at,
            key.revoked_at,
        )

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        sql = (
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id"
        )
        return await self._pool.fetchval(sql, key_id, at) is not None

    async def user_keys(self, user_id: str) -> list[ApiKey]:
        rows = await self._pool.fetch(
            f"SELECT {KEY_FIELDS} FROM api_keys k WHERE k.user_id = $1 ORDER BY k.created_at, k.id",
            user_id,
        )
        return [ApiKey(*r) for r in rows]

    async def key_by_hash(self, key_hash: str) -> tuple[ApiKey, User] | None:
        row = await self._pool.fetchrow(KEY_BY_HASH, key_hash)
        if row is None:
            return None
        values = tuple(row)
        return ApiKey(*values[:6]), User(*values[6:])

    async def set_assignees(self, vehicle_id: str, user_ids: Sequence[str]) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            # the row lock makes concurrent replacements of one vehicle's set take turns
            found = await conn.fetchval(
                "SELECT 1 FROM vehicles WHERE vehicle_id = $1 FOR NO KEY UPDATE", vehicle_id
            )
            if found is None:
                return False
            await conn.execute("DELETE FROM vehicle_assignees WHERE vehicle_id = $1", vehicle_id)
            # an unknown user id: the foreign key's violation error, nothing changed
            await conn.execute(
                "INSERT INTO vehicle_assignees (vehicle_id, user_id)"
                " SELECT $1, user_id FROM unnest($2::text[]) AS t(user_id)",
                vehicle_id,
                sorted(set(user_ids)),
            )
        return True

    # share links

    async def add_share(self, share: Share) -> None:
        await self._pool.execute(
            INSERT_SHARE,
            share.id,
            share.vehicle_id,
            share.token_hash,
            share.created_by,
            share.created_at,
            share.expires_at,
            share.history_h,
            share.revoked_at,
        )

    async def get_share(self, share_id: str) -> Share | None:
        return await self._share("s.id = $1", share_id)

    async def share_by_hash(self, token_hash: str) -> Share | None:
        return await self._share("s.token_hash = $1", token_hash)

    async def _share(self, where: str, value: str) -> Share | None:
        row = await self._pool.fetchrow(f"SELECT {SHARE_FIELDS} FROM shares s WHERE {where}", value)
        return None if row is None else Share(*row)

    async def revoke_share(self, share_id: str, at: datetime) -> bool:
        sql = "UPDATE shares SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id"
        return await self._pool.fetchval(sql, share_id, at) is not None

    async def list_shares(self, *, vehicle_id: str | None = None) -> list[Share]:
        order = "ORDER BY s.created_at DESC, s.id DESC"
        if vehicle_id is None:
            rows = await self._pool.fetch(f"SELECT {SHARE_FIELDS} FROM shares s {order}")
        else:
            rows = await self._pool.fetch(
                f"SELECT {SHARE_FIELDS} FROM shares s WHERE s.vehicle_id = $1 {order}", vehicle_id
            )
        return [Share(*r) for r in rows]

    # audit log

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        await self._pool.execute(
            INSERT_AUDIT,
            [e.at for e in entries],
            [e.actor for e in entries],
            [e.action for e in entries],
            [e.vehicle_id for e in entries],
            [e.remote_addr for e in entries],
            [orjson.dumps(e.details).decode() for e in entries],
        )

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
        args: list[Any] = []
        where = ["true"]
        for condition, value in [
            ("a.actor = ${}", actor),
            # one entry, or one that names it among many (migration 0008)
            (
                "(a.vehicle_id = ${0} OR a.details -> 'vehicles' ? ${0}"
                " OR a.details -> 'vehicles' ? '*')",
                vehicle_id,
            ),
            ("a.action = ${}", action),
            ("a.at >= ${}", since),
            ("a.at < ${}", until),
            ("a.seq < ${}", before),
        ]:
            if value is not None:
                args.append(value)
                where.append(condition.format(len(args)))
        args.append(max(limit, 0))
        rows = await self._pool.fetch(
            f"SELECT {AUDIT_FIELDS} FROM audit_log a WHERE {' AND '.join(where)}"
            f" ORDER BY a.seq DESC LIMIT ${len(args)}",
            *args,
        )
        return [AuditEntry(*r) for r in rows]
