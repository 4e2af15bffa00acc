"""Webhook deliveries that may be used once: PayPal's transmission ids.

PayPal signs ``transmission_id|time|webhook_id|crc32(body)``; the CRC can be matched by
another body, so one captured header set must not be usable twice. The id is recorded
under a primary key in the transaction that stores the delivery's notification (a
`Claim` handed to `store_batch`): a second use inserts nothing and is refused, and a
delivery whose notification is not stored (a database error) has not used its id.

A row is kept until its transmission time leaves the verifier's skew window
(``expires_at``): after that the time check refuses the headers anyway. Rows past it are
deleted by the claims themselves, at most once a minute per process.

`seen`, the verifier's cheap check before any certificate download or signature check,
asks this process's memory of the ids it stored (no database round trip on the hot
path: a read per delivery cost a third of PayPal's throughput); a replay sent to another
process is refused by the claim, after its signature check.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from provisioner.store.models import Base, UtcDateTime
from provisioner.timeutil import utcnow


class Claim(Protocol):
    """Something a delivery may do once, taken in the transaction that stores it."""

    def __call__(self, cur: Any, dialect: str) -> bool:
        """Take it with the DBAPI cursor of the storing transaction: True when this delivery
        took it now, False when it was taken before."""

    def stored(self) -> None:
        """The storing transaction committed (whatever the claim's answer was)."""


class PayPalTransmission(Base):
    """A PayPal transmission we accepted, remembered until its time can no longer pass."""

    __tablename__ = "paypal_transmissions"
    transmission_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    __table_args__ = (Index("ix_paypal_transmissions_expires_at", "expires_at"),)


_PARAM = {"sqlite": "?", "postgresql": "%s"}
_SEEN = "SELECT 1 FROM paypal_transmissions WHERE transmission_id = {p}"
_CLAIM = ("INSERT INTO paypal_transmissions (transmission_id, expires_at) VALUES ({p}, {p}) "
          "ON CONFLICT (transmission_id) DO NOTHING RETURNING transmission_id")
_PURGE = "DELETE FROM paypal_transmissions WHERE expires_at < {p}"


def _dialect(factory: sessionmaker[Session]) -> str:
    return "postgresql" if factory.kw["bind"].dialect.name == "postgresql" else "sqlite"


def _when(value: datetime, dialect: str) -> object:
    """A UTC datetime as the `UtcDateTime` column keeps it (SQLite: SQLAlchemy's text)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else value


class TransmissionClaim:
    """The claim of one PayPal transmission id (a `Claim`)."""

    def __init__(self, ledger: PayPalTransmissions, transmission_id: str,
                 expires_at: datetime) -> None:
        self.ledger = ledger
        self.transmission_id = transmission_id
        self.expires_at = expires_at

    def __call__(self, cur: Any, dialect: str) -> bool:
        p = _PARAM[dialect]
        if self.ledger.purge_due():
            cur.execute(_PURGE.format(p=p), (_when(self.ledger.now(), dialect),))
        cur.execute(_CLAIM.format(p=p), (self.transmission_id, _when(self.expires_at, dialect)))
        return cur.fetchone() is not None

    def stored(self) -> None:
        self.ledger.remember(self.transmission_id, self.expires_at)


class PayPalTransmissions:
    """The transmission ids in use: `claim` for the transaction that stores the
    notification (the authority), `seen` for the verifier's cheap check."""

    def __init__(self, factory: sessionmaker[Session], *, purge_every_s: float = 60.0,
                 now: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic,
                 remembered: int = 20_000) -> None:
        self._factory = factory
        self._purge_every_s = purge_every_s
        self.now = now
        self._monotonic = monotonic
        self._next_purge = 0.0
        self._recent: OrderedDict[str, datetime] = OrderedDict()  # id -> expires_at
        self._remembered = remembered
        self._lock = threading.Lock()

    def seen(self, transmission_id: str) -> bool:
        """Was this id stored by this process (and is it still within its window)?"""
        with self._lock:
            until = self._recent.get(transmission_id)
        return until is not None and self.now() <= until

    def remember(self, transmission_id: str, expires_at: datetime) -> None:
        with self._lock:
            self._recent[transmission_id] = expires_at
            self._recent.move_to_end(transmission_id)
            while len(self._recent) > self._remembered:
                self._recent.popitem(last=False)

    def used(self, transmission_id: str) -> bool:
        """Is this id recorded in the database (by any process)? For ops and tests."""
        conn = self._factory.kw["bind"].raw_connection()
        try:
            cur = conn.cursor()
            cur.execute(_SEEN.format(p=_PARAM[_dialect(self._factory)]), (transmission_id,))
            found = cur.fetchone() is not None
            conn.rollback()
            return found
        finally:
            conn.close()

    def claim(self, transmission_id: str, expires_at: datetime) -> TransmissionClaim:
        """The claim of ``transmission_id`` for `store_batch` (see the module doc)."""
        return TransmissionClaim(self, transmission_id, expires_at)

    def purge_due(self) -> bool:
        """True at most once per ``purge_every_s``: this claim deletes the expired rows."""
        with self._lock:
            now = self._monotonic()
            if now < self._next_purge:
                return False
            self._next_purge = now + self._purge_every_s
            return True


__all__ = ["Claim", "PayPalTransmission", "PayPalTransmissions", "TransmissionClaim"]
