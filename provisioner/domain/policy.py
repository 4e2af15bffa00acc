"""Per-brand policy: every number where the providers' terms differ (RULES.md).

RULES.md: "Where two providers differ, the number is a per-brand policy setting with the
default shown; the pipeline must support both values." ``FCB`` is the default brand
(seed 001), ``ISERVER`` the second one (seed 002). Where RULES gives a range, the chosen
value is noted next to the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from provisioner.domain.money import VAT_RATE
from provisioner.errors import InvalidInput


def _frozen(mapping: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class PrepayDiscount:
    """RULES "Discount for prepaying more than 3 months (VPS/hosting)", policy, 002 §11.

    Applies to hosting and VPS items whose period is strictly greater than
    ``min_months_exclusive`` months.
    """

    percent: Decimal
    min_months_exclusive: int = 3
    kinds: frozenset[str] = frozenset({"hosting", "vps"})

    def applies(self, kind: str, period_months: int) -> bool:
        return kind in self.kinds and period_months > self.min_months_exclusive


@dataclass(frozen=True)
class BrandPolicy:
    # identity of the provider (seed 001 = FCB d.o.o., seed 002 = iSERVER d.o.o.)
    code: str
    name: str  # the legal issuer of proformas, invoices and credit notes
    website_url: str
    display_name: str = ""  # what customers call the provider on pages and in mails
    address: str = ""  # the issuer's address on proformas, invoices and credit notes
    vat_id: str = ""
    # where the brand's customers pay (UPN form, bank statements): the brand's own account
    iban: str = ""
    bic: str = ""
    mail_from: str = ""  # the sender of the brand's mails (RFC 5322 address with name)
    support_email: str = ""
    support_phone: str = ""
    # the brand's own gapless number sequences (per year) are told apart by a prefix:
    # "" keeps FCB's "PR-2026-000123" / "2026-000123"; iSERVER's read "IS-PR-..." / "IS-..."
    number_prefix: str = ""
    # the SI12 payment reference's leading digits ("" = FCB's "SI12 2026000123K"); a
    # brand's prefix keeps its references apart from every other brand's
    reference_prefix: str = ""
    # the pages customers open (access data, migration form, site disabled); WCAG AA
    # contrast: white text on ``colour`` and ``colour`` text on white both >= 4.5:1
    colour: str = "#1f4e79"
    # RULES "Prices in EUR, VAT included": VAT 22 %
    vat_rate: Decimal = VAT_RATE
    # RULES "Prepayment: nothing is provisioned before the proforma is paid": proforma
    # due date (not in RULES; house choice: 8 days)
    proforma_due_days: int = 8
    # RULES "Renewal proforma e-mailed before expiry": >= 30 days before
    renewal_notice_days: int = 30
    # RULES "Renewal proforma e-mailed before expiry": reminders, days before expiry
    renewal_reminder_days: tuple[int, ...] = (30, 14, 7, 1)
    # RULES "Hosting stops working": the day after expiry
    shutdown_after_days: int = 1
    # RULES "data kept on servers after expiry": FCB 30-60 days (we use 60), iSERVER 30
    data_retention_days: int = 60
    # RULES "data kept in secondary backups after expiry": FCB 30-90 days (we use 90),
    # iSERVER: removed with the files (= data_retention_days)
    backup_retention_days: int = 90
    # RULES ".eu and .at must be renewed before expiry": provider renews >= 5 days before
    domain_early_renew_days: Mapping[str, int] = field(
        default_factory=lambda: _frozen({"eu": 5, "at": 5}), hash=False
    )
    # RULES ".si registration can be refunded if nameservers were not set": 15 days
    si_refund_window_days: int = 15
    # RULES "Refund without specific work done": FCB 90-day trial for hosting, iSERVER 15 days
    refund_window_days: int = 90
    # RULES "Refund without specific work done": iSERVER 5 EUR fee, FCB none
    refund_fee: Decimal = Decimal("0.00")
    # RULES "Refund without specific work done": the services that can be withdrawn
    # (FCB: hosting, 001 §3.2; iSERVER: shared hosting and VPS, 002 §8)
    refund_kinds: frozenset[str] = frozenset({"hosting"})
    # RULES "Prepayment": a new order's proforma unpaid this many days after its due date
    # lapses (order cancelled, customer told); house choice: 7 days
    new_order_grace_days: int = 7
    # RULES "Refund refused if the free migration was used (iSERVER)"
    migration_blocks_refund: bool = False
    # RULES "migration charged on withdrawal (FCB)"
    migration_charged_on_withdrawal: bool = True
    # RULES "Reactivation after shutdown may be charged (fee per price list)": gross EUR
    reactivation_fee: Decimal = Decimal("10.00")
    # RULES "Paper copy of an invoice": 5.00 EUR + VAT admin fee (net amount)
    paper_invoice_fee: Decimal = Decimal("5.00")
    # RULES "Discount for prepaying more than 3 months (VPS/hosting)": policy; None = none
    prepay_discount: PrepayDiscount | None = None
    # RULES "over disk/transfer quota": customer has 7 days to upgrade
    over_quota_grace_days: int = 7
    # RULES "Support stops when a payment is > 7 days late"
    support_stop_days_late: int = 7
    # RULES "after a GDPR erasure, personal data still sit in backups": 30-60 days (we use 60)
    gdpr_backup_rotation_days: int = 60
    # RULES "Invoice ... data kept 10 years"
    invoice_retention_years: int = 10
    # RULES "Maintenance window for disruptive work": 23:00-05:00 (local time)
    maintenance_window: tuple[str, str] = ("23:00", "05:00")
    # RULES "Breach: supervisory authority notified within 72 hours"
    breach_notification_hours: int = 72
    # RULES "Fair use: average use <= 50 % of the leased capacity" (VPS)
    vps_fair_use_percent: int = 50

    def __post_init__(self) -> None:
        if not self.code or self.code != self.code.lower():
            raise InvalidInput(f"brand code must be non-empty lower case: {self.code!r}")
        if self.number_prefix and not re.fullmatch(r"[A-Z]{1,4}", self.number_prefix):
            raise InvalidInput(f"brand {self.code}: number prefix must be 1-4 capital letters")
        if self.reference_prefix and not re.fullmatch(r"[1-9][0-9]{0,2}", self.reference_prefix):
            raise InvalidInput(f"brand {self.code}: reference prefix must be 1-3 digits, no leading 0")
        if not isinstance(self.domain_early_renew_days, MappingProxyType):
            object.__setattr__(
                self, "domain_early_renew_days", _frozen(self.domain_early_renew_days)
            )

    @property
    def account(self) -> str:
        """The brand's IBAN as statements name it: no spaces, upper case."""
        return "".join(self.iban.split()).upper()

    @property
    def recipient(self) -> str:
        """The payee on the UPN form: the legal issuer and its address."""
        return f"{self.name}, {self.address}" if self.address else self.name

    def early_renew_days(self, tld: str) -> int:
        """Days before expiry the provider renews a domain of ``tld`` (0 = on expiry)."""
        return self.domain_early_renew_days.get(tld.lower().lstrip("."), 0)


