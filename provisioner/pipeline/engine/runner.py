"""The step journal and its runner.

The journal (table `steps`) is the truth; the queue only carries step keys.
A step moves PENDING -> QUEUED -> RUNNING -> DONE | FAILED:

* `record()` writes the plan's steps once per key (re-recording changes nothing).
* `dispatch()` moves PENDING steps whose dependencies are DONE to QUEUED and hands
  their keys to `enqueue` after the commit.
* `run_step()` claims a step with one conditional UPDATE (QUEUED, or RUNNING with
  an expired lease), so a message delivered twice runs the step once; the handler
  observes before it acts, so a step re-run after a crash creates nothing twice.
* `redrive()` finds RUNNING steps whose lease expired (their worker died) and
  QUEUED steps whose message was lost, and enqueues them again.

A run holds its step by a lease (``step_lease_s``). While the handler works, whatever
it calls (an Ansible run, an ACME order, an SMTP transaction), a background heartbeat
extends the lease every third of it, so a slow step is never taken over while its run
is alive. A run can still lose its step (its process stalled, or the database was out
of reach, for longer than the lease, and another run claimed it): its final writes, and
the e-mail whose outbox row commits with them, are fenced (`StepContext.fence`) on the
run still owning the step, in the same transaction; a run that lost it stops with
`LeaseLost` and leaves the step to the run that holds it: neither a failure nor a retry.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings
from provisioner.domain.lifecycle import ServiceState, StepState
from provisioner.domain.maintenance import describe, in_window, next_window_start
from provisioner.domain.policy import get_brand
from provisioner.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    ProvisionerError,
    StepFailed,
    TransientError,
)
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.ports import Adapters
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Order, Service, Step
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.pipeline")

Enqueue = Callable[[str], None]
SYSTEM = "system:pipeline"


@dataclass(frozen=True)
class StepResult:
    changed: bool
    details: dict[str, object]


class LeaseLost(ProvisionerError):
    """This run no longer holds its step (another run claimed it after the lease ran
    out, or it was re-driven): the run that holds it finishes it. The runner records
    neither a failure nor a retry."""

    def __init__(self, step_key: str) -> None:
        super().__init__(f"{step_key}: the lease was lost; the run that holds the step finishes it")
        self.step_key = step_key


@dataclass(frozen=True)
class StepContext:
    """What a handler gets: the settings, a session factory, the typed adapters, the
    clock, and its hold on the step: `heartbeat()` (also run in the background while
    the handler works) and `fence(session)` for the writes that must be this run's
    only. A unit test hands in recording fakes of the adapters (`engine.ports`)."""

    settings: Settings
    factory: sessionmaker[Session]
    step_key: str
    owner: str
    adapters: Adapters
    now: Callable[[], datetime] = utcnow
    lost: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def _extend(self) -> bool:
        """Extend the lease if this run still holds the step; False when it does not."""
        with transaction(self.factory) as s:
            res = s.execute(
                update(Step)
                .where(Step.key == self.step_key, Step.owner == self.owner,
                       Step.state == StepState.RUNNING.value)
                .values(lease_until=self.now() + timedelta(seconds=self.settings.step_lease_s))
            )
            held = res.rowcount == 1 or self._unjournaled(s)  # type: ignore[attr-defined]
        if not held:
            self.lost.set()
        return held

    def _unjournaled(self, s: Session) -> bool:
        """True when the journal has no row of this step at all: a handler run outside
        the journal (a test, an ops tool), which no other run can hold either."""
        return s.execute(select(Step.id).where(Step.key == self.step_key)).first() is None

    def heartbeat(self) -> None:
        """Extend the lease now, before work that must not start without it: LeaseLost
        when this run no longer holds the step (nothing is done twice)."""
        if self.lost.is_set() or not self._extend():
            raise LeaseLost(self.step_key)

    def fence(self, session: Session) -> None:
        """Raise LeaseLost unless this run still holds its step, inside ``session``'s
        transaction: what commits with it is this run's work only while it holds the step.

        One conditional UPDATE of the step's row (touching ``updated_at``): on PostgreSQL
        it locks the row until the commit, so another run's claim waits for this commit
        and its handler then observes these writes; on SQLite the transaction holds the
        database's write lock already (BEGIN IMMEDIATE). A step with no journal row (a
        handler run outside the journal) is not fenced."""
        res = session.execute(
            update(Step)
            .where(Step.key == self.step_key, Step.owner == self.owner,
                   Step.state == StepState.RUNNING.value)
            .values(updated_at=self.now())
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1 and not self._unjournaled(session):  # type: ignore[attr-defined]
            self.lost.set()
            raise LeaseLost(self.step_key)


@contextmanager
def _background_heartbeat(ctx: StepContext) -> Iterator[None]:
    """Extend ``ctx``'s lease every third of it while the body runs (a thread, stopped
    and joined afterwards). A lease found lost is marked (`StepContext.lost`) and the
    beating stops; a database error is logged and tried again at the next beat."""
    interval = max(ctx.settings.step_lease_s / 3, 0.05)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not ctx._extend():
                    log.warning("step %s: lease lost while its handler runs", ctx.step_key)
                    return
            except Exception:  # noqa: BLE001 - the next beat tries again; the fence decides
                log.exception("step %s: could not extend the lease", ctx.step_key)

    thread = threading.Thread(target=beat, name=f"heartbeat {ctx.step_key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


Handler = Callable[[StepContext, Step], StepResult]
Handlers = Mapping[str, Handler]


def disruptive(fn: Handler) -> Handler:
    """Mark a handler's steps as disruptive work (it restarts customer-facing services):
    the runner runs them only inside the brand's maintenance window (002 §12), or when
    the step carries a ``force_window`` reason (`Runner._wait_for_window`)."""
    fn.disruptive = True  # type: ignore[attr-defined]
    return fn


def is_disruptive(fn: Handler | None) -> bool:
    return bool(getattr(fn, "disruptive", False))


@dataclass(frozen=True)
class RunOutcome:
    key: str
    status: str  # done | skipped | retry | failed | lost (another run holds the step now)
    #              | waiting (a disruptive step outside the maintenance window)
    detail: str = ""


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def record(session: Session, order_id: int, specs: Iterable[StepSpec]) -> int:
    """Write the plan's steps into the journal; existing keys are left alone."""
    now = utcnow()
    added = 0
    insert = _insert(session)
    for spec in specs:
        result = session.execute(
            insert(Step)
            .values(
                key=spec.key,
                order_id=order_id,
                service_id=spec.service_id,
                kind=spec.kind,
                params=spec.params,
                deps=list(spec.deps),
                state=StepState.PENDING.value,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["key"])
        )
        added += max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
    return added


