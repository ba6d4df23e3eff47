"""REST routes for webhook subscriptions and their deliveries."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException

from tracker import views, webhooks
from tracker.api_types import EventType
from tracker.store import Delivery, Webhook

if TYPE_CHECKING:
    from tracker.server import Server

WebhookId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
MAX_DELIVERIES = 1000


class WebhookIn(BaseModel):
    url: str = Field(
        min_length=1, max_length=2000, description="http(s) URL that receives the POSTs"
    )
    event_types: list[EventType] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="event types to send (e.g. sos, geofence_enter); null or omitted: every type",
    )
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="whsec_ + base64 of 24 to 64 random bytes; omitted: one is generated",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        fix = "give an absolute http:// or https:// URL, e.g. https://example.com/hooks"
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise ValueError(f"not a URL; {fix}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(fix)
        if any(c.isspace() for c in url):
            raise ValueError(f"contains white space; {fix}")
        return url

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, types: list[str] | None) -> list[str] | None:
        return None if types is None else list(dict.fromkeys(types))

    @field_validator("secret")
    @classmethod
    def _secret(cls, secret: str | None) -> str | None:
        if secret is not None:
            try:
                webhooks.secret_key(secret)
            except ValueError as exc:
                raise ValueError(
                    f"{exc}: send 'whsec_' + base64 of 24 to 64 random bytes, "
                    "or omit it to have one generated"
                ) from None
        return secret


def webhook_view(webhook: Webhook, *, secret: bool = False) -> dict[str, Any]:
    body = {
        "id": webhook.id,
        "url": webhook.url,
        "event_types": list(webhook.event_types) if webhook.event_types is not None else None,
        "created_at": views.iso(webhook.created_at),
    }
    if secret:
        body["secret"] = webhook.secret
    return body


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_seq": delivery.event_seq,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": views.iso(delivery.next_attempt_at),
        "last_error": delivery.last_error,
        "last_status_code": delivery.last_status_code,
        "delivered_at": views.iso(delivery.delivered_at) if delivery.delivered_at else None,
        "created_at": views.iso(delivery.created_at),
    }


def webhook_routes(server: Server, api: Any) -> APIRouter:
    router = APIRouter(prefix="/api/v1/webhooks", dependencies=[api], tags=["webhooks"])

    @router.post("", status_code=201)
    async def create_webhook(body: WebhookIn) -> dict[str, Any]:
        """Subscribe a URL to events. Each event is POSTed as JSON
        ``{"type", "timestamp", "data"}`` and signed by the Standard Webhooks
        scheme: headers ``webhook-id`` (the event id, the same on every retry),
        ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
        (``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed by
        the base64-decoded part of the secret after ``whsec_``). Failures are
        retried with exponential backoff for at least 24 hours; a 410 answer
        stops them. The secret is shown here only: keep it."""
        webhook = Webhook(
            id=f"wh_{secrets.token_hex(8)}",
            url=body.url,
            secret=body.secret or webhooks.new_secret(),
            event_types=tuple(body.event_types) if body.event_types is not None else None,
            created_at=server.clock(),
        )
        await server.store.put_webhook(webhook)
        return webhook_view(webhook, secret=True)

    @router.get("")
    async def list_webhooks() -> dict[str, Any]:
        return {"items": [webhook_view(w) for w in await server.store.list_webhooks()]}

    @router.get("/{webhook_id}")
    async def get_webhook(webhook_id: WebhookId) -> dict[str, Any]:
        webhook = await server.store.get_webhook(webhook_id)
        if webhook is None:
            raise HTTPException(404, f"no webhook {webhook_id!r}")
        return webhook_view(webhook)

    @router.delete("/{webhook_id}", status_code=204)
    async def delete_webhook(webhook_id: WebhookId) -> Response:
        """Unsubscribe; its pending deliveries are dropped."""
        if not await server.store.delete_webhook(webhook_id):
            raise HTTPException(404, f"no webhook {webhook_id!r}")
        return Response(status_code=204)

    @router.get("/{webhook_id}/deliveries")
    async def list_deliveries(
        webhook_id: WebhookId,
        limit: Annotated[int, Query(ge=1, le=MAX_DELIVERIES)] = 100,
    ) -> dict[str, Any]:
        """Newest first. ``status``: pending (to be tried at ``next_attempt_at``),
        delivered, or failed (given up). ``last_error``: why the latest failed
        attempt failed (kept after a later success); ``last_status_code``: the
        latest attempt's HTTP status (null: no response)."""
        if await server.store.get_webhook(webhook_id) is None:
            raise HTTPException(404, f"no webhook {webhook_id!r}")
        rows = await server.store.deliveries(webhook_id, limit=limit)
        return {"items": [delivery_view(d) for d in rows]}

    return router
