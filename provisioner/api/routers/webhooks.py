"""Signed payment webhooks (Stripe, PayPal, Braintree) and the bank-statement upload.

A webhook request does the minimum: verify the signature with the provider's adapter
(the cheap header check, not the SDK's full event object), store the notification
under UNIQUE(provider, event id) (one insert; concurrent requests share one commit
through the NotificationWriter's group commit), answer 200 (`accepted`, or
`duplicate` for a delivery seen before). A nudger thread then asks the workers, at
most a few times a second, to match and settle what was stored
(`provisioner.process_notifications`); the beat runs the same task as a backstop.
The journal is the truth: nothing the provider sent is lost if a nudge or a worker is.

Webhooks are the product's hot path: `WebhookFastPath`, an ASGI layer in front of
FastAPI, answers them with the same `Webhooks.take` the routes below use, without
FastAPI's routing and dependency resolution. The routes document them in the OpenAPI
spec and serve them when the app is mounted under a prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.payments import paypal as pp
from provisioner.adapters.payments import stripe as st
from provisioner.api.deps import (
    Actor,
    BodyTooLarge,
    State,
    error_body,
    error_status,
    read_body,
)
from provisioner.bootstrap import PaymentVerifiers
from provisioner.config import Settings
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature, ProvisionerError
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import NotificationWriter
from provisioner.store.audit import audit
from provisioner.store.db import transaction

log = logging.getLogger("provisioner.api")

Notice = Callable[[Mapping[str, str], bytes], Awaitable[PaymentNotice]]
Take = Callable[[str, Notice, Mapping[str, str], bytes, str], Awaitable[dict[str, Any]]]


class Webhooks:
    """Verify a provider's notification with its adapter, store it, count it, answer.
    One per app (``app.state.webhooks``); the verifiers come from the composition root,
    and an installation that does not configure a provider answers its webhook with 503."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 writer: NotificationWriter, metrics: CollectorRegistry,
                 verifiers: PaymentVerifiers) -> None:
        self._settings = settings
        self._factory = factory
        self._writer = writer
        self._total = Counter("provisioner_webhooks_total", "Payment notifications received",
                              ["provider", "outcome"], registry=metrics)
        self._braintree = verifiers.braintree
        self._paypal = verifiers.paypal
        self.notices: dict[str, Notice] = {"stripe": self._stripe, "braintree": self._braintree_notice,
                                           "paypal": self._paypal_notice}
        # path -> (provider, notice), what WebhookFastPath answers
        self.routes: dict[str, tuple[str, Notice]] = {
            f"/webhooks/{provider}": (provider, notice) for provider, notice in self.notices.items()}

    async def take(self, provider: str, notice: Notice, headers: Mapping[str, str], body: bytes,
                   client: str) -> dict[str, Any]:
        """Verify and parse (the provider's scheme), store (group commit), answer."""
        try:
            parsed = await notice(headers, body)
        except InvalidSignature as exc:
            self._total.labels(provider, "rejected").inc()
            log.warning("rejected %s webhook from %s: %s", provider, client, exc)
            await run_in_threadpool(self._log_rejection, provider, client, str(exc))
            raise
        except InvalidInput:
            self._total.labels(provider, "malformed").inc()
            raise
        result = await self._writer.submit(parsed)
        self._total.labels(provider, result.status).inc()
        return {"status": result.status, "event": parsed.event_id}

    async def answer(self, provider: str, request: Request) -> JSONResponse:
        """`take` for a request that came through FastAPI's routing."""
        body = await read_body(request, self._settings.max_body_bytes)
        client = request.client.host if request.client else "?"
        return JSONResponse(await self.take(provider, self.notices[provider], request.headers,
                                            body, client))

    def _log_rejection(self, provider: str, client: str, detail: str) -> None:
        with transaction(self._factory) as s:
            audit(s, f"webhook:{provider}", "webhook.rejected", "webhook", client,
                  {"detail": detail[:500]})

    async def _stripe(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        settings = self._settings
        st.verify_stripe(body, headers.get("stripe-signature"), settings.stripe_webhook_secret,
                         settings.stripe_tolerance_s)
        return st.parse_stripe(body)

    async def _braintree_notice(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        if self._braintree is None:
            raise ConfigurationError("Braintree webhooks are not configured")
        return self._braintree.parse_form(body)

    async def _paypal_notice(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        if self._paypal is None:
            raise ConfigurationError("PayPal webhooks are not configured")
        # the signing certificate may have to be fetched (cached afterwards)
        await run_in_threadpool(self._paypal.verify, headers, body)
        return pp.parse_paypal(body)


async def webhooks_of(request: Request) -> Webhooks:
    hooks: Webhooks = request.app.state.webhooks
    return hooks


Hooks = Annotated[Webhooks, Depends(webhooks_of)]


class WebhookFastPath:
    """Pure ASGI: answers POST on the webhook paths before FastAPI's routing and
    dependency machinery (which costs more than storing the notification), with the
    same handler the FastAPI routes use. Everything else passes through untouched."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, tuple[str, Notice]], take: Take,
                 max_body: int) -> None:
        self.app = app
        self.routes = routes
        self.take = take
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (self.routes.get(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" else None)
        if route is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        provider, notice = route
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope["client"][0] if scope.get("client") else "?"
        try:
            body = await self._body(headers, receive)
            status, payload = 200, await self.take(provider, notice, headers, body, client)
        except ProvisionerError as exc:
            status, payload = error_status(exc), error_body(exc)
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput("Content-Length is not a number")
            if int(declared) > self.max_body:
                raise BodyTooLarge(f"body of {declared} bytes is over the {self.max_body}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client went away before the body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge(f"body is over the {self.max_body}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


router = APIRouter()


@router.post("/webhooks/stripe", tags=["webhooks"])
async def stripe_webhook(
    request: Request, hooks: Hooks, stripe_signature: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """A Stripe event, verified with the SDK against `Stripe-Signature`."""
    return await hooks.answer("stripe", request)


@router.post("/webhooks/braintree", tags=["webhooks"])
async def braintree_webhook(request: Request, hooks: Hooks) -> JSONResponse:
    """A Braintree notification (form fields bt_signature, bt_payload)."""
    return await hooks.answer("braintree", request)


@router.post("/webhooks/paypal", tags=["webhooks"])
async def paypal_webhook(request: Request, hooks: Hooks) -> JSONResponse:
    """A PayPal event, verified against PayPal's signing certificate (pinned host)."""
    return await hooks.answer("paypal", request)


@router.post("/bank-statements", tags=["payments"])
async def bank_statement(request: Request, background: BackgroundTasks, state: State,
                         actor: Actor) -> dict[str, Any]:
    """A camt.053 statement (the XML as the request body); each entry is a notification."""
    body = await read_body(request, state.settings.max_body_bytes * 4)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send the camt.053 XML as the request body (application/xml)")
    provisioner = state.provisioner
    summary = await run_in_threadpool(ops.import_statement, provisioner.factory, body, actor,
                                      provisioner.planner)
    for order_id in summary.pop("_settled_orders", []):
        background.add_task(provisioner.runner.dispatch, order_id)
    return summary
