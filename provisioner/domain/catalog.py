"""The price list and products: hosting plans, VPS plans, domain TLDs, TLS certificates.

All prices are gross EUR, VAT included (RULES "Prices in EUR, VAT included").
Shared-hosting limits follow RULES "Shared hosting limits (per plan)" (seed 001 §3.1,
002 §13); CPU / memory / IOPS / task caps are our fair-share numbers per plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

from provisioner.domain.names import normalize_domain
from provisioner.domain.tld_profiles import registry_profile
from provisioner.errors import InvalidInput

_T = TypeVar("_T")

KINDS = ("hosting", "vps", "domain", "tls", "migration", "backup")
#: Allowed ``action`` values per kind; the first one is the default.
ACTIONS: dict[str, tuple[str, ...]] = {
    "hosting": ("new", "renew"),
    "vps": ("new", "renew"),
    "domain": ("register", "transfer", "renew"),
    "tls": ("new", "renew"),
    "migration": ("new",),
    "backup": ("new", "renew"),
}
#: Periods (months) that can be ordered for hosting and VPS.
HOSTING_PERIODS_MONTHS = (1, 3, 6, 12, 24, 36)
VPS_PERIODS_MONTHS = (1, 3, 6, 12, 24, 36)
DEFAULT_PERIOD_MONTHS = {"hosting": 12, "vps": 1, "domain": 12, "tls": 12, "migration": 1,
                         "backup": 12}


@dataclass(frozen=True)
class HostingPlan:
    code: str
    name: str
    price_year: Decimal  # gross EUR incl. VAT
    disk_mb: int
    mailbox_mb: int  # RULES: mailbox size 1,000 / 5,000 / 10,000 / 15,000 MB
    upload_max_mb: int  # RULES: largest uploaded file 250 MB (Mega) / 1,000 MB
    mailboxes: int
    cpu_percent: int  # RULES: CPU capped per plan (fair share), 100 = one core
    memory_mb: int  # RULES: fMem, physical memory
    vmem_mb: int  # RULES: vMem, virtual memory
    iops: int  # RULES: IOPS capped per plan
    tasks_max: int  # processes/threads (systemd TasksMax)
    database_max_mb: int = 1024  # RULES: one database <= 1 GB
    databases: int = 1  # RULES: one database
    message_max_mb: int = 50  # RULES: one e-mail message <= 50 MB
    recipients_max: int = 60  # RULES: recipients per message <= 60
    recipients_delay_above: int = 50  # RULES: (delays above 50)
    mail_per_hour: int = 60  # RULES: 60 messages / hour
    mail_per_month: int = 10000  # RULES: monthly outgoing mail 10,000
    mass_mail_max_recipients: int = 2000  # RULES: mass mailing to > 2,000 forbidden
    cron_min_interval_min: int = 30  # RULES: cron no more often than once per 30 min


#: Operating system images a VPS can be installed from (every plan offers each).
VPS_IMAGES = ("debian-12", "debian-13", "ubuntu-24.04")


@dataclass(frozen=True)
class VpsPlan:
    """A VPS plan's limits. RULES give no numbers for VPS plans: these are a catalog choice
    (README, "VPS plans"), sized like the market's small/medium/large KVM plans: disk
    IOPS and throughput capped per machine so one guest cannot starve its neighbours on
    the same storage, bandwidth shaped on its network device."""

    code: str
    name: str
    price_month: Decimal  # gross EUR incl. VAT
    vcpus: int
    memory_mb: int
    disk_gb: int
    iops_read: int = 2000
    iops_write: int = 1000
    disk_read_mbps: int = 200  # MB/s
    disk_write_mbps: int = 100  # MB/s
    bandwidth_mbit: int = 200  # Mbit/s, shaped on the VPS's network device
    tasks_max: int = 2000
    images: tuple[str, ...] = VPS_IMAGES


@dataclass(frozen=True)
class DomainTld:
    tld: str
    register_price: Decimal  # gross EUR per year
    renew_price: Decimal  # gross EUR per year
    transfer_price: Decimal  # gross EUR (a transfer includes one year)
    periods_years: tuple[int, ...]
    first_year_promo_price: Decimal | None  # first year of a new registration, once per name
    registry_grace_note: str  # what the registry does at expiry (domain.tld_profiles)


@dataclass(frozen=True)
class TlsProduct:
    code: str
    name: str
    price_year: Decimal  # gross EUR per year
    wildcard: bool
    validation: str  # "DV"
    periods_years: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class MigrationProduct:
    """RULES "Free migration from the old provider": free with a new hosting order within
    the caps; ``withdrawal_price`` (gross EUR) is what a brand that charges the migration
    on withdrawal (FCB, ``BrandPolicy.migration_charged_on_withdrawal``) bills then: one
    working hour at our price list (house choice: 49.00 EUR)."""

    code: str = "migration"
    name: str = "Migration"
    price: Decimal = Decimal("0.00")
    withdrawal_price: Decimal = Decimal("49.00")
    max_sites: int = 1  # RULES: 1 website
    max_databases: int = 1  # RULES: 1 MySQL database
    max_mailboxes: int = 2  # RULES: up to 2 mailboxes
    max_data_mb: int = 2048  # RULES: 2 GB
    max_minutes: int = 60  # RULES: 1 working hour


@dataclass(frozen=True)
class BackupProduct:
    """RULES "customer may download backups before deletion: if a backup service was
    ordered" (002 §7). ``backup:SITE`` beside a hosting line for the same site; while it
    runs, the customer gets a one-time link to the newest snapshot of the site (files,
    mailboxes, database dump) when the hosting is shut down, valid until the data are
    deleted (`pipeline.capabilities.backup_download`). House price: 1.00 EUR a month gross
    (12.00 EUR a year), about what one off-site copy of a Giga 5 account costs us; its
    periods are the hosting periods, so it can run in step with the hosting line."""

    code: str = "backup"
    name: str = "Backup"
    price_month: Decimal = Decimal("1.00")


@dataclass(frozen=True)
class Catalog:
    hosting: dict[str, HostingPlan] = field(hash=False)
    vps: dict[str, VpsPlan] = field(hash=False)
    tlds: dict[str, DomainTld] = field(hash=False)
    tls: dict[str, TlsProduct] = field(hash=False)
    migration: MigrationProduct = MigrationProduct()
    backup: BackupProduct = BackupProduct()

    def hosting_plan(self, code: str) -> HostingPlan:
        return _lookup(self.hosting, code, "hosting plan")

    def vps_plan(self, code: str) -> VpsPlan:
        return _lookup(self.vps, code, "VPS plan")

    def tld(self, tld: str) -> DomainTld:
        return _lookup(self.tlds, tld.lstrip(".") if isinstance(tld, str) else tld, "TLD")

    def tld_for(self, domain: str) -> DomainTld:
        """The TLD entry for a domain name (normalized first); InvalidInput if we do not sell it."""
        name = normalize_domain(domain)
        tld = name.rsplit(".", 1)[1]
        if tld not in self.tlds:
            known = ", ".join(f".{t}" for t in sorted(self.tlds))
            raise InvalidInput(f"we do not register .{tld} domains ({name}); we sell {known}")
        return self.tlds[tld]

    def tls_product(self, code: str) -> TlsProduct:
        return _lookup(self.tls, code, "TLS product")

    def product_name(self, kind: str, product: str) -> str:
        """A human name for an item's product ("Giga 5", ".si domain", ...)."""
        if kind == "hosting":
            return self.hosting_plan(product).name
        if kind == "vps":
            return self.vps_plan(product).name
        if kind == "domain":
            return f".{self.tld(product).tld} domain"
        if kind == "tls":
            return self.tls_product(product).name
        if kind == "migration":
            return self.migration.name
        if kind == "backup":
            return self.backup.name
        raise InvalidInput(f"unknown item kind {kind!r} (expected one of {', '.join(KINDS)})")


