"""001 §2.6 through the store, on SQLite and PostgreSQL: a TLD's first-year promo price is
used once per domain name, whoever orders it; a later registration of that name pays the
transfer price (.si 9.90), not the registration price (19.90). The history is read from
the database: proforma lines marked promo, of proformas not cancelled."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from sqlalchemy import update

from provisioner.pipeline.usecases import ops
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Proforma
from tests.helpers import customer


def _line(factory: object, spec: str, email: str) -> dict[str, object]:
    c = ops.add_customer(factory, customer("en", email=email), "test")
    order = ops.create_order(factory, c["id"], [spec], None, "fcb", "test")
    (line,) = order["proforma"]["lines"]
    return {"number": order["proforma"]["number"], **line}


def test_a_domain_name_gets_its_first_year_promo_once(db_url: str, tmp_path: Path) -> None:
    factory = session_factory(db_url)
    first = _line(factory, "domain:promo.si:1y", "ana@example.si")
    assert (Decimal(str(first["gross"])), first["promo"]) == (Decimal("4.90"), True)
    # a later registration of the same name, by another customer: the transfer price
    later = _line(factory, "domain:PROMO.si:1y", "bojan@example.si")
    assert (Decimal(str(later["gross"])), later["promo"]) == (Decimal("9.90"), False)
    # another name still gets its promo
    other = _line(factory, "domain:druga.si:2y", "ana@example.si")
    assert (Decimal(str(other["gross"])), other["promo"]) == (Decimal("24.80"), True)


def test_a_cancelled_proforma_does_not_use_up_the_promo(db_url: str, tmp_path: Path) -> None:
    factory = session_factory(db_url)
    first = _line(factory, "domain:preklic.si:1y", "ana@example.si")
    assert first["promo"]
    with transaction(factory) as s:
        s.execute(update(Proforma).where(Proforma.number == first["number"])
                  .values(state="cancelled"))
    again = _line(factory, "domain:preklic.si:1y", "ana@example.si")
    assert (Decimal(str(again["gross"])), again["promo"]) == (Decimal("4.90"), True)