FCB = BrandPolicy(
    code="fcb",
    name="FCB d.o.o.",
    website_url="https://www.fcb.si",
    display_name="FCB",
    address="Ljubljana, Slovenija",
    vat_id="SI00000001",
    iban="SI62 0201 1001 2345 678",
    bic="LJBASI2X",
    mail_from="FCB <billing@fcb.si>",
    support_email="podpora@fcb.si",
    support_phone="+386 1 000 00 01",
    colour="#1f4e79",
    data_retention_days=60,
    backup_retention_days=90,
    refund_window_days=90,
    refund_fee=Decimal("0.00"),
    migration_blocks_refund=False,
    migration_charged_on_withdrawal=True,
    reactivation_fee=Decimal("10.00"),
    prepay_discount=None,
)

ISERVER = BrandPolicy(
    code="iserver",
    name="iSERVER d.o.o.",
    website_url="https://www.iserver.si",
    display_name="iSERVER",
    address="Ljubljana, Slovenija",
    vat_id="SI00000002",
    iban="SI56 0510 0801 0486 080",
    bic="ABANSI2X",
    mail_from="iSERVER <billing@iserver.si>",
    support_email="podpora@iserver.si",
    support_phone="+386 1 000 00 02",
    colour="#8a1c1c",
    number_prefix="IS",
    reference_prefix="9",
    data_retention_days=30,
    backup_retention_days=30,  # removed together with the files
    refund_window_days=15,
    refund_fee=Decimal("5.00"),
    refund_kinds=frozenset({"hosting", "vps"}),
    migration_blocks_refund=True,
    migration_charged_on_withdrawal=False,
    reactivation_fee=Decimal("15.00"),
    prepay_discount=PrepayDiscount(percent=Decimal("10")),
)

DEFAULT_BRAND = FCB

BRANDS: dict[str, BrandPolicy] = {FCB.code: FCB, ISERVER.code: ISERVER}


def get_brand(code: str) -> BrandPolicy:
    """The policy for a brand code (case-insensitive); InvalidInput for an unknown one."""
    key = code.strip().lower() if isinstance(code, str) else ""
    try:
        return BRANDS[key]
    except KeyError:
        known = ", ".join(sorted(BRANDS))
        raise InvalidInput(f"unknown brand {code!r} (known: {known})") from None


def brand_for_account(account: str) -> BrandPolicy | None:
    """The brand whose bank account is ``account`` (an IBAN, spaces and case ignored)."""
    wanted = "".join(account.split()).upper()
    return next((b for b in BRANDS.values() if b.account and b.account == wanted), None)
