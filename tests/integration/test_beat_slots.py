"""A second beat (started by mistake, or the old one alive after a failover) sends every
periodic task again: each must still take effect once per slot (issue 15, item 2)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.pipeline.engine import beat
from provisioner.store.db import session_factory, transaction
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import BeatSlot, Proforma
from provisioner.timeutil import now_at
from tests.helpers import ClockWorld, make_clock_world

T0 = datetime(2027, 3, 1, 0, 15, tzinfo=UTC)


def _together(n: int, call: Any) -> list[Any]:
    """``call()`` from ``n`` threads released at the same moment; their results."""
    gate = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        gate.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_beats_claiming_one_slot_at_the_same_moment_run_it_once(db_url: str) -> None:
    factory = session_factory(db_url)
    ran: list[int] = []

    def work() -> dict[str, Any]:
        ran.append(1)
        return {"ran": True}

    results = _together(6, lambda: beat.once_per_slot(
        factory, "sweep", "2027-03-01", work, now=lambda: T0, lease_s=3600,
        owner=f"beat-{threading.get_ident()}"))
    assert len(ran) == 1
    assert sum(1 for r in results if r.get("skipped")) == 5
    # a later send of the same slot, after it is done, does nothing either
    again = beat.once_per_slot(factory, "sweep", "2027-03-01", work,
                               now=lambda: T0 + timedelta(hours=5), lease_s=3600)
    assert again["skipped"] and len(ran) == 1
    # the next day is a slot of its own
    beat.once_per_slot(factory, "sweep", "2027-03-02", work, now=lambda: T0 + timedelta(days=1),
                       lease_s=3600)
    assert len(ran) == 2


def test_a_run_that_died_is_taken_over_after_its_lease_and_only_then(db_url: str) -> None:
    factory = session_factory(db_url)
    assert beat.claim(factory, "quota", "2027-03-01", owner="a", now=T0, lease_s=60)
    assert not beat.claim(factory, "quota", "2027-03-01", owner="b", now=T0 + timedelta(seconds=59),
                          lease_s=60)
    assert beat.claim(factory, "quota", "2027-03-01", owner="b", now=T0 + timedelta(seconds=60),
                      lease_s=60)
    # the first run, back from the dead, cannot mark the slot done: it is b's now
    assert not beat.finish(factory, "quota", "2027-03-01", owner="a", now=T0 + timedelta(seconds=61))
    assert beat.finish(factory, "quota", "2027-03-01", owner="b", now=T0 + timedelta(seconds=62))
    with transaction(factory) as s:
        row = s.get(BeatSlot, ("quota", "2027-03-01"))
        assert row is not None and row.owner == "b" and row.runs == 2 and row.finished_at is not None


def test_a_run_that_raises_leaves_its_slot_to_the_next_claim(db_url: str) -> None:
    factory = session_factory(db_url)

    def broken() -> dict[str, Any]:
        raise RuntimeError("node unreachable")

    with pytest.raises(RuntimeError):
        beat.once_per_slot(factory, "quota", "2027-03-01", broken, now=lambda: T0, lease_s=60)
    result = beat.once_per_slot(factory, "quota", "2027-03-01", lambda: {"ok": True},
                                now=lambda: T0 + timedelta(seconds=61), lease_s=60)
    assert result == {"ok": True, "slot": "2027-03-01"}


E = date(2027, 3, 31)


@pytest.fixture
def world(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> ClockWorld:
    return make_clock_world(db_url, tmp_path, smtp_sink, E - timedelta(days=30))


def test_two_beats_for_a_day_bill_each_renewal_once_and_mail_it_once(world: ClockWorld) -> None:
    services = [world.service(f"hosting:giga5:site{i}.si:12m", E) for i in range(4)]
    world.at(E - timedelta(days=30))  # renewals are due today
    app = world.app
    results = _together(2, lambda: app.on_beat("sweep", app.sweep))
    assert sorted(bool(r.get("skipped")) for r in results) == [False, True]
    world.run_queued()
    with transaction(world.factory) as s:
        billed = s.execute(select(Renewal.service_id, func.count()).group_by(Renewal.service_id)).all()
        numbers = s.execute(select(Proforma.number)
                            .join(Renewal, Renewal.proforma_id == Proforma.id)).scalars().all()
    assert sorted(billed) == sorted((sid, 1) for sid in services)
    subjects = [str(m["Subject"]) for m in world.sink.messages()]
    assert [sum(1 for s in subjects if n in s) for n in numbers] == [1] * len(services)
    # the same beats a day later: the next slot runs, again once
    world.runner.now = now_at(E - timedelta(days=29))
    results = _together(2, lambda: app.on_beat("sweep", app.sweep))
    assert sorted(bool(r.get("skipped")) for r in results) == [False, True]


def test_hourly_and_daily_tasks_take_their_own_slots(world: ClockWorld) -> None:
    app = world.app
    ran: list[str] = []
    world.runner.now = lambda: datetime(2027, 3, 1, 1, 5, tzinfo=UTC)
    for task in ("breaches", "breaches", "wipe_migrations", "wipe_migrations"):
        app.on_beat(task, lambda task=task: ran.append(task) or {})  # type: ignore[misc]
    world.runner.now = lambda: datetime(2027, 3, 1, 2, 5, tzinfo=UTC)  # the next hour
    for task in ("breaches", "wipe_migrations"):
        app.on_beat(task, lambda task=task: ran.append(task) or {})  # type: ignore[misc]
    assert ran == ["breaches", "wipe_migrations", "breaches"]
