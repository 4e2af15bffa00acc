"""What the routers share: the app's state, the bearer token, errors.

`create_app` builds one `ApiState` and puts it on ``app.state.api``; routes reach it
(and what hangs off it) through the dependencies here, so a test can swap one with
``app.dependency_overrides``. The dependencies are ``async``: FastAPI would run a plain
``def`` dependency in a worker thread, and these do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from provisioner.api.gate import UNAUTHORIZED, bearer_actor
from provisioner.api.handoff import Nudger, StepPublisher
from provisioner.bootstrap import Provisioner
from provisioner.config import Settings
from provisioner.errors import (
    ConfigurationError,
    Conflict,
    NotFound,
    ProvisionerError,
    TransientError,
)
from provisioner.pipeline.usecases.payments import NotificationWriter


@dataclass(frozen=True)
class ApiState:
    """One app's wiring, built once by `create_app`."""

    settings: Settings
    provisioner: Provisioner
    writer: NotificationWriter  # the webhooks' group commit
    metrics: CollectorRegistry  # what /metrics serves
    publisher: StepPublisher | None = None  # None when the caller passed its own enqueue
    nudger: Nudger | None = None


async def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(api_state)]


async def session_factory(state: State) -> sessionmaker[Session]:
    return state.provisioner.factory


async def clock(state: State) -> Callable[[], datetime]:
    return state.provisioner.runner.now


Db = Annotated[sessionmaker[Session], Depends(session_factory)]
Clock = Annotated[Callable[[], datetime], Depends(clock)]


async def require_token(state: State,
                        authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller as an audit actor (``api:`` and a hash prefix of its token), else 401.
    `gate.Gate` has refused a request without the token before its body was read; this
    check names the caller and holds for a route however the app is put together."""
    actor = bearer_actor(state.settings.api_token, authorization)
    if actor is None:
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return actor


Actor = Annotated[str, Depends(require_token)]


def error_status(exc: ProvisionerError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, ConfigurationError | TransientError):
        return 503
    return 400


def error_body(exc: ProvisionerError) -> dict[str, str]:
    return {"error": type(exc).__name__, "detail": str(exc)}