def _lookup(table: dict[str, _T], code: str, what: str) -> _T:
    key = code.strip().lower() if isinstance(code, str) else ""
    try:
        return table[key]
    except KeyError:
        known = ", ".join(sorted(table))
        raise InvalidInput(f"unknown {what} {code!r} (known: {known})") from None



def _d(text: str) -> Decimal:
    return Decimal(text)


_HOSTING = (
    HostingPlan(
        code="mega", name="Mega", price_year=_d("29.90"), disk_mb=2000, mailbox_mb=1000,
        upload_max_mb=250, mailboxes=10, cpu_percent=50, memory_mb=512, vmem_mb=1024,
        iops=500, tasks_max=50,
    ),
    HostingPlan(
        code="giga5", name="Giga 5", price_year=_d("59.90"), disk_mb=5000, mailbox_mb=5000,
        upload_max_mb=1000, mailboxes=50, cpu_percent=100, memory_mb=1024, vmem_mb=2048,
        iops=1000, tasks_max=100,
    ),
    HostingPlan(
        code="giga10", name="Giga 10", price_year=_d("89.90"), disk_mb=10000,
        mailbox_mb=10000, upload_max_mb=1000, mailboxes=100, cpu_percent=150,
        memory_mb=1536, vmem_mb=3072, iops=1500, tasks_max=150,
    ),
    HostingPlan(
        code="giga15", name="Giga 15", price_year=_d("119.90"), disk_mb=15000,
        mailbox_mb=15000, upload_max_mb=1000, mailboxes=150, cpu_percent=200,
        memory_mb=2048, vmem_mb=4096, iops=2000, tasks_max=200,
    ),
)

