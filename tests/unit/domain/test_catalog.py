from decimal import Decimal as D

import pytest

from provisioner.domain.catalog import DEFAULT_CATALOG, OrderItem, parse_item
from provisioner.errors import InvalidInput

C = DEFAULT_CATALOG


@pytest.mark.parametrize(
    ("code", "name", "mailbox_mb", "upload_max_mb"),
    [
        ("mega", "Mega", 1000, 250),
        ("giga5", "Giga 5", 5000, 1000),
        ("giga10", "Giga 10", 10000, 1000),
        ("giga15", "Giga 15", 15000, 1000),
    ],
)
def test_hosting_plans_follow_rules(
    code: str, name: str, mailbox_mb: int, upload_max_mb: int
) -> None:
    plan = C.hosting_plan(code)
    assert (plan.name, plan.mailbox_mb, plan.upload_max_mb) == (name, mailbox_mb, upload_max_mb)
    assert plan.database_max_mb == 1024
    assert plan.databases == 1
    assert plan.message_max_mb == 50
    assert (plan.recipients_max, plan.recipients_delay_above) == (60, 50)
    assert (plan.mail_per_hour, plan.mail_per_month) == (60, 10000)
    assert plan.mass_mail_max_recipients == 2000
    assert plan.cron_min_interval_min == 30


@pytest.mark.parametrize(
    "attr", ["price_year", "disk_mb", "mailboxes", "cpu_percent", "memory_mb", "vmem_mb", "iops",
             "tasks_max"]
)
def test_hosting_limits_grow_per_plan(attr: str) -> None:
    values = [getattr(C.hosting[c], attr) for c in ("mega", "giga5", "giga10", "giga15")]
    assert values == sorted(values)
    assert len(set(values)) == 4


def test_vps_and_tls_and_tlds() -> None:
    assert set(C.vps) == {"vps-s", "vps-m", "vps-l"}
    assert set(C.tls) == {"dv", "dv-wildcard"}
    assert C.tls_product("dv-wildcard").wildcard
    assert set(C.tlds) == {"si", "eu", "com", "at", "net", "org"}
    assert C.tld("si").periods_years == (1, 2, 3, 4, 5)
    assert C.tld(".si") is C.tlds["si"]


@pytest.mark.parametrize(("domain", "tld"), [("example.si", "si"), ("WWW.Example.EU.", "eu")])
def test_tld_for(domain: str, tld: str) -> None:
    assert C.tld_for(domain).tld == tld


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: C.tld_for("example.de"), "do not register .de"),
        (lambda: C.hosting_plan("tera"), "unknown hosting plan 'tera'"),
        (lambda: C.vps_plan("vps-xl"), "unknown VPS plan"),
        (lambda: C.tls_product("ev"), "unknown TLS product"),
        (lambda: C.tld("de"), "unknown TLD"),
    ],
)
def test_catalog_lookups_refuse(call: object, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spec", "item"),
    [
        ("hosting:giga5:example.si", OrderItem("hosting", "giga5", "example.si", 12, "new")),
        ("hosting:giga5:example.si:24m", OrderItem("hosting", "giga5", "example.si", 24, "new")),
        ("hosting:GIGA5:Example.SI:2y", OrderItem("hosting", "giga5", "example.si", 24, "new")),
        (
            "hosting:mega:example.si:12m:renew",
            OrderItem("hosting", "mega", "example.si", 12, "renew"),
        ),
        ("domain:example.si:1y", OrderItem("domain", "si", "example.si", 12, "register")),
        ("domain:example.si", OrderItem("domain", "si", "example.si", 12, "register")),
        ("domain:example.si:5y", OrderItem("domain", "si", "example.si", 60, "register")),
        (
            "domain:example.si:1y:transfer",
            OrderItem("domain", "si", "example.si", 12, "transfer"),
        ),
        ("domain:example.eu:2y:renew", OrderItem("domain", "eu", "example.eu", 24, "renew")),
        ("domain:example.si:transfer", OrderItem("domain", "si", "example.si", 12, "transfer")),
        ("domain:žaba.si:1y", OrderItem("domain", "si", "xn--aba-b3a.si", 12, "register")),
        ("tls:example.si", OrderItem("tls", "dv", "example.si", 12, "new")),
        ("tls:dv-wildcard:example.si", OrderItem("tls", "dv-wildcard", "example.si", 12, "new")),
        (
            "tls:dv-wildcard:*.example.si",
            OrderItem("tls", "dv-wildcard", "example.si", 12, "new"),
        ),
        ("tls:dv:example.si:2y", OrderItem("tls", "dv", "example.si", 24, "new")),
        (
            "vps:vps-s:host.example.si:1m",
            OrderItem("vps", "vps-s", "host.example.si", 1, "new"),
        ),
        (" vps : vps-l : host.example.si ", OrderItem("vps", "vps-l", "host.example.si", 1, "new")),
    ],
)
def test_parse_item(spec: str, item: OrderItem) -> None:
    assert parse_item(spec) == item
    assert parse_item(spec, C) == item
    # the text form round-trips
    assert parse_item(item.to_spec()) == item


