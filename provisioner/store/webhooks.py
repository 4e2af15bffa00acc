"""Webhook deliveries that may be used once: PayPal's transmission ids.

PayPal signs ``transmission_id|time|webhook_id|crc32(body)``; the CRC can be matched by
another body, so one captured header set must not be usable twice. The id is recorded
under a primary key in the transaction that stores the delivery's notification (a
`Claim` handed to `store_batch`): a second use inserts nothing and is refused, and a
delivery whose notification is not stored (a database error) has not used its id.

A row is kept until its transmission time leaves the verifier's skew window
(``expires_at``): after that the time check refuses the headers anyway. Rows past it are
deleted by the claims themselves, at most once a minute per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from provisioner.store.models import Base, UtcDateTime
from provisioner.timeutil import utcnow

# (DBAPI cursor inside the storing transaction, dialect name) -> True when this delivery
# took its id now, False when it was used before.
Claim = Callable[[Any, str], bool]


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


class PayPalTransmissions:
    """The transmission ids in use: `seen` for the verifier's cheap check before anything
    is fetched, `claim` for the transaction that stores the notification."""

    def __init__(self, factory: sessionmaker[Session], *, purge_every_s: float = 60.0,
                 now: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._dialect = _dialect(factory)
        self._purge_every_s = purge_every_s
        self._now = now
        self._monotonic = monotonic
        self._next_purge = 0.0
        self._lock = threading.Lock()

    def seen(self, transmission_id: str) -> bool:
        """Was this id used by a stored delivery? One indexed read outside any transaction
        (autocommit: on SQLite it takes no write lock)."""
        sql = _SEEN.format(p=_PARAM[self._dialect])
        conn = self._factory.kw["bind"].raw_connection()
        try:
            cur = conn.cursor()
            cur.execute(sql, (transmission_id,))
            found = cur.fetchone() is not None
            conn.rollback()
            return found
        finally:
            conn.close()

    def claim(self, transmission_id: str, expires_at: datetime) -> Claim:
        """The claim of ``transmission_id`` for `store_batch` (see the module doc)."""

        def take(cur: Any, dialect: str) -> bool:
            p = _PARAM[dialect]
            if self._purge_due():
                cur.execute(_PURGE.format(p=p), (_when(self._now(), dialect),))
            cur.execute(_CLAIM.format(p=p), (transmission_id, _when(expires_at, dialect)))
            return cur.fetchone() is not None

        return take

    def _purge_due(self) -> bool:
        with self._lock:
            now = self._monotonic()
            if now < self._next_purge:
                return False
            self._next_purge = now + self._purge_every_s
            return True


__all__ = ["Claim", "PayPalTransmission", "PayPalTransmissions"]
