"""The HTTP interface: signed payment webhooks, bank statements, the ops API.

A webhook request does the minimum: verify the signature with the provider's SDK
(the cheap header check, not the SDK's full event object), store the notification
under UNIQUE(provider, event id) (one insert; concurrent requests share one commit
through the NotificationWriter's group commit), answer 200
(`accepted`, or `duplicate` for a delivery seen before). A nudger thread then asks
the workers, at most a few times a second, to match and settle what was stored
(`provisioner.process_notifications`); the beat runs the same task as a backstop.
The journal is the truth: nothing the provider sent is lost if a nudge or a worker is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.adapters.payments import PaymentNotice
from provisioner.adapters.payments import braintree as bt
from provisioner.adapters.payments import paypal as pp
from provisioner.adapters.payments import stripe as st
from provisioner.config import Settings, load_settings
from provisioner.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    InvalidSignature,
    NotFound,
    ProvisionerError,
    TransientError,
)
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import NotificationWriter
from provisioner.pipeline.engine.runner import Runner
from provisioner.store.audit import audit
from provisioner.store.db import session_factory, transaction

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("provisioner.api")


class StepPublisher:
    """``enqueue`` for the API: puts the step key in a queue and returns at once. One
    thread (started on first use) takes what has accumulated and publishes it with one
    producer. The steps are already QUEUED in the journal, so a key lost here (broker
    down, process killed) is sent again by the re-drive, as with a failed publish."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        self._keys: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def __call__(self, key: str) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="step-publisher",
                                                    daemon=True)
                    self._thread.start()
        self._keys.put(key)

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued, then stop the thread."""
        if self._thread is not None:
            self._keys.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._keys.get()]
            while True:
                try:
                    batch.append(self._keys.get_nowait())
                except queue.Empty:
                    break
            keys = [k for k in batch if k is not None]
            stop = len(keys) != len(batch)
            if keys:
                self._publish(keys)

    def _publish(self, keys: list[str]) -> None:
        try:
            with self._celery.producer_or_acquire() as producer:
                for key in keys:
                    try:
                        self._celery.send_task("provisioner.run_step", args=(key,),
                                               producer=producer)
                    except Exception:  # noqa: BLE001 - a broker outage must not lose the step
                        log.exception("could not enqueue %s; the re-drive will send it again",
                                      key)
        except Exception:  # noqa: BLE001 - no producer: the re-drive sends them again
            log.exception("could not enqueue %d steps; the re-drive will send them again",
                          len(keys))


class Nudger:
    """Asks the workers to process stored notifications: at most one message per
    `interval` however many webhooks arrive, sent from a thread of its own, so the
    request path never waits for the broker. A lost nudge costs latency only: the
    beat runs the same task as a backstop."""

    def __init__(self, send: Callable[[], None], interval: float = 0.2) -> None:
        self._send = send
        self._interval = interval
        self._wanted = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def __call__(self) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="nudger", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._stop = True
            self._wanted.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._send()
            except Exception:  # noqa: BLE001 - the beat's backstop processes them anyway
                log.exception("could not ask the workers to process payments")
            if self._stop:
                return
            time.sleep(self._interval)


def error_status(exc: ProvisionerError) -> int:
    if isinstance(exc, BodyTooLarge):
        return 413
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, ConfigurationError | TransientError):
        return 503
    return 400


def error_body(exc: ProvisionerError) -> dict[str, str]:
    return {"error": type(exc).__name__, "detail": str(exc)}


class WebhookFastPath:
    """Pure ASGI: answers POST on the webhook paths before FastAPI's routing and
    dependency machinery (which costs more than storing the notification), with the
    same handler the FastAPI routes use. Everything else passes through untouched."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, tuple[str, Any]], take: Any,
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


class BodyTooLarge(InvalidInput):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class OrderIn(BaseModel):
    customer_id: int
    items: list[str] = Field(min_length=1, max_length=50)
    discount: str | None = None
    brand: str | None = None


class CustomerIn(BaseModel):
    name: str
    company: str | None = None
    vat_id: str | None = None
    address: str
    postal_code: str
    city: str
    country: str
    email: str
    phone: str
    lang: str = "sl"


