"""Recording fakes of the typed adapters (`engine.ports`) that the pipeline's handler
tests share. `FakeHosting` also keeps what a node would hold: which accounts exist and
the passwords of their logins, set as the role's module sets them (a new login gets the
given password; an existing one only with ``set_passwords`` or ``reset_password``)."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from provisioner.adapters.acme import IssuedCertificate
from provisioner.adapters.hosting.accounts import AccountResult, AccountSpec, Secrets
from provisioner.adapters.hosting.ansible import RunResult, Target
from provisioner.adapters.hosting.backups import (
    AccountFootprint,
    BackupRecord,
    CheckResult,
    DrillResult,
    ForgetResult,
    NightlyResult,
    PurgeManifest,
    RemovalManifest,
    RemovedFile,
    RemovedPath,
    RestoreResult,
    SourceRepository,
)
from provisioner.adapters.tls_targets import CertificateInfo
from provisioner.errors import InvalidInput


def run_result(ok: bool = True) -> RunResult:
    stats = {"n1": {"ok": 3, "changed": 1 if ok else 0, "failures": 0 if ok else 1, "unreachable": 0,
                    "skipped": 0, "rescued": 0, "ignored": 0}}
    return RunResult("successful" if ok else "failed", 0 if ok else 2, stats,
                     {} if ok else {"n1": "useradd: disk full"})


@dataclass
class FakeHosting:
    """Meets `ports.HostingAccounts`; records every call. ``during`` (action -> callable)
    runs inside a call, as if the node took that long (a test blocks there, or lets
    another run take the step over meanwhile)."""

    calls: list[tuple[str, Target, str]] = field(default_factory=list)
    fail: bool = False
    passwords: dict[str, Secrets] = field(default_factory=dict)  # what the node's logins accept
    fences: dict[str, int] = field(default_factory=dict)  # the highest fence that set them
    password_sets: int = 0  # calls that set passwords on the node
    during: dict[str, Callable[[], None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _go(self, action: str, node: Target, spec: AccountSpec, secret: Secrets | None = None,
            set_all: bool = False, fence: int = 0) -> AccountResult:
        with self.lock:
            self.calls.append((action, node, spec.name))
        hook = self.during.get(action)
        if hook is not None:
            hook()
        ok = not self.fail
        if ok and secret is not None:
            with self.lock:  # like the module: new logins get the password; others only when told
                if set_all and fence and fence < self.fences.get(spec.name, 0):
                    ok = False  # a newer run has set them: these are stale
                elif set_all or spec.name not in self.passwords:
                    self.passwords[spec.name] = secret
                    self.password_sets += 1
                    if set_all and fence:
                        self.fences[spec.name] = fence
        return AccountResult(action, spec.name, node.name, run_result(ok))

    def create(self, node: Target, spec: AccountSpec, secret: Secrets | None = None, *,
               set_passwords: bool = False, password_fence: int = 0,
               timeout_s: float | None = None) -> AccountResult:
        return self._go("create", node, spec, secret or Secrets.generate(spec.mailboxes), set_passwords,
                        password_fence)

    def reset_password(self, node: Target, spec: AccountSpec, secret: Secrets,
                       parts: Any = ("ftp", "db", "mail"), *, password_fence: int = 0) -> AccountResult:
        return self._go("reset_password", node, spec, secret, True, password_fence)

    def suspend(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("suspend", node, spec)

    def unsuspend(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("unsuspend", node, spec)

    def terminate(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("terminate", node, spec)

    def change_plan(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("change_plan", node, spec)


@dataclass
class SlowMailer:
    """A mailer that records what it sends; ``during`` runs inside the SMTP transaction
    of a message whose text holds ``slow_text``."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    slow_text: str = ""
    during: Callable[[], None] | None = None

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None,
             sender: str | None = None) -> None:
        if self.during is not None and self.slow_text and self.slow_text in rendered.text:
            self.during()
        self.sent.append({"to": to, "subject": rendered.subject, "text": rendered.text,
                          "message_id": message_id})


