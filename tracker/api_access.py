"""Who may see what: users and keys, assignees, share links, the audit log,
and the retention job."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from tracker import views
from tracker.api_types import (
    MAX_SEQ,
    TEXT_PATTERN,
    Id,
    ORJSONResponse,
    VehicleId,
    aware_or_none,
)
from tracker.auth import Who, admin, hash_secret, new_secret, peer, user_view, writer
from tracker.store import ApiKey, Share, User, Vehicle

if TYPE_CHECKING:
    from tracker.server import Server

MAX_SHARE_S = 7 * 86_400
# secrets.token_urlsafe(32): 43 characters
ShareToken = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)
    role: Literal["admin", "servicing", "recovery", "viewer"]


class ShareIn(BaseModel):
    vehicle_id: VehicleId
    expires_in_s: int = Field(
        default=86_400, ge=60, le=MAX_SHARE_S, description="default 24 h, at most 7 days"
    )
    history_h: float = Field(
        default=1.0, ge=0, le=168, description="how many hours of past track the link shows"
    )


def share_view(share: Share, state: str | None) -> dict[str, Any]:
    return {
        "id": share.id,
        "vehicle_id": share.vehicle_id,
        "created_by": share.created_by,
        "created_at": views.iso(share.created_at),
        "expires_at": views.iso(share.expires_at),
        "history_h": share.history_h,
        "state": state or "active",
    }


def access_routes(server: Server, visible: Callable[..., Vehicle]) -> APIRouter:
    router = APIRouter()
    only_admin = [Depends(admin)]

    # users and keys (admin)

    @router.post("/api/v1/users", tags=["users"], status_code=201, dependencies=only_admin)
    async def create_user(body: UserIn) -> dict[str, Any]:
        user = User(f"usr_{uuid.uuid4().hex[:12]}", body.name, body.role, server.clock())
        await server.store.put_user(user)
        return user_view(user)

    @router.get("/api/v1/users", tags=["users"], dependencies=only_admin)
    async def list_users() -> dict[str, Any]:
        return {"items": [user_view(u) for u in await server.store.list_users()]}

    async def the_user(user_id: str) -> User:
        user = await server.store.get_user(user_id)
        if user is None:
            raise HTTPException(404, f"no user {user_id!r}")
        return user

    @router.post(
        "/api/v1/users/{user_id}/keys", tags=["users"], status_code=201, dependencies=only_admin
    )
    async def create_key(user_id: Id) -> dict[str, Any]:
        """A new API key for the user. The key is shown once, here; only its hash is kept."""
        user = await the_user(user_id)
        key = new_secret("trk")
        record = ApiKey(
            f"key_{uuid.uuid4().hex[:12]}", user.id, hash_secret(key), key[:8], server.clock()
        )
        await server.store.add_key(record)
        return {"id": record.id, "key": key, "user_id": user.id, "role": user.role}

    @router.get("/api/v1/users/{user_id}/keys", tags=["users"], dependencies=only_admin)
    async def list_keys(user_id: Id) -> dict[str, Any]:
        await the_user(user_id)
        return {
            "items": [
                {
                    "id": k.id,
                    "prefix": k.prefix,
                    "created_at": views.iso(k.created_at),
                    "revoked_at": views.iso(k.revoked_at) if k.revoked_at else None,
                }
                for k in await server.store.user_keys(user_id)
            ]
        }

    @router.delete(
        "/api/v1/users/{user_id}/keys/{key_id}",
        tags=["users"],
        status_code=204,
        dependencies=only_admin,
    )
    async def revoke_key(user_id: Id, key_id: Id) -> Response:
        keys = {k.id for k in await server.store.user_keys(user_id)}
        if key_id not in keys or not await server.store.revoke_key(key_id, server.clock()):
            raise HTTPException(404, f"user {user_id!r} has no unrevoked key {key_id!r}")
        server.access.forget_key(key_id)
        server.kicks.kick(f"key:{key_id}")
        return Response(status_code=204)

    @router.put(
        "/api/v1/vehicles/{vehicle_id}/assignees", tags=["vehicles"], dependencies=[Depends(writer)]
    )
    async def put_assignees(
        vehicle_id: VehicleId,
        user_ids: Annotated[list[Id], Body(max_length=1000, description="user ids")],
    ) -> dict[str, Any]:
        """The recovery agents who may see this vehicle (replaces the list)."""
        for user_id in set(user_ids):
            await the_user(user_id)
        if not await server.store.set_assignees(vehicle_id, sorted(set(user_ids))):
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        vehicle = await server.store.get_vehicle(vehicle_id)
        assert vehicle is not None
        server.registry.refresh(vehicle)
        return {"vehicle_id": vehicle_id, "assignees": list(vehicle.assignees)}

    # share links

    @router.post("/api/v1/shares", tags=["shares"], status_code=201)
    async def create_share(body: ShareIn, principal: Who, request: Request) -> dict[str, Any]:
        """A link an outside agent can open without an account: this one vehicle,
        live, with ``history_h`` hours of track, until it expires or is revoked."""
        if principal.role == "viewer":
            raise HTTPException(403, "viewer keys cannot share vehicles")
        visible(principal, body.vehicle_id, positions=True)
        token = secrets.token_urlsafe(32)
        now = server.clock()
        share = Share(
            f"shr_{uuid.uuid4().hex[:12]}",
            body.vehicle_id,
            hash_secret(token),
            principal.actor,
            now,
            now + timedelta(seconds=body.expires_in_s),
            body.history_h,
        )
        await server.store.add_share(share)
        await server.access.audit(
            principal.actor,
            "share.create",
            body.vehicle_id,
            peer(request),
            share_id=share.id,
            expires_at=views.iso(share.expires_at),
        )
        base = str(request.base_url).rstrip("/")
        return {
            "id": share.id,
            "url": f"{base}/share/{token}",
            "token": token,
            "expires_at": views.iso(share.expires_at),
        }

    @router.get("/api/v1/shares", tags=["shares"], dependencies=[Depends(writer)])
    async def list_shares(vehicle_id: VehicleId | None = None) -> dict[str, Any]:
        shares = await server.store.list_shares(vehicle_id=vehicle_id)
        return {"items": [share_view(s, server.access.share_state(s)) for s in shares]}

    @router.delete("/api/v1/shares/{share_id}", tags=["shares"], status_code=204)
    async def revoke_share(share_id: Id, principal: Who, request: Request) -> Response:
        share = await server.store.get_share(share_id)
        if share is None:
            raise HTTPException(404, f"no share {share_id!r}")
        if not principal.can_write and share.created_by != principal.actor:
            raise HTTPException(403, "only its creator or a servicing/admin key can revoke it")
        if not await server.store.revoke_share(share_id, server.clock()):
            raise HTTPException(404, f"share {share_id!r} is revoked already")
        server.revoked_shares.add(share_id)
        server.kicks.kick(f"share:{share_id}")
        await server.access.audit(
            principal.actor, "share.revoke", share.vehicle_id, peer(request), share_id=share_id
        )
        return Response(status_code=204)

    @router.get("/share/{token}", include_in_schema=False)
    async def share_page(token: ShareToken) -> Response:
        from tracker.page import page_html

        return Response(page_html(server.settings), media_type="text/html")

    # up to 10,000 history rows: straight to orjson, as the track route does
    @router.get("/share/{token}/data", tags=["shares"], response_model=dict[str, Any])
    async def share_data(token: ShareToken, request: Request) -> Response:
        """What a share link shows: its vehicle, the allowed history, the time left.
        Needs no API key: the token is the key, to this and nothing else."""
        share = await server.store.share_by_hash(hash_secret(token))
        if share is None:
            raise HTTPException(404, "no such share link")
        if (why := server.access.share_state(share)) is not None:
            raise HTTPException(410, f"this share link is {why}")
        vehicle = server.registry.vehicle(share.vehicle_id)
        if vehicle is None:
            raise HTTPException(410, "the shared vehicle no longer exists")
        creator = await server.access.share_creator(share)
        if (why := server.access.share_suspended(creator, vehicle)) is not None:
            raise HTTPException(410, f"this share link is suspended: {why}")
        now = server.clock()
        history = views.stored_for(
            vehicle.vehicle_id,
            await server.store.track_rows(
                [u.unique_id for u in vehicle.units],
                start=now - timedelta(hours=share.history_h),
                end=now + timedelta(minutes=1),
                limit=10_000,
            )
            if share.history_h
            else [],
        )
        newest = server.cache.vehicle((u.unique_id for u in vehicle.units), vehicle.vehicle_id)
        await server.access.audit(
            f"share:{share.id}", "share.use", vehicle.vehicle_id, peer(request)
        )
        return ORJSONResponse(
            {
                "vehicle": {"vehicle_id": vehicle.vehicle_id, "plate": vehicle.plate},
                "expires_at": views.iso(share.expires_at),
                "seconds_left": round((share.expires_at - now).total_seconds()),
                "history_h": share.history_h,
                "history": views.track_items(history),
                "position": views.position(newest) if newest else None,
            }
        )

    # audit log and retention (admin)

    @router.get("/api/v1/audit", tags=["audit"], dependencies=only_admin)
    async def audit(
        actor: Id | None = None,
        vehicle_id: VehicleId | None = None,
        action: Id | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_SEQ, description="next_before of a page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Every read of a location, a track, a live subscription and every share
        created or used, newest first."""
        entries = await server.store.audit(
            actor=actor,
            vehicle_id=vehicle_id,
            action=action,
            since=aware_or_none(since, "since"),
            until=aware_or_none(until, "until"),
            before=before,
            limit=limit,
        )
        return {
            "items": [
                {
                    "seq": e.seq,
                    "at": views.iso(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "vehicle_id": e.vehicle_id,
                    "remote_addr": e.remote_addr,
                    "details": e.details,
                }
                for e in entries
            ],
            "next_before": entries[-1].seq if len(entries) == limit else None,
        }

    @router.post("/api/v1/retention/run", tags=["server"], dependencies=only_admin)
    async def run_retention() -> dict[str, Any]:
        """Run the retention job now (it also runs every hour); returns what it removed."""
        return await server.retention.run()

    return router
