"""The controller side of backups on a backup host, with a recording fake of the node
(`FakeBackups`) and a real SQLite file: enrolment (the repository password sealed, never in
the database's bytes), the nightly run inside the maintenance window only and once per
night, retries of a failed night with exactly one ops alert per failure, the weekly check
and drill, the two deletion stages' records, restores onto the same or another node."""

from __future__ import annotations

import os
import random
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.hosting.backups import NightlyResult
from provisioner.adapters.hosting.usage import AccountUsage, NodeUsage
from provisioner.domain.backups import gdpr_backups_gone_by, retention_table
from provisioner.domain.maintenance import in_window
from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput, StepFailed
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import record
from provisioner.pipeline.usecases import backups as jobs
from provisioner.pipeline.usecases import gdpr
from provisioner.store import backups as store
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode, add_node
from provisioner.store.lifecycle import StageRecord
from provisioner.store.models import BackupRepository, Proforma, Service
from provisioner.timeutil import utcnow
from tests.helpers import MemoryMailer, World, make_settings, make_world
from tests.unit.pipeline.fakes import Alerts, FakeBackups, FakeHosting

KNOWN_HOSTS = "192.0.2.50 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2bV5b0e3v1Xq7l0v5gYj4dQm2p8Jw9t0c1r2s3t4u\n"
FCB = get_brand("fcb")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def fake() -> FakeBackups:
    return FakeBackups()


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path, fake: FakeBackups, alerts: Alerts) -> World:
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting")
    w = make_world(settings, hosting=FakeHosting(), backups=fake, mailer=MemoryMailer(), alert=alerts)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
        add_node(s, "n2", "192.0.2.11", capacity_accounts=10, capacity_disk_mb=100_000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=utc(2026, 1, 1))
    return w


def enroll(world: World, fake: FakeBackups, node: str = "n1") -> dict[str, Any]:
    return jobs.enroll_node(world.factory, fake, world.app.backup_fernet(), node, "backup1", FCB,
                            utc(2026, 1, 1))


def hosting_service(world: World, fake: FakeBackups, domain: str = "shop.si") -> tuple[int, str, str]:
    """A paid hosting service whose account the (fake) hosting step put on a node."""
    order = world.order([f"hosting:mega:{domain}"])
    p = order["proforma"]
    assert world.pay(p["number"], p["gross"], f"txn-{domain}").settled
    world.runner.dispatch(order["order"])
    for _ in range(20):
        if not world.queue.keys:
            break
        world.drain()
    with transaction(world.factory) as s:
        service = s.execute(select(Service).where(Service.order_id == order["order"])).scalar_one()
        account = s.execute(select(HostingAccount).where(HostingAccount.service_id == service.id)
                            ).scalar_one()
        node = s.get(HostingNode, account.node_id).name  # type: ignore[union-attr]
        sid, username = service.id, account.username
    fake.accounts.setdefault(node, set()).add(username)
    return sid, username, node


