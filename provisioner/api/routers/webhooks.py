"""Signed payment webhooks (Stripe, PayPal, Braintree) and the bank-statement upload.

A webhook request does the minimum: verify the signature with the provider's adapter
(the cheap header check, not the SDK's full event object), store the notification
under UNIQUE(provider, event id) (one insert; concurrent requests share one commit
through the NotificationWriter's group commit), answer 200 (`accepted`, or
`duplicate` for a delivery seen before). A nudger thread then asks the workers, at
most a few times a second, to match and settle what was stored
(`provisioner.process_notifications`); the beat runs the same task as a backstop.
The journal is the truth: nothing the provider sent is lost if a nudge or a worker is.
A PayPal delivery's transmission id is claimed in the transaction that stores it: the
same signed headers a second time are refused (400) and logged, like a forged signature.

Webhooks are the product's hot path: `WebhookFastPath`, an ASGI layer in front of
FastAPI, answers them with the same `Webhooks.take` the routes below use, without
FastAPI's routing and dependency resolution. The routes document them in the OpenAPI
spec and serve them when the app is mounted under a prefix.
"""

from __future__ import annotations

import json
import logging
import threading
import time
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
from provisioner.api.deps import Actor, State, error_body, error_status
from provisioner.bootstrap import PaymentVerifiers
from provisioner.config import Settings
from provisioner.errors import ConfigurationError, InvalidInput, InvalidSignature, ProvisionerError
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import NotificationWriter
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.webhooks import Claim

log = logging.getLogger("provisioner.api")

# A verified, parsed notification, and the claim its storing takes (PayPal's transmission
# id), if it has one.
Notice = Callable[[Mapping[str, str], bytes], Awaitable[tuple[PaymentNotice, Claim | None]]]
Take = Callable[[str, Notice, Mapping[str, str], bytes, str], Awaitable[dict[str, Any]]]


