"""One way to send an e-mail once: every customer and ops e-mail goes through here.

`Outbox.send_once(key, recipient, template, lang, context)` writes an outbox row
(``state=sending``) before the SMTP transaction and marks it ``sent`` (with
``sent_at``) once the server accepted the message. A re-run finds ``sent`` and does
nothing. If the worker died during the SMTP transaction (row still ``sending``), the
message goes out again with the same Message-ID, so a duplicate is recognisable
downstream. ``before`` runs in the transaction that writes the row, for writes that
must commit with it (the one-time access link whose token the mail carries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.mail import make_message_id, render_mail
from provisioner.pipeline.engine.ports import Mailer
from provisioner.pipeline.engine.runner import StepContext
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import OutboxMail
from provisioner.timeutil import utcnow

SYSTEM = "system:outbox"


@dataclass(frozen=True)
class Sent:
    message_id: str
    sent_now: bool  # False: it had been sent already (a re-run)


@dataclass(frozen=True)
class Outbox:
    factory: sessionmaker[Session]
    mailer: Mailer
    mail_from: str  # the sender; its domain names the Message-IDs
    now: Callable[[], datetime] = utcnow

    @property
    def domain(self) -> str:
        return self.mail_from.rsplit("@", 1)[-1].strip("> ")

    def sent(self, key: str) -> str | None:
        """The Message-ID of the e-mail sent under ``key``, or None if it was not sent."""
        with transaction(self.factory) as s:
            row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
            return row.message_id if row is not None and row.state == "sent" else None

    def send_once(self, key: str, recipient: str, template: str, lang: str,
                  context: Mapping[str, Any], *,
                  before: Callable[[Session], None] | None = None) -> Sent:
        rendered = render_mail(template, lang, context)  # a bad context fails before any write
        with transaction(self.factory) as s:
            row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
            if row is not None and row.state == "sent":
                return Sent(row.message_id, False)
            if row is None:
                row = OutboxMail(key=key, message_id=make_message_id(key, self.domain),
                                 recipient=recipient, template=template, state="sending", attempts=0)
                s.add(row)
            row.attempts += 1
            message_id = row.message_id
            if before is not None:
                before(s)
        self.mailer.send(to=recipient, rendered=rendered, message_id=message_id,
                         headers={"X-Provisioner-Step": key})
        with transaction(self.factory) as s:
            row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one()
            row.state = "sent"
            row.sent_at = self.now()
            audit(s, SYSTEM, "mail.sent", "mail", message_id, {"template": template, "step": key})
        return Sent(message_id, True)


def step_outbox(ctx: StepContext) -> Outbox:
    """The outbox of a step: its session factory, mailer, sender and clock."""
    return Outbox(ctx.factory, ctx.adapters.mailer, ctx.settings.mail_from, ctx.now)
