"""Backups on a separate backup host (issue 16): what ops and the beat ask for.

* ``enroll_node``: a node's repository on a backup host: the record (a new password,
  sealed), the node's converge with its backup settings, the node's own SFTP key put on
  the backup host (one chrooted account per node), ``restic init``.
* ``list_backups`` / ``restore_service``: a service's snapshots; a restore from any of
  them onto the same node or another one (the account must exist there), the base of a
  node evacuation. For another node, that node's key is let into the source node's SFTP
  account for the restore only and taken out again afterwards.
* ``nightly``: every node's nightly run (a snapshot of each account with free backups,
  then ``restic forget --keep-daily N --prune`` per plan), only inside the maintenance
  window (23:00-05:00 Europe/Ljubljana). The beat calls it hourly; a node whose run failed
  (backup host unreachable, repository locked) is tried again the next hour of the same
  night, and ops are alerted once per failure, not on every retry.
* ``check`` / ``drill``: weekly ``restic check --read-data-subset`` per repository and a
  restore drill of a random account per repository; failures alert ops once.

Every function takes the adapter (`HostingBackups` of the ports) and returns plain data.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from cryptography.fernet import MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.hosting.backups import BackupHostNode, BackupRecord, SourceRepository
from provisioner.domain.backups import nightly_on_calendar, retention_table, validate_snapshot_id
from provisioner.domain.maintenance import DEFAULT_TZ, in_window, window_end, zone
from provisioner.domain.policy import BrandPolicy
from provisioner.errors import InvalidInput, NotFound, ProvisionerError, StepFailed
from provisioner.pipeline.capabilities.placement import target_of
from provisioner.pipeline.engine.ports import HostingBackups, OpsAlert
from provisioner.store import backups as store
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.models import BackupHost, Service

log = logging.getLogger("provisioner.backups")
SYSTEM = "system:backups"
# The node's timer runs 30 min into the window and retries itself (3 x 15 min): the
# controller checks and re-runs from two hours into the window.
NODE_GRACE = timedelta(hours=2)
Factory = sessionmaker[Session]


def host_target(host: BackupHost) -> Target:
    return Target(host.name, host.address, user="root", port=host.ssh_port, throwaway=bool(host.throwaway))


def _node(s: Session, name: str) -> HostingNode:
    node = s.execute(select(HostingNode).where(HostingNode.name == name)).scalar_one_or_none()
    if node is None:
        raise InvalidInput(f"no node {name!r}")
    s.expunge(node)
    return node


def node_settings(repo: store.Repository, password: str, policy: BrandPolicy, tz: str) -> dict[str, Any]:
    """The extra variables of the node's backup converge (``hosting_node_backup.yml``).
    Holds the password: only ever handed to the adapter (a 0600 extravars file; the role
    writes it 0600 under ``no_log``)."""
    return {"hosting_node_backup_repository": repo.url,
            "hosting_node_backup_password": password,
            # the registered keys, named by the address the repository URL uses
            "hosting_node_backup_known_hosts": "".join(
                f"{repo.address} {kind} {key}\n" for kind, key in sorted(store.host_keys(repo.known_hosts))),
            "hosting_node_backup_retention": retention_table(policy),
            "hosting_node_backup_on_calendar": nightly_on_calendar(policy.maintenance_window, tz)}


def converge_backup_host(factory: Factory, backups: HostingBackups, host_name: str,
                         extra_keys: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Converge the backup host with one SFTP account per enrolled node that has a key
    (all of them: the list is the whole truth); ``extra_keys`` lets more keys into a
    node's account (a restore onto another node). Checks what the host reports: each
    node's user and repository as recorded, its host key one of the registered ones."""
    with transaction(factory) as s:
        host = store.host_row(s, host_name)
        target, root, registered = host_target(host), host.root, host.known_hosts
        repos = store.repositories(s, host_name)
    entries = []
    for r in repos:
        keys = [k for k in [r.public_key, *(extra_keys or {}).get(r.node, [])] if k]
        if keys:
            entries.append(BackupHostNode(r.node, r.user, tuple(dict.fromkeys(keys))))
    data = backups.configure_backup_host(target, entries, root)
    accounts = data.get("accounts") or {}
    for r in repos:
        got = accounts.get(r.node)
        if r.public_key and (not isinstance(got, dict) or got.get("user") != r.user
                             or got.get("repository") != r.url):
            raise StepFailed("backups.backup_host", f"{host_name} set up {r.node} as {got!r}, "
                                                    f"not {r.user} / {r.url}")
    reported = store.host_keys(str(data.get("host_key") or ""))
    if reported and not reported & store.host_keys(registered):
        raise StepFailed("backups.backup_host", f"{host_name} reports a host key that is not the "
                                                "registered one (`backups host add --known-hosts`)")
    return data


