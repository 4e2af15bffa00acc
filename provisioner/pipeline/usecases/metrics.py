"""What ``/metrics`` tells Prometheus about the work, read from the database at scrape time.

Every figure comes from the journal and the payment tables, not from counters kept in
one process's memory: any API host answers the same, and a restart loses nothing.
The alert rules (``deploy/prometheus/provisioner.rules.yml``) and the dashboard
(``deploy/grafana/provisioner.json``) use these names; a test checks that every name they
use is exported.

- ``provisioner_steps{state,kind}``: journal steps by state and step kind;
- ``provisioner_oldest_queued_step_age_seconds``: how long the oldest due queued step has
  waited (0 when none waits): workers down or too few;
- ``provisioner_notifications_stored``: payment notifications not processed yet;
- ``provisioner_unmatched_payments``: payments that need ops (no proforma, wrong
  amount), and notifications that could not be recorded as a payment;
- ``provisioner_beat_last_success_timestamp_seconds{task}`` and
  ``provisioner_beat_duration_seconds{task}``: the last finished run of each daily beat
  task (the sweep, the quota check): a clock that stopped, or a sweep that slows down.

Webhook outcomes per provider (``provisioner_webhooks_total``) are counted where the
webhooks are received (api/routers/webhooks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain.lifecycle import StepState
from provisioner.pipeline.usecases.ops import MATCHED, NOTIFICATIONS_FOR_OPS
from provisioner.store.db import read_only
from provisioner.store.models import BeatSlot, Notification, Payment, Step
from provisioner.timeutil import utcnow

DAILY_TASKS = ("sweep", "quota")


class JournalCollector(Collector):
    """A Prometheus collector over the provisioner's database (register it once per
    registry)."""

    def __init__(self, factory: sessionmaker[Session], now: Callable[[], datetime] = utcnow) -> None:
        self._factory = factory
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._now()
        with read_only(self._factory) as s:
            steps = s.execute(select(Step.state, Step.kind, func.count())
                              .group_by(Step.state, Step.kind)).all()
            oldest = s.execute(
                select(func.min(func.coalesce(Step.enqueued_at, Step.updated_at)))
                .where(Step.state == StepState.QUEUED.value,
                       or_(Step.next_attempt_at.is_(None), Step.next_attempt_at <= now))
            ).scalar_one()
            stored = s.execute(select(func.count()).select_from(Notification)
                               .where(Notification.status == "stored")).scalar_one()
            unmatched = s.execute(select(func.count()).select_from(Payment)
                                  .where(Payment.status != MATCHED)).scalar_one()
            unmatched += s.execute(select(func.count()).select_from(Notification)
                                   .where(Notification.status.in_(NOTIFICATIONS_FOR_OPS))).scalar_one()
            beats = {task: s.execute(select(BeatSlot).where(BeatSlot.task == task,
                                                            BeatSlot.finished_at.is_not(None))
                                     .order_by(BeatSlot.finished_at.desc()).limit(1)).scalar()
                     for task in DAILY_TASKS}
            beat_times = {task: (row.started_at, row.finished_at) for task, row in beats.items()
                          if row is not None and row.finished_at is not None}

        by_kind = GaugeMetricFamily("provisioner_steps", "Journal steps by state and kind",
                                    labels=["state", "kind"])
        for state, kind, n in steps:
            by_kind.add_metric([state, kind], n)
        yield by_kind
        age = 0.0 if oldest is None else max(0.0, (now - _aware(oldest, now)).total_seconds())
        yield GaugeMetricFamily("provisioner_oldest_queued_step_age_seconds",
                                "Seconds the oldest due queued step has waited (0: none waits)",
                                value=age)
        yield GaugeMetricFamily("provisioner_notifications_stored",
                                "Payment notifications received and not processed yet", value=stored)
        yield GaugeMetricFamily("provisioner_unmatched_payments",
                                "Payments and notifications that need ops", value=unmatched)
        last = GaugeMetricFamily("provisioner_beat_last_success_timestamp_seconds",
                                 "When each daily beat task last finished (Unix time)", labels=["task"])
        took = GaugeMetricFamily("provisioner_beat_duration_seconds",
                                 "How long each daily beat task's last finished run took", labels=["task"])
        for task, (started, finished) in sorted(beat_times.items()):
            last.add_metric([task], finished.timestamp())
            took.add_metric([task], (finished - started).total_seconds())
        yield last
        yield took


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite may hand back a naive UTC time from an aggregate; compare it as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)