@dataclass
class FakeAcme:
    """Meets `ports.CertificateAuthority`: every order is recorded and answered at once
    (after ``during``, if set), with a new serial."""

    orders: list[tuple[str, ...]] = field(default_factory=list)
    during: Callable[[], None] | None = None

    def issue(self, names: Any, solver_for: Any, key_pem: bytes | None = None) -> IssuedCertificate:
        self.orders.append(tuple(names))
        serial = len(self.orders)
        if self.during is not None and serial == 1:
            self.during()
        return IssuedCertificate(tuple(names), f"KEY {serial}".encode(), f"CHAIN {serial}".encode(),
                                 datetime.now(UTC) + timedelta(days=90), serial,
                                 dict.fromkeys(names, "http-01"))


@dataclass
class FakeTarget:
    """Meets `CertificateTarget`: serves nothing until a certificate is deployed."""

    deployed: list[int] = field(default_factory=list)  # serials, in order

    def publish_challenge(self, token: str, content: str) -> None:
        pass

    def remove_challenge(self, token: str) -> None:
        pass

    def deploy(self, name: str, key_pem: bytes, chain_pem: bytes) -> CertificateInfo:
        serial = int(chain_pem.decode().split()[-1])
        self.deployed.append(serial)
        now = datetime.now(UTC)
        return CertificateInfo((name,), serial, now, now + timedelta(days=90), f"fp{serial}")

    def current_certificate(self, name: str) -> CertificateInfo | None:
        return None