def enroll_node(factory: Factory, backups: HostingBackups, fernet: MultiFernet, node_name: str,
                host_name: str, policy: BrandPolicy, now: datetime, tz: str = DEFAULT_TZ) -> dict[str, Any]:
    """Give ``node_name`` (converged by ``hosting_node.yml``, which made its own SSH key) a
    repository on ``host_name``: the record with a new sealed password, the node's key let
    into its chrooted account on the backup host, the node pointed at the repository and
    ``restic init``. Safe to run again (each part observes first); the password is
    generated once."""
    with transaction(factory) as s:
        repo, created = store.add_repository(s, fernet, node_name, host_name, now=now)
        node = _node(s, node_name)
        if created:
            audit(s, "ops", "backups.repository_added", "node", node_name,
                  {"host": host_name, "user": repo.user, "repository": repo.url})
    key = backups.public_key(target_of(node))
    with transaction(factory) as s:
        store.set_public_key(s, repo.id, key)
    converge_backup_host(factory, backups, host_name)
    with transaction(factory) as s:
        password = store.open_password(s, fernet, repo.id)
    try:
        initialised = backups.configure_node(target_of(node), node_settings(repo, password, policy, tz))
    finally:
        del password
    return {"node": node_name, "host": host_name, "repository": repo.url, "user": repo.user,
            "created": created, "initialised": initialised}


# -- one service -----------------------------------------------------------------------------------
def _service_account(s: Session, service_id: int) -> tuple[HostingAccount, HostingNode]:
    service = s.get(Service, service_id)
    if service is None:
        raise NotFound(f"no service {service_id}")
    account = s.execute(select(HostingAccount).where(HostingAccount.service_id == service_id)
                        ).scalar_one_or_none()
    if account is None:
        raise InvalidInput(f"service {service_id} has no hosting account (nothing is backed up)")
    node = s.get(HostingNode, account.node_id)
    assert node is not None
    s.expunge(account)
    s.expunge(node)
    return account, node


def list_backups(factory: Factory, backups: HostingBackups, service_id: int) -> list[BackupRecord]:
    """The service's snapshots, oldest first (from its node's repository)."""
    with transaction(factory) as s:
        account, node = _service_account(s, service_id)
    return backups.list(target_of(node), account.username)


