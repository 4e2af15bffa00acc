"""The ops API: customers, orders and their plans, services, health and metrics.

Everything but ``/health`` needs the bearer token (``PROVISIONER_API_TOKEN``). The
routes are plain ``def``: FastAPI runs them in its thread pool, as the use cases
they call block on the database.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from provisioner.api.deps import Actor, State
from provisioner.pipeline.usecases import ops, reads


class OrderIn(BaseModel):
    customer_id: int
    items: list[str] = Field(min_length=1, max_length=50)
    discount: str | None = None
    brand: str | None = None  # the customer's brand when none; another one is refused
    paper_invoice: bool = False  # the invoice is posted too (the brand's fee on the proforma)


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
    brand: str | None = None  # fcb (default) or iserver: the company it is a customer of


router = APIRouter()


@router.post("/customers", tags=["ops"], status_code=201)
def create_customer(data: CustomerIn, state: State, actor: Actor) -> dict[str, Any]:
    return ops.add_customer(state.provisioner.factory, data.model_dump(), actor)


@router.post("/orders", tags=["ops"], status_code=201)
def create_order(data: OrderIn, background: BackgroundTasks, state: State,
                 actor: Actor) -> dict[str, Any]:
    provisioner = state.provisioner
    result = ops.create_order(provisioner.factory, data.customer_id, data.items, data.discount,
                              data.brand, actor, paper_invoice=data.paper_invoice)
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


# -- lists: each read is audited like a single one (a customer.read row per customer shown)
@router.get("/services", tags=["ops"])
def list_services(state: State, actor: Actor) -> list[dict[str, Any]]:
    provisioner = state.provisioner
    return reads.services(provisioner.factory, actor, planned=provisioner.planner.planned_kinds())


@router.get("/payments", tags=["ops"])
def list_payments(state: State, actor: Actor, unmatched: bool = False) -> list[dict[str, Any]]:
    return reads.payments(state.provisioner.factory, actor, unmatched)


@router.get("/invoices", tags=["ops"])
def list_invoices(state: State, actor: Actor) -> list[dict[str, Any]]:
    return reads.invoices(state.provisioner.factory, actor)


@router.get("/proformas", tags=["ops"])
def list_proformas(state: State, actor: Actor, proforma_state: str | None = Query(None, alias="state"),
                   limit: int = Query(1000, ge=1, le=10_000)) -> list[dict[str, Any]]:
    return reads.proformas(state.provisioner.factory, actor, proforma_state, limit)


@router.get("/jobs", tags=["ops"])
def list_jobs(state: State, actor: Actor, order: str | None = None,
              failed: bool = False) -> list[dict[str, Any]]:
    return reads.jobs(state.provisioner.factory, actor, order, failed)


@router.get("/health", tags=["meta"])
def health(state: State) -> dict[str, str]:
    ops.ping(state.provisioner.factory)
    return {"status": "ok"}


@router.get("/metrics", tags=["meta"])
def metrics(state: State, actor: Actor) -> Response:
    return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)
