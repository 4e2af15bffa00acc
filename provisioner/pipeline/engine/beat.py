"""Periodic work done once per slot, however many beats send it.

Celery beat must run once per installation, but a second beat started by mistake, or
the old one still alive after a failover, sends every periodic task again. So each
periodic task claims its *slot* in the database before it works: the day for the
daily sweep and quota check, the interval for the re-drive. The first claim runs the
work; a claim while another run holds a live lease, or after the slot is done,
returns without doing anything. A run that died (its lease ran out, the slot not done)
is taken over by the next claim, so a crashed sweep is not lost for the day.

Both the claim and the take-over are single conditional statements (an INSERT under
the primary key, an UPDATE ... WHERE the lease has run out), so two beats racing on
SQLite or PostgreSQL cannot both win.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.store.db import transaction
from provisioner.store.models import BeatSlot

log = logging.getLogger("provisioner.beat")


def default_owner() -> str:
    """Who holds a slot: host and process, for the ops reading the table."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(factory: sessionmaker[Session], task: str, slot: str, *, owner: str,
          now: datetime, lease_s: float) -> bool:
    """Take ``task``'s ``slot`` for ``lease_s`` seconds; False if another run holds it
    or it is done."""
    until = now + timedelta(seconds=lease_s)
    try:
        with transaction(factory) as session:
            session.add(BeatSlot(task=task, slot=slot, owner=owner, started_at=now,
                                 lease_until=until, runs=1))
            session.flush()
        return True
    except IntegrityError:
        pass  # the slot exists: taken over only if its run died unfinished
    with transaction(factory) as session:
        result = session.execute(
            update(BeatSlot)
            .where(BeatSlot.task == task, BeatSlot.slot == slot,
                   BeatSlot.finished_at.is_(None), BeatSlot.lease_until <= now)
            .values(owner=owner, started_at=now, lease_until=until, runs=BeatSlot.runs + 1))
        assert isinstance(result, CursorResult)
        return result.rowcount == 1


def finish(factory: sessionmaker[Session], task: str, slot: str, *, owner: str,
           now: datetime) -> bool:
    """Mark the slot done, if ``owner`` still holds it (False: it was taken over)."""
    with transaction(factory) as session:
        result = session.execute(
            update(BeatSlot)
            .where(BeatSlot.task == task, BeatSlot.slot == slot, BeatSlot.owner == owner,
                   BeatSlot.finished_at.is_(None))
            .values(finished_at=now))
        assert isinstance(result, CursorResult)
        return result.rowcount == 1


def once_per_slot(factory: sessionmaker[Session], task: str, slot: str,
                  work: Callable[[], dict[str, Any]], *, now: Callable[[], datetime],
                  lease_s: float, owner: str | None = None) -> dict[str, Any]:
    """Run ``work`` if this call wins ``task``'s ``slot``; otherwise report the skip.

    A run that raises leaves the slot unfinished: the next claim after the lease
    takes it over (the beat's next tick, or the other beat)."""
    who = owner or default_owner()
    if not claim(factory, task, slot, owner=who, now=now(), lease_s=lease_s):
        log.info("%s %s: done or running elsewhere; skipped", task, slot)
        return {"skipped": True, "task": task, "slot": slot}
    result = work()
    if not finish(factory, task, slot, owner=who, now=now()):
        log.warning("%s %s: ran past its lease and was taken over", task, slot)
    return {**result, "slot": slot}
