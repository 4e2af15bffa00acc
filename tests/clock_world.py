"""A small world for the lifecycle clock's tests: services made active at a chosen
expiry, a runner whose clock is the simulated day, and helpers to pay and sweep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import earliest_event
from provisioner.pipeline import capabilities
from provisioner.pipeline.capabilities import lifecycle as clock
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import record_manual_payment
from provisioner.pipeline.engine.runner import Runner
from provisioner.store.lifecycle import Renewal
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Proforma, Service
from tests.conftest import make_settings

CUSTOMER = {
    "name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
    "city": "Ljubljana", "country": "SI", "email": "ana@example.si",
    "phone": "+386.41123456", "lang": "en",
}


@dataclass
class ClockWorld:
    runner: Runner
    sink: SmtpSink
    day: date

    @property
    def factory(self) -> Any:
        return self.runner.factory

    def at(self, day: date) -> None:
        self.day = day
        self.runner.now = clock.now_at(day)

    def service(self, item: str, expires_on: date, *, brand: str = "fcb",
                customer: dict[str, Any] | None = None, discount: str | None = None) -> int:
        """A service as if it had been provisioned: active until ``expires_on``."""
        c = ops.add_customer(self.factory, customer or CUSTOMER, "test")
        order = ops.create_order(self.factory, c["id"], [item], discount, brand, "test")
        with transaction(self.factory) as s:
            sv = s.execute(select(Service).where(Service.order_id == order["order"])).scalar_one()
            sv.state = "active"
            sv.expires_on = expires_on
            sv.clock_on = earliest_event(expires_on)
            p = s.execute(select(Proforma).where(Proforma.order_id == order["order"])).scalar_one()
            p.state = "paid"  # its billing is another test's business
            return sv.id

    def sweep(self, day: date | None = None) -> clock.SweepReport:
        if day is not None:
            self.at(day)
        return clock.run_day(self.factory, self.runner, self.day)

    def renewal(self, service_id: int) -> tuple[Renewal, Proforma] | None:
        with transaction(self.factory) as s:
            row = s.execute(select(Renewal, Proforma).join(Proforma, Proforma.id == Renewal.proforma_id)
                            .where(Renewal.service_id == service_id)
                            .order_by(Renewal.id.desc())).first()
            if row is None:
                return None
            s.expunge_all()
            return row[0], row[1]

    def pay(self, proforma_number: str, amount: Decimal, txn: str) -> Any:
        result = record_manual_payment(self.factory, proforma_number=proforma_number, reference=None,
                                       amount=amount, currency="EUR", method="bank", txn=txn,
                                       actor="test")
        clock.drain(self.runner)
        return result

    def get(self, service_id: int) -> Service:
        with transaction(self.factory) as s:
            sv = s.get(Service, service_id)
            assert sv is not None
            s.expunge(sv)
            return sv


def make_world(db_url: str, tmp_path: Path, sink: SmtpSink, start: date,
               line_kinds: str = "hosting,vps,tls") -> ClockWorld:
    settings = make_settings(tmp_path, db_url, sink.port, step_max_attempts=2,
                             line_kinds=line_kinds)
    capabilities.configure(settings.line_kinds)
    runner = Runner(settings, session_factory(db_url), lambda key: None,
                    now=lambda: datetime(start.year, start.month, start.day, 12, tzinfo=UTC))
    return ClockWorld(runner, sink, start)
