"""The ops API: customers, orders and their plans, services, health and metrics.

Everything but ``/health`` needs the bearer token (``PROVISIONER_API_TOKEN``). The
routes are plain ``def``: FastAPI runs them in its thread pool, as the use cases
they call block on the database.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from provisioner.api.deps import Actor, State
from provisioner.pipeline.usecases import ops


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


router = APIRouter()


@router.post("/customers", tags=["ops"], status_code=201)
def create_customer(data: CustomerIn, state: State, actor: Actor) -> dict[str, Any]:
    return ops.add_customer(state.provisioner.factory, data.model_dump(), actor)


@router.post("/orders", tags=["ops"], status_code=201)
def create_order(data: OrderIn, background: BackgroundTasks, state: State,
                 actor: Actor) -> dict[str, Any]:
    provisioner = state.provisioner
    result = ops.create_order(provisioner.factory, data.customer_id, data.items, data.discount,
                              data.brand or state.settings.brand, actor)
    background.add_task(provisioner.runner.dispatch, result["order"])
    return result


@router.get("/orders/{order_id}", tags=["ops"])
def get_order(order_id: int, state: State, actor: Actor) -> dict[str, Any]:
    provisioner = state.provisioner
    return ops.show_order(provisioner.factory, str(order_id), actor,
                          planned=provisioner.planner.planned_kinds())


@router.get("/orders/{order_id}/plan", tags=["ops"])
def get_plan(order_id: int, state: State, actor: Actor) -> dict[str, Any]:
    provisioner = state.provisioner
    return ops.plan_order(provisioner.factory, str(order_id), provisioner.planner)


@router.get("/services/{service_id}", tags=["ops"])
def get_service(service_id: int, state: State, actor: Actor) -> dict[str, Any]:
    provisioner = state.provisioner
    return ops.show_service(provisioner.factory, service_id, actor,
                            planned=provisioner.planner.planned_kinds())


@router.get("/health", tags=["meta"])
def health(state: State) -> dict[str, str]:
    ops.ping(state.provisioner.factory)
    return {"status": "ok"}


@router.get("/metrics", tags=["meta"])
def metrics(state: State, actor: Actor) -> Response:
    ops.update_gauges(state.provisioner.factory, state.metrics)
    return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)