_VPS = (
    VpsPlan("vps-s", "VPS S", _d("9.90"), vcpus=1, memory_mb=2048, disk_gb=40,
            iops_read=1000, iops_write=500, disk_read_mbps=100, disk_write_mbps=50,
            bandwidth_mbit=100, tasks_max=1000),
    VpsPlan("vps-m", "VPS M", _d("19.90"), vcpus=2, memory_mb=4096, disk_gb=80,
            iops_read=2000, iops_write=1000, disk_read_mbps=200, disk_write_mbps=100,
            bandwidth_mbit=200, tasks_max=2000),
    VpsPlan("vps-l", "VPS L", _d("39.90"), vcpus=4, memory_mb=8192, disk_gb=160,
            iops_read=4000, iops_write=2000, disk_read_mbps=400, disk_write_mbps=200,
            bandwidth_mbit=500, tasks_max=4000),
)

_TLDS = (
    DomainTld("si", _d("19.90"), _d("19.90"), _d("9.90"), (1, 2, 3, 4, 5), _d("4.90"),
              registry_profile("si").note),
    DomainTld("eu", _d("9.90"), _d("9.90"), _d("9.90"), tuple(range(1, 11)), _d("2.90"),
              registry_profile("eu").note),
    DomainTld("com", _d("14.90"), _d("14.90"), _d("14.90"), tuple(range(1, 11)), None,
              registry_profile("com").note),
    DomainTld("at", _d("19.90"), _d("19.90"), _d("19.90"), (1,), None, registry_profile("at").note),
    DomainTld("net", _d("16.90"), _d("16.90"), _d("16.90"), tuple(range(1, 11)), None,
              registry_profile("net").note),
    DomainTld("org", _d("16.90"), _d("16.90"), _d("16.90"), tuple(range(1, 11)), None,
              registry_profile("org").note),
)

_TLS = (
    TlsProduct("dv", "SSL DV", _d("19.90"), wildcard=False, validation="DV"),
    TlsProduct("dv-wildcard", "SSL DV Wildcard", _d("79.90"), wildcard=True, validation="DV"),
)

DEFAULT_CATALOG = Catalog(
    hosting={p.code: p for p in _HOSTING},
    vps={p.code: p for p in _VPS},
    tlds={t.tld: t for t in _TLDS},
    tls={t.code: t for t in _TLS},
)


