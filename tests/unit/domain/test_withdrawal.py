"""The refund of a withdrawal, per brand, at the window's edges (RULES 001 §3.2, 002 §8)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from provisioner.domain.policy import FCB, ISERVER
from provisioner.domain.withdrawal import compute_withdrawal, credit_note_number, window_day
from provisioner.errors import InvalidInput

ORDERED = date(2026, 3, 1)
PAID = Decimal("59.90")
MIGRATION = Decimal("30.00")


def on_day(n: int) -> date:
    """The n-th day of the window (day 1 is the order's day)."""
    return ORDERED + timedelta(days=n - 1)


@pytest.mark.parametrize(("day", "allowed"), [(1, True), (15, True), (16, False)])
def test_iserver_refunds_within_15_days_less_the_5_eur_fee(day: int, allowed: bool) -> None:
    w = compute_withdrawal(ISERVER, kind="hosting", ordered_on=ORDERED, today=on_day(day),
                           paid=PAID, migration_used=False)
    assert (w.allowed, w.day) == (allowed, day)
    assert w.refund == (Decimal("54.90") if allowed else Decimal("0.00"))
    if not allowed:
        assert "15 days" in w.reason


@pytest.mark.parametrize(("day", "allowed"), [(1, True), (90, True), (91, False)])
def test_fcb_hosting_trial_is_90_days_without_a_fee(day: int, allowed: bool) -> None:
    w = compute_withdrawal(FCB, kind="hosting", ordered_on=ORDERED, today=on_day(day),
                           paid=PAID, migration_used=False)
    assert (w.allowed, w.day) == (allowed, day)
    assert w.refund == (PAID if allowed else Decimal("0.00"))


def test_iserver_refuses_the_refund_when_the_free_migration_was_used() -> None:
    w = compute_withdrawal(ISERVER, kind="hosting", ordered_on=ORDERED, today=on_day(2),
                           paid=PAID, migration_used=True, migration_price=MIGRATION)
    assert not w.allowed and "migration" in w.reason and w.refund == 0


def test_fcb_charges_a_used_migration_at_its_price() -> None:
    w = compute_withdrawal(FCB, kind="hosting", ordered_on=ORDERED, today=on_day(30),
                           paid=PAID, migration_used=True, migration_price=MIGRATION)
    assert w.allowed and w.migration_charge == MIGRATION and w.fee == 0
    assert w.refund == PAID - MIGRATION
    net, vat = w.refund_net_vat
    assert net + vat == w.refund and vat == Decimal("5.39")


def test_fcb_does_not_charge_a_migration_that_was_not_used() -> None:
    w = compute_withdrawal(FCB, kind="hosting", ordered_on=ORDERED, today=on_day(30),
                           paid=PAID, migration_used=False, migration_price=MIGRATION)
    assert w.allowed and w.migration_charge == 0 and w.refund == PAID


@pytest.mark.parametrize(("policy", "kind", "allowed"), [
    (ISERVER, "vps", True), (ISERVER, "domain", False), (FCB, "vps", False),
    (FCB, "tls", False)])
def test_only_the_brands_refundable_kinds(policy: object, kind: str, allowed: bool) -> None:
    w = compute_withdrawal(policy, kind=kind, ordered_on=ORDERED, today=on_day(2),  # type: ignore[arg-type]
                           paid=PAID, migration_used=False)
    assert w.allowed is allowed


def test_a_refund_that_comes_to_nothing_is_refused() -> None:
    w = compute_withdrawal(ISERVER, kind="hosting", ordered_on=ORDERED, today=on_day(2),
                           paid=Decimal("5.00"), migration_used=False)
    assert not w.allowed and "nothing to refund" in w.reason


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInput):
        window_day(ORDERED, ORDERED - timedelta(days=1))
    with pytest.raises(InvalidInput):
        compute_withdrawal(FCB, kind="hosting", ordered_on=ORDERED, today=ORDERED,
                           paid=Decimal("-1"), migration_used=False)
    with pytest.raises(InvalidInput):
        credit_note_number("fcb", 2026, 0)


def test_credit_note_numbers_name_the_brand_and_year() -> None:
    assert credit_note_number("iserver", 2026, 7) == "DB-ISERVER-2026-000007"
