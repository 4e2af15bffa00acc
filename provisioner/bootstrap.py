"""The composition root: settings -> typed adapters -> planner and runner.

Tasks, the CLI, the API and the beat call `bootstrap()`; nothing else constructs an
adapter (cosmicpython's ``bootstrap.py`` is the model). A system the installation
does not configure (no DNS server, CA or registry) is left out, and a step that needs
it fails with a ConfigurationError naming the setting; nothing falls back to a real
adapter quietly. Tests hand in fakes or the devstack's stand-ins as ``overrides``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cryptography.fernet import MultiFernet
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.acme import AcmeClient, ChallengeSolver, IssuedCertificate, generate_key_pem
from provisioner.adapters.dns import DnsServer, KnotcZoneCreator
from provisioner.adapters.hosting.accounts import HostingAccounts
from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.hosting.backups import HostingBackups
from provisioner.adapters.hosting.usage import UsageReports
from provisioner.adapters.mail import Mailer
from provisioner.adapters.migration_copy import NodeJobs, PartOutcome
from provisioner.adapters.migration_copy.site import SitePage, fetch_page
from provisioner.adapters.migration_source import OldProvider
from provisioner.adapters.payments.braintree import BraintreeVerifier
from provisioner.adapters.payments.paypal import PayPalCaptures, PayPalVerifier
from provisioner.adapters.payments.stripe import StripeRefunds
from provisioner.adapters.registry import EppClient, RegistryConfig
from provisioner.adapters.tls_targets import CertificateTarget
from provisioner.adapters.tls_targets.node import NodeAccess, NodeNginxTarget
from provisioner.adapters.vps.hosts import NspawnHosts
from provisioner.config import Settings, load_settings
from provisioner.domain.policy import get_brand
from provisioner.errors import ConfigurationError
from provisioner.pipeline.capabilities import (
    backup_download,
    billing,
    dns_tls,
    domains,
    hosting,
    lifecycle,
    migration,
    quota,
    refunds,
    vps,
    vps_ops,
)
from provisioner.pipeline.engine import beat
from provisioner.pipeline.engine.plan import LinePlanner, Planner, PlanOptions
from provisioner.pipeline.engine.ports import Adapters
from provisioner.pipeline.engine.runner import Enqueue, Handler, Runner
from provisioner.pipeline.outbox import Outbox
from provisioner.pipeline.usecases import backups as backup_jobs
from provisioner.pipeline.usecases import vps_reconcile
from provisioner.pipeline.usecases.payments import Confirm, process_pending, reprocess_stored
from provisioner.store.backups import backup_fernet
from provisioner.store.db import session_factory, transaction
from provisioner.store.tls import account_key, fernet_for
from provisioner.store.webhooks import PayPalTransmissions
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.alerts")

# The steps the core plans itself (billing and renewal); a process that cannot run
# them is misconfigured, whatever capabilities it leaves out.
CORE_STEP_KINDS = frozenset({"notify.proforma", "notify.payment", "invoice.issue", "notify.invoice",
                             "service.activate", "service.renew"})


@dataclass(frozen=True)
class OpsAlerts:
    """A failed step or check, e-mailed to ops through the outbox (and logged)."""

    outbox: Outbox
    ops_email: str

    def __call__(self, *, step_key: str, order_id: int, detail: str, attempts: int) -> None:
        log.error("OPS ALERT: step %s of order %s failed after %d attempt(s): %s",
                  step_key, order_id, attempts, detail)
        key = f"ops-alert:{step_key}#{attempts}@{self.outbox.now().isoformat()}"[:200]
        self.outbox.send_once(key, self.ops_email, "ops_alert", "en", {
            "step_key": step_key, "order_id": order_id, "detail": detail, "attempts": attempts})


class LazyAcme:
    """The ACME client, built on first use: its account key lives (encrypted) in our
    database, which a process that never orders a certificate need not touch."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self._settings = settings
        self._factory = factory
        self._client: AcmeClient | None = None

    def client(self) -> AcmeClient:
        if self._client is None:
            cfg = self._settings
            with transaction(self._factory) as s:
                key = account_key(s, fernet_for(cfg), cfg.acme_directory, generate_key_pem)
            self._client = AcmeClient(
                cfg.acme_directory, key, ca_file=cfg.acme_ca_file, contact_email=cfg.acme_contact_email,
                eab_kid=cfg.acme_eab_kid, eab_hmac=cfg.acme_eab_hmac, deadline_s=cfg.acme_deadline_s,
                key_type=cfg.acme_key_type)
        return self._client

    def issue(self, names: Sequence[str], solver_for: Callable[[str], ChallengeSolver],
              key_pem: bytes | None = None) -> IssuedCertificate:
        return self.client().issue(names, solver_for, key_pem)


