"""One way to send an e-mail once: every customer and ops e-mail goes through here.

`Outbox.send_once(key, recipient, template, lang, context)` writes an outbox row
(``state=sending``) before the SMTP transaction and marks it ``sent`` (with
``sent_at``) once the server accepted the message. A re-run finds ``sent`` and does
nothing. If the worker died during the SMTP transaction (row still ``sending``), the
message goes out again with the same Message-ID, so a duplicate is recognisable
downstream. ``before`` runs in the transaction that writes the row, for writes that
must commit with it. A step's outbox (`step_outbox`) is fenced: that transaction first
checks that the step's run still holds the step (`StepContext.fence`), so a run that
lost its step to another sends nothing (the run that holds it sends the mail, once).

A mail can also be written now and sent later: `Outbox.hold(session, ...)` adds the
row (``state=pending``) in the caller's transaction, so it commits with the writes it
belongs to (the one-time access link whose token it carries), and `Outbox.send_held`
sends it once, as above. Its template context waits in the row sealed (Fernet) with the
outbox key, a key file in ``key_dir`` (apart from the database and its backups); it is
blanked once the mail is sent.

The sender: a step's outbox (`step_outbox`) sends as the brand of the step's order (the
customer's brand, `BrandPolicy.mail_from`), so an iSERVER customer hears from iSERVER;
ops mails and anything outside the journal come from the installation's ``mail_from``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.mail import make_message_id, render_mail
from provisioner.domain.policy import get_brand
from provisioner.errors import ConfigurationError
from provisioner.keyfiles import load_or_create_key
from provisioner.pipeline.engine.ports import Mailer
from provisioner.pipeline.engine.runner import StepContext
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Order, OutboxMail, Step
from provisioner.timeutil import utcnow

SYSTEM = "system:outbox"
KEY_FILE = "outbox.key"  # in key_dir: seals the context of held mails


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
    key_file: Path | None = None  # seals held mails (`hold`); None: this outbox holds none
    fence: Callable[[Session], None] | None = None  # a step's: raises unless its run holds the step
    sender: str | None = None  # the From of its mails (a brand's); None: the mailer's own

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
            if self.fence is not None:
                self.fence(s)
            if row is None:
                row = OutboxMail(key=key, message_id=make_message_id(key, self.domain),
                                 recipient=recipient, template=template, state="sending", attempts=0)
                s.add(row)
            row.attempts += 1
            message_id = row.message_id
            if before is not None:
                before(s)
        return self._deliver(key, recipient, template, rendered, message_id)

    def _deliver(self, key: str, recipient: str, template: str, rendered: Any, message_id: str) -> Sent:
        if self.sender is None:
            self.mailer.send(to=recipient, rendered=rendered, message_id=message_id,
                             headers={"X-Provisioner-Step": key})
        else:
            self.mailer.send(to=recipient, rendered=rendered, message_id=message_id,
                             headers={"X-Provisioner-Step": key}, sender=self.sender)
        with transaction(self.factory) as s:
            row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one()
            row.state = "sent"
            row.sent_at = self.now()
            row.sealed = None  # a held mail's context is not kept once it was sent
            audit(s, SYSTEM, "mail.sent", "mail", message_id, {"template": template, "step": key})
        return Sent(message_id, True)

    # -- written now, sent later ---------------------------------------------------------
    def _fernet(self) -> Fernet:
        if self.key_file is None:
            raise ConfigurationError("this outbox has no key file: it cannot hold mails")
        return Fernet(load_or_create_key(self.key_file).encode())

    def state_of(self, session: Session, key: str) -> str | None:
        """The state of the mail under ``key`` (pending, sending, sent), or None."""
        row = session.execute(select(OutboxMail.state).where(OutboxMail.key == key)).scalar_one_or_none()
        return None if row is None else str(row)

    def hold(self, session: Session, key: str, recipient: str, template: str, lang: str,
             context: Mapping[str, Any]) -> str:
        """Write the mail under ``key`` in ``session``'s transaction, to be sent by
        `send_held` (nothing is sent now); its context sealed. Returns its Message-ID.
        The mail is rendered once here, so a bad context fails before anything commits."""
        render_mail(template, lang, context)
        payload = json.dumps({"lang": lang, "context": dict(context)}).encode()
        row = OutboxMail(key=key, message_id=make_message_id(key, self.domain), recipient=recipient,
                         template=template, state="pending", attempts=0,
                         sealed=self._fernet().encrypt(payload))
        session.add(row)
        session.flush()  # a second hold of the key fails here (UNIQUE), in the caller's transaction
        return row.message_id

    def send_held(self, key: str, *, before: Callable[[Session], None] | None = None) -> Sent | None:
        """Send the mail held under ``key`` once: None when none is held. The fence and
        ``before`` run in the transaction that marks it ``sending``; a re-run finds it sent."""
        with transaction(self.factory) as s:
            row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
            if row is None:
                return None
            if row.state == "sent":
                return Sent(row.message_id, False)
            if row.sealed is None:
                raise ConfigurationError(f"the held mail {key} has no content to send")
            try:
                payload = json.loads(self._fernet().decrypt(row.sealed))
            except InvalidToken:
                raise ConfigurationError(f"the held mail {key} does not open with the outbox key "
                                         f"{self.key_file}") from None
            rendered = render_mail(row.template, payload["lang"], payload["context"])
            if self.fence is not None:
                self.fence(s)
            row.state = "sending"
            row.attempts += 1
            recipient, template, message_id = row.recipient, row.template, row.message_id
            if before is not None:
                before(s)
        return self._deliver(key, recipient, template, rendered, message_id)


def step_outbox(ctx: StepContext) -> Outbox:
    """The outbox of a step: its session factory, mailer, sender (the brand of the step's
    order), clock, the key that seals the mails it holds, and its fence (only the run that
    holds the step sends)."""
    return Outbox(ctx.factory, ctx.adapters.mailer, ctx.settings.mail_from, ctx.now,
                  ctx.settings.effective_key_dir / KEY_FILE, ctx.fence, step_sender(ctx))


def step_sender(ctx: StepContext) -> str | None:
    """The brand's sender of the step's order; None for a step outside the journal."""
    with transaction(ctx.factory) as s:
        brand = s.execute(select(Order.brand).join(Step, Step.order_id == Order.id)
                          .where(Step.key == ctx.step_key)).scalar_one_or_none()
    if brand is None:
        return None
    return get_brand(brand).mail_from or None
