"""The HTTP interface: signed payment webhooks, bank statements, the ops API.

Webhook requests do the minimum in the request: verify the signature with the
provider's SDK, store the notification, record and match the payment, write the
plan into the journal, answer. Marking the ready steps QUEUED happens after the
answer is sent (a background task), and the broker publish is not done there either:
the keys go to one publisher thread that sends them in batches over one producer. The
journal is the truth; the re-drive covers a hand-off lost on the way.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field

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
from provisioner.pipeline import ops
from provisioner.pipeline.payments import IngestResult, ingest
from provisioner.pipeline.runner import Runner
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
    if enqueue is None:
        from provisioner.tasks import make_celery

        enqueue = publisher = StepPublisher(make_celery(settings))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if publisher is not None:
            await run_in_threadpool(publisher.close)

    runner = Runner(settings, factory, enqueue)
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
        status = 400
        if isinstance(exc, BodyTooLarge):
            status = 413
        elif isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, Conflict):
            status = 409
        elif isinstance(exc, InvalidSignature):
            status = 400
        elif isinstance(exc, ConfigurationError | TransientError):
            status = 503
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> str:
        token = settings.api_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return "api:" + hashlib.sha256(given.encode()).hexdigest()[:8]

    def _dispatch_after(background: BackgroundTasks, result: IngestResult) -> None:
        if result.settled and result.order_id is not None:
            background.add_task(runner.dispatch, result.order_id)

    async def _take(
        provider: str,
        verify: Callable[[], Awaitable[PaymentNotice] | PaymentNotice],
        background: BackgroundTasks,
        request: Request,
    ) -> dict[str, Any]:
        try:
            notice = verify()
            if not isinstance(notice, PaymentNotice):
                notice = await notice
        except InvalidSignature as exc:
            webhooks_total.labels(provider, "rejected").inc()
            client = request.client.host if request.client else "?"
            log.warning("rejected %s webhook from %s: %s", provider, client, exc)
            await run_in_threadpool(_log_rejection, provider, client, str(exc))
            raise
        except InvalidInput:
            webhooks_total.labels(provider, "malformed").inc()
            raise
        result = await run_in_threadpool(ingest, factory, notice, f"webhook:{provider}")
        webhooks_total.labels(provider, result.status).inc()
        _dispatch_after(background, result)
        return {"status": result.status, "proforma": result.proforma}

    def _log_rejection(provider: str, client: str, detail: str) -> None:
        with transaction(factory) as s:
            audit(s, f"webhook:{provider}", "webhook.rejected", "webhook", client,
                  {"detail": detail[:500]})

    @app.post("/webhooks/stripe", tags=["webhooks"])
    async def stripe_webhook(
        request: Request,
        background: BackgroundTasks,
        stripe_signature: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        body = await read_body(request, settings.max_body_bytes)

        def verify() -> PaymentNotice:
            st.verify_stripe(body, stripe_signature, settings.stripe_webhook_secret,
                             settings.stripe_tolerance_s)
            return st.parse_stripe(body)

        return await _take("stripe", verify, background, request)

    @app.post("/webhooks/braintree", tags=["webhooks"])
    async def braintree_webhook(request: Request, background: BackgroundTasks) -> dict[str, Any]:
        nonlocal braintree_verifier
        body = await read_body(request, settings.max_body_bytes)
        if braintree_verifier is None:
            if not settings.braintree_public_key or not settings.braintree_private_key:
                raise ConfigurationError("Braintree webhooks are not configured")
            braintree_verifier = bt.BraintreeVerifier(
                settings.braintree_environment, settings.braintree_merchant_id,
                settings.braintree_public_key, settings.braintree_private_key,
            )
        from urllib.parse import parse_qs

        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("expected a form with bt_signature and bt_payload") from None
        signature = (form.get("bt_signature") or [""])[0]
        payload = (form.get("bt_payload") or [""])[0]
        verifier = braintree_verifier
        return await _take("braintree", lambda: verifier.parse(signature, payload),
                           background, request)

    @app.post("/webhooks/paypal", tags=["webhooks"])
    async def paypal_webhook(request: Request, background: BackgroundTasks) -> dict[str, Any]:
        nonlocal paypal_verifier
        body = await read_body(request, settings.max_body_bytes)
        if paypal_verifier is None:
            if not settings.paypal_webhook_id:
                raise ConfigurationError("PayPal webhooks are not configured")
            paypal_verifier = pp.PayPalVerifier(
                settings.paypal_webhook_id,
                [h.strip() for h in settings.paypal_cert_hosts.split(",") if h.strip()],
                ca_file=settings.paypal_ca_file or None,
            )
        verifier = paypal_verifier
        headers = dict(request.headers)

        async def verify() -> PaymentNotice:
            await run_in_threadpool(verifier.verify, headers, body)
            return pp.parse_paypal(body)

        return await _take("paypal", verify, background, request)

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