@dataclass(frozen=True)
class NodeTls:
    """Certificate targets on hosting nodes, reached with the installation's SSH key."""

    settings: Settings

    def __call__(self, node: Target, account: str, domains: Sequence[str]) -> CertificateTarget:
        access = NodeAccess(node.name, node.address, self.settings.node_ssh_key_path, user=node.user,
                            port=node.port, throwaway=node.throwaway,
                            known_hosts=self.settings.node_known_hosts_path)
        return NodeNginxTarget(access, account, domains)


@dataclass(frozen=True)
class NodeMigrationCopier:
    """The migration copy (issue 13) on hosting nodes, reached with the installation's SSH
    key (`adapters.migration_copy.NodeJobs`), and the site fetch the verify step compares."""

    settings: Settings
    jobs: NodeJobs = dataclasses.field(default_factory=NodeJobs)

    def _access(self, node: Target) -> NodeAccess:
        return NodeAccess(node.name, node.address, self.settings.node_ssh_key_path, user=node.user,
                          port=node.port, throwaway=node.throwaway,
                          known_hosts=self.settings.node_known_hosts_path)

    def run_part(self, node: Target, job: Mapping[str, Any],
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> PartOutcome:
        return self.jobs.run_part(self._access(node), job, on_event)

    def cleanup(self, node: Target, job_id: str) -> list[str]:
        return self.jobs.cleanup(self._access(node), job_id)

    def fetch_site(self, address: str, host: str) -> SitePage:
        return fetch_page(address, host, timeout_s=self.settings.migration_timeout_s)


@dataclass(frozen=True)
class PaymentVerifiers:
    """The card and PayPal processors' signature checks the webhooks use; a provider the
    installation does not configure is None (its webhook answers 503). PayPal comes with
    the transmission ids in use (each delivery's headers are good once) and PayPal's REST
    API, which confirms a capture before its payment is matched."""

    braintree: BraintreeVerifier | None = None
    paypal: PayPalVerifier | None = None
    paypal_transmissions: PayPalTransmissions | None = None
    paypal_captures: PayPalCaptures | None = None

    @property
    def confirm(self) -> Confirm | None:
        """How the workers confirm a payment with its provider's API before matching it."""
        return self.paypal_captures.confirm if self.paypal_captures is not None else None


def build_verifiers(settings: Settings, factory: sessionmaker[Session]) -> PaymentVerifiers:
    braintree = None
    if settings.braintree_public_key or settings.braintree_private_key:
        braintree = BraintreeVerifier(settings.braintree_environment, settings.braintree_merchant_id,
                                      settings.braintree_public_key, settings.braintree_private_key)
    if not settings.paypal_webhook_id:
        return PaymentVerifiers(braintree)
    if not (settings.paypal_client_id and settings.paypal_client_secret):
        raise ConfigurationError("PayPal webhooks (paypal_webhook_id) need PayPal's API to confirm "
                                 "captures: set paypal_client_id and paypal_client_secret")
    transmissions = PayPalTransmissions(factory)
    paypal = PayPalVerifier(settings.paypal_webhook_id,
                            [h.strip() for h in settings.paypal_cert_hosts.split(",") if h.strip()],
                            ca_file=settings.paypal_ca_file or None, seen=transmissions.seen)
    captures = PayPalCaptures(settings.paypal_api_base, settings.paypal_client_id,
                              settings.paypal_client_secret)
    return PaymentVerifiers(braintree, paypal, transmissions, captures)


def provider_url(settings: Settings) -> str:
    """Where a node's "site disabled" page links: the setting, else the brand's web site."""
    return settings.provider_url or get_brand(settings.brand).website_url


def build_adapters(settings: Settings, factory: sessionmaker[Session], *,
                   now: Callable[[], datetime] = utcnow, **overrides: Any) -> Adapters:
    """The real adapters for ``settings``; ``overrides`` replace any of them by name
    (a fake in a unit test, a devstack stand-in in an integration test)."""
    mailer = overrides.pop("mailer", None) or Mailer(settings)
    key, known_hosts = settings.node_ssh_key_path, settings.node_known_hosts_path
    dns = None
    if settings.dns_server:
        creator = KnotcZoneCreator(settings.dns_knotc_socket) if settings.dns_knotc_socket else None
        dns = DnsServer(settings.dns_server, settings.dns_port, settings.tsig_key_name, settings.tsig_secret,
                        settings.tsig_algorithm, creator, timeout_s=settings.dns_timeout_s)
    hosting = HostingAccounts(ssh_key=key, known_hosts=known_hosts, provider_url=provider_url(settings))
    adapters = Adapters(
        mailer=mailer,
        alert=OpsAlerts(Outbox(factory, mailer, settings.mail_from, now), settings.ops_email),
        hosting=hosting,
        backups=HostingBackups(ssh_key=key, known_hosts=known_hosts),
        usage=UsageReports(key, known_hosts),
        node_tls=NodeTls(settings),
        dns=dns,
        acme=LazyAcme(settings, factory) if settings.acme_directory else None,
        registry=EppClient(RegistryConfig.from_settings(settings)) if settings.registry_host else None,
        old_provider=OldProvider(settings.migration_timeout_s),
        migration_copier=NodeMigrationCopier(settings),
    )
    if settings.vps_enabled:  # VPS hosts (issue 14)
        adapters = dataclasses.replace(adapters, vps=build_vps_hosts(settings))
    if settings.stripe_secret_key:  # card refunds of withdrawals (issue 17 item 3)
        adapters = dataclasses.replace(adapters, refunds=StripeRefunds(settings.stripe_secret_key,
                                                                       settings.stripe_api_base))
    return dataclasses.replace(adapters, **overrides)


def build_vps_hosts(settings: Settings) -> NspawnHosts:
    """The nspawn driver on our VPS hosts: this machine for the names in
    ``vps_local_hosts``, the others over SSH with the nodes' key; dirs under data_dir/vps."""
    base = settings.vps_dir
    return NspawnHosts(
        image_root=settings.vps_image_dir or str(base / "images"),
        state_dir=settings.vps_state_dir or str(base / "machines"),
        unit_dir=base / "units", bridge=settings.vps_bridge,
        local_hosts=frozenset(h.strip() for h in settings.vps_local_hosts.split(",") if h.strip()),
        ssh_key=settings.node_ssh_key_path, known_hosts=settings.node_known_hosts_path)


# The installed capabilities: each module lists its step handlers and line planners.
CAPABILITIES = (billing, hosting, dns_tls, domains, lifecycle, migration, refunds, backup_download, vps,
                vps_ops)


def handlers() -> dict[str, Handler]:
    """The handler registry: every step kind of every capability, with its handler."""
    out: dict[str, Handler] = {}
    for module in CAPABILITIES:
        table: Mapping[str, Handler] = module.HANDLERS
        clash = set(out) & set(table)
        if clash:
            raise ConfigurationError(f"step kinds handled twice: {sorted(clash)}")
        out.update(table)
    return out


def line_planners() -> dict[str, LinePlanner]:
    """Every line kind that plans steps, with its planner."""
    out: dict[str, LinePlanner] = {}
    for module in CAPABILITIES:
        out.update(module.PLANNERS)
    return out


def planner_for(settings: Settings) -> Planner:
    return Planner(line_planners(), PlanOptions.from_setting(settings.line_kinds))


def check_handlers(handlers: Mapping[str, Handler]) -> None:
    missing = sorted(CORE_STEP_KINDS - set(handlers))
    if missing:
        raise ConfigurationError(f"no handler for the core step kinds {missing}")


# The beat's periodic tasks that must take effect once per slot, however many beats run
# (pipeline/engine/beat.py): a daily task's slot is the UTC day, the re-drive's its
# interval. A daily run holds its slot for an hour; one that dies is taken over after.
DAILY_LEASE_S = 3600.0
DAILY_BEAT_TASKS = ("sweep", "quota", "purge_links", "wipe_migrations", "backups_check",
                    "backups_drill")
HOURLY_BEAT_TASKS = ("backups_nightly", "breaches", "vps_reconcile")  # slot: the UTC hour


@dataclass(frozen=True)
class Provisioner:
    """One process's wiring: what the entry points (tasks, CLI, API, beat) call."""

    settings: Settings
    factory: sessionmaker[Session]
    adapters: Adapters
    planner: Planner
    runner: Runner
    verifiers: PaymentVerifiers

    def process_notifications(self) -> dict[str, Any]:
        """Match and settle the payment notifications the webhooks stored, then queue the
        plans of the proformas they paid. One that cannot be processed is marked `error`
        and ops are alerted; the others go on."""
        results = process_pending(self.factory, self.planner, confirm=self.verifiers.confirm,
                                  alert=self.adapters.alert)
        settled = {r.order_id for r in results if r.settled and r.order_id is not None}
        for order_id in sorted(settled):
            self.runner.dispatch(order_id)
        outcomes: dict[str, int] = {}
        for r in results:
            outcomes[r.status] = outcomes.get(r.status, 0) + 1
        return {"processed": len(results), "settled": len(settled), "outcomes": outcomes}

    def redrive(self) -> dict[str, Any]:
        result: dict[str, Any] = dict(self.runner.redrive())
        result["reprocessed"] = reprocess_stored(self.factory, self.planner,
                                                 confirm=self.verifiers.confirm, alert=self.adapters.alert)
        return result

    def sweep(self, today: date | None = None) -> dict[str, Any]:
        """The beat's daily sweep: today's due work, its steps handed to the workers."""
        report = lifecycle.sweep(self.factory, today or self.runner.now().date(),
                                 tls_renew_days=self.settings.tls_renew_days)
        queued = self.runner.dispatch()
        log.info("sweep %s: %s; %d step(s) queued", report.today, report.counts(), len(queued))
        return {"today": report.today.isoformat(), "counts": report.counts(), "queued": len(queued)}

    def check_quotas(self, today: date | None = None) -> dict[str, Any]:
        """The daily quota check over every active node."""
        return quota.check_quotas(
            self.factory, today or self.runner.now().date(), reader=self.adapters.usage,
            backups=self.adapters.backups, alert=self.adapters.alert,
            outbox=Outbox(self.factory, self.adapters.mailer, self.settings.mail_from, self.runner.now))

    def on_beat(self, task: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a periodic task's ``work`` once for its slot (see ``DAILY_BEAT_TASKS``);
        a second beat's send of the same slot does nothing."""
        at = self.runner.now()
        if task in DAILY_BEAT_TASKS:
            slot, lease = at.date().isoformat(), DAILY_LEASE_S
        elif task in HOURLY_BEAT_TASKS:
            slot, lease = at.strftime("%Y-%m-%dT%H"), DAILY_LEASE_S
        else:
            interval = max(self.settings.redrive_interval_s, 1.0)
            slot, lease = str(int(at.timestamp() // interval)), interval
        return beat.once_per_slot(self.factory, task, slot, work, now=self.runner.now, lease_s=lease)


    # -- backups on the backup host (issue 16): the beat's jobs ------------------------------
    def backups_nightly(self, now: datetime | None = None, *, force: bool = False) -> dict[str, Any]:
        """Each node's nightly backup run, inside the maintenance window only (the beat calls
        it hourly: a failed node is retried the next hour of the same night)."""
        return backup_jobs.nightly(self.factory, self.adapters.backups, self.adapters.alert,
                                   now or self.runner.now(), get_brand(self.settings.brand),
                                   self.settings.maintenance_timezone, force=force)

    def backups_check(self, now: datetime | None = None, subset: str | None = None) -> dict[str, Any]:
        """The weekly ``restic check --read-data-subset`` of every repository."""
        return backup_jobs.check(self.factory, self.adapters.backups, self.adapters.alert,
                                 now or self.runner.now(), subset or self.settings.backup_check_subset)

    def backups_drill(self, now: datetime | None = None) -> dict[str, Any]:
        """The weekly restore drill of a random account per repository."""
        return backup_jobs.drill(self.factory, self.adapters.backups, self.adapters.alert,
                                 now or self.runner.now())

    # -- the VPS reconciler (issue 14 item 5) ----------------------------------------------
    def vps_reconcile(self, now: datetime | None = None, *, alert: bool = True) -> dict[str, Any]:
        """The VPS hosts' tagged machines against our records (read-only); with ``alert``,
        ops are e-mailed the findings once per distinct set per day."""
        hosts = self.adapters.vps
        if hosts is None:
            raise ConfigurationError("VPS hosts are not configured here (the setting vps_enabled)")
        report = vps_reconcile.reconcile(self.factory, hosts, now=now or self.runner.now())
        alerted = alert and vps_reconcile.alert_ops(
            report, Outbox(self.factory, self.adapters.mailer, self.settings.mail_from, self.runner.now),
            self.settings.ops_email)
        return {**report.as_dict(), "alerted": alerted}

    def backup_fernet(self) -> MultiFernet:
        """The key that seals the repositories' passwords (``backup_password_key``)."""
        return backup_fernet(self.settings)


_all_handlers = handlers


def bootstrap(settings: Settings | None = None, *, enqueue: Enqueue,
              factory: sessionmaker[Session] | None = None, now: Callable[[], datetime] = utcnow,
              handlers: Mapping[str, Handler] | None = None, **overrides: Any) -> Provisioner:
    """Settings (default: from the environment) -> the process's `Provisioner`.

    ``enqueue`` hands a step key to the workers (Celery's ``run_step``; a list's
    ``append`` in tests). ``overrides`` replace adapters by name (`build_adapters`)."""
    settings = settings or load_settings()
    factory = factory or session_factory(settings.effective_database_url)
    table = dict(handlers if handlers is not None else _all_handlers())
    check_handlers(table)
    adapters = build_adapters(settings, factory, now=now, **overrides)
    runner = Runner(settings, factory, enqueue, adapters, table, now)
    return Provisioner(settings, factory, adapters, planner_for(settings), runner,
                       build_verifiers(settings, factory))
