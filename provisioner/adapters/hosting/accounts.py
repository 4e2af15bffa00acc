"""Shared-hosting accounts on a node: the Python side of ``roles/hosting_account``.

Validation happens here, before anything runs (``InvalidInput`` for a hostile or bad
name, domain, mailbox or cron entry); the role checks the same again, so a playbook
run by hand is just as safe. Secrets travel only as ansible-runner extravars (a file
in the run's private, temporary directory that is removed afterwards), never on a
command line; every task that touches them has ``no_log``. A failed run is a result:
``AccountResult.ok`` is False and ``raise_for_status`` turns it into ``StepFailed``
(or ``TransientError`` when the node was unreachable).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from provisioner.adapters.hosting.ansible import RunResult, Target, run_playbook
from provisioner.domain.catalog import HostingPlan
from provisioner.domain.names import normalize_domain, validate_account_name
from provisioner.errors import InvalidInput, StepFailed, TransientError

ACTIONS = ("create", "suspend", "unsuspend", "change_plan", "reset_password", "terminate")
MAILBOX_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
LIMIT_FIELDS = (
    "disk_mb", "mailbox_mb", "upload_max_mb", "database_max_mb", "message_max_mb", "recipients_max",
    "mail_per_hour", "mail_per_month", "cron_min_interval_min", "cpu_percent", "memory_mb", "vmem_mb",
    "iops", "tasks_max",
)
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 20) -> str:
    """A random password of letters and digits (safe in every login file we write)."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def validate_mailbox(local: str) -> str:
    if not isinstance(local, str) or not MAILBOX_RE.fullmatch(local):
        raise InvalidInput(f"mailbox name {local!r} must be a-z, 0-9, '.', '_' or '-' (max 64)")
    return local


# -- cron -------------------------------------------------------------------------------
_CRON_RANGES = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "weekday": (0, 7)}
_CRON_FIELD_RE = re.compile(r"[0-9*/,-]{1,64}")


@dataclass(frozen=True)
class CronEntry:
    command: str
    minute: str = "0"
    hour: str = "*"
    day: str = "*"
    month: str = "*"
    weekday: str = "*"

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _expand(field_name: str, spec: str) -> set[int]:
    low, high = _CRON_RANGES[field_name]
    if not _CRON_FIELD_RE.fullmatch(spec):
        raise InvalidInput(f"cron {field_name} field {spec!r}: only digits, '*', '/', ',' and '-'")
    values: set[int] = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise InvalidInput(f"cron {field_name} field {spec!r}: bad step")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise InvalidInput(f"cron {field_name} field {spec!r}: bad range")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = int(part)
            end = high if step > 1 else start
        else:
            raise InvalidInput(f"cron {field_name} field {spec!r} is not valid")
        if not low <= start <= end <= high:
            raise InvalidInput(f"cron {field_name} field {spec!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    return values


def cron_min_gap_minutes(entry: CronEntry) -> int:
    """The shortest time between two runs of ``entry`` within a day (cyclic), in minutes."""
    minutes = _expand("minute", entry.minute)
    hours = _expand("hour", entry.hour)
    for name in ("day", "month", "weekday"):
        _expand(name, getattr(entry, name))
    times = sorted(h * 60 + m for h in hours for m in minutes)
    if len(times) == 1:
        return 24 * 60
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)] + [times[0] + 24 * 60 - times[-1]]
    return min(gaps)