def record_many(session: Session, plans: Iterable[tuple[int, Iterable[StepSpec]]]) -> None:
    """`record` for many orders' plans at once: one INSERT .. ON CONFLICT DO NOTHING with
    every row (psycopg sends the rows in one pipeline); existing keys are left alone, and a key
    planned twice is written once."""
    now = utcnow()
    rows: dict[str, dict[str, Any]] = {}
    for order_id, specs in plans:
        for spec in specs:
            rows.setdefault(spec.key, {
                "key": spec.key, "order_id": order_id, "service_id": spec.service_id,
                "kind": spec.kind, "params": spec.params, "deps": list(spec.deps),
                "state": StepState.PENDING.value, "attempts": 0, "created_at": now,
                "updated_at": now,
            })
    if rows:
        table = Step.__table__
        session.execute(_insert(session)(table).on_conflict_do_nothing(index_elements=["key"]),
                        list(rows.values()))


class Runner:
    """Runs the journal's steps with an explicit handler registry (kind -> handler) and
    typed adapters; the composition root (`provisioner.bootstrap`) builds it."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        enqueue: Enqueue,
        adapters: Adapters,
        handlers: Handlers,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.enqueue = enqueue
        self.adapters = adapters
        self.handlers = dict(handlers)
        self.now = now

    def check_journal(self) -> None:
        """A step waiting in the journal whose kind this process cannot run is a
        configuration error at start-up (an old or partial install), not a failed service."""
        with transaction(self.factory) as s:
            kinds = set(s.execute(select(Step.kind).distinct().where(Step.state.in_(
                (StepState.PENDING.value, StepState.QUEUED.value, StepState.RUNNING.value)))).scalars())
        unknown = sorted(kinds - set(self.handlers))
        if unknown:
            raise ConfigurationError(f"the journal holds steps of kinds no handler runs here: {unknown}")

    # -- dispatch -------------------------------------------------------------
    def dispatch(self, order_id: int | None = None) -> list[str]:
        """Queue every PENDING step whose dependencies are all DONE."""
        now = self.now()
        queued: list[str] = []
        with transaction(self.factory) as s:
            q = select(Step).where(Step.state == StepState.PENDING.value)
            if order_id is not None:
                q = q.where(Step.order_id == order_id)
            pending = list(s.execute(q).scalars())
            if not pending:
                return []
            deps = {d for step in pending for d in step.deps}
            done = set(
                s.execute(
                    select(Step.key).where(
                        Step.key.in_(deps), Step.state == StepState.DONE.value
                    )
                ).scalars()
            ) if deps else set()
            for step in pending:
                if all(d in done for d in step.deps):
                    res = s.execute(
                        update(Step)
                        .where(Step.id == step.id, Step.state == StepState.PENDING.value)
                        .values(state=StepState.QUEUED.value, enqueued_at=now, updated_at=now)
                    )
                    if res.rowcount == 1:  # type: ignore[attr-defined]
                        queued.append(step.key)
        self._send(queued)
        return queued

    def _send(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self.enqueue(key)
            except Exception:  # noqa: BLE001 - a broker outage must not lose the step
                log.exception("could not enqueue %s; the re-drive will send it again", key)

    # -- running --------------------------------------------------------------
    def _claim(self, key: str, owner: str) -> Step | None:
        """Take the step: QUEUED and due (a retry waits for its ``next_attempt_at``, however
        early Celery's own autoretry asks; the re-drive sends it when due), or RUNNING with
        an expired lease."""
        now = self.now()
        with transaction(self.factory) as s:
            res = s.execute(
                update(Step)
                .where(
                    Step.key == key,
                    or_(
                        and_(Step.state == StepState.QUEUED.value,
                             or_(Step.next_attempt_at.is_(None), Step.next_attempt_at <= now)),
                        and_(Step.state == StepState.RUNNING.value, Step.lease_until < now),
                    ),
                )
                .values(
                    state=StepState.RUNNING.value,
                    owner=owner,
                    lease_until=now + timedelta(seconds=self.settings.step_lease_s),
                    attempts=Step.attempts + 1,
                    updated_at=now,
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return s.execute(select(Step).where(Step.key == key)).scalar_one()

    def _kind(self, key: str) -> str | None:
        with transaction(self.factory) as s:
            return s.execute(select(Step.kind).where(Step.key == key)).scalar_one_or_none()

    def run_step(self, key: str) -> RunOutcome:
        """Run one step if it is ours to run. Raises TransientError when the step
        should be retried (the Celery task retries it with backoff)."""
        owner = uuid.uuid4().hex
        kind = self._kind(key)
        if kind is not None and kind not in self.handlers:
            # This process cannot run it (an older worker during a deploy, a capability
            # left out): a configuration error for ops, not a failed service or a refund.
            # The step stays queued; the re-drive offers it again.
            raise ConfigurationError(f"step {key}: no handler for step kind {kind!r} in this process")
        if kind is not None and is_disruptive(self.handlers[kind]):
            waiting = self._wait_for_window(key)
            if waiting is not None:
                return waiting
        step = self._claim(key, owner)
        if step is None:
            return RunOutcome(key, "skipped", "not queued, already running or finished")
        fn = self.handlers[step.kind]
        ctx = StepContext(self.settings, self.factory, key, owner, self.adapters, self.now)
        log.info("step %s: attempt %d", key, step.attempts)
        try:
            with _background_heartbeat(ctx):
                result = fn(ctx, step)
        except LeaseLost as exc:
            return self._lost(step, str(exc))
        except TransientError as exc:
            return self._retry_or_fail(step, owner, str(exc) or type(exc).__name__)
        except (InvalidInput, StepFailed, Conflict) as exc:
            if not self._fail(step, owner, str(exc)):
                return self._lost(step, str(exc))
            return RunOutcome(key, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - an unexpected error is retried, then dead-lettered
            log.error("step %s raised:\n%s", key, traceback.format_exc())
            return self._retry_or_fail(step, owner, f"{type(exc).__name__}: {exc}")
        if not self._finish(step, owner, result):
            return self._lost(step, "finished, but another run holds the step now")
        self.dispatch(step.order_id)
        return RunOutcome(key, "done", "changed" if result.changed else "unchanged")

    def _wait_for_window(self, key: str) -> RunOutcome | None:
        """A disruptive step outside its brand's maintenance window waits for the window's
        next opening (``next_attempt_at``; the claim and the re-drive respect it), without
        an attempt counted; one with a ``force_window`` reason runs now, audited. None:
        the step may be claimed now."""
        now = self.now()
        tz = self.settings.maintenance_timezone
        with transaction(self.factory) as s:
            row = s.execute(select(Step.state, Step.force_window, Order.brand)
                            .join(Order, Order.id == Step.order_id).where(Step.key == key)).first()
            if row is None or row.state != StepState.QUEUED.value:
                return None  # the claim decides (finished, running, or a takeover)
            window = get_brand(row.brand).maintenance_window
            if in_window(now, window, tz):
                return None
            if row.force_window:
                audit(s, SYSTEM, "step.window_forced", "step", key,
                      {"reason": row.force_window, "window": describe(window, tz)})
                return None
            opening = next_window_start(now, window, tz)
            res = s.execute(
                update(Step)
                .where(Step.key == key, Step.state == StepState.QUEUED.value,
                       Step.force_window.is_(None),
                       or_(Step.next_attempt_at.is_(None), Step.next_attempt_at < opening))
                .values(next_attempt_at=opening, updated_at=now)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                audit(s, SYSTEM, "step.window_wait", "step", key,
                      {"until": opening.isoformat(), "window": describe(window, tz)})
        detail = (f"disruptive: waits for the maintenance window ({describe(window, tz)}), "
                  f"{opening.isoformat()}")
        log.info("step %s: %s", key, detail)
        return RunOutcome(key, "waiting", detail)

    @staticmethod
    def _lost(step: Step, detail: str) -> RunOutcome:
        log.warning("step %s: attempt %d lost its lease; the run that holds it finishes it (%s)",
                    step.key, step.attempts, detail)
        return RunOutcome(step.key, "lost", detail)

    def _finish(self, step: Step, owner: str, result: StepResult) -> bool:
        """Mark the step done if this run still holds it (fenced); False when it does not."""
        now = self.now()
        with transaction(self.factory) as s:
            res = s.execute(
                update(Step)
                .where(
                    Step.id == step.id,
                    Step.owner == owner,
                    Step.state == StepState.RUNNING.value,
                )
                .values(
                    state=StepState.DONE.value,
                    result={"changed": result.changed, **result.details},
                    lease_until=None,
                    last_error=None,
                    updated_at=now,
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            audit(s, SYSTEM, "step.done", "step", step.key, {"changed": result.changed})
            left = s.execute(
                select(Step.id).where(
                    Step.order_id == step.order_id, Step.state != StepState.DONE.value
                )
            ).first()
            order = s.get(Order, step.order_id)
            # Completed means carried out: every step done AND no service of the order still
            # provisioning (a line no capability here plans has no step, and its service
            # stays provisioning: its order is paid, not completed).
            waiting = s.execute(select(Service.id).where(
                Service.order_id == step.order_id,
                Service.state == ServiceState.PROVISIONING.value)).first() if left is None else None
            if left is None and waiting is None and order is not None and order.status == "paid":
                order.status = "completed"
                audit(s, SYSTEM, "order.completed", "order", order.id)
        return True

    def _retry_or_fail(self, step: Step, owner: str, detail: str) -> RunOutcome:
        if step.attempts >= self.settings.step_max_attempts:
            if not self._fail(step, owner, f"gave up after {step.attempts} attempts: {detail}"):
                return self._lost(step, detail)
            return RunOutcome(step.key, "failed", detail)
        now = self.now()
        delay = self.settings.step_backoff_s * (2 ** (step.attempts - 1))
        with transaction(self.factory) as s:
            res = s.execute(
                update(Step)
                .where(Step.id == step.id, Step.owner == owner, Step.state == StepState.RUNNING.value)
                .values(
                    state=StepState.QUEUED.value,
                    owner=None,
                    lease_until=None,
                    enqueued_at=now,
                    next_attempt_at=now + timedelta(seconds=delay),
                    last_error=detail,
                    updated_at=now,
                )
            )
            held = res.rowcount == 1  # type: ignore[attr-defined]
        if not held:
            return self._lost(step, detail)
        log.warning("step %s: attempt %d failed, retrying: %s", step.key, step.attempts, detail)
        raise TransientError(f"{step.key}: {detail}")

    def _fail(self, step: Step, owner: str, detail: str) -> bool:
        """Fail the step (service failed, refund flag, ops alert) if this run still holds
        it; False when another run holds it now (that run decides)."""
        now = self.now()
        with transaction(self.factory) as s:
            res = s.execute(
                update(Step)
                .where(Step.id == step.id, Step.owner == owner, Step.state == StepState.RUNNING.value)
                .values(state=StepState.FAILED.value, owner=None, lease_until=None,
                        last_error=detail, updated_at=now)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            audit(s, SYSTEM, "step.failed", "step", step.key, {"detail": detail})
            order = s.get(Order, step.order_id)
            if step.kind.startswith("clock.") or is_disruptive(self.handlers.get(step.kind)):
                # A lifecycle step (reminder, shutdown, deletion stage) of a running or
                # ended service, or disruptive work on a running one (a plan change):
                # nothing was bought that failed, so no refund and the service keeps its
                # state; ops get the alert below and re-run it.
                order = None
            elif step.service_id is not None:
                service = s.get(Service, step.service_id)
                if service is not None:
                    service.state = ServiceState.FAILED.value
                    service.detail = f"{step.key}: {detail}"
                    service.updated_at = now
                    audit(s, SYSTEM, "service.failed", "service", service.id, {"step": step.key})
                if order is not None and not order.refund_flag:
                    # RULES: paid but not carried out => refund by the same method.
                    order.refund_flag = True
                    order.refund_reason = f"{step.key} failed: {detail}"
                    audit(s, SYSTEM, "order.refund_flagged", "order", order.id, {"step": step.key})
            if order is not None and order.status == "paid":
                order.status = "failed"
        log.error("step %s FAILED: %s", step.key, detail)
        try:
            self.adapters.alert(step_key=step.key, order_id=step.order_id, detail=detail,
                                attempts=step.attempts)
        except Exception:  # noqa: BLE001 - the alert is best effort; the log line above stays
            log.exception("could not e-mail the ops alert for %s", step.key)
        return True

    # -- re-drive -------------------------------------------------------------
    def redrive(self) -> dict[str, int]:
        """Re-enqueue steps whose worker died (lease expired) or whose message was
        lost (queued too long ago), then dispatch whatever became ready."""
        now = self.now()
        stale_after = timedelta(seconds=self.settings.step_lease_s)
        keys: list[str] = []
        with transaction(self.factory) as s:
            expired = list(
                s.execute(
                    select(Step).where(
                        Step.state == StepState.RUNNING.value, Step.lease_until < now
                    )
                ).scalars()
            )
            for step in expired:
                s.execute(
                    update(Step)
                    .where(Step.id == step.id, Step.state == StepState.RUNNING.value,
                           Step.lease_until < now)
                    .values(state=StepState.QUEUED.value, owner=None, lease_until=None,
                            enqueued_at=now, updated_at=now,
                            last_error=f"lease expired (attempt {step.attempts}); re-driven")
                )
                keys.append(step.key)
            lost = s.execute(
                select(Step).where(
                    Step.state == StepState.QUEUED.value,
                    Step.enqueued_at < now - stale_after,
                    or_(Step.next_attempt_at.is_(None), Step.next_attempt_at <= now),
                )
            ).scalars()
            for step in lost:
                step.enqueued_at = now
                keys.append(step.key)
            retry_due = s.execute(
                select(Step).where(
                    Step.state == StepState.QUEUED.value,
                    Step.next_attempt_at.is_not(None),
                    Step.next_attempt_at <= now,
                    Step.enqueued_at < Step.next_attempt_at,
                )
            ).scalars()
            for step in retry_due:
                if step.key not in keys:
                    step.enqueued_at = now
                    keys.append(step.key)
        if keys:
            log.warning("re-driving %d step(s): %s", len(keys), ", ".join(keys))
        self._send(keys)
        dispatched = self.dispatch()
        return {"redriven": len(keys), "dispatched": len(dispatched)}


def run_queued(runner: Runner, *, max_rounds: int = 50) -> int:
    """Run every ready step in this process until none is left (what the workers do in
    production): for ``sweep --now``, ``apply --wait`` without workers, and tests.
    Returns how many runs it made. A step waiting out its retry backoff is not ready."""
    ran = 0
    for _ in range(max_rounds):
        keys = runner.dispatch()
        with transaction(runner.factory) as s:
            keys += list(s.execute(select(Step.key).where(
                Step.state == StepState.QUEUED.value,
                or_(Step.next_attempt_at.is_(None), Step.next_attempt_at <= runner.now()))).scalars())
        if not keys:
            return ran
        for key in dict.fromkeys(keys):
            runner.run_step(key)
            ran += 1
    return ran