class RefusalLog:
    """Which refused deliveries get an audit row and a WARNING: at most one per provider
    and client address per ``window`` seconds, so forged requests cannot flood the audit
    log (or the database's write lock). The ones held back are counted; the count goes
    into that address's next row (``suppressed``). The Prometheus counter
    ``provisioner_webhooks_total{outcome="rejected"}`` counts every one. At most
    ``max_addresses`` addresses are tracked; past that, addresses share one entry."""

    def __init__(self, window: float = 60.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        self._seen: dict[tuple[str, str], list[float]] = {}  # -> [window start, held back]
        self._lock = threading.Lock()

    def admit(self, provider: str, client: str) -> int | None:
        """None: hold this refusal back (counted). Else log it; the number held back
        since the last one that was logged."""
        now = self.clock()
        with self._lock:
            if (provider, client) not in self._seen and len(self._seen) >= self.max_addresses:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
                if len(self._seen) >= self.max_addresses:
                    client = "*"
            entry = self._seen.get((provider, client))
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                return None
            self._seen[(provider, client)] = [now, 0]
            return 0 if entry is None else int(entry[1])


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
        self.rejections = RefusalLog()
        self._braintree = verifiers.braintree
        self._paypal = verifiers.paypal
        self._paypal_transmissions = verifiers.paypal_transmissions
        self.notices: dict[str, Notice] = {"stripe": self._stripe, "braintree": self._braintree_notice,
                                           "paypal": self._paypal_notice}
        # path -> (provider, notice), what WebhookFastPath answers
        self.routes: dict[str, tuple[str, Notice]] = {
            f"/webhooks/{provider}": (provider, notice) for provider, notice in self.notices.items()}

    async def take(self, provider: str, notice: Notice, headers: Mapping[str, str], body: bytes,
                   client: str) -> dict[str, Any]:
        """Verify and parse (the provider's scheme), store (group commit), answer."""
        try:
            parsed, claim = await notice(headers, body)
            result = await self._writer.submit(parsed, claim)
            if claim is not None:
                claim.stored()
            if result.status == "replayed":
                raise InvalidSignature(f"this {provider} delivery was used before (a replay)")
        except InvalidSignature as exc:
            self._total.labels(provider, "rejected").inc()
            suppressed = self.rejections.admit(provider, client)
            if suppressed is not None:
                log.warning("rejected %s webhook from %s: %s (%d more refused since the last one logged)",
                            provider, client, exc, suppressed)
                await run_in_threadpool(self._log_rejection, provider, client, str(exc), suppressed)
            raise
        except InvalidInput:
            self._total.labels(provider, "malformed").inc()
            raise
        self._total.labels(provider, result.status).inc()
        return {"status": result.status, "event": parsed.event_id}

    async def answer(self, provider: str, request: Request) -> JSONResponse:
        """`take` for a request that came through FastAPI's routing."""
        body = await request.body()  # capped by `gate.Gate`
        client = request.client.host if request.client else "?"
        return JSONResponse(await self.take(provider, self.notices[provider], request.headers,
                                            body, client))

    def _log_rejection(self, provider: str, client: str, detail: str, suppressed: int) -> None:
        with transaction(self._factory) as s:
            audit(s, f"webhook:{provider}", "webhook.rejected", "webhook", client,
                  {"detail": detail[:500], "suppressed": suppressed})

    async def _stripe(self, headers: Mapping[str, str],
                      body: bytes) -> tuple[PaymentNotice, Claim | None]:
        settings = self._settings
        st.verify_stripe(body, headers.get("stripe-signature"), settings.stripe_webhook_secret,
                         settings.stripe_tolerance_s)
        return st.parse_stripe(body), None

    async def _braintree_notice(self, headers: Mapping[str, str],
                                body: bytes) -> tuple[PaymentNotice, Claim | None]:
        if self._braintree is None:
            raise ConfigurationError("Braintree webhooks are not configured")
        return self._braintree.parse_form(body), None

    async def _paypal_notice(self, headers: Mapping[str, str],
                             body: bytes) -> tuple[PaymentNotice, Claim | None]:
        if self._paypal is None or self._paypal_transmissions is None:
            raise ConfigurationError("PayPal webhooks are not configured")
        # the signing certificate may have to be fetched (cached afterwards), and the
        # transmission id is looked up (a replay is refused before any download)
        transmission = await run_in_threadpool(self._paypal.verify, headers, body)
        claim = self._paypal_transmissions.claim(transmission.id, transmission.expires_at)
        return pp.parse_paypal(body), claim


async def webhooks_of(request: Request) -> Webhooks:
    hooks: Webhooks = request.app.state.webhooks
    return hooks


Hooks = Annotated[Webhooks, Depends(webhooks_of)]


class WebhookFastPath:
    """Pure ASGI: answers POST on the webhook paths before FastAPI's routing and
    dependency machinery (which costs more than storing the notification), with the
    same handler the FastAPI routes use. Everything else passes through untouched."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, tuple[str, Notice]], take: Take) -> None:
        self.app = app
        self.routes = routes
        self.take = take

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
            body = await self._body(receive)
            status, payload = 200, await self.take(provider, notice, headers, body, client)
        except ProvisionerError as exc:
            status, payload = error_status(exc), error_body(exc)
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        """The whole body; `gate.Gate`, in front, caps its size."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client went away before the body arrived")
            chunks.append(message.get("body", b""))
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
    body = await request.body()  # capped by `gate.Gate` (max_body_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send the camt.053 XML as the request body (application/xml)")
    provisioner = state.provisioner
    summary = await run_in_threadpool(ops.import_statement, provisioner.factory, body, actor,
                                      provisioner.planner, account_iban=provisioner.settings.bank_accounts)
    for order_id in summary.pop("_settled_orders", []):
        background.add_task(provisioner.runner.dispatch, order_id)
    return summary