def validate_cron(entries: Sequence[CronEntry], min_interval_min: int) -> list[CronEntry]:
    """Refuse entries that run more often than the plan allows or carry control characters."""
    out = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry.command, str) or not entry.command.strip() or len(entry.command) > 1000:
            raise InvalidInput(f"cron entry {i}: the command must be 1..1000 characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in entry.command):
            raise InvalidInput(f"cron entry {i}: the command must not hold control characters")
        gap = cron_min_gap_minutes(entry)
        if gap < min_interval_min:
            raise InvalidInput(
                f"cron entry {i} runs every {gap} minutes; at most once per {min_interval_min} "
                "minutes is allowed")
        out.append(entry)
    return out


# -- the account ------------------------------------------------------------------------
_BRAND_CODE_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_PAGE_URL_RE = re.compile(r"https?://[^\s\"<>]+")
_PAGE_TEXT_RE = re.compile(r"[^\x00-\x1f\x7f<>&\"]{1,100}")
_PAGE_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class BrandPage:
    """What an account's "site disabled" page says of its provider (the customer's
    brand): its name, web site and support address. The role renders the page once per
    brand on the node (``<suspended dir>/<code>.html``) and a suspended account's vhost
    shows its brand's page."""

    code: str
    name: str
    url: str
    support_email: str = ""

    def __post_init__(self) -> None:
        if not _BRAND_CODE_RE.fullmatch(self.code):
            raise InvalidInput(f"brand code {self.code!r} is not 1-16 lower-case letters/digits")
        if not _PAGE_TEXT_RE.fullmatch(self.name):
            raise InvalidInput(f"brand name {self.name!r} is empty, too long or has markup")
        if not _PAGE_URL_RE.fullmatch(self.url):
            raise InvalidInput(f"brand web site {self.url!r} is not an http(s) address")
        if self.support_email and not _PAGE_EMAIL_RE.fullmatch(self.support_email):
            raise InvalidInput(f"brand support address {self.support_email!r} is not an address")

    def extravars(self) -> dict[str, str]:
        """The role's variables of the page (defaults/main.yml)."""
        return {"hosting_account_brand": self.code, "hosting_account_provider_name": self.name,
                "hosting_account_provider_url": self.url,
                "hosting_account_support_email": self.support_email}


@dataclass(frozen=True)
class Secrets:
    """The account's passwords; ``repr`` never shows them."""

    account: str = field(repr=False)
    database: str = field(repr=False)
    mailboxes: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, mailboxes: Sequence[str]) -> Secrets:
        return cls(generate_password(), generate_password(),
                   {m: generate_password() for m in mailboxes})


