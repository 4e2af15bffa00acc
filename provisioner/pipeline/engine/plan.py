"""Planning: a paid proforma (and the services it pays for) -> steps with stable keys.

`plan()` is pure: it reads plain values and returns plain values, so that
`provisioner plan ORDER` can print it without touching anything and tests can call
it with literals. Capabilities plug in with a line planner for their item kind, which
the composition root hands to a `Planner` (`provisioner.bootstrap`); a kind with no
planner gets no steps, and its service stays in `provisioning` with a note saying so
(nothing pretends to provision it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class PlanOptions:
    """What an installation plans (from the setting ``line_kinds``): ``kinds`` is None for
    every kind that has a line planner, else the kinds named; ``extras`` are what hosting
    lines get besides the account (``dns``: its zone, ``tls``: its certificate)."""

    kinds: frozenset[str] | None = None
    extras: frozenset[str] = frozenset()

    @classmethod
    def from_setting(cls, line_kinds: str) -> PlanOptions:
        """"all", or a comma list ("" = none). "all" is every line kind, and hosting lines
        without a zone or a certificate (those need a DNS server and a CA): name ``dns``
        (no line kind of its own: the hosting line's zone) and ``tls`` (a line kind, and
        the hosting line's certificate) to get them, e.g. "all,dns,tls"."""
        named = frozenset(k.strip() for k in line_kinds.split(",") if k.strip())
        extras = named & HOSTING_EXTRAS
        if "all" in named:
            return cls(None, extras)
        return cls(named, extras)

    def enabled(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


HOSTING_EXTRAS = frozenset({"dns", "tls"})

LinePlanner = Callable[[OrderView, ServiceView, PlanOptions], Sequence[StepSpec]]


# -- step keys: pure functions, so one capability names another's steps without planning it
def service_step(service_id: int, kind: str, term: str | None = None) -> str:
    """``service:42/hosting.account``; with a term, ``service:42/tls.issue@2027-01-31``."""
    return f"service:{service_id}/{kind}" + (f"@{term}" if term else "")


@dataclass(frozen=True)
class Planner:
    """The line planners of the installed capabilities and what ``line_kinds`` enables.
    Built by the composition root (`provisioner.bootstrap`); pure."""

    line_planners: Mapping[str, LinePlanner] = field(default_factory=dict)
    options: PlanOptions = PlanOptions()

    def planned_kinds(self) -> frozenset[str]:
        return frozenset(k for k in self.line_planners if self.options.enabled(k))

    def plan(self, view: OrderView) -> list[StepSpec]:
        return plan(view, self)


def proforma_prefix(view: OrderView) -> str:
    return f"proforma:{view.proforma_number}"


def plan(view: OrderView, planner: Planner | None = None) -> list[StepSpec]:
    """The steps for an order in its current state, dependencies before dependants. An
    unpaid order's plan (its proforma e-mail) needs no planner."""
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
    if planner is None:
        raise ValueError("a paid order's plan needs the installation's planner")
    options = planner.options
    for service in view.services:
        if not options.enabled(service.kind):
            continue
        line_planner = planner.line_planners.get(service.kind)
        if service.action == "renew" and service.term_expiry is not None:
            steps += _renewal_steps(view, service, line_planner, options)
            continue
        if line_planner is None:
            continue
        line_steps = list(line_planner(view, service, options))
        steps += line_steps
        if line_steps:
            steps.append(
                StepSpec(
                    service_step(service.id, "activate"),
                    "service.activate",
                    tuple(s.key for s in line_steps),
                    {"service_id": service.id},
                    service.id,
                )
            )
    _check(steps)
    return steps


def _renewal_steps(view: OrderView, service: ServiceView, planner: LinePlanner | None,
                   options: PlanOptions) -> list[StepSpec]:
    """A paid renewal proforma: the capability's own renewal steps (a domain renews at
    the registry), then ``service.renew`` extends the term from the ORIGINAL expiry and
    reactivates a service that was shut down. One key per term: paid twice, renewed once."""
    line_steps = list(planner(view, service, options)) if planner is not None else []
    renew = StepSpec(
        service_step(service.id, "renew", service.term_expiry),
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
