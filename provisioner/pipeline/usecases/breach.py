"""Personal-data breaches (RULES "Breach: supervisory authority notified within 72 hours";
seed 003): ``provisioner breach open | list | close``.

A breach is opened with a summary; its deadline is the brand's
`BrandPolicy.breach_notification_hours` after that. Until it is closed (with the time
the authority was notified) the beat reminds ops through the outbox, once per
``breach_reminder_hours``, however often it runs: each reminder is claimed with one
conditional UPDATE of ``last_reminded_at``, so two beats never send the same one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput, NotFound
from provisioner.pipeline.engine.ports import Mailer
from provisioner.pipeline.outbox import Outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Breach
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.alerts")
Factory = sessionmaker[Session]
#: Sends one reminder: (outbox key, the breach as `breach_dict`) -> None.
Remind = Callable[[str, dict[str, Any]], None]


def breach_dict(b: Breach, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    left = b.deadline_at - now
    return {"id": b.id, "brand": b.brand, "summary": b.summary, "opened_at": b.opened_at.isoformat(),
            "opened_by": b.opened_by, "deadline_at": b.deadline_at.isoformat(),
            "hours": get_brand(b.brand).breach_notification_hours,
            "overdue": b.closed_at is None and left.total_seconds() <= 0,
            "left": _hours(left) if left.total_seconds() > 0 else "none",
            "notified_at": b.notified_at.isoformat() if b.notified_at else None,
            "closed_at": b.closed_at.isoformat() if b.closed_at else None, "closed_by": b.closed_by,
            "reminders": b.reminders,
            "state": "closed" if b.closed_at else ("overdue" if left.total_seconds() <= 0 else "open")}


def _hours(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def open_breach(factory: Factory, summary: str, actor: str, brand: str,
                now: datetime | None = None) -> dict[str, Any]:
    text = (summary or "").strip()
    if not text:
        raise InvalidInput("a breach needs a summary (what happened, which data, how many people)")
    if len(text) > 5000:
        raise InvalidInput("the summary is at most 5000 characters")
    policy = get_brand(brand)
    now = now or utcnow()
    with transaction(factory) as s:
        row = Breach(brand=policy.code, summary=text, opened_at=now, opened_by=actor[:100],
                     deadline_at=now + timedelta(hours=policy.breach_notification_hours), reminders=0)
        s.add(row)
        s.flush()
        audit(s, actor, "breach.opened", "breach", row.id,
              {"deadline_at": row.deadline_at.isoformat(), "brand": policy.code})
        return breach_dict(row, now)


def list_breaches(factory: Factory, open_only: bool = False, now: datetime | None = None
                  ) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        q = select(Breach).order_by(Breach.id)
        if open_only:
            q = q.where(Breach.closed_at.is_(None))
        return [breach_dict(b, now) for b in s.execute(q).scalars()]


def close_breach(factory: Factory, breach_id: int, notified_at: datetime, actor: str,
                 now: datetime | None = None) -> dict[str, Any]:
    """Close breach ``breach_id``: the supervisory authority was notified at ``notified_at``
    (not in the future, not before the breach was opened)."""
    now = now or utcnow()
    if notified_at.tzinfo is None:
        raise InvalidInput("--notified-at needs a time zone (e.g. 2026-03-01T10:00+01:00)")
    with transaction(factory) as s:
        row = s.get(Breach, breach_id)
        if row is None:
            raise NotFound(f"no breach {breach_id}")
        if row.closed_at is not None:
            raise InvalidInput(f"breach {breach_id} was closed at {row.closed_at.isoformat()}")
        if notified_at > now + timedelta(minutes=5):
            raise InvalidInput("--notified-at is in the future")
        if notified_at < row.opened_at - timedelta(days=30):
            raise InvalidInput("--notified-at is long before the breach was opened")
        row.notified_at = notified_at
        row.closed_at = now
        row.closed_by = actor[:100]
        late = notified_at > row.deadline_at
        audit(s, actor, "breach.closed", "breach", row.id,
              {"notified_at": notified_at.isoformat(), "late": late})
        return breach_dict(row, now)


def remind_open_breaches(factory: Factory, remind: Remind, every_hours: float,
                         now: datetime | None = None) -> int:
    """Remind ops of every open breach not reminded in the last ``every_hours`` (the
    beat runs this hourly). Returns how many reminders were sent."""
    now = now or utcnow()
    every = timedelta(hours=max(every_hours, 0.25))
    due = or_(Breach.last_reminded_at.is_(None), Breach.last_reminded_at <= now - every)
    with transaction(factory) as s:
        ids = list(s.execute(select(Breach.id).where(Breach.closed_at.is_(None), due)
                             .order_by(Breach.id)).scalars())
    sent = 0
    for breach_id in ids:
        with transaction(factory) as s:
            previous = s.execute(select(Breach.last_reminded_at).where(Breach.id == breach_id)).scalar()
            claimed = s.execute(update(Breach).where(Breach.id == breach_id, Breach.closed_at.is_(None), due)
                                .values(last_reminded_at=now, reminders=Breach.reminders + 1)
                                .execution_options(synchronize_session=False))
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another beat has it, or it was closed meanwhile
            row = s.get(Breach, breach_id)
            assert row is not None
            s.refresh(row)
            data = {**breach_dict(row, now), "every": _hours(every)}
        try:
            remind(f"breach:{breach_id}/reminder#{data['reminders']}", data)
        except Exception:  # noqa: BLE001 - the next beat tries again; the other breaches go on
            log.exception("could not remind ops of breach %s", breach_id)
            with transaction(factory) as s:  # not reminded after all: due again at the next beat
                s.execute(update(Breach).where(Breach.id == breach_id, Breach.last_reminded_at == now)
                          .values(last_reminded_at=previous, reminders=Breach.reminders - 1)
                          .execution_options(synchronize_session=False))
            continue
        sent += 1
    return sent


def outbox_reminder(outbox: Outbox, ops_email: str) -> Remind:
    """Reminders as ops mails through the outbox (template ``ops_breach``), each key once."""
    def remind(key: str, breach: dict[str, Any]) -> None:
        log.error("OPS ALERT: data breach %s open, authority to be notified by %s",
                  breach["id"], breach["deadline_at"])
        outbox.send_once(key, ops_email, "ops_breach", "en", {"breach": breach})
    return remind


def remind_ops(factory: Factory, mailer: Mailer, mail_from: str, ops_email: str, every_hours: float,
               now: Callable[[], datetime] = utcnow) -> int:
    """The beat's hourly reminder run (``provisioner.breaches``)."""
    return remind_open_breaches(factory, outbox_reminder(Outbox(factory, mailer, mail_from, now), ops_email),
                                every_hours, now())
