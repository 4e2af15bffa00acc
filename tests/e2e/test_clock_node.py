"""The lifecycle clock on a throwaway node (the sample of the simulated year): three
hosting accounts made through the pipeline, the clock moved day by day past their
expiry. Paid on time: never switched off. Never paid: the disabled page the day after
expiry, removed from the node after a last backup on the day of stage 1, every backup
purged on the day of stage 2, each stage's record naming what it removed. Paid late:
back on, its files byte for byte as before. And an account over its quota: warned,
then no free backups after the grace days, then backups again once back under."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from provisioner.adapters.hosting.accounts import HostingAccounts
from provisioner.adapters.hosting.backups import HostingBackups
from provisioner.adapters.hosting.usage import read_usage
from provisioner.config import Settings
from provisioner.pipeline import capabilities
from provisioner.pipeline.capabilities import lifecycle as clock
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.capabilities import quota
from provisioner.pipeline.usecases.payments import record_manual_payment
from provisioner.pipeline.engine.runner import Runner
from provisioner.store.db import session_factory, transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Proforma, Service

E = date(2027, 3, 31)
CUSTOMER = {"name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
            "city": "Ljubljana", "country": "SI", "email": "ana@example.si",
            "phone": "+386.41123456", "lang": "en"}


@dataclass
class Outbox:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None) -> None:
        self.sent.append({"to": to, "subject": rendered.subject, "text": rendered.text})


@dataclass
class World:
    runner: Runner
    outbox: Outbox
    node: Any
    host: Any
    backups: HostingBackups
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def factory(self) -> Any:
        return self.runner.factory

    def http(self, domain: str, path: str = "/") -> httpx.Response:
        return httpx.get(f"http://{self.node.address}{path}", headers={"Host": domain}, timeout=20)

    def sweep(self, day: date) -> None:
        self.runner.now = clock.now_at(day)
        clock.run_day(self.factory, self.runner, day)

    def pay_renewal(self, sid: int, txn: str) -> None:
        with transaction(self.factory) as s:
            from provisioner.store.lifecycle import Renewal

            p = s.execute(select(Proforma).join(Renewal, Renewal.proforma_id == Proforma.id)
                          .where(Renewal.service_id == sid)).scalar_one()
            number, gross = p.number, p.gross
        assert record_manual_payment(self.factory, proforma_number=number, reference=None,
                                     amount=gross, currency="EUR", method="bank", txn=txn,
                                     actor="test").settled
        clock.drain(self.runner)

    def tree(self, path: str) -> str:
        out = self.host.run("cd %s && find . -type f -print0 | sort -z | xargs -0 sha256sum", path)
        assert out.rc == 0, out.stderr
        return str(out.stdout)


@pytest.fixture(scope="module")
def world(node: Any, node_host: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("clocknode")
    url = f"sqlite:///{work / 'c.sqlite'}"
    upgrade(url)
    settings = Settings(data_dir=work, database_url=url, line_kinds="hosting")
    capabilities.configure(settings.line_kinds)
    key = Path(node.info.ssh_key)
    backups = HostingBackups(ssh_key=key, throwaway=True)
    outbox = Outbox()
    runner = Runner(settings, session_factory(url), lambda k: None, adapters={
        "hosting": HostingAccounts(ssh_key=key, throwaway=True), "backups": backups,
        "mailer": outbox})
    runner.now = clock.now_at(E - timedelta(days=40))
    with transaction(runner.factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=100,
                 capacity_disk_mb=1_000_000)
    w = World(runner, outbox, node.info, node_host, backups)
    for who in ("ontime", "never", "late"):
        domain = f"clock-{who}.example"
        c = ops.add_customer(runner.factory, CUSTOMER, "test")
        order = ops.create_order(runner.factory, c["id"], [f"hosting:mega:{domain}:12m"], None,
                                 "fcb", "test")
        assert record_manual_payment(runner.factory, proforma_number=order["proforma"]["number"],
                                     reference=None, amount=Decimal(order["proforma"]["gross"]),
                                     currency="EUR", method="bank", txn=f"first-{who}",
                                     actor="test").settled
        clock.drain(runner)
        with transaction(runner.factory) as s:
            sv = s.execute(select(Service).where(Service.order_id == order["order"])).scalar_one()
            assert sv.state == "active", sv.detail
            sv.expires_on = E  # the term under test
            sv.clock_on = E - timedelta(days=35)
            acct = s.execute(select(HostingAccount).where(HostingAccount.service_id == sv.id)
                             ).scalar_one()
            w.accounts[who] = {"sid": sv.id, "domain": domain, "name": acct.username}
        home = f"/srv/hosting/{w.accounts[who]['name']}/public_html"
        assert node_host.run("printf %s > %s/marker.txt", who, home).rc == 0
        assert w.http(domain, "/marker.txt").text == who
        w.backups.backup(_target(node.info), w.accounts[who]["name"])  # a nightly one
    yield w
    for who in w.accounts.values():
        node_host.run("rm -rf /srv/backup/accounts/%s /srv/backup/terminated/%s", who["name"],
                      who["name"])


def _target(info: Any) -> Any:
    from provisioner.adapters.hosting.ansible import Target

    return Target(info.name, info.address)


def _state(w: World, who: str) -> str:
    with transaction(w.factory) as s:
        return str(s.get(Service, w.accounts[who]["sid"]).state)  # type: ignore[union-attr]


def test_the_clock_on_a_node_switches_off_removes_and_purges_only_on_their_days(world: World) -> None:
    w = world
    ontime, never, late = (w.accounts[k] for k in ("ontime", "never", "late"))
    late_home = f"/srv/hosting/{late['name']}"
    late_before = w.tree(late_home)
    for day in clock.iter_days(E - timedelta(days=30), E):
        w.sweep(day)
        if day == E - timedelta(days=20):
            w.pay_renewal(ontime["sid"], "renew-ontime")
    w.sweep(E + timedelta(days=1))
    assert w.http(ontime["domain"], "/marker.txt").text == "ontime"
    for who in (never, late):
        r = w.http(who["domain"], "/marker.txt")
        assert r.status_code == 503 and "href=" in r.text, who  # the disabled page
    assert _state(w, "ontime") == "active" and _state(w, "never") == "expired"

    for day in clock.iter_days(E + timedelta(days=2), E + timedelta(days=10)):
        w.sweep(day)
    w.pay_renewal(late["sid"], "renew-late")  # with the reactivation fee
    assert _state(w, "late") == "active"
    assert w.http(late["domain"], "/marker.txt").text == "late"
    assert w.tree(late_home) == late_before  # byte for byte

    never_home = f"/srv/hosting/{never['name']}"
    for day in clock.iter_days(E + timedelta(days=11), E + timedelta(days=59)):
        w.sweep(day)
    assert w.host.file(never_home).exists  # not one day early
    w.sweep(E + timedelta(days=60))
    assert not w.host.file(never_home).exists
    assert not w.host.file(f"/srv/mail/{never['domain']}").exists
    left = w.backups.list(_target(w.node), never["name"])
    assert left, "stage 1 keeps the backups"
    for day in clock.iter_days(E + timedelta(days=61), E + timedelta(days=89)):
        w.sweep(day)
    assert w.backups.list(_target(w.node), never["name"])
    w.sweep(E + timedelta(days=90))
    assert w.backups.list(_target(w.node), never["name"]) == []
    found = w.host.run("find /srv/backup /srv/hosting /srv/mail -name '*%s*'", never["name"])
    assert found.stdout.strip() == ""
    records = clock.stage_records(w.factory, never["sid"])
    assert [(r["stage"], r["done_on"]) for r in records] == [
        ("shutdown", str(E + timedelta(days=1))), ("delete_data", str(E + timedelta(days=60))),
        ("purge_backups", str(E + timedelta(days=90)))]
    stage1, stage2 = records[1]["manifest"], records[2]["manifest"]
    assert stage1["last_backup"]["sha256"] and any(
        p["path"] == never_home for p in stage1["removed"])
    assert {f["backup_id"] for f in stage2["removed"] if f.get("backup_id")} >= {
        b.id for b in left}
    assert _state(w, "never") == "purged"
    assert w.http(ontime["domain"], "/marker.txt").text == "ontime"


def test_an_account_over_its_quota_is_warned_then_gets_no_free_backups(world: World) -> None:
    w = world
    who = w.accounts["ontime"]
    state_file = f"/etc/hosting/accounts/{who['name']}.json"
    original = w.host.file(state_file).content_string
    data = json.loads(original)
    data["limits"]["disk_mb"] = 0  # any byte is over
    day = E + timedelta(days=100)

    def check(on: date) -> dict[str, Any]:
        return quota.check_quotas(
            w.factory, w.runner.settings, on, backups=w.backups, mailer=w.outbox,
            reader=lambda t: read_usage(t, Path(w.node.ssh_key), throwaway=True))

    marker = f"/etc/hosting/backup-exclude/{who['name']}"
    try:
        w.host.run("printf %s > %s", json.dumps(data), state_file)
        first = check(day)
        assert who["name"] in first["warned"]
        assert check(day + timedelta(days=1))["warned"] == []  # warned once
        assert any("over its disk quota" in m["subject"] for m in w.outbox.sent)
        assert not w.host.file(marker).exists
        assert check(day + timedelta(days=6))["backups_stopped"] == []
        assert who["name"] in check(day + timedelta(days=7))["backups_stopped"]
        assert w.host.file(marker).exists
    finally:
        w.host.run("printf %s > %s", original, state_file)
    assert who["name"] in check(day + timedelta(days=8))["backups_restored"]
    assert not w.host.file(marker).exists
