"""Disk, mail and database usage of the accounts on a hosting node, against their plans.

The node measures (``/usr/local/sbin/hosting-usage``, installed by roles/hosting_node;
its docstring describes the JSON); this adapter runs it over SSH (paramiko) and turns
its report into :class:`AccountUsage` values. Parsing is apart from the I/O
(:func:`parse_usage`) so that it can be tested with plain strings. Library exceptions
become ours: an unreachable node or a broken connection is a ``TransientError``, a
refused key or a wrong host key a ``ConfigurationError``, a failing script or a report
that does not parse ``StepFailed``. What to do about an account over its quota (the
warning, the 7 days to upgrade) is for the caller to decide.

The report also carries how many times the node's mail policy failed open (a message
passed unchecked because the policy itself failed): `NodeUsage.mail_policy_failures`,
a count that only grows (None when the node did not say); the quota check alerts ops
when it grew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.ssh import node_client, paramiko_module
from provisioner.domain.hosting_names import is_account_name
from provisioner.errors import StepFailed, TransientError

STEP_KEY = "hosting.usage"
USAGE_COMMAND = "/usr/local/sbin/hosting-usage"
REPORT_VERSION = 1
MIB = 1024 * 1024


@dataclass(frozen=True)
class AccountUsage:
    """One account's usage as the node measured it, with its plan's limits."""

    name: str
    plan: str
    disk_bytes: int  # the home (allocated bytes, like du)
    mail_bytes: int  # the maildirs of the account's domains
    db_bytes: int | None  # its database (data + index); None when MariaDB did not answer
    limits: Mapping[str, int] = field(default_factory=dict)
    over_disk: bool = False  # disk + mail over limits["disk_mb"]
    over_database: bool = False  # database over limits["database_max_mb"]
    suspended: bool = False

    @property
    def over_quota(self) -> bool:
        return self.over_disk or self.over_database

    @property
    def used_bytes(self) -> int:
        """What counts against the disk quota: the home and the mail."""
        return self.disk_bytes + self.mail_bytes


def _fail(detail: str) -> StepFailed:
    return StepFailed(STEP_KEY, detail)


def _count(entry: Mapping[str, Any], key: str, name: str, *, nullable: bool = False) -> int | None:
    value = entry.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"account {name}: {key} must be a byte count, got {value!r}")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"{what} must be true or false, got {value!r}")
    return value


def _account(name: str, entry: Any) -> AccountUsage:
    if not is_account_name(name):
        raise _fail(f"the report names an invalid account {name!r}")
    if not isinstance(entry, Mapping):
        raise _fail(f"account {name}: expected an object, got {type(entry).__name__}")
    raw_limits = entry.get("limits")
    if not isinstance(raw_limits, Mapping):
        raise _fail(f"account {name}: no limits")
    limits: dict[str, int] = {}
    for key, value in raw_limits.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"account {name}: limit {key} must be a whole number, got {value!r}")
        limits[str(key)] = value
    over = entry.get("over")
    if not isinstance(over, Mapping):
        raise _fail(f"account {name}: no 'over' object")
    usage = AccountUsage(
        name=name,
        plan=str(entry.get("plan") or ""),
        disk_bytes=_count(entry, "disk_bytes", name) or 0,
        mail_bytes=_count(entry, "mail_bytes", name) or 0,
        db_bytes=_count(entry, "db_bytes", name, nullable=True),
        limits=limits,
        over_disk=_flag(over.get("disk"), f"account {name}: over.disk"),
        over_database=_flag(over.get("database"), f"account {name}: over.database"),
        suspended=_flag(entry.get("suspended", False), f"account {name}: suspended"),
    )
    if _flag(entry.get("over_quota"), f"account {name}: over_quota") != usage.over_quota:
        raise _fail(f"account {name}: over_quota disagrees with 'over'")
    return usage


class NodeUsage(dict[str, AccountUsage]):
    """A node's report: ``{account name: AccountUsage}``, and what the node says of
    itself: how many times its mail policy failed open (None when the report does not
    say: a node whose script predates the count, or that could not read it), and the
    last such failure's error."""

    def __init__(self, accounts: Mapping[str, AccountUsage], *, mail_policy_failures: int | None = None,
                 mail_policy_last_error: str = "") -> None:
        super().__init__(accounts)
        self.mail_policy_failures = mail_policy_failures
        self.mail_policy_last_error = mail_policy_last_error


def _policy(report: Mapping[str, Any]) -> tuple[int | None, str]:
    policy = report.get("mail_policy")
    if policy is None:
        return None, ""
    if not isinstance(policy, Mapping):
        raise _fail("mail_policy must be an object")
    failures = policy.get("failures")
    if failures is not None and (isinstance(failures, bool) or not isinstance(failures, int) or failures < 0):
        raise _fail(f"mail_policy.failures must be a count, got {failures!r}")
    return failures, str(policy.get("last_error") or "")[:300]


def parse_usage(text: str) -> NodeUsage:
    """The node's JSON report as ``{account name: AccountUsage}`` (a `NodeUsage`, with the
    mail policy's failure count); ``StepFailed`` if malformed."""
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise _fail(f"the usage report is not JSON: {exc}") from exc
    if not isinstance(report, Mapping):
        raise _fail("the usage report is not a JSON object")
    if report.get("version") != REPORT_VERSION:
        raise _fail(f"unsupported usage report version {report.get('version')!r}")
    accounts = report.get("accounts")
    if not isinstance(accounts, Mapping):
        raise _fail("the usage report has no 'accounts' object")
    failures, last_error = _policy(report)
    return NodeUsage({name: _account(name, entry) for name, entry in accounts.items()},
                     mail_policy_failures=failures, mail_policy_last_error=last_error)


def read_usage(target: Target, ssh_key: Path | None, *, timeout_s: float = 120.0,
               known_hosts: Path | None = None) -> NodeUsage:
    """Run the node's usage report over SSH; return ``{account name: AccountUsage}``.

    Host keys are checked against ``known_hosts`` (default: this user's known_hosts)
    unless the target is a throwaway host (its node record says so).
    """
    paramiko = paramiko_module()
    where = f"node {target.name} ({target.address})"
    with node_client(target.address, where=where, port=target.port, user=target.user,
                     key_path=ssh_key, timeout_s=min(timeout_s, 30.0), throwaway=target.throwaway,
                     known_hosts=known_hosts) as client:
        try:
            _, stdout, stderr = client.exec_command(USAGE_COMMAND, timeout=timeout_s)  # noqa: S601
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"{where}: SSH failed: {exc}") from exc
    if status != 0:
        raise _fail(f"{where}: {USAGE_COMMAND} exited {status}: {err.strip()[-400:] or out[-400:]}")
    return parse_usage(out)


@dataclass(frozen=True)
class UsageReports:
    """`read_usage` with the installation's SSH key and known_hosts: the quota check's reader."""

    ssh_key: Path | None = None
    known_hosts: Path | None = None
    timeout_s: float = 120.0

    def __call__(self, node: Target) -> NodeUsage:
        return read_usage(node, self.ssh_key, timeout_s=self.timeout_s, known_hosts=self.known_hosts)
