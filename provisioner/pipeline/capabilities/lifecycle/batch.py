"""One batch of the sweep: what its services need, loaded in a few queries, and the
journal rows it writes."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.pipeline.engine.plan import StepSpec
from provisioner.store.counters import counter_row
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import (
    OrderItemRow,
    Proforma,
    Service,
    Step,
)
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"


class Batch:
    """One batch of the sweep: what its services need, loaded in a few queries."""

    def __init__(self, s: Session, today: date, dry_run: bool, services: list[Service]) -> None:
        self.s, self.today, self.dry_run = s, today, dry_run
        ids = [sv.id for sv in services]
        self.renewals: dict[tuple[int, date], Renewal] = {}
        self.proformas: dict[int, Proforma] = {}
        self.keys: set[str] = set()
        self.items: dict[int, OrderItemRow] = {}
        self.new_proformas: list[Proforma] = []
        self._counters: dict[tuple[str, int], Any] = {}  # (brand, year) -> locked row
        if not ids:
            return
        for r, p in s.execute(select(Renewal, Proforma).join(Proforma, Proforma.id == Renewal.proforma_id)
                              .where(Renewal.service_id.in_(ids))).all():
            self.renewals[(r.service_id, r.term_expiry)] = r
            self.proformas[p.id] = p
        self.items = {row.id: row for row in s.execute(select(OrderItemRow).where(
            OrderItemRow.id.in_([sv.item_id for sv in services]))).scalars()}
        self.keys = set(s.execute(select(Step.key).where(Step.service_id.in_(ids),
                                                         Step.kind.like("clock.%"))).scalars())

    def renewal(self, service_id: int, term: date) -> Renewal | None:
        return self.renewals.get((service_id, term))

    def record(self, service: Service, spec: StepSpec) -> bool:
        """A clock step into the journal unless its key is there: True if it is new."""
        if spec.key in self.keys:
            return False
        self.keys.add(spec.key)
        self.s.add(step_row(service.order_id, spec))
        return True

    def next_proforma_number(self, year: int, brand: str) -> int:
        """Gapless, per brand: the brand's counter row is read (and locked) once per batch
        and bumped in memory; it is written with the batch, in the same transaction."""
        row = self._counters.get((brand, year))
        if row is None:
            row = self._counters[(brand, year)] = counter_row(self.s, "proforma", brand, year)
        row.last += 1
        return int(row.last)


def step_row(order_id: int, spec: StepSpec) -> Step:
    now = utcnow()
    return Step(key=spec.key, order_id=order_id, service_id=spec.service_id, kind=spec.kind,
                params=spec.params, deps=list(spec.deps), state="pending", attempts=0,
                created_at=now, updated_at=now)