# -- enrolment and the sealed password ---------------------------------------------------------------
def test_enrolment_seals_the_password_and_the_database_never_holds_it(
        world: World, fake: FakeBackups, sqlite_url: str, tmp_path: Path) -> None:
    result = enroll(world, fake)
    assert result["repository"] == "sftp:rn-n1@192.0.2.50:/repo" and result["initialised"]
    node, ev = fake.node_converges[0]
    password = ev["hosting_node_backup_password"]
    assert node == "n1" and len(password) >= 40
    assert ev["hosting_node_backup_repository"] == result["repository"]
    assert ev["hosting_node_backup_known_hosts"] == KNOWN_HOSTS
    assert ev["hosting_node_backup_retention"] == {"mega": 7, "giga5": 14, "giga10": 14, "giga15": 30}
    assert ev["hosting_node_backup_on_calendar"] == "*-*-* 23:30:00 Europe/Ljubljana"  # in the window
    assert [c[0] for c in fake.calls] == ["key", "init"]  # its own key first, then the repository
    # the node's own key is let into its account on the backup host, and only that one
    assert fake.host_converges[-1] == {"n1": [fake.keys["n1"]]}
    db_file = Path(sqlite_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert password.encode() not in raw
    key_file = world.app.settings.effective_key_dir / store.KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    with transaction(world.factory) as s:
        sealed = s.execute(select(BackupRepository.sealed_password)).scalar_one()
    assert Fernet(key_file.read_bytes().strip()).decrypt(sealed).decode() == password


def test_enrolling_again_keeps_the_password_and_changes_nothing(world: World, fake: FakeBackups) -> None:
    first = enroll(world, fake)
    second = enroll(world, fake)
    assert first["created"] and not second["created"]
    passwords = {ev["hosting_node_backup_password"] for _, ev in fake.node_converges}
    assert len(passwords) == 1


def test_a_node_cannot_move_to_another_backup_host_by_a_setting(world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    with transaction(world.factory) as s:
        store.add_host(s, "backup2", "192.0.2.51", KNOWN_HOSTS.replace("192.0.2.50", "192.0.2.51"),
                       now=utc(2026, 1, 1))
    with pytest.raises(InvalidInput, match="another host"):
        jobs.enroll_node(world.factory, fake, world.app.backup_fernet(), "n1", "backup2", FCB,
                         utc(2026, 1, 2))


@pytest.mark.parametrize("known_hosts", [
    "", "not a key", "192.0.2.50 ssh-dss AAAAB3NzaC1kc3MAAACBAP", "192.0.2.50 ssh-ed25519 AAAA;reboot",
    "h ssh-ed25519 $(id)AAAAAAAAAAAAAAAAA", KNOWN_HOSTS.strip() + "\n192.0.2.50 ssh-ed25519 AAAA`id`"])
def test_a_backup_host_without_a_proper_host_key_is_refused(world: World, known_hosts: str) -> None:
    with transaction(world.factory) as s, pytest.raises(InvalidInput):
        store.add_host(s, "backup9", "192.0.2.59", known_hosts, now=utc(2026, 1, 1))


def test_a_backup_host_reporting_another_host_key_is_refused(world: World, fake: FakeBackups) -> None:
    fake.host_key = "192.0.2.50 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherOtherOtherOtherOtherOtherOtherOther"
    with pytest.raises(StepFailed, match="not the registered one"):
        enroll(world, fake)
    assert fake.node_converges == []  # the node never got a key it should not trust
    fake.host_key = KNOWN_HOSTS.strip()
    assert enroll(world, fake)["initialised"]


# -- the nightly run: the window, once per night, retries, alerts --------------------------------------
@pytest.mark.parametrize(("at", "state"), [
    (utc(2026, 1, 15, 21, 30), "outside"),  # 22:30 CET
    (utc(2026, 1, 15, 22, 5), "waiting"),  # 23:05 CET: the node's own run comes first
    (utc(2026, 1, 16, 0, 5), "runs"),  # 01:05 CET
    (utc(2026, 1, 16, 3, 55), "runs"),  # 04:55 CET
    (utc(2026, 1, 16, 4, 5), "outside"),  # 05:05 CET
    (utc(2026, 7, 15, 21, 5), "waiting"),  # 23:05 CEST
    (utc(2026, 7, 15, 23, 5), "runs"),  # 01:05 CEST
    (utc(2026, 7, 16, 3, 5), "outside"),  # 05:05 CEST
])
def test_the_nightly_job_acts_only_inside_the_maintenance_window_after_the_nodes_own_run(
        world: World, fake: FakeBackups, at: datetime, state: str) -> None:
    enroll(world, fake)
    report = world.app.backups_nightly(at)
    assert (("nightly", "n1") in fake.calls) is (state == "runs")
    assert report.get("outside_window", False) is (state == "outside")
    assert ("waiting" in report) is (state == "waiting")


def test_the_nightly_run_backs_up_each_node_once_a_night(world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    enroll(world, fake, "n2")
    nights = [utc(2026, 1, 16, 0, 5), utc(2026, 1, 16, 1, 5), utc(2026, 1, 16, 3, 5),
              utc(2026, 1, 17, 0, 5), utc(2026, 1, 17, 1, 5)]
    reports = [world.app.backups_nightly(at) for at in nights]
    assert [c for c in fake.calls if c[0] == "nightly"] == [("nightly", "n1"), ("nightly", "n2")] * 2
    assert reports[1]["skipped"] == ["n1", "n2"] and reports[4]["skipped"] == ["n1", "n2"]


def test_a_node_whose_own_timer_ran_tonight_is_only_recorded(world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    enroll(world, fake, "n2")
    fake.last["n1"] = NightlyResult("n1", {"shop": {"backup": "ab" * 32}}, (), True, None, "",
                                    utc(2026, 1, 15, 22, 31))  # 23:31 CET tonight
    fake.last["n2"] = NightlyResult("n2", {}, (), True, None, "", utc(2026, 1, 14, 22, 31))  # last night
    report = world.app.backups_nightly(utc(2026, 1, 16, 0, 5))
    assert report["nodes"]["n1"]["by"] == "node timer" and report["ran"] == ["n2"]
    assert [c for c in fake.calls if c[0] == "nightly"] == [("nightly", "n2")]


def test_a_node_whose_own_run_failed_tonight_is_run_again(world: World, fake: FakeBackups,
                                                          alerts: Alerts) -> None:
    enroll(world, fake)
    fake.last["n1"] = NightlyResult("n1", {}, (), True, "unreachable", "no route", utc(2026, 1, 15, 22, 31))
    report = world.app.backups_nightly(utc(2026, 1, 16, 0, 5))
    assert report["ran"] == ["n1"] and report["failed"] == [] and alerts.sent == []
    assert report["nodes"]["n1"]["node_run"]["error"] == "unreachable"


def test_an_unreachable_backup_host_alerts_ops_once_and_is_retried_until_it_works(
        world: World, fake: FakeBackups, alerts: Alerts) -> None:
    enroll(world, fake)
    fake.nightly_error["n1"] = "unreachable"
    hours = [utc(2026, 1, 16, 0, 5) + timedelta(hours=h) for h in range(3)]
    reports = [world.app.backups_nightly(at) for at in hours]
    assert [r["failed"] for r in reports] == [["n1"]] * 3  # tried every hour: the retries
    assert len(alerts.sent) == 1 and alerts.sent[0]["step_key"] == "backups:n1/nightly"
    assert "unreachable" in alerts.sent[0]["detail"]
    del fake.nightly_error["n1"]
    ok = world.app.backups_nightly(utc(2026, 1, 16, 3, 5))
    assert ok["failed"] == [] and "n1" in ok["nodes"]
    assert world.app.backups_nightly(utc(2026, 1, 16, 3, 55))["skipped"] == ["n1"]  # done tonight
    assert len(alerts.sent) == 1
    fake.nightly_error["n1"] = "unreachable"  # a new failure, the next night: a new alert
    world.app.backups_nightly(utc(2026, 1, 17, 0, 5))
    world.app.backups_nightly(utc(2026, 1, 17, 1, 5))
    assert len(alerts.sent) == 2
    with transaction(world.factory) as s:
        rows = store.checks(s)
    assert rows[0]["kind"] == "nightly" and rows[0]["ok"] is False and rows[0]["failing_since"]


def test_the_alerts_go_to_ops_by_mail_once(sqlite_url: str, tmp_path: Path, fake: FakeBackups) -> None:
    """Through the real OpsAlerts (bootstrap), i.e. the outbox: one mail per failure."""
    mailer = MemoryMailer()
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting")
    w = make_world(settings, hosting=FakeHosting(), backups=fake, mailer=mailer)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=utc(2026, 1, 1))
    enroll(w, fake)
    fake.check_ok["n1"] = False
    w.app.backups_check(utc(2026, 1, 18, 1, 20))
    w.app.backups_check(utc(2026, 1, 25, 1, 20))
    to_ops = [m for m in mailer.sent if m["to"] == settings.ops_email]
    assert len(to_ops) == 1 and "backups:n1/check" in to_ops[0]["text"]


# -- weekly verification -----------------------------------------------------------------------------
def test_a_failing_check_alerts_once_and_again_only_after_it_passed(
        world: World, fake: FakeBackups, alerts: Alerts) -> None:
    enroll(world, fake)
    fake.check_ok["n1"] = False
    first = world.app.backups_check(utc(2026, 1, 18, 1, 20))
    world.app.backups_check(utc(2026, 1, 25, 1, 20))
    assert first["failed"] == ["n1"] and len(alerts.sent) == 1
    assert ("check", "n1", world.app.settings.backup_check_subset) in fake.calls
    fake.check_ok["n1"] = True
    assert world.app.backups_check(utc(2026, 2, 1, 1, 20))["failed"] == []
    fake.check_ok["n1"] = False
    world.app.backups_check(utc(2026, 2, 8, 1, 20))
    assert len(alerts.sent) == 2


def test_the_drill_restores_a_random_account_and_alerts_once_per_failing_node(
        world: World, fake: FakeBackups, alerts: Alerts) -> None:
    enroll(world, fake)
    enroll(world, fake, "n2")
    placed: dict[str, set[str]] = {}
    for d in ("a.si", "b.si", "c.si", "d.si"):
        _sid, name, node = hosting_service(world, fake, d)
        placed.setdefault(node, set()).add(name)
    fake.drill_ok.update({"n1": False, "n2": False})
    now = utc(2026, 1, 18, 2, 20)
    first = jobs.drill(world.factory, fake, alerts, now, random.Random(7))
    second = jobs.drill(world.factory, fake, alerts, now + timedelta(days=7), random.Random(8))
    assert sorted(first["failed"]) == sorted(second["failed"]) == sorted(placed)
    assert len(alerts.sent) == len(placed)  # once per failing node, not once per run
    assert {a["step_key"] for a in alerts.sent} == {f"backups:{n}/drill" for n in placed}
    for node, names in placed.items():
        picks = {jobs.drill(world.factory, fake, Alerts(), now, random.Random(i))["nodes"][node]["account"]
                 for i in range(30)}
        assert picks == names  # a random account of that node each time, every one in turn


# -- list and restore --------------------------------------------------------------------------------
def test_list_and_restore_the_newest_snapshot_on_the_same_node(world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    sid, account, node = hosting_service(world, fake)
    enroll(world, fake, "n2" if node == "n1" else "n1")
    older, newer = fake.snapshot(node, account, sid), fake.snapshot(node, account, sid)
    assert [r.id for r in jobs.list_backups(world.factory, fake, sid)] == [older.id, newer.id]
    result = jobs.restore_service(world.factory, fake, world.app.backup_fernet(), sid)
    assert result["backup_id"] == newer.id and result["node"] == node
    assert fake.restored_from == [None]
    picked = jobs.restore_service(world.factory, fake, world.app.backup_fernet(), sid, older.short_id)
    assert picked["backup_id"] == older.id


def test_a_restore_onto_another_node_reads_the_source_repository_with_its_sealed_password(
        world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    enroll(world, fake, "n2")
    sid, account, node = hosting_service(world, fake)
    other = "n2" if node == "n1" else "n1"
    snap = fake.snapshot(node, account, sid)
    with pytest.raises(InvalidInput, match="does not exist on"):
        jobs.restore_service(world.factory, fake, world.app.backup_fernet(), sid, to_node=other)
    fake.accounts.setdefault(other, set()).add(account)  # ops (or the hosting step) created it there
    converges_before = len(fake.host_converges)
    result = jobs.restore_service(world.factory, fake, world.app.backup_fernet(), sid, to_node=other)
    assert result["node"] == other and result["source_node"] == node and result["backup_id"] == snap.id
    source = fake.restored_from[-1]
    assert source is not None and source.node == node and source.url == f"sftp:rn-{node}@192.0.2.50:/repo"
    node_password = next(ev["hosting_node_backup_password"] for n, ev in fake.node_converges if n == node)
    assert source.password == node_password
    # the other node's key is let into the source node's account for the restore only
    during, after = fake.host_converges[converges_before:]
    assert fake.keys[other] in during[node] and fake.keys[other] not in after[node]


@pytest.mark.parametrize("snapshot", ["../x", "DEADBEEF", "deadbeef;id", "x" * 8])
def test_a_hostile_snapshot_id_is_refused_before_the_node_is_asked(
        world: World, fake: FakeBackups, snapshot: str) -> None:
    enroll(world, fake)
    sid, _account, _node = hosting_service(world, fake)
    calls = len(fake.calls)
    with pytest.raises(InvalidInput):
        jobs.restore_service(world.factory, fake, world.app.backup_fernet(), sid, snapshot)
    assert len(fake.calls) == calls


# -- the deletion stages ---------------------------------------------------------------------------
def _stage(world: World, sid: int, kind: str, state: str, due: date) -> str:
    with transaction(world.factory) as s:
        service = s.get(Service, sid)
        assert service is not None
        service.state = state
        term = service.expires_on or date(2027, 1, 1)
        service.expires_on = term
        order_id = service.order_id
        proforma = s.execute(select(Proforma.id).where(Proforma.order_id == order_id)).scalar_one()
    world.at(due)
    spec = StepSpec(f"service:{sid}/clock.{kind}@{term}", f"clock.{kind}", (), {
        "service_id": sid, "term_expiry": term.isoformat(), "due_on": due.isoformat(),
        "proforma_id": proforma}, sid)
    with transaction(world.factory) as s:
        record(s, order_id, [spec])
    world.runner.dispatch(order_id)
    world.drain()
    return spec.key


def test_stage_1_last_snapshot_is_tagged_with_the_service_and_stage_2_records_the_proof(
        world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    enroll(world, fake, "n2")
    sid, account, node = hosting_service(world, fake, "gone.si")
    _other_sid, other, other_node = hosting_service(world, fake, "stays.si")
    nightly = [fake.snapshot(node, account, sid) for _ in range(3)]
    kept = [fake.snapshot(other_node, other) for _ in range(2)]
    _stage(world, sid, "delete_data", "expired", date(2027, 3, 2))
    assert ("remove_account", node, account, sid) in fake.calls
    last = fake.repos[node][account][-1]
    assert last.tags == (f"account:{account}", f"service:{sid}")
    _stage(world, sid, "purge_backups", "deleted", date(2027, 4, 1))
    assert ("purge", node, account, sid) in fake.calls
    with transaction(world.factory) as s:
        rec = s.execute(select(StageRecord).where(StageRecord.service_id == sid,
                                                  StageRecord.stage == "purge_backups")).scalar_one()
        manifest = rec.manifest
        assert s.get(Service, sid).state == "purged"  # type: ignore[union-attr]
    proof = manifest["proof"]
    assert sorted(proof["snapshot_ids"]) == sorted(r.id for r in [*nightly, last])
    assert proof["bytes_freed"] == sum(r.size or 0 for r in [*nightly, last]) > 0
    assert proof["restic_check_ok"] is True and proof["remaining"] == 0
    assert account not in fake.repos[node]
    assert fake.repos[other_node][other] == kept  # the other account's snapshots are intact


def test_a_purge_the_node_cannot_prove_fails_the_stage(world: World, fake: FakeBackups) -> None:
    enroll(world, fake)
    sid, account, node = hosting_service(world, fake, "gone.si")
    fake.snapshot(node, account, sid)

    def unproven(target: Any, acct: str, service: Any = None) -> Any:
        raise StepFailed("backups.purge", f"{target.name} did not prove the purge of {acct}")

    fake.purge = unproven  # type: ignore[method-assign]
    _stage(world, sid, "purge_backups", "deleted", date(2027, 4, 1))
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state == "deleted"  # type: ignore[union-attr]
        assert s.execute(select(StageRecord).where(StageRecord.service_id == sid,
                                                   StageRecord.stage == "purge_backups")).first() is None


def test_the_beat_runs_the_nightly_hourly_and_the_weekly_jobs_inside_the_window(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = world.app.settings
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", settings.effective_database_url)
    from provisioner import tasks  # imported here: its Celery app reads the environment above

    tasks.provisioner.cache_clear()
    tasks._settings.cache_clear()
    try:
        schedule = tasks.make_celery(settings).conf.beat_schedule
        nightly = schedule["backups_nightly"]
        assert nightly["task"] == "provisioner.backups_nightly" == tasks.backups_nightly.name
        assert schedule["backups_nightly"]["schedule"].hour == set(range(24))
        for name, hour in (("backups_check", 1), ("backups_drill", 2)):
            entry = schedule[name]["schedule"]
            assert schedule[name]["task"] == f"provisioner.{name}"
            assert entry.day_of_week == {0} and entry.hour == {hour}
            for sunday in (date(2026, 1, 18), date(2026, 7, 19)):  # winter and summer time
                at = datetime(sunday.year, sunday.month, sunday.day, hour, min(entry.minute), tzinfo=UTC)
                assert in_window(at, FCB.maintenance_window, settings.maintenance_timezone)
        for task in (tasks.backups_nightly, tasks.backups_check, tasks.backups_drill):
            report = task()  # nothing enrolled in this database: nothing to do, no error
            assert report.get("nodes", {}) == {}
    finally:
        tasks.provisioner.cache_clear()
        tasks._settings.cache_clear()


class Usage:
    """Meets `ports.UsageReader`: the accounts named in ``over`` are over their quota."""

    def __init__(self, accounts: dict[str, set[str]]) -> None:
        self.accounts = accounts
        self.over: set[str] = set()

    def __call__(self, node: Target) -> NodeUsage:
        return NodeUsage({a: AccountUsage(a, "mega", 2_000 * 2**20 if a in self.over else 10, 0, 0,
                                          {"disk_mb": 1000}, over_disk=a in self.over)
                          for a in self.accounts.get(node.name, ())}, mail_policy_failures=0)


def test_an_account_over_quota_past_its_grace_gets_no_free_nightly_backup(
        sqlite_url: str, tmp_path: Path, fake: FakeBackups, alerts: Alerts) -> None:
    usage = Usage(fake.accounts)
    settings = make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting")
    w = make_world(settings, hosting=FakeHosting(), backups=fake, mailer=MemoryMailer(), alert=alerts,
                   usage=usage)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
        store.add_host(s, "backup1", "192.0.2.50", KNOWN_HOSTS, now=utc(2026, 1, 1))
    enroll(w, fake)
    _sid, big, _node = hosting_service(w, fake, "big.si")
    _sid2, small, _node2 = hosting_service(w, fake, "small.si")
    usage.over.add(big)
    grace = FCB.over_quota_grace_days
    w.app.check_quotas(date(2026, 1, 1))  # warned: backups go on during the grace days
    assert w.app.backups_nightly(utc(2026, 1, 2, 0, 5))["nodes"]["n1"]["accounts"][big].get("backup")
    stopped = w.app.check_quotas(date(2026, 1, 1) + timedelta(days=grace + 1))
    assert stopped["backups_stopped"] == [big]
    night = w.app.backups_nightly(utc(2026, 1, 10, 0, 5))["nodes"]["n1"]["accounts"]
    assert night[big] == {"skipped": "excluded"} and night[small].get("backup")
    usage.over.clear()
    assert w.app.check_quotas(date(2026, 1, 11))["backups_restored"] == [big]
    assert w.app.backups_nightly(utc(2026, 1, 12, 0, 5))["nodes"]["n1"]["accounts"][big].get("backup")


@pytest.mark.parametrize("brand", ["fcb", "iserver"])
def test_an_erasure_says_by_which_day_the_data_are_gone_from_the_backups(world: World, brand: str) -> None:
    order = world.order(["hosting:mega:erase.si"], brand=brand)  # never paid: goes with the customer
    with transaction(world.factory) as s:
        customer_id = s.execute(select(Service.customer_id).where(Service.order_id == order["order"])
                                ).scalar_one()
    result = gdpr.erase_customer(world.factory, customer_id, "test")
    policy = get_brand(brand)
    gone_by = gdpr_backups_gone_by(utcnow().date(), policy)
    assert result["backups_rotated_out_by"] == gone_by.isoformat() and gone_by.isoformat() in result["note"]
    # the nightly rotation makes it true: no plan keeps a snapshot that long
    assert max(retention_table(policy).values()) < policy.gdpr_backup_rotation_days
