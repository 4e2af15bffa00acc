"""Planning: a paid proforma (and the services it pays for) -> steps with stable keys.

`plan()` is pure: it reads plain values and returns plain values, so that
`provisioner plan ORDER` can print it without touching anything and tests can call
it with literals. Capabilities plug in by registering a line planner for their item
kind (`register_line_planner`); a kind with no planner gets no steps, and its service
stays in `provisioning` with a note saying so (nothing pretends to provision it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServiceView:
    id: int
    kind: str
    product: str
    name: str
    period_months: int
    state: str
    action: str = "new"  # new | register | transfer | renew (from the order item)
    item_id: int | None = None
    # a renewal: the expiry of the term it renews from (ISO date), and its months
    term_expiry: str | None = None
    renew_months: int | None = None


@dataclass(frozen=True)
class OrderView:
    order_id: int
    proforma_id: int
    proforma_number: str
    paid: bool
    services: tuple[ServiceView, ...] = ()


@dataclass(frozen=True)
class StepSpec:
    key: str
    kind: str
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    service_id: int | None = None


LinePlanner = Callable[[OrderView, ServiceView], Sequence[StepSpec]]
_LINE_PLANNERS: dict[str, LinePlanner] = {}
_ENABLED: frozenset[str] | None = None  # None: every registered kind


def enable_line_kinds(kinds: Iterable[str] | None) -> None:
    """Which registered capabilities plan steps in this process (from the setting
    `line_kinds`; None = all). An installation that does not run one of the outside
    systems yet (say, no registry contract) turns that kind off: its services are
    then kept in `provisioning` with a note for ops, never silently dropped."""
    global _ENABLED
    _ENABLED = None if kinds is None else frozenset(kinds)


def enabled_kinds() -> frozenset[str] | None:
    """The kinds the `line_kinds` setting names (None: every registered kind)."""
    return _ENABLED


def register_line_planner(kind: str, planner: LinePlanner) -> None:
    """Called by a capability (hosting, dns, tls, domain) when it is importable."""
    _LINE_PLANNERS[kind] = planner


def planned_kinds() -> frozenset[str]:
    registered = frozenset(_LINE_PLANNERS)
    return registered if _ENABLED is None else registered & _ENABLED


def proforma_prefix(view: OrderView) -> str:
    return f"proforma:{view.proforma_number}"


def plan(view: OrderView) -> list[StepSpec]:
    """The steps for an order in its current state, dependencies before dependants."""
    prefix = proforma_prefix(view)
    steps = [
        StepSpec(f"{prefix}/notify.proforma", "notify.proforma", (), {"proforma_id": view.proforma_id})
    ]
    if not view.paid:
        return steps
    invoice = f"{prefix}/invoice.issue"
    steps += [
        StepSpec(f"{prefix}/notify.payment", "notify.payment", (), {"proforma_id": view.proforma_id}),
        StepSpec(invoice, "invoice.issue", (), {"proforma_id": view.proforma_id}),
        StepSpec(
            f"{prefix}/notify.invoice", "notify.invoice", (invoice,), {"proforma_id": view.proforma_id}
        ),
    ]
    for service in view.services:
        if _ENABLED is not None and service.kind not in _ENABLED:
            continue
        planner = _LINE_PLANNERS.get(service.kind)
        if service.action == "renew" and service.term_expiry is not None:
            steps += _renewal_steps(view, service, planner)
            continue
        if planner is None:
            continue
        line_steps = list(planner(view, service))
        steps += line_steps
        if line_steps:
            steps.append(
                StepSpec(
                    f"service:{service.id}/activate",
                    "service.activate",
                    tuple(s.key for s in line_steps),
                    {"service_id": service.id},
                    service.id,
                )
            )
    _check(steps)
    return steps


def _renewal_steps(view: OrderView, service: ServiceView,
                   planner: LinePlanner | None) -> list[StepSpec]:
    """A paid renewal proforma: the capability's own renewal steps (a domain renews at
    the registry), then ``service.renew`` extends the term from the ORIGINAL expiry and
    reactivates a service that was shut down. One key per term: paid twice, renewed once."""
    line_steps = list(planner(view, service)) if planner is not None else []
    renew = StepSpec(
        f"service:{service.id}/renew@{service.term_expiry}",
        "service.renew",
        tuple(s.key for s in line_steps),
        {"service_id": service.id, "term_expiry": service.term_expiry,
         "months": service.renew_months or service.period_months,
         "proforma_id": view.proforma_id},
        service.id,
    )
    return [*line_steps, renew]


def _check(steps: Sequence[StepSpec]) -> None:
    seen: set[str] = set()
    for step in steps:
        if step.key in seen:
            raise ValueError(f"duplicate step key {step.key}")
        missing = [d for d in step.deps if d not in seen]
        if missing:
            raise ValueError(f"step {step.key} depends on unknown or later steps {missing}")
        seen.add(step.key)
