"""The lifecycle clock on a throwaway node (the sample of the simulated year): three
hosting accounts made through the pipeline, the clock moved day by day past their
expiry. Paid on time: never switched off. Never paid: the disabled page the day after
expiry, removed from the node after a last backup on the day of stage 1, every backup
purged on the day of stage 2, each stage's record naming what it removed. Paid late:
back on, its files byte for byte as before. And an account over its quota: warned,
then no free backups after the grace days, then backups again once back under."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from provisioner.adapters.hosting.backups import HostingBackups
from provisioner.pipeline.capabilities import lifecycle as clock
from provisioner.store.db import transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Service
from provisioner.timeutil import iter_days, now_at
from tests.e2e.nodes import Enrolment
from tests.helpers import ClockWorld, MemoryMailer, customer, make_settings, wire

# The session's node and backup host may be set up in the first test's fixtures (when
# this module runs alone): on a loaded machine that alone can take minutes.
pytestmark = pytest.mark.timeout(1500)

E = date(2027, 3, 31)


@dataclass
class NodeClockWorld(ClockWorld):
    """The clock's world on the session's node: its testinfra host, and the accounts
    the pipeline made there (by who pays when)."""

    node: Any = None
    host: Any = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mailer(self) -> MemoryMailer:
        mailer = self.app.adapters.mailer
        assert isinstance(mailer, MemoryMailer)
        return mailer

    @property
    def backups(self) -> HostingBackups:
        backups = self.app.adapters.backups
        assert isinstance(backups, HostingBackups)
        return backups

    def http(self, domain: str, path: str = "/") -> httpx.Response:
        return httpx.get(f"http://{self.node.address}{path}", headers={"Host": domain}, timeout=20)

    def pay_renewal(self, sid: int, txn: str) -> None:
        found = self.renewal(sid)
        assert found is not None, f"service {sid} has no renewal proforma"
        _, proforma = found
        assert self.pay(proforma.number, proforma.gross, txn).settled  # and runs what it queued

    def tree(self, path: str) -> str:
        out = self.host.run("cd %s && find . -type f -print0 | sort -z | xargs -0 sha256sum", path)
        assert out.rc == 0, out.stderr
        return str(out.stdout)


@pytest.fixture(scope="module")
def world(node: Any, node_host: Any, enrolled_node: Enrolment,
          tmp_path_factory: pytest.TempPathFactory) -> NodeClockWorld:
    # the session's node, enrolled with the session's backup host (tests/e2e/conftest.py):
    # the accounts are this module's own (clock-*.example), nothing else of the node changes
    return _clock_world(tmp_path_factory.mktemp("clocknode"), node, node_host)


def _clock_world(work: Path, node: Any, node_host: Any) -> NodeClockWorld:
    url = f"sqlite:///{work / 'c.sqlite'}"
    upgrade(url)
    # The product's own wiring: hosting and backups reach the node with this key; the
    # node's record says it is a throwaway host (no host-key check).
    settings = make_settings(work, url, 1, line_kinds="hosting", node_ssh_key=str(node.info.ssh_key))
    start = E - timedelta(days=40)
    app, queue = wire(settings, now=now_at(start), mailer=MemoryMailer())
    with transaction(app.factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=100,
                 capacity_disk_mb=1_000_000, throwaway=True)
    w = NodeClockWorld(app, queue, start, node=node.info, host=node_host)
    for who in ("ontime", "never", "late"):
        domain = f"clock-{who}.example"
        order = w.order([f"hosting:mega:{domain}:12m"], who=customer("en"))
        assert w.pay(order["proforma"]["number"], Decimal(order["proforma"]["gross"]), f"first-{who}").settled
        with transaction(w.factory) as s:
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
        w.backups.backup(node.info.target(), w.accounts[who]["name"], w.accounts[who]["sid"])  # a nightly one
    return w


def _state(w: NodeClockWorld, who: str) -> str:
    with transaction(w.factory) as s:
        return str(s.get(Service, w.accounts[who]["sid"]).state)  # type: ignore[union-attr]


def test_the_clock_on_a_node_switches_off_removes_and_purges_only_on_their_days(
        world: NodeClockWorld) -> None:
    w = world
    ontime, never, late = (w.accounts[k] for k in ("ontime", "never", "late"))
    late_home = f"/srv/hosting/{late['name']}"
    late_before = w.tree(late_home)
    for day in iter_days(E - timedelta(days=30), E):
        w.sweep(day)
        if day == E - timedelta(days=20):
            w.pay_renewal(ontime["sid"], "renew-ontime")
    w.sweep(E + timedelta(days=1))
    assert w.http(ontime["domain"], "/marker.txt").text == "ontime"
    for who in (never, late):
        r = w.http(who["domain"], "/marker.txt")
        assert r.status_code == 503 and "href=" in r.text, who  # the disabled page
    assert _state(w, "ontime") == "active" and _state(w, "never") == "expired"

    for day in iter_days(E + timedelta(days=2), E + timedelta(days=10)):
        w.sweep(day)
    w.pay_renewal(late["sid"], "renew-late")  # with the reactivation fee
    assert _state(w, "late") == "active"
    assert w.http(late["domain"], "/marker.txt").text == "late"
    assert w.tree(late_home) == late_before  # byte for byte

    never_home = f"/srv/hosting/{never['name']}"
    for day in iter_days(E + timedelta(days=11), E + timedelta(days=60)):
        w.sweep(day)
    assert w.host.file(never_home).exists  # not one day early
    w.sweep(E + timedelta(days=61))
    assert not w.host.file(never_home).exists
    assert not w.host.file(f"/srv/mail/{never['domain']}").exists
    left = w.backups.list(w.node.target(), never["name"])
    assert left, "stage 1 keeps the backups"
    for day in iter_days(E + timedelta(days=62), E + timedelta(days=90)):
        w.sweep(day)
    assert w.backups.list(w.node.target(), never["name"])
    w.sweep(E + timedelta(days=91))
    assert w.backups.list(w.node.target(), never["name"]) == []
    found = w.host.run("find /srv/hosting /srv/mail /var/lib/hosting-backup -name '*%s*'", never["name"])
    assert found.stdout.strip() == ""
    records = clock.stage_records(w.factory, never["sid"])
    assert [(r["stage"], r["done_on"]) for r in records] == [
        ("shutdown", str(E + timedelta(days=1))), ("delete_data", str(E + timedelta(days=61))),
        ("purge_backups", str(E + timedelta(days=91)))]
    stage1, stage2 = records[1]["manifest"], records[2]["manifest"]
    assert stage1["last_backup"]["id"] and any(p["path"] == never_home for p in stage1["removed"])
    assert set(stage2["snapshot_ids"]) >= {b.id for b in left}
    assert stage2["remaining"] == 0 and stage2["check_ok"] is True  # the purge's proof
    assert _state(w, "never") == "purged"
    assert w.http(ontime["domain"], "/marker.txt").text == "ontime"


def test_an_account_over_its_quota_is_warned_then_gets_no_free_backups(world: NodeClockWorld) -> None:
    w = world
    who = w.accounts["ontime"]
    state_file = f"/etc/hosting/accounts/{who['name']}.json"
    original = w.host.file(state_file).content_string
    data = json.loads(original)
    data["limits"]["disk_mb"] = 0  # any byte is over
    day = E + timedelta(days=100)

    def check(on: date) -> dict[str, Any]:
        # the daily quota check as the beat runs it: usage over SSH (the node's record
        # says throwaway), backups and mail through the same adapters
        return w.app.check_quotas(on)

    marker = f"/etc/hosting/backup-exclude/{who['name']}"
    try:
        w.host.run("printf %s > %s", json.dumps(data), state_file)
        first = check(day)
        assert who["name"] in first["warned"]
        assert check(day + timedelta(days=1))["warned"] == []  # warned once
        assert any("over its disk quota" in m["subject"] for m in w.mailer.sent)
        assert not w.host.file(marker).exists
        assert check(day + timedelta(days=6))["backups_stopped"] == []
        assert who["name"] in check(day + timedelta(days=7))["backups_stopped"]
        assert w.host.file(marker).exists
    finally:
        w.host.run("printf %s > %s", original, state_file)
    assert who["name"] in check(day + timedelta(days=8))["backups_restored"]
    assert not w.host.file(marker).exists
