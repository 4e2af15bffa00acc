"""The `dns.zone` and `tls.issue` steps with the real adapters (Knot, Pebble, nginx)."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisioner import bootstrap as capabilities
from provisioner.adapters.acme import AcmeClient
from provisioner.adapters.dns import DnsServer
from provisioner.bootstrap import build_adapters
from provisioner.config import Settings
from provisioner.devstack.dns_tls import PebbleServer
from provisioner.devstack.local_nginx import LocalNginx, LocalNginxTarget
from provisioner.errors import ConfigurationError
from provisioner.pipeline.capabilities.dns_tls import (
    _covers,
    hosting_dns_tls_steps,
    plan_tls_line,
    renewal_step,
)
from provisioner.pipeline.capabilities.hosting import plan_hosting_line
from provisioner.pipeline.engine.plan import OrderView, Planner, PlanOptions, ServiceView
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Step
from provisioner.store.tls import AcmeAccount, TlsCertificate, decrypt, fernet_for
from provisioner.timeutil import utcnow
from tests.integration.dns_tls.conftest import https_get, new_zone


class NoCa:
    def issue(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CA must not be asked")


def _ctx(settings: Settings, adapters: dict[str, object], now: Any = utcnow) -> StepContext:
    factory = session_factory(settings.effective_database_url)
    return StepContext(settings, factory, "test/step", uuid.uuid4().hex,
                       build_adapters(settings, factory, **adapters), now)


def _run(kind: str, ctx: StepContext, spec_params: dict[str, Any]) -> StepResult:
    step = Step(key=f"service:1/{kind}", kind=kind, params=spec_params, deps=[], state="running", attempts=1)
    return capabilities.handlers()[kind](ctx, step)


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return Settings().with_overrides(data_dir=tmp_path / "data", database_url=sqlite_url,
                                     dns_nameservers="ns1.provider.example", dns_site_ipv4="127.0.0.1")


@pytest.mark.parametrize(("product", "name", "names"), [
    ("dv", "example.si", ["example.si", "www.example.si"]),
    ("dv-wildcard", "example.si", ["*.example.si", "example.si"]),
])
def test_tls_line_plan_is_one_step(product: str, name: str, names: list[str]) -> None:
    view = OrderView(1, 1, "P-9", True, (ServiceView(3, "tls", product, name, 12, "provisioning"),))
    (spec,) = plan_tls_line(view, view.services[0], PlanOptions())
    assert (spec.key, spec.kind, spec.deps) == ("service:3/tls.issue", "tls.issue", ())
    assert spec.params["names"] == names


def test_renewal_step_has_a_key_per_expiry() -> None:
    spec = renewal_step(3, ["example.si", "www.example.si"], date(2027, 1, 31))
    assert spec.key == "service:3/tls.issue@2027-01-31" and spec.kind == "tls.issue"


def _adapters(dns: DnsServer, acme: Any, target: LocalNginxTarget) -> dict[str, object]:
    return {"dns": dns, "acme": acme, "tls_fallback": target}


def test_hosting_order_zone_then_certificate(settings: Settings, dns_server: DnsServer, acme: AcmeClient,
                                             cert_target: LocalNginxTarget, nginx_server: LocalNginx,
                                             pebble_server: PebbleServer) -> None:
    zone = "hosted-order.test"
    view = OrderView(1, 1, "P-1", True, (ServiceView(7, "hosting", "giga5", zone, 12, "provisioning"),))
    zone_step, tls_step = hosting_dns_tls_steps(view, view.services[0],
                                                tls_deps=("service:7/hosting.account",))
    assert tls_step.deps == ("service:7/dns.zone", "service:7/hosting.account")
    adapters = _adapters(dns_server, acme, cert_target)
    adapters["dkim"] = lambda service_id: ("mail", "QUJDREVGR0g=")
    ctx = _ctx(settings, adapters)
    made = _run("dns.zone", ctx, zone_step.params)
    assert made.changed and made.details["dkim"]
    assert dns_server.lookup(f"mail._domainkey.{zone}", "TXT")
    assert not _run("dns.zone", ctx, zone_step.params).changed

    cert_target.add_site(zone, [f"www.{zone}"], content="hosted\n")
    issued = _run("tls.issue", ctx, {**tls_step.params, "service_id": None})  # no services row here
    assert issued.changed and issued.details["reason"] == "issued"
    assert set(issued.details["challenges"].values()) == {"dns-01"}  # type: ignore[attr-defined]  # we host the zone
    for name in (zone, f"www.{zone}"):
        assert https_get(nginx_server, name, pebble_server.root_file)[:2] == (200, "hosted\n")
    # The key is stored encrypted, not in the clear.
    with transaction(ctx.factory) as s:
        row = s.execute(select(TlsCertificate).where(TlsCertificate.primary_name == zone)).scalar_one()
        assert b"PRIVATE KEY" not in row.key_encrypted
        assert b"PRIVATE KEY" in decrypt(fernet_for(settings), row.key_encrypted)
        assert row.deployed_at is not None


def test_tls_issue_with_more_than_30_days_left_does_nothing(
        settings: Settings, dns_server: DnsServer, acme: AcmeClient, cert_target: LocalNginxTarget) -> None:
    zone = new_zone(dns_server)
    cert_target.add_site(zone, [f"www.{zone}"])
    view = OrderView(1, 1, "P-2", True, (ServiceView(8, "tls", "tls", zone, 12, "provisioning"),))
    (spec,) = plan_tls_line(view, view.services[0], PlanOptions())
    assert spec.key == "service:8/tls.issue" and spec.params["names"] == [zone, f"www.{zone}"]
    spec_params = {**spec.params, "service_id": None}  # no services row here
    first = _run("tls.issue", _ctx(settings, _adapters(dns_server, acme, cert_target)), spec_params)
    assert first.changed
    serial = cert_target.current_certificate(zone).serial  # type: ignore[union-attr]
    again = _run("tls.issue", _ctx(settings, _adapters(dns_server, NoCa(), cert_target)), spec_params)
    assert not again.changed and again.details["reason"] == "valid certificate"
    assert cert_target.served_certificate(zone).serial == serial


@pytest.mark.parametrize("days_left", [29, 5])
def test_tls_issue_renews_with_30_days_or_fewer_left(
        settings: Settings, dns_server: DnsServer, acme: AcmeClient, cert_target: LocalNginxTarget,
        days_left: int) -> None:
    zone = new_zone(dns_server)
    cert_target.add_site(zone, [f"www.{zone}"])
    params = {"service_id": None, "names": [zone, f"www.{zone}"], "challenge": "http-01"}
    _run("tls.issue", _ctx(settings, _adapters(dns_server, acme, cert_target)), params)
    current = cert_target.current_certificate(zone)
    assert current is not None
    later = current.not_after - timedelta(days=days_left)
    ctx = _ctx(settings, _adapters(dns_server, acme, cert_target), lambda: later)
    renewed = _run("tls.issue", ctx, params)
    assert renewed.changed and renewed.details["reason"] == "issued"
    assert cert_target.served_certificate(zone).serial != current.serial


def test_a_stored_certificate_is_redeployed_without_the_ca(
        settings: Settings, dns_server: DnsServer, acme: AcmeClient, cert_target: LocalNginxTarget,
        nginx_server: LocalNginx) -> None:
    zone = new_zone(dns_server)
    cert_target.add_site(zone, [f"www.{zone}"])
    params = {"service_id": None, "names": [zone, f"www.{zone}"], "challenge": "auto"}
    _run("tls.issue", _ctx(settings, _adapters(dns_server, acme, cert_target)), params)
    serial = cert_target.current_certificate(zone).serial  # type: ignore[union-attr]
    (nginx_server.prefix / "certs" / zone / "current").unlink()  # the node lost it
    again = _run("tls.issue", _ctx(settings, _adapters(dns_server, NoCa(), cert_target)), params)
    assert again.changed and again.details["reason"] == "deployed stored certificate"
    assert cert_target.served_certificate(zone).serial == serial


def test_bootstrap_builds_the_adapters_from_settings(
        settings: Settings, knot_server: Any, nginx_server: LocalNginx, pebble_server: PebbleServer) -> None:
    configured = settings.with_overrides(
        dns_server=knot_server.host, dns_port=knot_server.port, dns_knotc_socket=knot_server.socket,
        tsig_key_name=knot_server.tsig_key_name, tsig_secret=knot_server.tsig_secret,
        acme_directory=pebble_server.directory, acme_ca_file=str(pebble_server.ca_file))
    # the loopback nginx is a devstack stand-in: handed in, never built from settings
    ctx = _ctx(configured, {"tls_fallback": LocalNginxTarget(nginx_server)})
    zone = "wired.test"
    _run("dns.zone", ctx, {"service_id": None, "zone": zone})
    LocalNginxTarget(nginx_server).add_site(zone, [f"www.{zone}"], content="wired\n")
    result = _run("tls.issue", ctx, {"service_id": None, "names": [zone, f"www.{zone}"], "challenge": "auto"})
    assert result.changed
    assert https_get(nginx_server, f"www.{zone}", pebble_server.root_file)[:2] == (200, "wired\n")
    with transaction(ctx.factory) as s:
        account = s.execute(select(AcmeAccount)).scalar_one()
        assert b"PRIVATE KEY" not in account.key_encrypted
    assert (configured.effective_key_dir / "tls-fernet.key").stat().st_mode & 0o077 == 0


def test_missing_settings_are_configuration_errors(settings: Settings) -> None:
    ctx = _ctx(settings, {})
    with pytest.raises(ConfigurationError, match="dns_server"):
        _run("dns.zone", ctx, {"service_id": None, "zone": "x.test"})
    with pytest.raises(ConfigurationError, match="certificate target"):
        _run("tls.issue", ctx, {"service_id": None, "names": ["x.test"]})


@pytest.mark.parametrize(("line_kinds", "kinds"), [
    (None, ["hosting.account", "notify.credentials"]),  # no options: no servers assumed
    ("hosting", ["hosting.account", "notify.credentials"]),
    ("hosting,tls", ["hosting.account", "tls.issue", "notify.credentials"]),
    ("hosting,dns", ["dns.zone", "hosting.account", "notify.credentials"]),
    ("hosting,dns,tls", ["dns.zone", "hosting.account", "tls.issue", "notify.credentials"]),
    ("all", ["hosting.account", "notify.credentials"]),  # every line kind, no extras
    ("all,dns,tls", ["dns.zone", "hosting.account", "tls.issue", "notify.credentials"]),
])
def test_hosting_line_gets_zone_and_certificate_where_line_kinds_says(
        line_kinds: str | None, kinds: list[str]) -> None:
    options = PlanOptions() if line_kinds is None else PlanOptions.from_setting(line_kinds)
    view = OrderView(1, 1, "P-3", True, (ServiceView(4, "hosting", "giga5", "shop.si", 12, "provisioning"),))
    steps = plan_hosting_line(view, view.services[0], options)
    assert [st.kind for st in steps] == kinds
    seen: set[str] = set()
    for st in steps:  # each waits for the one before it
        assert set(st.deps) <= seen and (not seen or st.deps)
        seen.add(st.key)
    tls = [st for st in steps if st.kind == "tls.issue"]
    if tls:
        assert tls[0].params == {"service_id": 4, "names": ["shop.si", "www.shop.si"], "challenge": "http-01"}


def test_a_tls_line_for_a_hosted_site_waits_for_the_hosting_certificate() -> None:
    planner = Planner(capabilities.line_planners(), PlanOptions.from_setting("hosting,dns,tls"))
    view = OrderView(1, 1, "P-4", True, (
        ServiceView(5, "hosting", "giga5", "shop.si", 12, "provisioning"),
        ServiceView(6, "tls", "dv-wildcard", "shop.si", 12, "provisioning"),
        ServiceView(7, "tls", "dv", "other.si", 12, "provisioning"),
    ))
    steps = {st.key: st for st in planner.plan(view)}
    assert steps["service:6/tls.issue"].deps == ("service:5/tls.issue",)
    assert steps["service:7/tls.issue"].deps == ()


@pytest.mark.parametrize(("have", "want", "covered"), [
    (["a.si", "www.a.si"], ["a.si", "www.a.si"], True),
    (["*.a.si", "a.si"], ["a.si", "www.a.si"], True),
    (["*.a.si", "a.si"], ["*.a.si", "a.si"], True),
    (["a.si", "www.a.si"], ["*.a.si", "a.si"], False),
    (["*.a.si"], ["a.si"], False),
    (["*.a.si"], ["x.y.a.si"], False),
])
def test_covers_knows_wildcards(have: list[str], want: list[str], covered: bool) -> None:
    assert _covers(have, want) is covered
