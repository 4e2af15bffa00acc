"""The migration's copy, verify, cut-over and wipe steps in the journal (issue 13, items
5-8), on SQLite and PostgreSQL.

The copier here is a fake (`FakeCopier`) ONLY because these tests are about the journal:
it meets `ports.MigrationCopier` and speaks the same contract as the real node runner
(`adapters.migration_copy.NodeJobs`): progress events to ``on_event``, one `PartOutcome`,
a TransientError for a dropped connection, resuming from its own checkpoint. The real
copier is tested on throwaway hosts (tests/e2e). The clock is the runner's: the fake moves
it as a copy would take time, so the budget is tested without waiting."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.adapters.migration_copy import PartOutcome
from provisioner.adapters.migration_copy.site import SitePage
from provisioner.adapters.migration_source import CredentialRefused
from provisioner.cli import app as cli_app
from provisioner.cli.migration import follow_migration
from provisioner.errors import TransientError
from provisioner.pipeline.capabilities.migration import sources
from provisioner.pipeline.capabilities.migration.survey import override
from provisioner.pipeline.usecases import ops
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node
from provisioner.store.models import AuditEntry, Migration, Service, Step
from tests.helpers import MemoryMailer, World, make_settings, make_world, settings_env
from tests.integration.test_migration_intake import FORM, SECRETS, _paid
from tests.integration.test_migration_survey_step import FakeOldProvider, _measures
from tests.unit.pipeline.fakes import FakeHosting

MIB = 1024 * 1024
CAP = 50 * MIB
BUDGET_S = 100.0


@dataclass
class Clock:
    """The runner's clock; the fake copier moves it on as copying takes time."""

    at: datetime = field(default_factory=lambda: datetime(2026, 12, 2, 8, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.at

    def tick(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Plan:
    """What one part does when run: ``total`` bytes in ``chunk`` steps of ``seconds`` each;
    ``drop_after``: the connection drops (TransientError) after that many bytes in the
    next run (once); ``result``: the state it ends with (done unless it runs out of the cap
    or the deadline first); ``refuse``: the login is refused."""

    total: int
    chunk: int = 5 * MIB
    seconds: float = 1.0
    drop_after: int | None = None
    result: str = "done"
    refuse: bool = False


@dataclass
class FakeCopier:
    """Meets `ports.MigrationCopier` with the node runner's event/outcome contract; keeps
    each part's checkpoint (bytes already there) like the part programs do: a run resumes
    from it, and reports (and measures against its cap) the part's bytes in all."""

    clock: Clock
    plans: dict[str, Plan] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, int] = field(default_factory=dict)
    cleaned: list[str] = field(default_factory=list)
    during: list[Any] = field(default_factory=list)  # callables run after each progress event
    verify_differences: dict[str, list[str]] = field(default_factory=dict)
    fetched: list[tuple[str, str]] = field(default_factory=list)  # (address, Host) of each site fetch

    def run_part(self, node: Any, job: Any, on_event: Any = None) -> PartOutcome:
        job = json.loads(json.dumps(job))  # what goes over stdin: JSON only
        self.jobs.append(job)
        part, mode = job["part"], job["mode"]
        plan = self.plans.get(part, Plan(MIB))
        if plan.refuse:
            raise CredentialRefused(part, f"migration {job['job']} {part} on {node.name}")
        if mode == "verify":
            have = self.checkpoint.get(part, 0)
            return PartOutcome(part, mode, "done", 0, 0, {
                "source": {"bytes": plan.total}, "target": {"bytes": have},
                "differences": self.verify_differences.get(part, [])})
        have = self.checkpoint.get(part, 0)  # resumed from the part's checkpoint
        used = 0.0
        while have < plan.total:
            if have >= job["cap_bytes"]:
                return self._end(part, "cap_reached", have)
            if used >= job["deadline_s"]:
                return self._end(part, "budget_exhausted", have)
            step = min(plan.chunk, plan.total - have, job["cap_bytes"] - have)
            self.clock.tick(plan.seconds)
            used += plan.seconds
            have += step
            self.checkpoint[part] = have
            if on_event is not None:
                on_event({"event": "progress", "part": part, "bytes": have, "items": have // MIB})
            for hook in self.during:
                hook(part)
            if plan.drop_after is not None and have >= plan.drop_after:
                plan.drop_after = None
                raise TransientError(f"migration {job['job']} {part}: the connection to the node dropped")
        return self._end(part, plan.result, have)

    def _end(self, part: str, state: str, have: int) -> PartOutcome:
        named = [{"part": part, "kind": "excluded", "name": "escape -> /etc", "reason": "symlink outside"}] \
            if part == "files" else []
        error = "the dump is not SQL" if state == "failed" else None
        return PartOutcome(part, "copy", state, have, have // MIB, {"bytes": have}, named, error)

    def cleanup(self, node: Any, job_id: str) -> list[str]:
        self.cleaned.append(job_id)
        return [f"/run/hosting-migrate/{job_id}", f"/var/lib/hosting/migrate/{job_id}"]

    def fetch_site(self, address: str, host: str) -> SitePage:
        self.fetched.append((address, host))
        return SitePage(200, f"Shop {host}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def old() -> FakeOldProvider:
    return FakeOldProvider(_measures(10 * MIB))


@pytest.fixture
def copier(clock: Clock) -> FakeCopier:
    return FakeCopier(clock)


@pytest.fixture
def world(db_url: str, tmp_path: Path, mailer: MemoryMailer, old: FakeOldProvider, copier: FakeCopier,
          clock: Clock) -> World:
    settings = make_settings(tmp_path, db_url, 25, line_kinds="hosting,migration",
                             public_base_url="https://pages.provider.example/",
                             migration_cap_bytes=CAP, migration_cap_s=BUDGET_S,
                             ops_email="ops@provider.example")
    w = make_world(settings, now=clock, hosting=FakeHosting(), mailer=mailer, old_provider=old,
                   migration_copier=copier)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def _surveyed(world: World, lang: str = "en") -> tuple[int, int]:
    order_id, sid = _paid(world, lang=lang)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    world.runner.dispatch()
    key = world.steps(order_id)["migration.survey"].key
    world.queue.keys.remove(key)
    assert world.runner.run_step(key).status == "done"  # the copy is queued, not run yet
    return order_id, sid


def _step(world: World, order_id: int, kind: str) -> Step:
    """Run whatever is queued until ``kind`` has run (retries waited out on the clock)."""
    for _ in range(30):
        world.runner.dispatch()
        world.drain(retry=True)
        step = world.steps(order_id).get(kind)
        if step is not None and step.state in ("done", "failed"):
            return step
    raise AssertionError(f"{kind} did not run: {world.steps(order_id)}")


def _row(world: World, sid: int) -> Migration:
    with transaction(world.factory) as s:
        row = s.execute(select(Migration).where(Migration.service_id == sid)).scalar_one()
        s.expunge(row)
        return row


def _audits(world: World, action: str) -> list[AuditEntry]:
    with transaction(world.factory) as s:
        rows = s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars().all()
        s.expunge_all()
        return list(rows)


def _copy_runs(copier: FakeCopier, part: str) -> list[dict[str, Any]]:
    return [j for j in copier.jobs if j["part"] == part and j["mode"] == "copy"]


def test_a_survey_that_fits_plans_copy_verify_cutover_and_wipe_in_a_chain(world: World) -> None:
    order_id, sid = _paid(world)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    assert "migration.copy" not in world.steps(order_id)  # nothing copied before the survey says so
    _step(world, order_id, "migration.survey")
    steps = world.steps(order_id)
    chain = ["migration.survey", "migration.copy", "migration.verify", "migration.cutover", "migration.wipe"]
    for before, after in zip(chain, chain[1:], strict=False):
        assert steps[after].deps == [steps[before].key]


def test_an_ops_override_of_an_over_cap_survey_plans_the_copy(world: World, old: FakeOldProvider) -> None:
    old.measures = _measures(60 * MIB)
    order_id, sid = _paid(world)
    sources.record_source(world.factory, world.app.settings, sid, FORM, "cli:ops", datetime.now(UTC))
    assert _step(world, order_id, "migration.survey").result["state"] == "over_cap"
    assert "migration.copy" not in world.steps(order_id)
    override(world.factory, sid, "customer agreed to pay the extra", actor="cli:ops", now=datetime.now(UTC))
    assert _step(world, order_id, "migration.wipe").state == "done"
    assert _row(world, sid).copy["outcome"] in ("dns_elsewhere", "cut_over")


def test_the_whole_chain_copies_in_order_verifies_reports_and_wipes(
        world: World, copier: FakeCopier, mailer: MemoryMailer, monkeypatch: pytest.MonkeyPatch) -> None:
    copier.plans = {"files": Plan(12 * MIB), "database": Plan(6 * MIB), "mailbox1": Plan(2 * MIB),
                    "mailbox2": Plan(MIB)}
    order_id, sid = _surveyed(world)
    assert _step(world, order_id, "migration.wipe").state == "done"
    copies = [j["part"] for j in copier.jobs if j["mode"] == "copy"]
    assert copies == ["files", "database", "mailbox1", "mailbox2"]
    first = copier.jobs[0]
    # the job: our account, the source's own fields (with its secret, on stdin only), the caps
    assert first["job"] == f"m{sid}" and first["account"]["docroot"].endswith("/public_html")
    assert first["source"]["files_password"] == SECRETS[0] and "db_password" not in first["source"]
    assert first["cap_bytes"] == CAP and first["deadline_s"] == BUDGET_S
    db_job = _copy_runs(copier, "database")[0]
    assert db_job["source"]["db_password"] == SECRETS[1] and db_job["source"]["files_user"] == "olduser"
    assert db_job["collation_map"] == {"utf8mb4_0900_ai_ci": "utf8mb4_unicode_520_ci"}
    assert _copy_runs(copier, "mailbox2")[0]["source"]["mail2_password"] == SECRETS[3]
    # both land in info@: mailbox1 in its folders, mailbox2 under its old address (copy and verify)
    boxes = [(j["part"], j["mode"], j["account"]["mailbox"], j.get("folder_prefix"))
             for j in copier.jobs if j["part"].startswith("mailbox")]
    assert sorted(set(boxes)) == [("mailbox1", "copy", "info@shop.si", None),
                                  ("mailbox1", "verify", "info@shop.si", None),
                                  ("mailbox2", "copy", "info@shop.si", FORM["mail2_user"]),
                                  ("mailbox2", "verify", "info@shop.si", FORM["mail2_user"])]
    row = _row(world, sid)
    assert row.migration_used_at is not None
    assert row.reconciliation is not None and row.reconciliation["verified"] is True
    assert set(row.reconciliation["parts"]) == {"files", "database", "mailbox1", "mailbox2"}
    assert row.reconciliation["site"]["same"] is True
    # our node, then the old host: the files host (no zone of ours had the domain)
    assert copier.fetched == [("192.0.2.10", "shop.si"), ("old.example.net", "shop.si")]
    assert row.reconciliation["named"][0]["name"] == "escape -> /etc"
    # no DNS of ours: the report says what to set
    assert row.cutover is not None and row.cutover["state"] == "dns_elsewhere"
    assert {"name": "shop.si.", "type": "A", "value": "192.0.2.10"} in row.cutover["set"]
    assert row.state == "wiped" and row.sealed == sources.WIPED_MARK
    assert row.copy["outcome"] == "dns_elsewhere"
    assert copier.cleaned == [f"m{sid}"]
    assert _audits(world, "migration.node_cleaned")[0].detail["removed"] == [
        f"/run/hosting-migrate/m{sid}", f"/var/lib/hosting/migrate/m{sid}"]
    report = [m for m in mailer.sent if "complete and verified" in m["subject"]]
    assert len(report) == 1 and "escape -> /etc" in report[0]["text"]
    assert "files: 12.0 MB" in report[0]["text"]
    assert len([m for m in mailer.sent if "how to point shop.si" in m["subject"]]) == 1
    # the steps run again observe: no second mail, nothing copied or cleaned twice
    runs = len(copier.jobs)
    steps = world.steps(order_id)
    chain = ("migration.copy", "migration.verify", "migration.cutover", "migration.wipe")
    with transaction(world.factory) as s:
        s.execute(Step.__table__.update().where(Step.order_id == order_id, Step.kind.in_(chain))
                  .values(state="queued"))
    for kind in chain:
        world.runner.run_step(steps[kind].key)
    assert len(copier.jobs) == runs and copier.cleaned == [f"m{sid}"]
    assert len([m for m in mailer.sent if "complete and verified" in m["subject"]]) == 1
    # ops follow it: it has ended, so --follow returns at once with the whole story
    env = settings_env(world.app.settings)
    shown = CliRunner().invoke(cli_app, ["migration", "show", str(sid), "--follow", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["state"] == "wiped" and data["outcome"] == "dns_elsewhere" and data["verified"] is True
    assert data["copy_bytes"] == 21 * MIB and data["cutover_state"] == "dns_elsewhere"
    assert "mail_keys" not in data["reconciliation"]
    text = CliRunner().invoke(cli_app, ["migration", "show", str(sid)], env=env)
    assert "copy: copied, 21.0 MB" in text.stdout and "cut-over: dns_elsewhere" in text.stdout
    assert all(secret not in shown.stdout + text.stdout for secret in SECRETS)

    # on a terminal, --follow draws its bar (the domain, the bytes, the state) and returns
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    screen = io.StringIO()
    followed = follow_migration(sid, 5.0, console=Console(file=screen, force_terminal=True, width=120))
    assert followed["state"] == "wiped"
    assert "shop.si" in screen.getvalue() and "wiped" in screen.getvalue() and "MB" in screen.getvalue()
    for secret in SECRETS:
        assert secret not in json.dumps([row.copy, row.reconciliation, row.cutover, row.progress])
        assert all(secret not in m["text"] for m in mailer.sent)


def test_the_parts_share_the_cap_and_a_part_at_the_cap_stops_the_copy_and_mails_once(
        world: World, copier: FakeCopier, mailer: MemoryMailer) -> None:
    copier.plans = {"files": Plan(30 * MIB), "database": Plan(40 * MIB)}
    order_id, sid = _surveyed(world, lang="sl")
    copy = _step(world, order_id, "migration.copy")
    assert copy.result["state"] == "cap_reached"
    # the database could bring only what the files left of the cap
    assert _copy_runs(copier, "database")[0]["cap_bytes"] == CAP - 30 * MIB
    assert not _copy_runs(copier, "mailbox1")  # nothing after the cap
    row = _row(world, sid)
    assert row.copy["state"] == "cap_reached" and row.copy["copy"]["database"]["bytes"] == 20 * MIB
    assert row.copy["bytes"] == CAP
    customer = [m for m in mailer.sent if "omejitvi podatkov" in m["subject"]]
    ops = [m for m in mailer.sent if m["to"] == "ops@provider.example" and "cap_reached" in m["subject"]]
    assert len(customer) == 1 and len(ops) == 1
    assert "files: 30.0 MB" in customer[0]["text"] and "database: 20.0 MB" in customer[0]["text"]
    # the step run again observes: nothing copied again, no second mail
    runs = len(copier.jobs)
    with transaction(world.factory) as s:
        s.execute(Step.__table__.update().where(Step.key == copy.key).values(state="queued"))
    world.runner.run_step(copy.key)
    assert len(copier.jobs) == runs
    assert len([m for m in mailer.sent if "omejitvi podatkov" in m["subject"]]) == 1
    # what arrived is verified and reported, it is not cut over, and the wipe still runs
    assert _step(world, order_id, "migration.wipe").state == "done"
    row = _row(world, sid)
    assert row.reconciliation["copy_state"] == "cap_reached"
    assert "mailbox1: not copied (the copy ended cap_reached)" in row.reconciliation["differences"]
    assert row.cutover["state"] == "not_cut_over" and row.state == "wiped"


def test_the_budget_is_copy_time_across_a_redrive_and_a_dropped_part_resumes(
        world: World, copier: FakeCopier, clock: Clock, mailer: MemoryMailer) -> None:
    # 60 s of files, then the connection drops; the retry resumes the files and the
    # database gets only what is left of the 100 s budget
    copier.plans = {"files": Plan(15 * MIB, chunk=MIB, seconds=6.0, drop_after=10 * MIB),
                    "database": Plan(40 * MIB, chunk=MIB, seconds=5.0)}
    seen: list[float] = []

    def budget_on_the_row(part: str) -> None:
        seen.append(_row(world, sid).copy_seconds)

    copier.during.append(budget_on_the_row)
    order_id, sid = _surveyed(world)
    copy = _step(world, order_id, "migration.copy")
    files = _copy_runs(copier, "files")
    assert len(files) == 2 and copy.attempts == 2  # the retry ran the part again
    assert copier.checkpoint["files"] == 15 * MIB  # resumed, not started over: 10 + 5 MiB
    assert files[1]["deadline_s"] == pytest.approx(BUDGET_S - 60.0)
    # the time is on the row while the part runs (a killed worker's time counts too)
    assert max(seen[:10]) >= 50.0
    db = _copy_runs(copier, "database")[0]
    assert db["deadline_s"] == pytest.approx(BUDGET_S - 90.0)
    assert copy.result["state"] == "budget_exhausted"
    row = _row(world, sid)
    assert row.copy["outcome"] == "budget_exhausted" and row.copy_seconds == pytest.approx(BUDGET_S)
    assert len([m for m in mailer.sent if "time limit" in m["subject"]]) == 1


def test_a_part_done_is_not_run_again_when_the_worker_dies_in_the_next(
        world: World, copier: FakeCopier, clock: Clock) -> None:
    copier.plans = {"files": Plan(5 * MIB), "database": Plan(10 * MIB, chunk=MIB)}
    killed: list[str] = []

    def kill_once(part: str) -> None:
        if part == "database" and not killed and copier.checkpoint["database"] >= 4 * MIB:
            killed.append(part)
            raise SystemExit("worker killed")  # not caught by the step: the run just dies

    copier.during.append(kill_once)
    order_id, sid = _surveyed(world)
    world.runner.dispatch()
    key = world.steps(order_id)["migration.copy"].key
    with pytest.raises(SystemExit):
        world.drain()
    assert world.steps(order_id)["migration.copy"].state == "running"
    clock.tick(world.app.settings.step_lease_s + 1)  # the lease runs out; the re-drive takes it up
    assert world.runner.redrive()["redriven"] >= 1
    assert key in world.queue.keys
    assert _step(world, order_id, "migration.copy").result["state"] == "copied"
    assert len(_copy_runs(copier, "files")) == 1  # done before the kill: not run again
    assert len(_copy_runs(copier, "database")) == 2
    assert _row(world, sid).copy["copy"]["database"]["bytes"] == 10 * MIB
    assert copier.checkpoint["database"] == 10 * MIB  # resumed at 4 MiB: 6 more, none twice
    # 1 s files, 4 s in the killed run (written as it ran), 6 s resumed, 1 s each mailbox
    assert _row(world, sid).copy_seconds == pytest.approx(13.0)


def test_progress_is_written_at_most_once_a_second(world: World, copier: FakeCopier) -> None:
    copier.plans = {"files": Plan(20 * MIB, chunk=MIB, seconds=0.25)}
    writes: list[Any] = []

    def watch(part: str) -> None:
        progress = _row(world, sid).progress
        if progress and progress["part"] == "files" and (not writes or writes[-1] != progress):
            writes.append(progress)

    copier.during.append(watch)
    order_id, sid = _surveyed(world)
    _step(world, order_id, "migration.copy")
    # the API's service view (GET /services/{id}) shows the copy's state and parts
    view = ops.show_service(world.factory, sid, "test")["migration"]
    assert view["parts"]["files"] == {"state": "done", "bytes": 20 * MIB, "items": 20, "error": None}
    assert view["copy_seconds"] == pytest.approx(_row(world, sid).copy_seconds, abs=0.1)
    assert view["outcome"] and view["copy_bytes"] >= 20 * MIB
    # 20 events over 5 s: one write a second, never one per event
    assert 4 <= len(writes) <= 6
    assert writes[-1]["part"] == "files" and writes[-1]["bytes"] >= 16 * MIB
    stamps = [datetime.fromisoformat(w["at"]) for w in writes]
    assert all((b - a).total_seconds() >= 1.0 for a, b in zip(stamps, stamps[1:], strict=False))


@pytest.mark.parametrize("how", ["failed_part", "refused_login", "never_answers"])
def test_the_wipe_runs_after_a_failure(world: World, copier: FakeCopier, how: str) -> None:
    if how == "failed_part":
        copier.plans = {"database": Plan(MIB, result="failed")}
    elif how == "refused_login":
        copier.plans = {"database": Plan(MIB, refuse=True)}
    else:
        copier.plans = {"database": Plan(10 * MIB, chunk=MIB, drop_after=0)}
        original = copier.run_part

        def always_drops(node: Any, job: Any, on_event: Any = None) -> PartOutcome:
            if job["part"] == "database":
                copier.jobs.append(job)
                raise TransientError("the old host does not answer")
            return original(node, job, on_event)

        copier.run_part = always_drops  # type: ignore[method-assign]
    order_id, sid = _surveyed(world)
    copy = _step(world, order_id, "migration.copy")
    assert copy.state == "done"  # settled: the outcome is on the migration
    want = {"failed_part": "failed", "refused_login": "source_refused", "never_answers": "failed"}[how]
    assert copy.result["state"] == want
    wipe = _step(world, order_id, "migration.wipe")
    assert wipe.state == "done"
    row = _row(world, sid)
    assert row.state == "wiped" and row.sealed == sources.WIPED_MARK and row.copy["outcome"] == want
    assert copier.cleaned == [f"m{sid}"]
    assert row.reconciliation is None  # a failed copy is not verified
    assert not [j for j in copier.jobs if j["part"] == "mailbox1"]
    if how == "never_answers":
        assert copy.attempts == world.app.settings.step_max_attempts
    with transaction(world.factory) as s:
        assert s.get(Service, sid).state != "failed"  # the hosting order stands; ops have the outcome
    assert [a.detail["reason"] for a in _audits(world, "migration.source_wiped")] == [f"ended {want}"]
