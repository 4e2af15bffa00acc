"""The TLD registry profiles (domain.tld_profiles): cut-off and lapse days, restore
windows and fees, the .si withdrawal rule; pure, plain inputs."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from provisioner.adapters.registry import profile_for
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.policy import get_brand
from provisioner.domain.tld_profiles import PROFILES, domain_withdrawable, registry_profile

E = date(2028, 3, 10)


@pytest.mark.parametrize(("tld", "auto", "cutoff", "lapse", "until", "fee"), [
    ("si", False, date(2028, 3, 9), date(2028, 3, 10), date(2028, 4, 8), Decimal("0.00")),
    ("eu", False, date(2028, 3, 9), date(2028, 3, 10), date(2028, 4, 18), Decimal("15.00")),
    ("at", True, date(2028, 3, 5), date(2028, 3, 6), None, None),
    ("com", True, date(2028, 3, 8), date(2028, 3, 9), date(2028, 4, 7), Decimal("90.00")),
    ("xyz", True, date(2028, 3, 8), date(2028, 3, 9), None, None),
])
def test_cutoff_lapse_and_restore_window(tld: str, auto: bool, cutoff: date, lapse: date,
                                         until: date | None, fee: Decimal | None) -> None:
    profile = registry_profile(tld)
    assert profile.auto_renews is auto
    assert profile.cutoff_on(E) == cutoff and profile.lapse_on(E) == lapse
    assert profile.restorable_until(E) == until
    assert profile.restore_fee == fee


def test_eu_quarantine_is_40_days_and_at_supports_do_not_renew() -> None:
    assert registry_profile(".EU").redemption_days == 40
    assert registry_profile("at").do_not_renew and profile_for("at").delete_at_expiry
    assert not any(p.do_not_renew for t, p in PROFILES.items() if t != "at")
    assert not profile_for("com").delete_at_expiry


def test_every_tld_we_sell_has_a_profile_and_its_catalog_text() -> None:
    for tld, entry in DEFAULT_CATALOG.tlds.items():
        assert tld in PROFILES
        assert entry.registry_grace_note == PROFILES[tld].note


@pytest.mark.parametrize(("name", "activated", "today", "allowed", "why"), [
    ("a.si", False, date(2027, 1, 16), True, "never activated"),
    ("a.si", False, date(2027, 1, 17), False, "15-day window"),
    ("a.si", True, date(2027, 1, 2), False, "counts as activated"),
    ("a.eu", False, date(2027, 1, 2), False, "cannot be withdrawn"),
])
def test_si_withdrawal_window(name: str, activated: bool, today: date, allowed: bool,
                              why: str) -> None:
    verdict = domain_withdrawable(name, date(2027, 1, 1), activated, today, get_brand("iserver"))
    assert verdict.allowed is allowed and why in verdict.reason


def test_withdrawal_never_past_the_registry_16_days() -> None:
    generous = replace(get_brand("fcb"), si_refund_window_days=30)
    assert domain_withdrawable("a.si", date(2027, 1, 1), False, date(2027, 1, 17), generous).allowed
    assert not domain_withdrawable("a.si", date(2027, 1, 1), False, date(2027, 1, 18),
                                   generous).allowed
    assert not domain_withdrawable("a.si", None, False, date(2027, 1, 2), generous).allowed
