"""What handlers may call: the outside systems as typed interfaces (certbot's
`interfaces.py` is the model), gathered in one `Adapters` value.

The composition root (`provisioner.bootstrap`) builds the real ones from settings;
unit tests hand in recording fakes that meet the same Protocols, and mypy checks
every handler against them. A system the installation does not run (no DNS server,
no CA, no registry contract) is ``None`` here, and `need()` turns its use into a
ConfigurationError that names the setting: nothing falls back to a real adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

from provisioner.adapters.acme import ChallengeSolver, IssuedCertificate
from provisioner.adapters.dns import DnsResult
from provisioner.adapters.hosting.accounts import AccountResult, AccountSpec, Secrets
from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.hosting.backups import (
    AccountFootprint,
    BackupHostNode,
    BackupRecord,
    CheckResult,
    DrillResult,
    ForgetResult,
    NightlyResult,
    PurgeManifest,
    RemovalManifest,
    RestoreResult,
    SourceRepository,
)
from provisioner.adapters.hosting.usage import NodeUsage
from provisioner.adapters.mail import RenderedMail
from provisioner.adapters.migration_copy import PartOutcome
from provisioner.adapters.migration_copy.site import SitePage
from provisioner.adapters.payments.stripe import RefundReceipt
from provisioner.adapters.registry import EppClient
from provisioner.adapters.tls_targets import CertificateTarget
from provisioner.adapters.vps.driver import VpsDriver
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.domain.migration_survey import Limits, Measures
from provisioner.errors import ConfigurationError

T = TypeVar("T")


class Mailer(Protocol):
    """``sender``: the From of this mail (a brand's `mail_from`); None: the installation's."""

    def send(self, *, to: str, rendered: RenderedMail, message_id: str,
             headers: Mapping[str, str] | None = None, sender: str | None = None) -> None: ...


class OpsAlert(Protocol):
    def __call__(self, *, step_key: str, order_id: int, detail: str, attempts: int) -> None: ...


class HostingAccounts(Protocol):
    """Accounts on hosting nodes (`adapters.hosting.accounts.HostingAccounts`)."""

    def create(self, node: Target, spec: AccountSpec, secret: Secrets | None = None, *,
               set_passwords: bool = False, password_fence: int = 0,
               timeout_s: float | None = None) -> AccountResult: ...

    def reset_password(self, node: Target, spec: AccountSpec, secret: Secrets,
                       parts: Sequence[str] = ..., *, password_fence: int = 0) -> AccountResult: ...

    def suspend(self, node: Target, spec: AccountSpec) -> AccountResult: ...

    def unsuspend(self, node: Target, spec: AccountSpec) -> AccountResult: ...

    def terminate(self, node: Target, spec: AccountSpec) -> AccountResult: ...

    def change_plan(self, node: Target, spec: AccountSpec) -> AccountResult: ...


class HostingBackups(Protocol):
    """Backups of accounts in their node's restic repository on a backup host
    (`adapters.hosting.backups.HostingBackups`)."""

    def remove_account(self, node: Target, spec: AccountSpec, accounts: Any,
                       service: int | str | None = None) -> RemovalManifest: ...

    def purge(self, node: Target, account: str, service: int | str | None = None) -> PurgeManifest: ...

    def set_free_backups(self, node: Target, account: str, enabled: bool) -> bool: ...

    def backup(self, node: Target, account: str, service: int | str | None = None) -> BackupRecord: ...

    def list(self, node: Target, account: str) -> list[BackupRecord]: ...

    def restore(self, node: Target, account: str, backup_id: str,
                source: SourceRepository | None = None) -> RestoreResult: ...

    def forget(self, node: Target, account: str) -> ForgetResult: ...

    def status(self, node: Target, account: str, domains: Sequence[str] = ()) -> AccountFootprint: ...

    def public_key(self, node: Target) -> str: ...

    def init(self, node: Target) -> bool: ...

    def check(self, node: Target, subset: str | None = None) -> CheckResult: ...

    def drill(self, node: Target, account: str | None = None) -> DrillResult: ...

    def nightly(self, node: Target) -> NightlyResult: ...

    def configure_node(self, node: Target, extravars: Mapping[str, Any]) -> bool: ...

    def last_nightly(self, node: Target) -> NightlyResult | None: ...

    def configure_backup_host(self, host: Target, nodes: Sequence[BackupHostNode],
                              root: str = ...) -> dict[str, Any]: ...

    # the customer's backup download (issue 17 item 9): the snapshot as a tar into ``dest``
    def fetch_archive(self, node: Target, account: str, snapshot: str, dest: Path) -> int: ...


class UsageReader(Protocol):
    """A node's usage report: ``{account name: AccountUsage}`` and the node's own figures."""

    def __call__(self, node: Target) -> NodeUsage: ...


class DnsZones(Protocol):
    """Our authoritative DNS server (`adapters.dns.DnsServer`)."""

    def ensure_zone(self, zone: str, records: Sequence[Any]) -> DnsResult: ...

    def zone_for(self, name: str) -> str | None: ...

    def lookup(self, name: str, rtype: str) -> set[str]: ...

    def set_ttl(self, zone: str, name: str, rtype: str, ttl: int) -> list[str]: ...

    def delete_rrset(self, zone: str, name: str, rtype: str) -> None: ...

    def set_txt(self, name: str, value: str, ttl: int = ..., zone: str | None = ...) -> str: ...

    def delete_txt(self, name: str, value: str, zone: str | None = ...) -> None: ...


class CertificateAuthority(Protocol):
    """An ACME CA (`adapters.acme.AcmeClient`)."""

    def issue(self, names: Sequence[str], solver_for: Callable[[str], ChallengeSolver],
              key_pem: bytes | None = None) -> IssuedCertificate: ...


class NodeTlsTargets(Protocol):
    """The certificate target of an account's vhost on its node."""

    def __call__(self, node: Target, account: str, domains: Sequence[str]) -> CertificateTarget: ...


class DkimKeys(Protocol):
    """The DKIM selector and base64 public key a hosting service's zone publishes."""

    def __call__(self, service_id: int) -> tuple[str, str] | None: ...


class Refunds(Protocol):
    """Card refunds through the payment provider's API (`adapters.payments.stripe.StripeRefunds`):
    the same ``idempotency_key`` never refunds twice."""

    def refund(self, *, payment_intent: str, amount: Decimal, currency: str, idempotency_key: str,
               metadata: dict[str, str]) -> RefundReceipt: ...


class MigrationSource(Protocol):
    """The customer's old provider, read-only (`adapters.migration_source.OldProvider`):
    logs in with each credential of a migration's source and measures it (issue 13)."""

    def measure(self, values: Mapping[str, Any], *, allow_plain_ftp: bool, skip_cert_verify: bool,
                limits: Limits) -> Measures: ...


class MigrationCopier(Protocol):
    """The migration copy on a hosting node (`adapters.migration_copy.NodeJobs`, issue 13):
    runs one part program (files, database, mailbox1, mailbox2) in copy or verify mode
    with the job on stdin, its progress events to ``on_event``; removes the job from the
    node (`cleanup`: the removed paths); fetches a site's page at an address with its
    Host header (status and ``<title>``, for the verify step)."""

    def run_part(self, node: Target, job: Mapping[str, Any],
                 on_event: Callable[[dict[str, Any]], None] | None = ...) -> PartOutcome: ...

    def cleanup(self, node: Target, job_id: str) -> list[str]: ...

    def fetch_site(self, address: str, host: str) -> SitePage: ...


class VpsHosts(Protocol):
    """The VPS hosts (`adapters.vps.hosts.NspawnHosts`): the driver of one host, for
    machines made from ``image`` (issue 14)."""

    def driver(self, target: VpsTarget, image: str) -> VpsDriver: ...


@dataclass(frozen=True)
class Adapters:
    """Every outside system a handler may reach, typed. Built once per process."""

    mailer: Mailer
    alert: OpsAlert
    hosting: HostingAccounts
    backups: HostingBackups
    usage: UsageReader
    node_tls: NodeTlsTargets
    dns: DnsZones | None = None
    acme: CertificateAuthority | None = None
    registry: EppClient | None = None
    dkim: DkimKeys | None = None
    refunds: Refunds | None = None  # card refunds (Stripe); None: no card refund can be made
    # where a certificate goes when no account of ours serves its site: None in
    # production (such an order is a clear error); the devstack's loopback nginx in tests
    tls_fallback: CertificateTarget | None = None
    # the old provider of a free migration (issue 13): None only where no migration runs
    old_provider: MigrationSource | None = None
    # VPS hosts (issue 14): None where the installation runs no VPS
    vps: VpsHosts | None = None
    # the migration copy on the nodes (issue 13): None only where no migration runs
    migration_copier: MigrationCopier | None = None


def need(adapter: T | None, what: str) -> T:
    """The adapter, or a ConfigurationError saying which setting is missing."""
    if adapter is None:
        raise ConfigurationError(f"{what} is not configured here")
    return adapter