@dataclass(frozen=True)
class OrderItem:
    """One line of an order, as the CLI / API names it.

    ``product`` is the plan code (hosting, vps), the TLD without dot (domain) or the TLS
    product code; ``name`` the normalized domain / site / host name.
    """

    kind: str
    product: str
    name: str
    period_months: int
    action: str

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS:
            raise InvalidInput(
                f"unknown item kind {self.kind!r} (expected one of {', '.join(KINDS)})"
            )
        if self.action not in ACTIONS[self.kind]:
            raise InvalidInput(
                f"action {self.action!r} is not possible for {self.kind} "
                f"(expected one of {', '.join(ACTIONS[self.kind])})"
            )
        if (
            isinstance(self.period_months, bool)
            or not isinstance(self.period_months, int)
            or self.period_months <= 0
        ):
            raise InvalidInput(
                f"period must be a positive number of months: {self.period_months!r}"
            )
        if self.kind in ("domain", "tls") and self.period_months % 12:
            raise InvalidInput(
                f"{self.kind} periods are whole years, not {self.period_months} months"
            )

    @property
    def period_years(self) -> int:
        """Whole years of the period (domain and TLS items are always whole years)."""
        return self.period_months // 12

    @property
    def service_key(self) -> str:
        """Identifies the service across orders and plan changes: ``"hosting:example.si"``.

        Used for "first-year promo usable once per service" (RULES, 001 §2.6).
        """
        return f"{self.kind}:{self.name}"

    def to_spec(self) -> str:
        """The explicit CLI form; ``parse_item(item.to_spec()) == item``.

        ``hosting:giga5:example.si:12m``, ``vps:vps-s:host.example.si:1m:renew``,
        ``domain:example.si:1y``, ``domain:example.si:1y:transfer``, ``tls:dv:example.si:1y``.
        """
        default_action = ACTIONS[self.kind][0]
        suffix = "" if self.action == default_action else f":{self.action}"
        if self.kind == "domain":
            return f"domain:{self.name}:{self.period_years}y{suffix}"
        if self.kind == "tls":
            return f"tls:{self.product}:{self.name}:{self.period_years}y{suffix}"
        if self.kind == "migration":
            return f"migration:{self.name}"
        if self.kind == "backup":
            return f"backup:{self.name}:{self.period_months}m{suffix}"
        return f"{self.kind}:{self.product}:{self.name}:{self.period_months}m{suffix}"


_PERIOD_RE = re.compile(r"([1-9][0-9]{0,2})([my])")


def _parse_period(token: str, spec: str) -> int:
    m = _PERIOD_RE.fullmatch(token.strip().lower())
    if m is None:
        raise InvalidInput(
            f"bad period {token!r} in {spec!r} (expected e.g. 12m or 1y)"
        )
    n = int(m.group(1))
    return n * 12 if m.group(2) == "y" else n


def _is_period(token: str) -> bool:
    return _PERIOD_RE.fullmatch(token.strip().lower()) is not None


