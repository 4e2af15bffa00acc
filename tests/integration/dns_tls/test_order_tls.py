"""A `tls` line item through the whole pipeline: order, payment, plan, runner, Pebble."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.acme import AcmeClient
from provisioner.adapters.dns import DnsServer, KnotcZoneCreator
from provisioner.config import Settings
from provisioner.devstack.dns_tls import PebbleServer
from provisioner.devstack.local_nginx import LocalNginx, LocalNginxTarget
from provisioner.pipeline.usecases import ops
from tests.helpers import Queue, World, make_world
from tests.integration.dns_tls.conftest import https_get, new_zone


def _runner(tmp_path: Path, url: str, dns: DnsServer, acme: AcmeClient, target: LocalNginxTarget,
            alerts: list[dict[str, Any]]) -> tuple[World, Queue]:
    settings = Settings().with_overrides(data_dir=tmp_path / "data", database_url=url, step_max_attempts=2,
                                         step_backoff_s=0.0, smtp_port=1, line_kinds="all")
    world = make_world(settings, dns=dns, acme=acme, tls_fallback=target,
                       alert=lambda **kw: alerts.append(kw))
    return world, world.queue


def _order_and_pay(world: World, queue: Queue, item: str) -> dict[str, Any]:
    order = world.order([item])
    number = order["proforma"]["number"]
    gross = ops.show_proforma(world.factory, number)["gross"]
    world.pay(number, Decimal(str(gross)), f"cash-{number}", method="cash")
    world.runner.dispatch(order["order"])
    return order


def _drain(world: World, queue: Queue, only: str = "tls.issue") -> list[str]:
    """Run the queued TLS steps (mail steps are not the subject here and are dropped)."""
    outcomes = []
    for _ in range(50):
        if not queue.keys:
            break
        key = queue.keys.pop(0)
        if only not in key and "activate" not in key:
            continue
        try:
            outcomes.append(f"{key}:{world.runner.run_step(key).status}")
        except Exception as exc:  # noqa: BLE001 - a TransientError is the runner's "retry"
            outcomes.append(f"{key}:raised {type(exc).__name__}")
    return outcomes


@pytest.mark.parametrize("product", ["dv", "dv-wildcard"])
def test_tls_item_issues_and_serves(tmp_path: Path, sqlite_url: str, dns_server: DnsServer, acme: AcmeClient,
                                    cert_target: LocalNginxTarget, nginx_server: LocalNginx,
                                    pebble_server: PebbleServer, product: str) -> None:
    zone = new_zone(dns_server)
    site = f"*.{zone}" if product == "dv-wildcard" else zone
    cert_target.add_site(site, [zone if product == "dv-wildcard" else f"www.{zone}"], content="ordered\n")
    alerts: list[dict[str, Any]] = []
    runner, queue = _runner(tmp_path, sqlite_url, dns_server, acme, cert_target, alerts)
    order = _order_and_pay(runner, queue, f"tls:{product}:{site}")
    outcomes = _drain(runner, queue)
    assert any(o.endswith("tls.issue:done") for o in outcomes), outcomes
    jobs = {j["kind"]: j for j in ops.list_jobs(runner.factory, str(order["order"]), False)}
    assert jobs["tls.issue"]["state"] == "done"
    host = f"x.{zone}" if product == "dv-wildcard" else f"www.{zone}"
    assert https_get(nginx_server, host, pebble_server.root_file)[:2] == (200, "ordered\n")
    assert alerts == []


def test_refused_challenge_fails_the_step_alerts_and_keeps_the_old_certificate(
        tmp_path: Path, sqlite_url: str, dns_server: DnsServer, acme: AcmeClient, knot_server: Any,
        cert_target: LocalNginxTarget, nginx_server: LocalNginx, pebble_server: PebbleServer) -> None:
    zone = new_zone(dns_server)
    cert_target.add_site(zone, [f"www.{zone}"])
    alerts: list[dict[str, Any]] = []
    runner, queue = _runner(tmp_path, sqlite_url, dns_server, acme, cert_target, alerts)
    _order_and_pay(runner, queue, f"tls:{zone}")
    _drain(runner, queue)
    served = cert_target.current_certificate(zone)
    assert served is not None
    # 20 days before expiry the renewal runs, but the customer moved the domain's DNS away
    # from us: HTTP-01 it is, and the CA cannot resolve the name.
    KnotcZoneCreator(knot_server.socket).delete_zone(zone)
    runner.runner.now = lambda: served.not_after - timedelta(days=20)
    second = _order_and_pay(runner, queue, f"tls:{zone}:1y:renew")
    outcomes = _drain(runner, queue)
    assert any(o.endswith("tls.issue:failed") for o in outcomes), outcomes
    failed = ops.list_jobs(runner.factory, str(second["order"]), True)
    job = next(j for j in failed if j["kind"] == "tls.issue")
    assert "refused the challenge" in job["last_error"]
    assert f"{zone} (http-01)" in job["last_error"]
    assert len(alerts) == 1 and zone in alerts[0]["detail"]
    # nginx still serves the previous certificate.
    assert cert_target.served_certificate(zone).serial == served.serial
