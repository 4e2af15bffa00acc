"""Celery app and tasks: thin wrappers that call the pipeline (Weblate's tasks.py is
the model). Tasks take step keys, never ORM objects; the journal decides what runs.
Each task's body is one call on the process's `Provisioner` (`provisioner.bootstrap`),
built once per worker process."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.schedules import crontab

from provisioner.bootstrap import Provisioner, bootstrap
from provisioner.config import Settings, load_settings
from provisioner.errors import TransientError
from provisioner.keyfiles import make_private_dir
from provisioner.pipeline.capabilities.hosting import purge_expired_links
from provisioner.pipeline.capabilities.migration.sources import wipe_abandoned
from provisioner.pipeline.engine import beat
from provisioner.pipeline.usecases import breach
from provisioner.pipeline.usecases import vps_usage as vps_usage_uc
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.tasks")


def make_celery(settings: Settings) -> Celery:
    celery = Celery("provisioner")
    broker = settings.effective_broker_url
    options: dict[str, Any] = {}
    if broker.startswith("filesystem://"):
        # The embedded default: no server. Messages are files; a consumer takes one
        # under an exclusive lock and deletes it, so a killed worker loses it: the
        # journal's re-drive sends it again.
        folder = Path(broker.removeprefix("filesystem://") or settings.data_dir / "broker")
        make_private_dir(folder)  # a data dir it creates is private (0700)
        broker = "filesystem://"
        options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                   "control_folder": str(folder / "control"), "polling_interval": 0.1}
    elif broker.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged message after the visibility timeout;
        # the journal's claim makes the second delivery a no-op.
        options = {"visibility_timeout": 3600}
    celery.conf.update(
        broker_url=broker,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_ignore_result=True,
        task_default_queue="provisioner",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_transport_options=options,
        beat_schedule={
            "redrive": {"task": "provisioner.redrive", "schedule": settings.redrive_interval_s},
            # A backstop: the API nudges this task right after it stores a notification.
            "payments": {"task": "provisioner.process_notifications",
                         "schedule": max(settings.redrive_interval_s, 5.0)},
            # The lifecycle clock, daily at 00:15 UTC (inside the 23:00-05:00 maintenance
            # window of RULES): renewals, reminders, shutdowns, staged deletion.
            "sweep": {"task": "provisioner.sweep", "schedule": crontab(minute=15, hour=0)},
            # Accounts over their quota: warn, then no free backups after the grace days.
            "quota": {"task": "provisioner.quota", "schedule": crontab(minute=45, hour=1)},
            # Backups on the backup host (issue 16). The nightly run is tried hourly and acts
            # only inside the 23:00-05:00 Europe/Ljubljana window (whatever the UTC offset),
            # once per node and night: a node whose run failed is retried the next hour.
            "backups_nightly": {"task": "provisioner.backups_nightly", "schedule": crontab(minute=5)},
            # Weekly, Sunday inside the window in winter and summer time: restic check
            # --read-data-subset per repository, then a restore drill of a random account.
            "backups_check": {"task": "provisioner.backups_check",
                              "schedule": crontab(minute=20, hour=1, day_of_week=0)},
            "backups_drill": {"task": "provisioner.backups_drill",
                              "schedule": crontab(minute=20, hour=2, day_of_week=0)},
            # Open personal-data breaches remind ops (once per breach_reminder_hours).
            "breaches": {"task": "provisioner.breaches", "schedule": crontab(minute=40)},
            # One-time credentials links that expired unused: their sealed data go.
            "purge_links": {"task": "provisioner.purge_links",
                            "schedule": crontab(minute=30, hour=0)},
            # Migration sources untouched for migration_abandon_days: wiped (audited).
            "wipe_migrations": {"task": "provisioner.wipe_migrations",
                                "schedule": crontab(minute=35, hour=0)},
            # The VPS reconciler (issue 14): tagged machines vs our records, hourly, read-only;
            # ops are mailed once per distinct set of findings per day.
            "vps_reconcile": {"task": "provisioner.vps_reconcile", "schedule": crontab(minute=50)},
            # Fair use (issue 14 item 6): every live VPS's usage counters, read from its host.
            "vps_usage": {"task": "provisioner.vps_usage",
                          "schedule": max(settings.vps_usage_minutes, 1) * 60.0},
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        timezone="UTC",
    )
    return celery


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return load_settings()


app = make_celery(_settings())


@lru_cache(maxsize=1)
def provisioner() -> Provisioner:
    """This worker process's wiring, built on its first task."""
    return bootstrap(_settings(), enqueue=enqueue_step)


@app.task(
    name="provisioner.run_step",
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=_settings().step_max_attempts,
    acks_late=True,
)
def run_step(step_key: str) -> None:
    provisioner().runner.run_step(step_key)


@app.task(name="provisioner.redrive", acks_late=True)
def redrive() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("redrive", p.redrive)


@app.task(name="provisioner.process_notifications", acks_late=True)
def process_notifications() -> dict[str, Any]:
    return provisioner().process_notifications()


@app.task(name="provisioner.sweep", acks_late=True)
def sweep() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("sweep", p.sweep)


@app.task(name="provisioner.quota", acks_late=True)
def quota() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("quota", p.check_quotas)


@app.task(name="provisioner.purge_links", acks_late=True)
def purge_links() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("purge_links", lambda: {"purged": purge_expired_links(p.factory, utcnow())})


@app.task(name="provisioner.wipe_migrations", acks_late=True)
def wipe_migrations() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("wipe_migrations", lambda: {"wiped": wipe_abandoned(
        p.factory, utcnow(), p.settings.migration_abandon_days)})


@app.task(name="provisioner.backups_nightly", acks_late=True)
def backups_nightly() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("backups_nightly", p.backups_nightly)


@app.task(name="provisioner.backups_check", acks_late=True)
def backups_check() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("backups_check", p.backups_check)


@app.task(name="provisioner.backups_drill", acks_late=True)
def backups_drill() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("backups_drill", p.backups_drill)


@app.task(name="provisioner.breaches", acks_late=True)
def breaches() -> dict[str, Any]:
    p = provisioner()
    return p.on_beat("breaches", lambda: {"reminded": breach.remind_ops(
        p.factory, p.adapters.mailer, p.settings.mail_from, p.settings.ops_email,
        p.settings.breach_reminder_hours)})


@app.task(name="provisioner.vps_usage", acks_late=True)
def vps_usage() -> dict[str, Any]:
    """One sample of every live VPS's counters, once per interval however many beats send
    it (its slot is the interval, not the re-drive's)."""
    p = provisioner()
    hosts = p.adapters.vps
    if hosts is None:
        return {"skipped": True, "reason": "vps_enabled is false"}
    interval = max(p.settings.vps_usage_minutes, 1) * 60
    at = p.runner.now()
    return beat.once_per_slot(p.factory, "vps_usage", str(int(at.timestamp() // interval)),
                              lambda: vps_usage_uc.sample_all(p.factory, hosts, at),
                              now=p.runner.now, lease_s=float(interval))


@app.task(name="provisioner.vps_reconcile", acks_late=True)
def vps_reconcile() -> dict[str, Any]:
    p = provisioner()
    if p.adapters.vps is None:
        return {"skipped": True, "reason": "vps_enabled is false"}
    return p.on_beat("vps_reconcile", p.vps_reconcile)


def enqueue_step(step_key: str) -> None:
    run_step.apply_async(args=(step_key,))