@dataclass
class Alerts:
    """Meets `ports.OpsAlert`: records the alerts."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, *, step_key: str, order_id: int, detail: str, attempts: int) -> None:
        self.sent.append({"step_key": step_key, "order_id": order_id, "detail": detail})


@dataclass
class FakeBackups:
    """Meets `ports.HostingBackups`: a repository per node in memory (account -> snapshots),
    the accounts each node holds, and every call recorded. ``nightly_error`` (node -> error
    kind, e.g. "unreachable") makes that node's nightly run fail; ``check_ok`` and
    ``drill_ok`` (node -> bool) the verifications."""

    repos: dict[str, dict[str, list[BackupRecord]]] = field(default_factory=dict)
    accounts: dict[str, set[str]] = field(default_factory=dict)  # node -> accounts living there
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    nightly_error: dict[str, str] = field(default_factory=dict)
    check_ok: dict[str, bool] = field(default_factory=dict)
    drill_ok: dict[str, bool] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # node -> its SFTP public key
    host_key: str = ""  # what the backup host reports as its key ("" = nothing)
    excluded: set[str] = field(default_factory=set)  # accounts without free backups (over quota)
    host_converges: list[dict[str, list[str]]] = field(default_factory=list)
    node_converges: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    restored_from: list[SourceRepository | None] = field(default_factory=list)
    last: dict[str, NightlyResult] = field(default_factory=dict)  # node -> its own timer's last run
    now: Callable[[], datetime] = lambda: datetime(2026, 1, 1, tzinfo=UTC)
    clock: int = 0

    def snapshot(self, node: str, account: str, service: int | str | None = None,
                 at: datetime | None = None) -> BackupRecord:
        self.clock += 1
        ident = hashlib.sha256(f"{node}/{account}/{self.clock}".encode()).hexdigest()
        tags = [f"account:{account}"] + ([f"service:{service}"] if service is not None else [])
        when = at or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=self.clock)
        record = BackupRecord(ident, account, when,
                              "mega", f"sftp:rn-{node}@backup:/repo", 1000 * self.clock, 3,
                              f"/srv/hosting/{account}", (f"/var/mail/vhosts/{account}.si",), account,
                              short_id=ident[:8], service=None if service is None else str(service),
                              hostname=node, tags=tuple(tags))
        self.repos.setdefault(node, {}).setdefault(account, []).append(record)
        return record

    def backup(self, node: Target, account: str, service: int | str | None = None) -> BackupRecord:
        self.calls.append(("backup", node.name, account))
        return self.snapshot(node.name, account, service)

    def list(self, node: Target, account: str) -> list[BackupRecord]:
        self.calls.append(("list", node.name, account))
        return list(self.repos.get(node.name, {}).get(account, []))

    def restore(self, node: Target, account: str, backup_id: str,
                source: SourceRepository | None = None) -> RestoreResult:
        self.calls.append(("restore", node.name, account, backup_id))
        self.restored_from.append(source)
        if account not in self.accounts.get(node.name, set()):
            raise InvalidInput(f"account {account} is not on {node.name}")
        return RestoreResult(account, backup_id, (f"/srv/hosting/{account}", f"database:{account}"), 3,
                             node.name, source.node if source else node.name)

    def forget(self, node: Target, account: str) -> ForgetResult:
        self.calls.append(("forget", node.name, account))
        return ForgetResult(account, 7, (), (), True)

    def status(self, node: Target, account: str, domains: Any = ()) -> AccountFootprint:
        self.calls.append(("status", node.name, account))
        live = account in self.accounts.get(node.name, set())
        return AccountFootprint(account, live, f"/srv/hosting/{account}" if live else None, (),
                                account if live else None,
                                len(self.repos.get(node.name, {}).get(account, [])), None, None)

    def set_free_backups(self, node: Target, account: str, enabled: bool) -> bool:
        self.calls.append(("free_backups", node.name, account, enabled))
        changed = (account in self.excluded) == enabled
        (self.excluded.discard if enabled else self.excluded.add)(account)
        return changed

    def remove_account(self, node: Target, spec: AccountSpec, accounts: Any,
                       service: int | str | None = None) -> RemovalManifest:
        self.calls.append(("remove_account", node.name, spec.name, service))
        last = self.snapshot(node.name, spec.name, service)
        accounts.terminate(node, spec)
        self.accounts.get(node.name, set()).discard(spec.name)
        home = RemovedPath("home", f"/srv/hosting/{spec.name}", 10, 1)
        return RemovalManifest(spec.name, node.name, (home,), last)

    def purge(self, node: Target, account: str, service: int | str | None = None) -> PurgeManifest:
        self.calls.append(("purge", node.name, account, service))
        gone = self.repos.get(node.name, {}).pop(account, [])
        return PurgeManifest(account, node.name, tuple(RemovedFile("backup", r.repository, 0, None, r.id)
                                                       for r in gone),
                             snapshot_ids=tuple(r.id for r in gone),
                             bytes_freed=sum(r.size or 0 for r in gone),
                             remaining=0, check_ok=True, service=None if service is None else str(service))

    def public_key(self, node: Target) -> str:
        self.calls.append(("key", node.name))
        key = base64.b64encode(node.name.encode() * 8).decode()
        return self.keys.setdefault(node.name, f"ssh-ed25519 {key} hosting-backup@{node.name}")

    def init(self, node: Target) -> bool:
        self.calls.append(("init", node.name))
        created = node.name not in self.repos
        self.repos.setdefault(node.name, {})
        return created

    def check(self, node: Target, subset: str | None = None) -> CheckResult:
        self.calls.append(("check", node.name, subset))
        ok = self.check_ok.get(node.name, True)
        return CheckResult(ok, f"sftp:rn-{node.name}@backup:/repo", subset, "" if ok else "pack 1234 damaged")

    def drill(self, node: Target, account: str | None = None) -> DrillResult:
        self.calls.append(("drill", node.name, account))
        ok = self.drill_ok.get(node.name, True)
        return DrillResult(ok, account, "ab" * 32, 3, 100, () if ok else ("/srv/hosting/x/index.html",),
                           "" if ok else "1 mismatch")

    def nightly(self, node: Target) -> NightlyResult:
        self.calls.append(("nightly", node.name))
        error = self.nightly_error.get(node.name)
        if error:
            result = NightlyResult(node.name, {}, (), True, error, f"backup host: {error}", self.now())
        else:
            done = {a: {"skipped": "excluded"} if a in self.excluded
                    else {"backup": self.snapshot(node.name, a).id}
                    for a in sorted(self.accounts.get(node.name, ()))}
            result = NightlyResult(node.name, done, (), True, None, "", self.now())
        self.last[node.name] = result
        return result

    def last_nightly(self, node: Target) -> NightlyResult | None:
        self.calls.append(("last", node.name))
        return self.last.get(node.name)

    def configure_node(self, node: Target, extravars: Any) -> bool:
        self.node_converges.append((node.name, dict(extravars)))
        return self.init(node)

    def configure_backup_host(self, host: Target, nodes: Any, root: str = "/srv/restic") -> dict[str, Any]:
        self.host_converges.append({n.name: list(n.authorized_keys) for n in nodes})
        return {"host_key": self.host_key,
                "accounts": {n.name: {"user": n.user, "repository": f"sftp:{n.user}@{host.address}:/repo"}
                             for n in nodes}}
