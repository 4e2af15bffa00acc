"""Recording fakes of the typed adapters (`engine.ports`) that the pipeline's handler
tests share. `FakeHosting` also keeps what a node would hold: which accounts exist and
the passwords of their logins, set as the role's module sets them (a new login gets the
given password; an existing one only with ``set_passwords`` or ``reset_password``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from provisioner.adapters.acme import IssuedCertificate
from provisioner.adapters.hosting.accounts import AccountResult, AccountSpec, Secrets
from provisioner.adapters.hosting.ansible import RunResult, Target
from provisioner.adapters.tls_targets import CertificateInfo


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


@dataclass
class SlowMailer:
    """A mailer that records what it sends; ``during`` runs inside the SMTP transaction
    of a message whose text holds ``slow_text``."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    slow_text: str = ""
    during: Callable[[], None] | None = None

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None) -> None:
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
