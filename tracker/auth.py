"""Who is asking, and what they may see.

An API key names a user with a role; the bootstrap admin key (config or
``var/admin_key``) is the user ``admin``. Keys are stored as SHA-256 hashes
(keys are 256-bit random strings, so a fast hash is enough) and compared in
constant time. A share token is not an API key: it opens one vehicle's share
view and nothing else.

Roles: ``admin`` everything; ``servicing`` the integration (vehicles,
locations, events, feeds, webhooks, fences, shares); ``recovery`` only the
vehicles assigned to them; ``viewer`` read-only. Purpose gating: recovery and
viewer users see positions (live, tracks, last known) only of vehicles whose
``loan_state`` is in ``access.position_loan_states`` (default delinquent and
recovery): location tracks are sensitive personal data.

While the store is down, the REST API still answers from memory: a key
looked up before is trusted as it was then (revocations made here are
forgotten at once), and audit entries are kept in memory and written with the
next one that gets through, up to ``MAX_UNWRITTEN_AUDIT``; past that, reads
that must be audited are refused (503) rather than left unaudited.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from tracker.store import AuditEntry, Role, Share, Store, User, Vehicle

ADMIN = "admin"
CACHE_S = 10.0  # a key looked up in the last seconds is not looked up again
MAX_UNWRITTEN_AUDIT = 10_000  # audit entries kept in memory while the store is down

log = logging.getLogger(__name__)
WRITE_ROLES: frozenset[str] = frozenset({"admin", "servicing"})


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True, slots=True)
class Principal:
    actor: str  # the user id, "admin" for the bootstrap key
    role: Role
    key_id: str | None = None

    @property
    def can_write(self) -> bool:
        return self.role in WRITE_ROLES

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            raise HTTPException(
                403, f"a {self.role} key cannot do this; it needs the role {' or '.join(roles)}"
            )


class Access:
    """API keys to principals; vehicles to what a principal may see of them."""

    def __init__(
        self,
        store: Store,
        admin_key: str,
        *,
        position_loan_states: frozenset[str],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._admin_hash = hash_secret(admin_key)
        self._admin = Principal(ADMIN, "admin")
        self.position_loan_states = position_loan_states
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}
        self.revoked_keys: set[str] = set()
        self._unwritten: list[AuditEntry] = []  # not written yet (or the store was down)
        self._writes_started = 0
        self._writes_done = 0  # stored, or kept in memory when the store was down
        self._writing: asyncio.Future[None] | None = None

    def known(self, key: str) -> Principal | None:
        """The principal behind a key looked up in the last ``CACHE_S``, without
        awaiting anything; None when ``principal`` has to ask the store."""
        key_hash = hash_secret(key)
        if hmac.compare_digest(key_hash, self._admin_hash):
            return self._admin
        cached = self._cache.get(key_hash)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        return None

    async def principal(self, key: str) -> Principal | None:
        """The principal behind an API key, or None."""
        key_hash = hash_secret(key)
        if hmac.compare_digest(key_hash, self._admin_hash):
            return self._admin
        cached = self._cache.get(key_hash)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        try:
            found = await self._store.key_by_hash(key_hash)
        except Exception as exc:
            if cached is not None:  # the store is down: trust what it said last
                return cached[1]
            log.warning("API key not checked, the store is unavailable: %s", exc)
            raise HTTPException(
                503, "the key store is unavailable and this key was not seen lately; try again"
            ) from None
        if found is None or not hmac.compare_digest(found[0].key_hash, key_hash):
            self._cache.pop(key_hash, None)
            return None
        key_record, user = found
        principal = Principal(user.id, user.role, key_record.id)
        self._cache[key_hash] = (time.monotonic(), principal)
        return principal

    def forget_key(self, key_id: str) -> None:
        """A key was revoked: stop trusting it at once (live sockets check this)."""
        self.revoked_keys.add(key_id)
        for key_hash, (_, principal) in list(self._cache.items()):
            if principal.key_id == key_id:
                del self._cache[key_hash]

    def may_see(self, principal: Principal, vehicle: Vehicle) -> bool:
        """The vehicle at all (its record, alerts, events)."""
        return principal.role != "recovery" or principal.actor in vehicle.assignees

    def may_track(self, principal: Principal, vehicle: Vehicle) -> bool:
        """Its positions: live, track, last known."""
        if not self.may_see(principal, vehicle):
            return False
        if principal.role in ("recovery", "viewer"):
            return vehicle.loan_state in self.position_loan_states
        return True

    def check(self, principal: Principal, vehicle: Vehicle, *, positions: bool) -> None:
        """403 with the reason when the principal may not read this."""
        if not self.may_see(principal, vehicle):
            raise HTTPException(403, f"vehicle {vehicle.vehicle_id!r} is not assigned to you")
        if positions and not self.may_track(principal, vehicle):
            raise HTTPException(
                403,
                f"positions of vehicle {vehicle.vehicle_id!r} are not shown to {principal.role} "
                f"users while its loan is {vehicle.loan_state!r}",
            )

    async def audit(
        self,
        actor: str,
        action: str,
        vehicle_id: str | None,
        remote_addr: str,
        **details: object,
    ) -> None:
        entry = AuditEntry(self._clock(), actor, action, vehicle_id, remote_addr, dict(details))
        if len(self._unwritten) >= MAX_UNWRITTEN_AUDIT:
            await self.flush_audit()
            if len(self._unwritten) >= MAX_UNWRITTEN_AUDIT:
                raise HTTPException(503, "the audit log cannot be written now; try again later")
        self._unwritten.append(entry)
        await self.flush_audit()

    async def flush_audit(self) -> None:
        """Write the audit entries made so far; keep them in memory if the store is down.

        Group commit: one write at a time takes every entry made until it
        starts, and callers that came during it share the next one. So a busy
        location endpoint costs one audit transaction per few requests, not
        one each, and each read is still written before it is answered.
        """
        # a write that starts from now on takes what is unwritten now
        wanted = self._writes_started + 1 if self._unwritten else self._writes_started
        while self._writes_done < wanted:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write_audit())
            await asyncio.shield(self._writing)  # a caller that goes away leaves it running

    async def _write_audit(self) -> None:
        self._writes_started += 1
        batch, self._unwritten = self._unwritten, []
        try:
            if batch:
                await self._store.append_audit(batch)
        except BaseException as exc:
            self._unwritten[:0] = batch
            if not isinstance(exc, Exception):
                raise  # cancelled: kept for the next write
            log.warning("%d audit entries kept in memory, not written: %s", len(batch), exc)
        finally:
            self._writes_done += 1
            self._writing = None

    def share_state(self, share: Share) -> str | None:
        """Why a share no longer opens anything ("revoked", "expired"), or None."""
        if share.revoked_at is not None:
            return "revoked"
        if share.expires_at <= self._clock():
            return "expired"
        return None

    async def share_creator(self, share: Share) -> Principal | None:
        """Who made the link (None if that user is unknown): it shows only what
        they may see now, so it stops when their access to the vehicle ends."""
        if share.created_by == ADMIN:
            return self._admin
        user = await self._store.get_user(share.created_by)
        return None if user is None else Principal(user.id, user.role)

    def share_suspended(self, creator: Principal | None, vehicle: Vehicle) -> str | None:
        """Why a share of this vehicle shows nothing now, or None: its creator may
        no longer see the vehicle's positions (unassigned, or the loan state)."""
        if creator is None:
            return "the user who made it is unknown"
        if not self.may_see(creator, vehicle):
            return f"vehicle {vehicle.vehicle_id!r} is no longer assigned to whoever made it"
        if not self.may_track(creator, vehicle):
            return (
                f"positions of vehicle {vehicle.vehicle_id!r} are not shown"
                f" while its loan is {vehicle.loan_state!r}"
            )
        return None


def user_view(user: User) -> dict[str, object]:
    from tracker.views import iso

    return {"id": user.id, "name": user.name, "role": user.role, "created_at": iso(user.created_at)}


# FastAPI dependencies (module level, so annotations resolve)


async def who(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <key>``; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(401, "send an API key as 'Authorization: Bearer <key>'")
    access: Access = request.app.state.server.access
    principal = await access.principal(key.strip())
    if principal is None:
        raise HTTPException(401, "this API key is not valid (revoked, or never issued)")
    return principal


Who = Annotated[Principal, Depends(who)]


def writer(principal: Who) -> Principal:
    """Callers who may change things: admin and servicing keys."""
    principal.require("admin", "servicing")
    return principal


def admin(principal: Who) -> Principal:
    principal.require("admin")
    return principal


Writer = Annotated[Principal, Depends(writer)]
Admin = Annotated[Principal, Depends(admin)]


def peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"