@pytest.mark.parametrize(
    ("item", "spec"),
    [
        (OrderItem("hosting", "giga5", "example.si", 12, "new"), "hosting:giga5:example.si:12m"),
        (OrderItem("domain", "si", "example.si", 12, "register"), "domain:example.si:1y"),
        (
            OrderItem("domain", "si", "example.si", 12, "transfer"),
            "domain:example.si:1y:transfer",
        ),
        (OrderItem("tls", "dv", "example.si", 12, "new"), "tls:dv:example.si:1y"),
        (OrderItem("vps", "vps-s", "h.example.si", 1, "renew"), "vps:vps-s:h.example.si:1m:renew"),
    ],
)
def test_to_spec(item: OrderItem, spec: str) -> None:
    assert item.to_spec() == spec


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "bad order item"),
        ("hosting", "bad order item"),
        ("hosting::example.si", "bad order item"),
        ("shell:giga5:example.si", "unknown item kind 'shell'"),
        ("hosting:tera:example.si", "unknown hosting plan 'tera'"),
        ("hosting:giga5:example.si:5m", "period 5 months is not offered"),
        ("hosting:giga5:example.si:0m", "bad period '0m'"),
        ("hosting:giga5:example.si:12x", "bad period '12x'"),
        ("hosting:giga5:example.si:-1m", "bad period"),
        ("hosting:giga5:example.si:12m:transfer", "not possible for hosting"),
        ("hosting:giga5", "expected hosting:PLAN:NAME"),
        ("hosting:giga5:../etc", "contains '/'"),
        ("hosting:giga5:a;rm -rf /", "contains ';'"),
        ("domain:example.de:1y", "do not register .de"),
        ("domain:example.si:6y", "period 6y is not allowed for .si"),
        ("domain:example.at:2y", "period 2y is not allowed for .at"),
        ("domain:example.si:18m", "whole years"),
        ("domain:example.si:1y:steal", "bad domain item"),
        ("domain:example.si:1y:new", "not possible for domain"),
        ("tls:ev:example.si", "unknown TLS product 'ev'"),
        ("tls:dv:*.example.si", "needs a wildcard product"),
        ("tls:example.si:3y", "not offered for dv"),
        ("vps:vps-xl:host.example.si", "unknown VPS plan 'vps-xl'"),
        ("vps:vps-s:host.example.si:7m", "period 7 months is not offered for vps"),
        ("hosting:giga5:" + "a" * 700, "far too long"),
    ],
)
def test_parse_item_refuses(spec: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_item(spec)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("hosting", "giga5", "example.si", 0, "new"), "positive"),
        (("hosting", "giga5", "example.si", 12, "register"), "not possible"),
        (("domain", "si", "example.si", 18, "register"), "whole years"),
        (("mail", "x", "example.si", 12, "new"), "unknown item kind"),
    ],
)
def test_order_item_validates(args: tuple[str, str, str, int, str], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        OrderItem(*args)


def test_order_item_helpers() -> None:
    item = parse_item("domain:example.si:3y")
    assert item.period_years == 3
    assert item.service_key == "domain:example.si"
    assert C.product_name("hosting", "giga5") == "Giga 5"
    assert C.hosting["mega"].price_year == D("29.90")