def create_app(settings: Settings | None = None, enqueue: Callable[[str], None] | None = None) -> FastAPI:
    settings = settings or load_settings()
    from provisioner.pipeline import capabilities

    capabilities.configure(settings.line_kinds)
    factory = session_factory(settings.effective_database_url)
    publisher: StepPublisher | None = None
    nudger: Nudger | None = None
    if enqueue is None:
        from provisioner.tasks import make_celery

        celery = make_celery(settings)
        enqueue = publisher = StepPublisher(celery)
        nudger = Nudger(lambda: celery.send_task("provisioner.process_notifications"))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if publisher is not None:
            await run_in_threadpool(publisher.close)
        await writer.close()
        if nudger is not None:
            await run_in_threadpool(nudger.close)

    runner = Runner(settings, factory, enqueue)
    writer = NotificationWriter(factory, on_accepted=nudger)
    registry = CollectorRegistry()
    webhooks_total = Counter(
        "provisioner_webhooks_total", "Payment notifications received", ["provider", "outcome"],
        registry=registry,
    )
    braintree_verifier: bt.BraintreeVerifier | None = None
    paypal_verifier: pp.PayPalVerifier | None = None

    app = FastAPI(
        title="Provisioner",
        version="0.1.0",
        description="Payment webhooks, bank statements and the ops API of the provisioner.",
        lifespan=lifespan,
    )

    @app.exception_handler(ProvisionerError)
    async def _errors(_request: Request, exc: ProvisionerError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=error_status(exc))

    def require_token(authorization: Annotated[str | None, Header()] = None) -> str:
        token = settings.api_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return "api:" + hashlib.sha256(given.encode()).hexdigest()[:8]

    async def _take(provider: str, notice: Callable[[Mapping[str, str], bytes],
                                                    Awaitable[PaymentNotice]],
                    headers: Mapping[str, str], body: bytes, client: str) -> dict[str, Any]:
        """Verify and parse (the provider's scheme), store (group commit), answer."""
        try:
            parsed = await notice(headers, body)
        except InvalidSignature as exc:
            webhooks_total.labels(provider, "rejected").inc()
            log.warning("rejected %s webhook from %s: %s", provider, client, exc)
            await run_in_threadpool(_log_rejection, provider, client, str(exc))
            raise
        except InvalidInput:
            webhooks_total.labels(provider, "malformed").inc()
            raise
        result = await writer.submit(parsed)
        webhooks_total.labels(provider, result.status).inc()
        return {"status": result.status, "event": parsed.event_id}

    def _log_rejection(provider: str, client: str, detail: str) -> None:
        with transaction(factory) as s:
            audit(s, f"webhook:{provider}", "webhook.rejected", "webhook", client,
                  {"detail": detail[:500]})

    async def stripe_notice(headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        st.verify_stripe(body, headers.get("stripe-signature"), settings.stripe_webhook_secret,
                         settings.stripe_tolerance_s)
        return st.parse_stripe(body)

    async def braintree_notice(headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        nonlocal braintree_verifier
        if braintree_verifier is None:
            if not settings.braintree_public_key or not settings.braintree_private_key:
                raise ConfigurationError("Braintree webhooks are not configured")
            braintree_verifier = bt.BraintreeVerifier(
                settings.braintree_environment, settings.braintree_merchant_id,
                settings.braintree_public_key, settings.braintree_private_key,
            )
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("expected a form with bt_signature and bt_payload") from None
        signature = (form.get("bt_signature") or [""])[0]
        payload = (form.get("bt_payload") or [""])[0]
        return braintree_verifier.parse(signature, payload)

    async def paypal_notice(headers: Mapping[str, str], body: bytes) -> PaymentNotice:
        nonlocal paypal_verifier
        if paypal_verifier is None:
            if not settings.paypal_webhook_id:
                raise ConfigurationError("PayPal webhooks are not configured")
            paypal_verifier = pp.PayPalVerifier(
                settings.paypal_webhook_id,
                [h.strip() for h in settings.paypal_cert_hosts.split(",") if h.strip()],
                ca_file=settings.paypal_ca_file or None,
            )
        # the signing certificate may have to be fetched (cached afterwards)
        await run_in_threadpool(paypal_verifier.verify, headers, body)
        return pp.parse_paypal(body)

    webhooks = {"/webhooks/stripe": ("stripe", stripe_notice),
                "/webhooks/braintree": ("braintree", braintree_notice),
                "/webhooks/paypal": ("paypal", paypal_notice)}

    async def _webhook_route(request: Request) -> JSONResponse:
        provider, notice = webhooks[request.url.path]
        body = await read_body(request, settings.max_body_bytes)
        client = request.client.host if request.client else "?"
        return JSONResponse(await _take(provider, notice, request.headers, body, client))

    # The routes below document the webhooks in the OpenAPI spec and serve them when the
    # app is mounted under a prefix; in the normal case WebhookFastPath (an ASGI layer in
    # front of FastAPI) answers them with the same code and no per-request dependency
    # resolution: webhooks are the product's hot path.
    @app.post("/webhooks/stripe", tags=["webhooks"])
    async def stripe_webhook(
        request: Request, stripe_signature: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        """A Stripe event, verified with the SDK against `Stripe-Signature`."""
        return await _webhook_route(request)

    @app.post("/webhooks/braintree", tags=["webhooks"])
    async def braintree_webhook(request: Request) -> JSONResponse:
        """A Braintree notification (form fields bt_signature, bt_payload)."""
        return await _webhook_route(request)

    @app.post("/webhooks/paypal", tags=["webhooks"])
    async def paypal_webhook(request: Request) -> JSONResponse:
        """A PayPal event, verified against PayPal's signing certificate (pinned host)."""
        return await _webhook_route(request)

    from provisioner.api import credentials

    app.include_router(credentials.router(factory))
    app.add_middleware(WebhookFastPath, routes=webhooks, take=_take,
                       max_body=settings.max_body_bytes)

    @app.post("/bank-statements", tags=["payments"])
    async def bank_statement(request: Request, background: BackgroundTasks,
                             actor: str = Depends(require_token)) -> dict[str, Any]:
        body = await read_body(request, settings.max_body_bytes * 4)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInput("send the camt.053 XML as the request body (application/xml)")
        summary = await run_in_threadpool(ops.import_statement, factory, body, actor)
        for order_id in summary.pop("_settled_orders", []):
            background.add_task(runner.dispatch, order_id)
        return summary

    @app.post("/customers", tags=["ops"], status_code=201)
    def create_customer(data: CustomerIn, actor: str = Depends(require_token)) -> dict[str, Any]:
        return ops.add_customer(factory, data.model_dump(), actor)

    @app.post("/orders", tags=["ops"], status_code=201)
    def create_order(data: OrderIn, background: BackgroundTasks,
                     actor: str = Depends(require_token)) -> dict[str, Any]:
        result = ops.create_order(factory, data.customer_id, data.items, data.discount,
                                  data.brand or settings.brand, actor)
        background.add_task(runner.dispatch, result["order"])
        return result

    @app.get("/orders/{order_id}", tags=["ops"])
    def get_order(order_id: int, actor: str = Depends(require_token)) -> dict[str, Any]:
        return ops.show_order(factory, str(order_id), actor)

    @app.get("/orders/{order_id}/plan", tags=["ops"])
    def get_plan(order_id: int, actor: str = Depends(require_token)) -> dict[str, Any]:
        return ops.plan_order(factory, str(order_id))

    @app.get("/services/{service_id}", tags=["ops"])
    def get_service(service_id: int, actor: str = Depends(require_token)) -> dict[str, Any]:
        return ops.show_service(factory, service_id, actor)

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        ops.ping(factory)
        return {"status": "ok"}

    @app.get("/metrics", tags=["meta"])
    def metrics(actor: str = Depends(require_token)) -> Response:
        ops.update_gauges(factory, registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """`uvicorn --factory provisioner.api.app:app_from_env`"""
    return create_app()