def restore_service(factory: Factory, backups: HostingBackups, fernet: MultiFernet, service_id: int,
                    snapshot: str | None = None, to_node: str | None = None,
                    progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Restore the service's account from ``snapshot`` (default: its newest) onto its own
    node or onto ``to_node``, where the account must exist already (created by the
    hosting step or by ops). The snapshot id is checked before anything runs."""
    if snapshot is not None:
        validate_snapshot_id(snapshot)
    with transaction(factory) as s:
        account, source_node = _service_account(s, service_id)
        target_node = _node(s, to_node) if to_node else source_node
        source_repo = store.repository_for(s, source_node.name)
        if source_repo is None:
            raise InvalidInput(f"node {source_node.name} has no backup repository "
                               f"(`provisioner backups enroll {source_node.name} --host HOST`)")
    source_t, target_t = target_of(source_node), target_of(target_node)
    progress(f"reading the snapshots of {account.username} on {source_node.name}")
    records = backups.list(source_t, account.username)
    if not records:
        raise InvalidInput(f"{account.username} has no snapshot in {source_repo.url}")
    if snapshot is None:
        chosen = records[-1]
    else:
        matches = [r for r in records if r.id == snapshot or r.id.startswith(snapshot)]
        if len(matches) != 1:
            raise InvalidInput(f"snapshot {snapshot} is not one of {account.username}'s "
                               f"({len(matches)} match)")
        chosen = matches[0]
    if target_node.name == source_node.name:
        progress(f"restoring {chosen.short_id} onto {target_node.name}")
        result = backups.restore(target_t, account.username, chosen.id)
    else:
        footprint = backups.status(target_t, account.username, (account.domain,))
        if not footprint.state_file and not footprint.home:
            raise InvalidInput(f"account {account.username} does not exist on {to_node}: create it "
                               "there first (the restore fills an existing account)")
        progress(f"letting {target_node.name} read {source_node.name}'s repository")
        key = backups.public_key(target_t)
        converge_backup_host(factory, backups, source_repo.host, {source_node.name: [key]})
        with transaction(factory) as s:
            password = store.open_password(s, fernet, source_repo.id)
        try:
            progress(f"restoring {chosen.short_id} onto {target_node.name}")
            result = backups.restore(target_t, account.username, chosen.id,
                                     SourceRepository(source_node.name, source_repo.url, password))
        finally:
            del password
            progress(f"closing {source_node.name}'s repository to {target_node.name} again")
            converge_backup_host(factory, backups, source_repo.host)
    with transaction(factory) as s:
        audit(s, "ops", "backups.restored", "service", service_id,
              {"snapshot": chosen.id, "from": source_node.name, "to": target_node.name,
               "restored": list(result.restored)})
    return {"service": service_id, "snapshot": chosen.as_dict(), **result.as_dict()}


# -- the beat's jobs -------------------------------------------------------------------------------
def _targets(factory: Factory) -> list[tuple[store.Repository, Target]]:
    """Every enrolled node (a draining node still holds accounts: it is backed up too)."""
    with transaction(factory) as s:
        return [(repo, target_of(_node(s, repo.node))) for repo in store.repositories(s)]


def _summary(detail: dict[str, Any]) -> str:
    failed = detail.get("failed") or []
    parts = [str(detail[k]) for k in ("error", "msg") if detail.get(k)]
    if failed:
        parts.append(f"accounts failed: {', '.join(map(str, failed))}")
    if detail.get("mismatches"):
        parts.append(f"mismatches: {', '.join(map(str, detail['mismatches'][:5]))}")
    return "; ".join(parts) or "failed"


def _outcome(factory: Factory, alert: OpsAlert, repo: store.Repository, kind: str, ok: bool,
             detail: dict[str, Any], now: datetime) -> bool:
    """Record a job's outcome; alert ops on its first failure. True when alerted."""
    with transaction(factory) as s:
        alert_now = store.record_outcome(s, repo.id, kind, ok, detail, now)
        if not ok:
            audit(s, SYSTEM, f"backups.{kind}_failed", "node", repo.node, detail)
    if alert_now:
        alert(step_key=f"backups:{repo.node}/{kind}", order_id=0, attempts=0,
              detail=f"backup {kind} of node {repo.node} ({repo.url}) failed: {_summary(detail)}")
    if not ok:
        log.warning("backups: %s of %s failed: %s", kind, repo.node, detail)
    return alert_now


def _same_window(a: datetime | None, now: datetime, window: tuple[str, str], tz: str) -> bool:
    """Whether ``a`` lies in the maintenance window that is open at ``now``."""
    return (a is not None and in_window(a, window, tz)
            and window_end(a, window, tz) == window_end(now, window, tz))


def _opened_at(now: datetime, window: tuple[str, str], tz: str) -> datetime:
    """When the window open at ``now`` opened (UTC)."""
    z = zone(tz)
    hh, mm = (int(x) for x in window[0].split(":"))
    local = now.astimezone(z)
    for back in range(3):
        day = local.date() - timedelta(days=back)
        opening = datetime.combine(day, time(hh, mm), tzinfo=z).astimezone(UTC)
        if opening <= now:
            return opening
    raise AssertionError("a daily window opened within two days")  # pragma: no cover


def nightly(factory: Factory, backups: HostingBackups, alert: OpsAlert, now: datetime,
            policy: BrandPolicy, tz: str = DEFAULT_TZ, *, force: bool = False,
            node_grace: timedelta = NODE_GRACE) -> dict[str, Any]:
    """Make sure each node has tonight's backups, inside the maintenance window.

    The node's own timer runs the nightly backup 30 minutes into the window (and retries a
    failed run itself). From ``node_grace`` after the window opened, this job (hourly in the
    beat) reads each node's last run: done tonight and ok, it is recorded; missing or
    failed, the job runs it now, the retry, and a failure alerts ops once (not again on
    the next hour's retry). ``force`` runs every node's nightly now, whatever the hour."""
    window = policy.maintenance_window
    report: dict[str, Any] = {"at": now.isoformat(), "nodes": {}, "failed": [], "alerted": [],
                              "skipped": [], "ran": []}
    if not force and not in_window(now, window, tz):
        report["outside_window"] = True
        return report
    if not force and now < _opened_at(now, window, tz) + node_grace:
        report["waiting"] = "the nodes' own nightly runs"
        return report
    for repo, target in _targets(factory):
        with transaction(factory) as s:
            last_ok = store.last_ok_at(s, repo.id, "nightly")
        if not force and _same_window(last_ok, now, window, tz):
            report["skipped"].append(repo.node)
            continue
        try:
            last = None if force else backups.last_nightly(target)
            if last is not None and last.ok and _same_window(last.finished_at, now, window, tz):
                ok, detail = True, {**last.as_dict(), "by": "node timer"}
            else:
                report["ran"].append(repo.node)
                result = backups.nightly(target)
                ok, detail = result.ok, {**result.as_dict(), "by": "controller",
                                         "node_run": None if last is None else last.as_dict()}
        except ProvisionerError as exc:
            ok, detail = False, {"node": repo.node, "error": type(exc).__name__, "msg": str(exc)}
        report["nodes"][repo.node] = detail
        if not ok:
            report["failed"].append(repo.node)
        if _outcome(factory, alert, repo, "nightly", ok, detail, now):
            report["alerted"].append(repo.node)
    return report


def check(factory: Factory, backups: HostingBackups, alert: OpsAlert, now: datetime,
          subset: str) -> dict[str, Any]:
    """``restic check --read-data-subset SUBSET`` of every repository."""
    report: dict[str, Any] = {"at": now.isoformat(), "nodes": {}, "failed": [], "alerted": []}
    for repo, target in _targets(factory):
        try:
            result = backups.check(target, subset)
            ok, detail = result.ok, {"node": repo.node, **result.as_dict()}
        except ProvisionerError as exc:
            ok, detail = False, {"node": repo.node, "error": type(exc).__name__, "msg": str(exc)}
        report["nodes"][repo.node] = detail
        if not ok:
            report["failed"].append(repo.node)
        if _outcome(factory, alert, repo, "check", ok, detail, now):
            report["alerted"].append(repo.node)
    return report


def drill(factory: Factory, backups: HostingBackups, alert: OpsAlert, now: datetime,
          rng: random.Random | None = None) -> dict[str, Any]:
    """A restore drill per repository: a random active account of the node restored to a
    scratch directory and compared with its snapshot's file list."""
    pick = rng or random.SystemRandom()
    report: dict[str, Any] = {"at": now.isoformat(), "nodes": {}, "failed": [], "alerted": []}
    for repo, target in _targets(factory):
        with transaction(factory) as s:
            names = sorted(s.execute(select(HostingAccount.username)
                                     .join(HostingNode, HostingNode.id == HostingAccount.node_id)
                                     .where(HostingNode.name == repo.node,
                                            HostingAccount.state.in_(("active", "suspended")))).scalars())
        if not names:
            report["nodes"][repo.node] = {"skipped": "no account on the node"}
            continue
        account = pick.choice(names)
        try:
            result = backups.drill(target, account)
            ok, detail = result.ok, {"node": repo.node, **result.as_dict()}
        except ProvisionerError as exc:
            ok, detail = False, {"node": repo.node, "account": account, "error": type(exc).__name__,
                                 "msg": str(exc)}
        report["nodes"][repo.node] = detail
        if not ok:
            report["failed"].append(repo.node)
        if _outcome(factory, alert, repo, "drill", ok, detail, now):
            report["alerted"].append(repo.node)
    return report


def status(factory: Factory) -> dict[str, Any]:
    """The backup hosts, repositories and the last outcome of each job."""
    with transaction(factory) as s:
        return {"hosts": [{"name": h.name, "address": h.address, "port": h.ssh_port, "root": h.root,
                           "country": h.country, "throwaway": h.throwaway} for h in store.hosts(s)],
                "repositories": [r.as_dict() for r in store.repositories(s)],
                "checks": store.checks(s)}


__all__ = ["check", "converge_backup_host", "drill", "enroll_node", "list_backups", "nightly",
           "node_settings", "restore_service", "status"]
