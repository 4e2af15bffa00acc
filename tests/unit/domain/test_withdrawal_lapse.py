"""An unpaid new order lapses the day after its due date plus the brand's grace."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from provisioner.domain.lapse import has_lapsed, lapse_date
from provisioner.domain.policy import FCB, ISERVER, BrandPolicy

DUE = date(2026, 5, 10)


@pytest.mark.parametrize("policy", [FCB, ISERVER], ids=["fcb", "iserver"])
def test_the_last_day_of_the_grace_still_pays_the_next_day_lapses(policy: BrandPolicy) -> None:
    last = DUE + timedelta(days=policy.new_order_grace_days)
    assert not has_lapsed(DUE, policy, DUE)
    assert not has_lapsed(DUE, policy, last)
    assert has_lapsed(DUE, policy, last + timedelta(days=1))
    assert lapse_date(DUE, policy) == last + timedelta(days=1)


def test_the_grace_is_the_brands() -> None:
    short = replace(ISERVER, new_order_grace_days=0)
    assert lapse_date(DUE, short) == DUE + timedelta(days=1)