@dataclass(frozen=True)
class AccountSpec:
    name: str
    domains: tuple[str, ...]
    plan: HostingPlan
    mailboxes: tuple[str, ...] = ("info",)
    cron: tuple[CronEntry, ...] = ()
    limit_overrides: Mapping[str, int] = field(default_factory=dict)  # ops/tests only
    mailbox_quota_mb: Mapping[str, int] = field(default_factory=dict)  # per-mailbox override
    page: BrandPage | None = None  # the "site disabled" page's provider; None: the node's default

    def validated(self) -> AccountSpec:
        validate_account_name(self.name)
        if not self.domains:
            raise InvalidInput("an account needs at least one domain")
        domains = tuple(normalize_domain(d) for d in self.domains)
        if len(set(domains)) != len(domains):
            raise InvalidInput("an account's domains must differ")
        for m in self.mailboxes:
            validate_mailbox(m)
        if len(self.mailboxes) > self.plan.mailboxes:
            raise InvalidInput(f"plan {self.plan.name} has at most {self.plan.mailboxes} mailboxes")
        validate_cron(self.cron, self.limits()["cron_min_interval_min"])
        unknown = set(self.limit_overrides) - set(LIMIT_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown limits {sorted(unknown)}")
        return AccountSpec(self.name, domains, self.plan, tuple(self.mailboxes), tuple(self.cron),
                           dict(self.limit_overrides), dict(self.mailbox_quota_mb), self.page)

    def limits(self) -> dict[str, int]:
        values = {name: int(getattr(self.plan, name)) for name in LIMIT_FIELDS}
        values.update({k: int(v) for k, v in self.limit_overrides.items()})
        return values

    def secret_vars(self, secret: Secrets) -> dict[str, Any]:
        """The secrets, for the controller-side vars file (never for the command line)."""
        boxes = [self._box(m, secret) for m in self.mailboxes]
        return {"hosting_account_password": secret.account, "hosting_account_db_password": secret.database,
                "hosting_account_mailboxes": boxes}

    def _box(self, local: str, secret: Secrets | None) -> dict[str, Any]:
        box: dict[str, Any] = {"local": local}
        if secret is not None and local in secret.mailboxes:
            box["password"] = secret.mailboxes[local]
        if local in self.mailbox_quota_mb:
            box["quota_mb"] = int(self.mailbox_quota_mb[local])
        return box

    def extravars(self, action: str, secret: Secrets | None, provider_url: str,
                  reset: Sequence[str] = ()) -> dict[str, Any]:
        """Everything the role needs. With ``secret`` this includes passwords: hand those to
        ansible through a file (``HostingAccounts`` does), not as command-line extravars."""
        ev: dict[str, Any] = {
            "hosting_account_action": action,
            "hosting_account_name": self.name,
            "hosting_account_domains": list(self.domains),
            "hosting_account_plan": self.plan.code,
            "hosting_account_limits": self.limits(),
            "hosting_account_cron": [c.as_dict() for c in self.cron],
            "hosting_account_provider_url": provider_url,
        }
        if self.page is not None:  # the brand's page wins over the installation's link
            ev.update(self.page.extravars())
        ev["hosting_account_mailboxes"] = [self._box(m, None) for m in self.mailboxes]
        if secret is not None:
            ev.update(self.secret_vars(secret))
        if reset:
            ev["hosting_account_reset"] = list(reset)
        return ev


@dataclass(frozen=True)
class AccountResult:
    action: str
    account: str
    node: str
    run: RunResult

    @property
    def ok(self) -> bool:
        return self.run.ok

    @property
    def changed(self) -> int:
        return self.run.changed

    def raise_for_status(self, step_key: str) -> None:
        if self.ok:
            return
        if any(s.get("unreachable") for s in self.run.stats.values()) or self.run.status == "timeout":
            raise TransientError(f"{step_key}: node {self.node} unreachable or slow: {self.run.errors}")
        self.run.raise_for_status(step_key)

    def details(self) -> dict[str, object]:
        return {"action": self.action, "account": self.account, "node": self.node,
                "changed": self.changed, "status": self.run.status,
                "duration_s": self.run.duration_s}


Runner = Callable[..., RunResult]


class HostingAccounts:
    """The hosting-account adapter: one ansible-runner run per action (per batch with
    :meth:`create_many`); the role converges each run's accounts in one module call."""

    def __init__(self, *, ssh_key: Path | None = None, known_hosts: Path | None = None,
                 provider_url: str = "https://www.provider.example/", timeout_s: float = 600,
                 runner: Runner = run_playbook) -> None:
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts  # host keys are checked unless the node is throwaway
        self.provider_url = provider_url
        self.timeout_s = timeout_s
        self._run = runner

    def _go(self, action: str, node: Target, spec: AccountSpec, secret: Secrets | None = None,
            reset: Sequence[str] = (), timeout_s: float | None = None,
            set_passwords: bool = False, password_fence: int = 0) -> AccountResult:
        if action not in ACTIONS:
            raise InvalidInput(f"unknown account action {action!r}")
        if isinstance(password_fence, bool) or not isinstance(password_fence, int) or password_fence < 0:
            raise InvalidInput(f"a password fence is a whole number >= 0, not {password_fence!r}")
        spec = spec.validated()
        extravars = spec.extravars(action, None, self.provider_url, reset)
        if set_passwords:
            extravars["hosting_account_set_passwords"] = True
        if password_fence:
            extravars["hosting_account_password_fence"] = password_fence
        private = spec.secret_vars(secret) if secret is not None else None
        if private is not None:
            # Extra vars outrank include_vars: the file's mailbox list (with passwords) must win.
            extravars.pop("hosting_account_mailboxes", None)
        result = self._run_with_secrets(action, node, extravars, private, timeout_s)
        return AccountResult(action, spec.name, node.name, result)

    def _run_with_secrets(self, action: str, node: Target, extravars: dict[str, Any],
                          private: dict[str, Any] | None, timeout_s: float | None) -> RunResult:
        """Run the action's playbook; ``private`` (passwords) goes to a 0600 file, never argv."""
        with tempfile.TemporaryDirectory(prefix="prov-secrets-") as directory:
            if private is not None:
                path = Path(directory) / "secrets.json"  # the directory is 0700
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump(private, fh)
                extravars["hosting_account_secrets_file"] = str(path)
            return self._run(f"hosting_account_{action}", [node], extravars,
                             timeout_s=timeout_s or self.timeout_s, ssh_key=self.ssh_key,
                             known_hosts=self.known_hosts)

    def create_many(self, node: Target, specs: Sequence[AccountSpec],
                    secrets_by_name: Mapping[str, Secrets] | None = None, *,
                    timeout_s: float | None = None) -> AccountResult:
        """Create or converge many accounts on one node in one Ansible run (one module call).

        Every spec is validated before anything runs; one bad spec refuses the batch.
        Passwords (``secrets_by_name``, generated where missing) are set only for logins
        that do not exist yet, as with :meth:`create`.
        """
        if not specs:
            raise InvalidInput("a batch needs at least one account")
        valid = [spec.validated() for spec in specs]
        names = [spec.name for spec in valid]
        if len(set(names)) != len(names):
            raise InvalidInput("an account appears twice in the batch")
        domains = [d for spec in valid for d in spec.domains]
        if len(set(domains)) != len(domains):
            raise InvalidInput("a domain appears in two accounts of the batch")
        given = dict(secrets_by_name or {})
        batch = []
        for spec in valid:
            secret = given.get(spec.name) or Secrets.generate(spec.mailboxes)
            entry = spec.extravars("create", secret, self.provider_url)
            keys = ("domains", "plan", "limits", "mailboxes", "cron", "password", "db_password")
            batch.append({"name": spec.name, **{k: entry[f"hosting_account_{k}"] for k in keys}})
        extravars: dict[str, Any] = {"hosting_account_action": "create",
                                     "hosting_account_provider_url": self.provider_url}
        result = self._run_with_secrets("create", node, extravars, {"hosting_account_batch": batch},
                                        timeout_s)
        return AccountResult("create", ",".join(names), node.name, result)

    def create(self, node: Target, spec: AccountSpec, secret: Secrets | None = None, *,
               set_passwords: bool = False, password_fence: int = 0,
               timeout_s: float | None = None) -> AccountResult:
        """Create or converge. Passwords are set only for logins that do not exist yet;
        with ``set_passwords`` (the access data about to be sent: the first converge of an
        account whose credentials were not issued yet) on every login, in the same run.
        ``password_fence`` (the step's attempt number): the node refuses to set them when
        a run with a higher one has set them before (the run is stale; it fails)."""
        if secret is None:
            if set_passwords:
                raise InvalidInput("setting the passwords needs them")
            secret = Secrets.generate(spec.mailboxes)
        return self._go("create", node, spec, secret, timeout_s=timeout_s, set_passwords=set_passwords,
                        password_fence=password_fence)

    def suspend(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("suspend", node, spec)

    def unsuspend(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("unsuspend", node, spec)

    def change_plan(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("change_plan", node, spec)

    def reset_password(self, node: Target, spec: AccountSpec, secret: Secrets,
                       parts: Sequence[str] = ("ftp", "db", "mail"), *,
                       password_fence: int = 0) -> AccountResult:
        bad = set(parts) - {"ftp", "db", "mail"}
        if bad:
            raise InvalidInput(f"unknown password parts {sorted(bad)}")
        return self._go("reset_password", node, spec, secret, reset=parts, password_fence=password_fence)

    def terminate(self, node: Target, spec: AccountSpec) -> AccountResult:
        return self._go("terminate", node, spec)


def raise_unless(result: AccountResult, step_key: str) -> AccountResult:
    result.raise_for_status(step_key)
    return result


__all__ = [
    "ACTIONS", "AccountResult", "AccountSpec", "CronEntry", "HostingAccounts", "Secrets", "StepFailed",
    "generate_password", "validate_account_name", "validate_cron",
]
