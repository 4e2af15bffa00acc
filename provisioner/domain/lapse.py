"""Unpaid new orders lapse (RULES "Prepayment: nothing is provisioned before the proforma
is paid"; 001 §2.2: the customer pays by the due date on the proforma). Pure.

A new order's proforma still unpaid after its due date plus the brand's grace
(``new_order_grace_days``) lapses: the order and the proforma are cancelled, the services
(never provisioned) are cancelled, and the customer is told. A renewal proforma never
lapses this way: an unpaid renewal goes the expiry path (shutdown, staged deletion).
"""

from __future__ import annotations

from datetime import date, timedelta

from provisioner.domain.policy import BrandPolicy


def lapse_date(due_date: date, policy: BrandPolicy) -> date:
    """The first day a new order's proforma unpaid since ``due_date`` has lapsed: the due
    date and the grace days are still days to pay on."""
    return due_date + timedelta(days=policy.new_order_grace_days + 1)


def has_lapsed(due_date: date, policy: BrandPolicy, today: date) -> bool:
    return today >= lapse_date(due_date, policy)