def parse_item(spec: str, catalog: Catalog = DEFAULT_CATALOG) -> OrderItem:
    """Parse the CLI item syntax into an ``OrderItem``.

    ``hosting:PLAN:SITE[:PERIOD][:renew]`` (default 12m), ``vps:PLAN:HOST[:PERIOD][:renew]``
    (default 1m), ``domain:NAME[:PERIOD][:register|transfer|renew]`` (default 1y, register),
    ``tls:[PRODUCT:]NAME[:PERIOD][:renew]`` (default product ``dv``, 1y).
    PERIOD is ``<n>m`` or ``<n>y``. Unknown kind / plan / TLD / period -> InvalidInput
    naming the bad part.
    """
    cat = catalog
    if not isinstance(spec, str):
        raise InvalidInput(f"order item must be text, not {type(spec).__name__}")
    if len(spec) > 600:
        raise InvalidInput("order item is far too long")
    parts = [p.strip() for p in spec.strip().split(":")]
    if len(parts) < 2 or any(p == "" for p in parts):
        raise InvalidInput(
            f"bad order item {spec!r} (expected e.g. hosting:giga5:example.si or "
            "domain:example.si:1y)"
        )
    kind = parts[0].lower()
    rest = parts[1:]
    if kind not in ACTIONS:
        raise InvalidInput(
            f"unknown item kind {parts[0]!r} in {spec!r} (expected one of {', '.join(KINDS)})"
        )
    # Optional trailing action, then optional period.
    action = ACTIONS[kind][0]
    if len(rest) > 1 and rest[-1].lower() in ACTIONS[kind]:
        action = rest.pop().lower()
    elif len(rest) > 1 and not _is_period(rest[-1]) and rest[-1].lower() in {
        a for acts in ACTIONS.values() for a in acts
    }:
        raise InvalidInput(
            f"action {rest[-1]!r} is not possible for {kind} in {spec!r} "
            f"(expected one of {', '.join(ACTIONS[kind])})"
        )
    period = DEFAULT_PERIOD_MONTHS[kind]
    if len(rest) > 1 and _is_period(rest[-1]):
        period = _parse_period(rest.pop(), spec)
    elif len(rest) > 1 and re.fullmatch(r"[+-]?[0-9]+[a-z]*", rest[-1].lower()):
        _parse_period(rest[-1], spec)  # raises with the bad period named

    if kind in ("hosting", "vps"):
        if len(rest) != 2:
            raise InvalidInput(
                f"bad {kind} item {spec!r} (expected {kind}:PLAN:NAME[:PERIOD][:renew])"
            )
        plan_code, raw_name = rest
        if kind == "hosting":
            plan = cat.hosting_plan(plan_code).code
            allowed = HOSTING_PERIODS_MONTHS
        else:
            plan = cat.vps_plan(plan_code).code
            allowed = VPS_PERIODS_MONTHS
        if period not in allowed:
            raise InvalidInput(
                f"period {period} months is not offered for {kind} in {spec!r} "
                f"(allowed: {', '.join(f'{p}m' for p in allowed)})"
            )
        return OrderItem(kind, plan, normalize_domain(raw_name), period, action)

    if kind == "migration":
        if len(rest) != 1 or period != DEFAULT_PERIOD_MONTHS["migration"]:
            raise InvalidInput(f"bad migration item {spec!r} (expected migration:SITE)")
        return OrderItem("migration", cat.migration.code, normalize_domain(rest[0]),
                         DEFAULT_PERIOD_MONTHS["migration"], action)

    if kind == "backup":
        if len(rest) != 1:
            raise InvalidInput(f"bad backup item {spec!r} (expected backup:SITE[:PERIOD][:renew])")
        if period not in HOSTING_PERIODS_MONTHS:
            raise InvalidInput(
                f"period {period} months is not offered for backup in {spec!r} "
                f"(allowed: {', '.join(f'{p}m' for p in HOSTING_PERIODS_MONTHS)})"
            )
        return OrderItem("backup", cat.backup.code, normalize_domain(rest[0]), period, action)

    if kind == "domain":
        if len(rest) != 1:
            raise InvalidInput(
                f"bad domain item {spec!r} "
                "(expected domain:NAME[:PERIOD][:register|transfer|renew])"
            )
        name = normalize_domain(rest[0])
        tld = cat.tld_for(name)
        if period % 12:
            raise InvalidInput(f"domain period must be whole years, not {period} months ({spec!r})")
        if period // 12 not in tld.periods_years:
            raise InvalidInput(
                f"period {period // 12}y is not allowed for .{tld.tld} in {spec!r} "
                f"(allowed: {', '.join(f'{y}y' for y in tld.periods_years)})"
            )
        return OrderItem("domain", tld.tld, name, period, action)

    # tls
    if len(rest) == 2:
        product = cat.tls_product(rest[0])
        raw_name = rest[1]
    elif len(rest) == 1:
        product = cat.tls_product("dv")
        raw_name = rest[0]
    else:
        raise InvalidInput(f"bad tls item {spec!r} (expected tls:[PRODUCT:]NAME[:PERIOD])")
    if raw_name.startswith("*."):
        if not product.wildcard:
            raise InvalidInput(f"{raw_name!r} needs a wildcard product (dv-wildcard) in {spec!r}")
        raw_name = raw_name[2:]
    if period % 12 or period // 12 not in product.periods_years:
        raise InvalidInput(
            f"period {period} months is not offered for {product.code} in {spec!r} "
            f"(allowed: {', '.join(f'{y}y' for y in product.periods_years)})"
        )
    return OrderItem("tls", product.code, normalize_domain(raw_name), period, action)


def check_order_lines(items: list[OrderItem] | tuple[OrderItem, ...]) -> None:
    """Rules across an order's lines: a migration comes with a new hosting line for the
    same site (RULES "Free migration ...: new hosting orders"); a new backup line with a
    hosting line (new or renewal) for the same site. InvalidInput otherwise."""
    hosted = {i.name for i in items if i.kind == "hosting" and i.action == "new"}
    any_hosting = {i.name for i in items if i.kind == "hosting"}
    for item in items:
        if item.kind == "backup" and item.action == "new" and item.name not in any_hosting:
            raise InvalidInput(f"backup:{item.name} needs a hosting line for {item.name} in the "
                               "same order (e.g. hosting:giga5:" + item.name + ")")
    for item in items:
        if item.kind == "migration" and item.name not in hosted:
            raise InvalidInput(f"migration:{item.name} needs a new hosting line for {item.name} "
                               "in the same order (e.g. hosting:giga5:" + item.name + ")")
