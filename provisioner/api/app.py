"""The HTTP interface, assembled: signed payment webhooks, bank statements, the ops
API and the customer pages (`provisioner.api.routers`).

`create_app` builds the app's state once (settings, the `Provisioner` from
`bootstrap`, the webhooks' notification writer, the publisher and nudger that hand
work to the Celery workers), puts it on ``app.state`` for the routers' dependencies,
and puts `WebhookFastPath` in front of FastAPI for the webhooks and `gate.Gate` in front of
everything (the bearer token before any body is read; one body cap; the access log
without credentials tokens). Serve it with
``uvicorn --factory provisioner.api.app:app_from_env`` (``provisioner serve``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from provisioner.api.deps import Actor, ApiState, error_body, error_status
from provisioner.api.gate import Gate, redact_access_log
from provisioner.api.handoff import Nudger, StepPublisher
from provisioner.api.routers import backup_download, ops, pages, webhooks
from provisioner.bootstrap import bootstrap
from provisioner.config import Settings, load_settings
from provisioner.errors import ProvisionerError
from provisioner.pipeline.usecases.metrics import JournalCollector
from provisioner.pipeline.usecases.payments import NotificationWriter


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    state: ApiState = app.state.api
    if state.publisher is not None:
        await run_in_threadpool(state.publisher.close)
    await state.writer.close()
    if state.nudger is not None:
        await run_in_threadpool(state.nudger.close)


async def provisioner_error(_request: Request, exc: ProvisionerError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=error_status(exc))


def create_app(settings: Settings | None = None,
               enqueue: Callable[[str], None] | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment). ``enqueue`` hands a
    step key to the workers; without it, steps and nudges go to Celery."""
    settings = settings or load_settings()
    publisher: StepPublisher | None = None
    nudger: Nudger | None = None
    if enqueue is None:
        # Imported here, not at the top: importing provisioner.tasks builds its own
        # Celery app from the environment's settings, which a caller that passes
        # `enqueue` (tests, other settings) must not depend on.
        from provisioner.tasks import make_celery

        celery = make_celery(settings)
        enqueue = publisher = StepPublisher(celery)
        nudger = Nudger(lambda: celery.send_task("provisioner.process_notifications"))
    provisioner = bootstrap(settings, enqueue=enqueue)
    state = ApiState(settings=settings, provisioner=provisioner,
                     writer=NotificationWriter(provisioner.factory, on_accepted=nudger),
                     metrics=CollectorRegistry(), publisher=publisher, nudger=nudger)
    state.metrics.register(JournalCollector(provisioner.factory))
    hooks = webhooks.Webhooks(settings, provisioner.factory, state.writer, state.metrics,
                              provisioner.verifiers)

    docs = settings.api_docs_public
    app = FastAPI(
        title="Provisioner",
        version="0.1.0",
        description="Payment webhooks, bank statements and the ops API of the provisioner.",
        lifespan=lifespan,
        # Without api_docs_public there are no docs pages, and the spec is served to
        # bearers of the token only (`openapi_spec`, behind the `Gate`).
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.api = state
    app.state.webhooks = hooks
    app.exception_handler(ProvisionerError)(provisioner_error)
    app.include_router(webhooks.router)
    app.include_router(ops.router)
    app.include_router(pages.router)
    app.include_router(backup_download.router)  # the backup download link (issue 17 item 9)
    if not docs:
        app.add_api_route("/openapi.json", openapi_spec, include_in_schema=False)
    # The last added is the outermost: the Gate sees every request first.
    app.add_middleware(webhooks.WebhookFastPath, routes=hooks.routes, take=hooks.take)
    app.add_middleware(Gate, token=settings.api_token, max_body=settings.max_body_bytes,
                       public={*hooks.routes, "/health"}, docs_public=docs)
    redact_access_log()
    return app


async def openapi_spec(request: Request, _actor: Actor) -> JSONResponse:
    """The OpenAPI spec, for bearers of the token (``api_docs_public`` off)."""
    return JSONResponse(request.app.openapi())


def app_from_env() -> FastAPI:
    """`uvicorn --factory provisioner.api.app:app_from_env`"""
    return create_app()
