from decimal import Decimal as D

import pytest

from provisioner.domain.policy import BRANDS, FCB, ISERVER, BrandPolicy, get_brand
from provisioner.errors import InvalidInput


@pytest.mark.parametrize(
    ("field", "fcb", "iserver"),
    [
        ("data_retention_days", 60, 30),
        ("backup_retention_days", 90, 30),
        ("refund_window_days", 90, 15),
        ("refund_fee", D("0.00"), D("5.00")),
        ("migration_blocks_refund", False, True),
        ("migration_charged_on_withdrawal", True, False),
    ],
)
def test_brands_differ_where_rules_say(field: str, fcb: object, iserver: object) -> None:
    assert getattr(FCB, field) == fcb
    assert getattr(ISERVER, field) == iserver


@pytest.mark.parametrize("brand", [FCB, ISERVER])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vat_rate", D("0.22")),
        ("proforma_due_days", 8),
        ("renewal_notice_days", 30),
        ("renewal_reminder_days", (30, 14, 7, 1)),
        ("shutdown_after_days", 1),
        ("si_refund_window_days", 15),
        ("paper_invoice_fee", D("5.00")),
        ("over_quota_grace_days", 7),
        ("support_stop_days_late", 7),
        ("gdpr_backup_rotation_days", 60),
        ("invoice_retention_years", 10),
        ("maintenance_window", ("23:00", "05:00")),
    ],
)
def test_shared_values(brand: BrandPolicy, field: str, value: object) -> None:
    assert getattr(brand, field) == value


@pytest.mark.parametrize(("tld", "days"), [("eu", 5), ("at", 5), (".EU", 5), ("si", 0)])
def test_early_renew_days(tld: str, days: int) -> None:
    assert FCB.early_renew_days(tld) == days


def test_prepay_discount_per_brand() -> None:
    assert FCB.prepay_discount is None
    assert ISERVER.prepay_discount is not None
    assert ISERVER.prepay_discount.applies("hosting", 6)
    assert not ISERVER.prepay_discount.applies("hosting", 3)
    assert not ISERVER.prepay_discount.applies("domain", 24)


def test_policy_is_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        FCB.refund_fee = D("1")  # type: ignore[misc]
    with pytest.raises(TypeError):
        FCB.domain_early_renew_days["eu"] = 1  # type: ignore[index]
    assert hash(FCB) != hash(ISERVER)


@pytest.mark.parametrize(("code", "brand"), [("fcb", FCB), ("FCB", FCB), (" iserver ", ISERVER)])
def test_get_brand(code: str, brand: BrandPolicy) -> None:
    assert get_brand(code) is brand


def test_brands_table() -> None:
    assert BRANDS == {"fcb": FCB, "iserver": ISERVER}


@pytest.mark.parametrize("code", ["", "acme", "fcb;", None])
def test_get_brand_unknown(code: object) -> None:
    with pytest.raises(InvalidInput, match="unknown brand"):
        get_brand(code)  # type: ignore[arg-type]
