"""The backup the customer may download before deletion (issue 17 item 9; RULES "customer
may download backups before deletion: if a backup service was ordered", 002 §7).

* Ordering: a ``backup:SITE`` line beside a hosting line for the same site (the catalog
  checks it; `domain.catalog.BackupProduct` has the price). Paying plans ``backup.enroll``
  after the hosting line's ``hosting.account``; ``service.activate`` then gives the backup
  service its own term, renewed and shut down by the clock like any service.
* At the start of the retention: when the clock shuts a hosting service down
  (``lifecycle.sweeper``) and a backup service of the same customer and site covered
  the ending term (its expiry on or after the hosting's), `schedule_link` writes
  ``backup.download_link`` after ``clock.shutdown``, not before the day after the shutdown
  (``next_attempt_at``; the step checks its day too). No backup service: no step.
* ``backup.download_link`` takes a snapshot of the (suspended) account, or uses the newest
  one when the account is no longer on its node, records a one-time link to it
  (`provisioner.pipeline.onetime`: only the token's hash is stored) valid until the data
  deletion date of the brand's retention, and mails it in the customer's language, held
  sealed in the outbox with the link in the same transaction, so a re-run sends that
  mail and never a second link.
* The page (``api/routers/backup_download.py``): GET shows a button (mail scanners fetch
  GETs; they use nothing up); POST leases the link (`start_download`, one download at a
  time), fetches the snapshot from the node into a private directory (`build_archive`),
  repacks it as ``SITE-backup-DATE.tar.gz`` with ``MANIFEST.json`` (every file's path,
  type, size, mode, mtime and SHA-256) as its last member, and streams it. The link is
  used up when the download completed, i.e. its last chunk is handed to the connection
  (`finish_download`); a download broken off before gives the lease back
  (`release_download`), so a dropped connection does not cost the customer the link. The
  private directory is removed either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.ansible import Target
from provisioner.domain.lifecycle import ServiceState, data_deletion_date
from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput, StepFailed
from provisioner.pipeline.capabilities.placement import account_and_node, target_of
from provisioner.pipeline.engine.plan import (
    LinePlanner,
    OrderView,
    PlanOptions,
    ServiceView,
    StepSpec,
    service_step,
)
from provisioner.pipeline.engine.ports import HostingBackups
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.onetime import (
    LinkUnusable,
    brand_context,
    checked_digest,
    new_token,
    state_of,
    token_hash,
)
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import BackupDownloadLink, Customer, Order, Service, Step
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.backup_download")
SYSTEM = "system:pipeline"
ENROLL = "backup.enroll"
LINK = "backup.download_link"
DOWNLOAD_PATH = "/backup/"  # the page: GET/POST {public_base_url}/backup/{token}
LEASE = timedelta(hours=6)  # one download at a time; a dead one frees the link after this
CHUNK = 1 << 20
#: the backup service's states in which it still covers its term
_COVERING = (ServiceState.ACTIVE.value, ServiceState.SUSPENDED.value, ServiceState.EXPIRED.value)


class DownloadBusy(InvalidInput):
    """A download of the link is under way (its lease has not run out)."""

    def __init__(self) -> None:
        super().__init__("a download of this backup is under way; try again when it ended")


# -- ordering -------------------------------------------------------------------------------
def plan_backup_line(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    """``hosting.account`` (of the same order's new hosting line for the site, if any) ->
    ``backup.enroll``; a renewal has no steps of its own (``service.renew`` extends it)."""
    if service.action != "new":
        return []
    hosting = [s for s in view.services
               if s.kind == "hosting" and s.name == service.name and s.action == "new"]
    deps = tuple(service_step(h.id, "hosting.account") for h in hosting if options.enabled("hosting"))
    return [StepSpec(service_step(service.id, ENROLL), ENROLL, deps,
                     {"service_id": service.id, "domain": service.name}, service.id)]


def step_enroll(ctx: StepContext, step: Step) -> StepResult:
    """Observe: the backup service and the hosting service of its site (the customer's).
    Nothing runs on a node: the nightly backups run for every account; what the backup
    service adds is the download at the end (`schedule_link`)."""
    service_id = int(step.params["service_id"])
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        if service is None or service.kind != "backup":
            raise StepFailed(step.key, f"service {service_id} is not a backup service")
        hosting = s.execute(select(Service.id).where(
            Service.customer_id == service.customer_id, Service.kind == "hosting",
            Service.name == service.name).order_by(Service.id.desc())).scalars().first()
    if hosting is None:
        raise StepFailed(step.key, f"no hosting service for {service.name} of this customer")
    return StepResult(False, {"hosting_service_id": hosting, "domain": service.name})


def covering_backup(s: Session, hosting: Service, term: date) -> Service | None:
    """The customer's backup service for the hosting's site that covered the term ending
    on ``term`` (its own expiry on or after it), or None."""
    # Only equality on (name, kind) in SQL, so every engine takes ix_services_name_kind
    # (a site has a handful of services); the rest is sorted out here. With the expiry or
    # the customer in the WHERE, SQLite's planner walked a whole customer's services.
    candidates = s.execute(select(Service).where(Service.name == hosting.name,
                                                 Service.kind == "backup")).scalars().all()
    covering = [b for b in candidates if b.customer_id == hosting.customer_id
                and b.expires_on is not None and b.expires_on >= term and b.state in _COVERING]
    return max(covering, key=lambda b: (b.expires_on, b.id), default=None)


# -- the clock: at the start of the retention --------------------------------------------
def link_step_key(service_id: int, term: date) -> str:
    return service_step(service_id, LINK, term.isoformat())


def schedule_link(s: Session, hosting: Service, term: date, shutdown_on: date,
                  shutdown_key: str) -> bool:
    """In the sweep's transaction, when ``hosting`` is shut down for the term ending on
    ``term``: the download step, after the shutdown step and not before the day after it,
    if a backup service covered the term. True when a step was written."""
    if hosting.kind != "hosting":
        return False
    backup = covering_backup(s, hosting, term)
    if backup is None:
        return False
    key = link_step_key(hosting.id, term)
    if s.execute(select(Step.id).where(Step.key == key)).first() is not None:
        return False
    due = shutdown_on + timedelta(days=1)
    now = utcnow()
    s.add(Step(key=key, order_id=hosting.order_id, service_id=hosting.id, kind=LINK,
               params={"service_id": hosting.id, "term_expiry": term.isoformat(),
                       "due_on": due.isoformat(), "backup_service_id": backup.id},
               deps=[shutdown_key], state="pending", attempts=0,
               next_attempt_at=datetime.combine(due, time(0), UTC),
               created_at=now, updated_at=now))
    return True


@dataclass(frozen=True)
class _Due:
    service: Service
    customer: Customer
    term: date
    expires_at: datetime
    account: str
    node: Target
    account_live: bool


def _load(ctx: StepContext, step: Step) -> _Due | StepResult:
    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    due_on = date.fromisoformat(str(step.params["due_on"]))
    now = ctx.now()
    if now.date() < due_on:  # never before its day, whoever queued it
        raise StepFailed(step.key, f"not due before {due_on.isoformat()} (today {now.date()})")
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        if service is None:
            raise StepFailed(step.key, f"service {service_id} does not exist")
        if service.held:
            raise StepFailed(step.key, f"service {service_id} is on hold: {service.hold_reason}")
        if service.expires_on != term or service.state != ServiceState.EXPIRED.value:
            return StepResult(False, {"skipped": f"service is {service.state}, expires "
                                                 f"{service.expires_on}: not in its retention"})
        if covering_backup(s, service, term) is None:
            return StepResult(False, {"skipped": "no backup service covered the term"})
        order = s.get(Order, service.order_id)
        policy = get_brand(order.brand if order is not None else "fcb")
        expires_at = datetime.combine(data_deletion_date(term, policy), time(0), UTC)
        if expires_at <= now:
            return StepResult(False, {"skipped": "the data deletion date has come"})
        customer = s.get(Customer, service.customer_id)
        assert customer is not None
        account, node = account_and_node(s, service_id)
        if account is None or node is None:
            return StepResult(False, {"skipped": "no hosting account on a node for this service"})
        s.expunge(service)
        s.expunge(customer)
    return _Due(service, customer, term, expires_at, account.username, target_of(node),
                account.state != "removed")


def step_download_link(ctx: StepContext, step: Step) -> StepResult:
    """A snapshot (a new one while the account is on its node, else the newest), then the
    link and its mail, held together; then the mail is sent (once)."""
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        held = box.state_of(s, step.key)
    created = False
    snapshot: dict[str, Any] = {}
    if held is None:
        due = _load(ctx, step)
        if isinstance(due, StepResult):
            return due
        ctx.heartbeat()
        backups = ctx.adapters.backups
        if due.account_live:
            record = backups.backup(due.node, due.account, due.service.id)
        else:
            existing = backups.list(due.node, due.account)
            if not existing:
                raise StepFailed(step.key, f"account {due.account} has no backup on {due.node.name}")
            record = existing[-1]
        snapshot = {"snapshot": record.id, "snapshot_at": record.created_at.isoformat()}
        with transaction(ctx.factory) as s:
            ctx.fence(s)  # the link is issued by the run that holds the step, once
            _issue(ctx, s, box, step, due, record.id, record.created_at)
            created = True
    sent = box.send_held(step.key)
    if sent is None:
        raise StepFailed(step.key, "the link's mail was not held")
    return StepResult(created or sent.sent_now, {"message_id": sent.message_id, "link": "mailed",
                                                 **snapshot})


def _issue(ctx: StepContext, s: Session, box: Outbox, step: Step, due: _Due, snapshot_id: str,
           snapshot_at: datetime) -> None:
    now = ctx.now()
    token = new_token()
    s.add(BackupDownloadLink(token_sha256=token_hash(token), service_id=due.service.id,
                             term_expiry=due.term, snapshot_id=snapshot_id,
                             expires_at=due.expires_at, created_at=now))
    context = {
        "customer": {"name": due.customer.name, "email": due.customer.email},
        "domain": due.service.name,
        "link": f"{ctx.settings.public_base_url.rstrip('/')}{DOWNLOAD_PATH}{token}",
        "expires_at": due.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        "snapshot_at": snapshot_at.strftime("%Y-%m-%d %H:%M UTC"),
        **brand_context(s, due.service.order_id),
    }
    box.hold(s, step.key, due.customer.email, "backup_download", due.customer.lang, context)
    audit(s, SYSTEM, "backup.download_link", "service", due.service.id,
          {"snapshot": snapshot_id, "expires_at": due.expires_at.isoformat()})


# -- the download ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """A link leased for one download: what to fetch and from where."""

    link_id: int
    service_id: int
    snapshot_id: str
    domain: str
    account: str
    node: Target
    started_at: datetime


@dataclass(frozen=True)
class LinkPage:
    """What the confirmation page shows of a valid link."""

    domain: str
    expires_at: datetime


def link_page(factory: sessionmaker[Session], token: str) -> LinkPage:
    digest = checked_digest(token)
    with transaction(factory) as s:
        row = s.execute(select(Service.name, BackupDownloadLink.expires_at)
                        .join(Service, Service.id == BackupDownloadLink.service_id)
                        .where(BackupDownloadLink.token_sha256 == digest)).first()
    if row is None:
        raise LinkUnusable("unknown")
    return LinkPage(str(row.name), row.expires_at)


def start_download(factory: sessionmaker[Session], token: str, now: datetime) -> Lease:
    """Lease the link for one download: unused, not expired, and no other download under
    way (or its lease ran out). LinkUnusable or DownloadBusy otherwise."""
    digest = checked_digest(token)
    model = BackupDownloadLink
    with transaction(factory) as s:
        row = s.execute(
            update(model)
            .where(model.token_sha256 == digest, model.used_at.is_(None), model.expires_at > now,
                   (model.started_at.is_(None)) | (model.started_at < now - LEASE))
            .values(started_at=now)
            .returning(model.id, model.service_id, model.snapshot_id)
            .execution_options(synchronize_session=False)).first()
        if row is None:
            state, _ = state_of(s, model, digest, now)
            if state == "valid":
                raise DownloadBusy()  # unused and in time, but leased by a download under way
            raise LinkUnusable(state)
        account, node = account_and_node(s, row.service_id)
        service = s.get(Service, row.service_id)
        if account is None or node is None or service is None:
            raise LinkUnusable("unknown")
        audit(s, "customer:link", "backup.download_started", "service", row.service_id,
              {"snapshot": row.snapshot_id})
        return Lease(row.id, row.service_id, row.snapshot_id, service.name, account.username,
                     target_of(node), now)


def finish_download(factory: sessionmaker[Session], lease: Lease, now: datetime, size: int) -> bool:
    """The download completed: the link is used up. False if it was used up meanwhile."""
    with transaction(factory) as s:
        res = s.execute(update(BackupDownloadLink)
                        .where(BackupDownloadLink.id == lease.link_id, BackupDownloadLink.used_at.is_(None))
                        .values(used_at=now, bytes_sent=size)
                        .execution_options(synchronize_session=False))
        done = bool(res.rowcount)  # type: ignore[attr-defined]
        audit(s, "customer:link", "backup.downloaded", "service", lease.service_id,
              {"snapshot": lease.snapshot_id, "bytes": size})
    return done


def release_download(factory: sessionmaker[Session], lease: Lease) -> None:
    """A download that did not complete gives its lease back (the link still works)."""
    with transaction(factory) as s:
        s.execute(update(BackupDownloadLink)
                  .where(BackupDownloadLink.id == lease.link_id, BackupDownloadLink.used_at.is_(None))
                  .values(started_at=None)
                  .execution_options(synchronize_session=False))


def archive_name(domain: str, when: date) -> str:
    """``example.si-backup-2026-03-01.tar.gz`` (a normalized domain: safe in a header)."""
    return f"{domain}-backup-{when.isoformat()}.tar.gz"


def build_archive(backups: HostingBackups, lease: Lease, workdir: Path, now: datetime) -> tuple[Path, int]:
    """The download in ``workdir`` (a private directory of the caller): the snapshot
    fetched from the node, repacked with its manifest; the snapshot's tar is removed."""
    raw = workdir / "snapshot.tar"
    backups.fetch_archive(lease.node, lease.account, lease.snapshot_id, raw)
    out = workdir / archive_name(lease.domain, now.date())
    meta = {"domain": lease.domain, "service": lease.service_id, "account": lease.account,
            "snapshot": lease.snapshot_id, "node": lease.node.name,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        repack(raw, out, meta)
    finally:
        raw.unlink(missing_ok=True)
    return out, out.stat().st_size


class _Hashing(io.RawIOBase):
    """A reader that hashes what passes through it (tarfile copies in blocks)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        return data


def _kind(member: tarfile.TarInfo) -> str:
    if member.isfile():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "other"


def repack(src: Path, dest: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``src`` (the node's tar of a snapshot) into ``dest`` (tar.gz, 0600), each member as
    it is, then ``MANIFEST.json``: ``meta`` and every entry with its SHA-256, computed while
    it is copied (one pass, one block in memory). Returns the manifest."""
    files: list[dict[str, Any]] = []
    total = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw_out, tarfile.open(src, "r|") as tin, \
            tarfile.open(fileobj=raw_out, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            member.name = member.name.lstrip("/")
            if not member.name or member.name == "MANIFEST.json":
                continue
            entry: dict[str, Any] = {"path": "/" + member.name, "type": _kind(member),
                                     "size": member.size if member.isfile() else 0,
                                     "mode": f"{member.mode:04o}",
                                     "mtime": datetime.fromtimestamp(member.mtime, UTC)
                                     .strftime("%Y-%m-%dT%H:%M:%SZ")}
            if member.isfile():
                source = tin.extractfile(member)
                assert source is not None
                hashing = _Hashing(source)
                tout.addfile(member, hashing)
                entry["sha256"] = hashing.sha.hexdigest()
                total += member.size
            else:
                if member.issym() or member.islnk():
                    entry["target"] = member.linkname
                tout.addfile(member)
            files.append(entry)
        manifest = {**meta, "format": 1, "file_count": sum(1 for f in files if f["type"] == "file"),
                    "bytes": total, "files": files}
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size, info.mode, info.mtime = len(data), 0o644, int(utcnow().timestamp())
        tout.addfile(info, io.BytesIO(data))
    return manifest


HANDLERS: dict[str, Handler] = {ENROLL: step_enroll, LINK: step_download_link}
PLANNERS: dict[str, LinePlanner] = {"backup": plan_backup_line}
