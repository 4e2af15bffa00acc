"""A simulated year over 1,000 services with random payment behaviour, the clock moved
day by day (what ``provisioner sweep --now`` does): every renewal proforma sent once and
at least 30 days ahead; no paid service ever shut down; every unpaid one shut down
exactly the day after expiry; no stage before its day, none skipped; no iSERVER data
removed before day 31 (002 §7: "more than 30 days late"); late payers renewed from the
original expiry. The node side of the stages (files and backups gone) is checked on a
throwaway node in tests/e2e/test_clock_node.py.

A second year runs .si, .eu, .at and .com domains against the sandbox registry (its clock
moved with ours; issue 17): no domain is ever renewed by the registry at our cost; every
late .eu payment restores the domain with its restore fee on the proforma; a late payment
the registry can no longer honour is refused clearly and flagged for refund."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select, update

from provisioner.devstack.registry import Sandbox, run_sandbox
from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import add_period, backup_purge_date, data_deletion_date, renew_by
from provisioner.domain.policy import get_brand
from provisioner.domain.tld_profiles import RESTORE_FEE_DESCRIPTION, registry_profile
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import Order, OutboxMail, Proforma, ProformaLine, Service, Step
from provisioner.timeutil import iter_days
from tests.helpers import MemoryMailer, RegistrarWorld, make_registrar_world
from tests.helpers import make_clock_world as make_world

START = date(2027, 1, 1)
SERVICES = 1000


def test_a_simulated_year_over_1000_services(sqlite_url: str, tmp_path: Path) -> None:
    rnd = random.Random(20271)
    # About 5,000 messages: kept in memory (the outbox still records each as sent once);
    # the SMTP hop is the sink's in the tests of the mail adapter and the live stack.
    mailer = MemoryMailer()
    world = make_world(sqlite_url, tmp_path, None, START, mailer=mailer)
    items = []
    for i in range(SERVICES):
        kind = rnd.choice(["hosting", "hosting", "vps"])
        item = (f"hosting:{rnd.choice(['mega', 'giga5'])}:s{i}.si:12m" if kind == "hosting"
                else f"vps:vps-s:v{i}.example.si:3m")
        expires = START + timedelta(days=rnd.randint(31, 300))
        brand = "iserver" if rnd.random() < 0.2 else "fcb"
        items.append((item, expires, brand))
    ids = [world.service(item, expires, brand=brand) for item, expires, brand in items]
    with transaction(world.factory) as s:  # the first orders' e-mails are not this test's
        s.execute(update(Step).values(state="done"))
    brand_of = {sid: brand for sid, (_, _, brand) in zip(ids, items, strict=True)}

    plan: dict[int, tuple[str, date | None]] = {}  # renewal id -> (behaviour, pay day)
    paid_on: dict[int, date] = {}  # renewal id -> simulated day it was paid
    end = START + timedelta(days=365)
    for day in iter_days(START, end):
        world.at(day)
        for rid, (_behaviour, pay_day) in list(plan.items()):
            if pay_day == day and rid not in paid_on:
                with transaction(world.factory) as s:
                    proforma = s.execute(select(Proforma).join(Renewal, Renewal.proforma_id ==
                                                               Proforma.id)
                                         .where(Renewal.id == rid)).scalar_one()
                    number, gross, state = proforma.number, proforma.gross, proforma.state
                if state == "open":
                    assert world.pay(number, gross, f"txn-{rid}").settled
                    paid_on[rid] = day
        world.sweep(day)
        with transaction(world.factory) as s:  # new renewal proformas: how will they be paid?
            new = s.execute(select(Renewal.id, Renewal.term_expiry, Service.id)
                            .join(Service, Service.id == Renewal.service_id)
                            .where(Renewal.id.notin_(list(plan) or [0]))).all()
        for rid, term, sid in new:
            behaviour = rnd.choices(["on_time", "late", "never"], [0.6, 0.2, 0.2])[0]
            retention = get_brand(brand_of[sid]).data_retention_days
            pay_day = {"on_time": max(day, term - timedelta(days=rnd.randint(0, 25))),
                       "late": term + timedelta(days=rnd.randint(2, retention - 2)),
                       "never": None}[behaviour]
            plan[rid] = (behaviour, pay_day)

    with transaction(world.factory) as s:
        renewals = list(s.execute(select(Renewal, Proforma, Service, Order.brand)
                                  .join(Proforma, Proforma.id == Renewal.proforma_id)
                                  .join(Service, Service.id == Renewal.service_id)
                                  .join(Order, Order.id == Service.order_id)).all())
        stages = list(s.execute(select(StageRecord)).scalars())
        sent = Counter(s.execute(select(OutboxMail.key).where(OutboxMail.state == "sent")
                                 ).scalars())
        final = {sv.id: sv for sv in s.execute(select(Service)).scalars()}
        s.expunge_all()
    by_term = {(r.service_id, r.term_expiry): (r, p, sv, brand) for r, p, sv, brand in renewals}
    stage_of = {(x.service_id, x.term_expiry, x.stage): x for x in stages}
    assert len(by_term) == len(renewals) > SERVICES  # one per term; VPS renew quarterly
    assert len(mailer.sent) == sum(sent.values())  # each message recorded as sent went out once
    behaviours = Counter(b for b, _ in plan.values())
    assert min(behaviours.values()) > 50, behaviours

    for (sid, term), (r, p, sv, brand) in by_term.items():
        policy = get_brand(brand)
        # sent exactly once, at least 30 days before the last day it can be renewed
        assert sent[f"proforma:{p.number}/notify.proforma"] == 1
        assert p.issued_on <= renew_by(term, sv.kind, sv.name, policy) - timedelta(days=30), \
            (p.number, p.issued_on, term)
        shutdown = stage_of.get((sid, term, "shutdown"))
        paid = paid_on.get(r.id)
        if paid is not None and paid <= term:
            assert shutdown is None, f"service {sid} was paid on {paid} and shut down"
        elif term + timedelta(days=1) <= START + timedelta(days=365):
            assert shutdown is not None and shutdown.done_on == term + timedelta(days=1), (sid, term)
        for stage, due in (("delete_data", data_deletion_date(term, policy)),
                           ("purge_backups", backup_purge_date(term, policy))):
            rec = stage_of.get((sid, term, stage))
            if rec is not None and brand == "iserver":
                # 002 §7: removed only when payment is MORE than 30 days late: day 31 on
                assert (rec.done_on - term).days >= 31, (sid, term, stage, rec.done_on)
            if paid is not None:
                assert rec is None, f"service {sid} paid on {paid} lost its data ({stage})"
            elif due <= end:
                assert rec is not None and rec.done_on == due, (sid, term, stage)
        if paid is not None and paid > term:  # late: reactivated from the original expiry
            assert stage_of.get((sid, term, "shutdown")) is not None
            months = r.months
            assert final[sid].expires_on is not None
            assert final[sid].expires_on >= add_period(term, months)
    for x in stages:
        assert x.done_on >= x.due_on
    for sid, sv in final.items():
        if sv.state == "purged":
            assert (sid, sv.expires_on, "delete_data") in stage_of


# -- a year of domains at the sandbox registry (issue 17) -----------------------------------
DOMAIN_TLDS = ("si", "eu", "at", "com")
DOMAINS_PER_TLD = 12


def test_a_simulated_year_of_domains_at_the_sandbox_registry(sqlite_url: str, tmp_path: Path,
                                                             smtp_sink: SmtpSink) -> None:
    rnd = random.Random(20272)
    with run_sandbox(tmp_path / "registry") as sandbox:
        world = make_registrar_world(sqlite_url, tmp_path, smtp_sink, sandbox, START)
        try:
            _domain_year(world, sandbox, rnd)
        finally:
            world.client.close()


def _domain_year(world: RegistrarWorld, sandbox: Sandbox, rnd: random.Random) -> None:
    services: dict[int, tuple[str, str]] = {}  # service id -> (name, brand)
    for tld in DOMAIN_TLDS:
        for i in range(DOMAINS_PER_TLD):
            expires = START + timedelta(days=rnd.randint(31, 300))
            brand = "iserver" if i % 4 == 3 else "fcb"
            name = f"d{i}-{tld}.{tld}"
            services[world.register(name, on=add_period(expires, -12), brand=brand)] = (name, brand)
    with transaction(world.factory) as s:  # the registrations' e-mails are not this test's
        s.execute(update(Step).where(Step.state != "done").values(state="done"))

    plan: dict[int, tuple[str, date | None]] = {}  # renewal id -> (behaviour, pay day)
    paid_on: dict[int, date] = {}
    end = START + timedelta(days=365)
    for day in iter_days(START, end):
        world.at(day)
        for rid, (_behaviour, pay_day) in list(plan.items()):
            if pay_day == day and rid not in paid_on:
                with transaction(world.factory) as s:
                    p = s.execute(select(Proforma).join(Renewal, Renewal.proforma_id == Proforma.id)
                                  .where(Renewal.id == rid)).scalar_one()
                    number, gross, state = p.number, p.gross, p.state
                if state == "open":
                    assert world.pay(number, gross, f"txn-d-{rid}").settled
                    paid_on[rid] = day
        world.sweep(day)
        with transaction(world.factory) as s:
            new = s.execute(select(Renewal.id, Renewal.term_expiry, Renewal.service_id)
                            .where(Renewal.id.notin_(list(plan) or [0]))).all()
        for rid, term, sid in new:
            name, brand = services[sid]
            profile = registry_profile(name.rsplit(".", 1)[1])
            behaviour = rnd.choices(["on_time", "late", "never"], [0.4, 0.35, 0.25])[0]
            late_max = 28 if brand == "iserver" else 36  # before the service's data go
            pay_day = {"on_time": max(day, profile.cutoff_on(term) - timedelta(days=rnd.randint(1, 20))),
                       "late": term + timedelta(days=rnd.randint(2, late_max)),
                       "never": None}[behaviour]
            plan[rid] = (behaviour, pay_day)

    with transaction(world.factory) as s:
        rows = s.execute(select(Renewal, Proforma, Service, Order)
                         .join(Proforma, Proforma.id == Renewal.proforma_id)
                         .join(Service, Service.id == Renewal.service_id)
                         .join(Order, Order.id == Renewal.order_id)).all()
        lines = {(ln.proforma_id, ln.description): ln.gross
                 for ln in s.execute(select(ProformaLine)).scalars()}
        steps = {st.key: st for st in s.execute(select(Step)).scalars()}
        stages = list(s.execute(select(StageRecord)).scalars())
        s.expunge_all()
    behaviours = Counter(b for b, _ in plan.values())
    assert len(plan) >= len(services) and min(behaviours.values()) >= 8, behaviours

    # no domain was ever renewed by the registry at our cost
    assert sandbox.charges(op="autoRenew") == []
    checked_eu_late = 0
    seen: Counter[str] = Counter()
    for r, p, sv, order in rows:
        name, brand = services[sv.id]
        tld = name.rsplit(".", 1)[1]
        profile = registry_profile(tld)
        behaviour, _ = plan[r.id]
        paid = paid_on.get(r.id)
        term = r.term_expiry
        renew = steps.get(f"service:{sv.id}/domain.renew@{term.isoformat()}")
        cutoff = steps.get(f"service:{sv.id}/clock.registry_cutoff@{term.isoformat()}")
        restore_fee = lines.get((p.id, RESTORE_FEE_DESCRIPTION))
        if paid is not None and paid <= profile.cutoff_on(term):  # in time: renewed, no cut-off
            assert renew is not None and renew.state == "done", (name, term, renew)
            assert not renew.result.get("restored")
            assert cutoff is None and restore_fee is None, (name, term)
        elif paid is not None:  # late
            until = profile.restorable_until(term)
            assert renew is not None, (name, term)
            if until is not None and paid <= until:
                assert renew.state == "done", (name, term, renew.last_error)
                assert renew.result["restored"]["fee_on_proforma"] == (
                    str(profile.restore_fee) if profile.restore_fee else None), (name, term)
                if tld == "eu":
                    assert restore_fee == Decimal("15.00"), (name, term)
                    checked_eu_late += 1
                seen["restored"] += 1
            else:  # refused clearly, refund flagged; nothing bought at the registry
                assert renew.state == "failed", (name, term)
                assert "past the registry's cut-off" in (renew.last_error or "")
                assert order.refund_flag
                seen["refused"] += 1
        elif profile.lapse_on(term) <= end:  # never paid: acted on by the cut-off
            assert cutoff is not None and cutoff.state == "done", (name, term, cutoff)
            assert cutoff.params["due_on"] == profile.lapse_on(term).isoformat()
            seen[f"cut-off {tld}"] += 1
        if sv.kind == "domain" and brand == "iserver" and paid is None:
            for x in stages:
                if x.service_id == sv.id and x.stage == "delete_data" and x.term_expiry == term:
                    assert (x.done_on - term).days >= 31, (name, term, x.done_on)
    assert checked_eu_late >= 1, "the year had no late .eu payment to check"
    assert all(seen[k] >= 1 for k in ("restored", "refused", "cut-off at", "cut-off com")), seen
    # what the registry billed us matches what was paid: a renewal or restore only for a
    # term paid by its customer
    renewed_names = Counter(c["name"] for c in sandbox.charges(op="renew"))
    paid_names = Counter(services[sv.id][0] for r, p, sv, order in rows
                         if r.id in paid_on and steps.get(
                             f"service:{sv.id}/domain.renew@{r.term_expiry.isoformat()}") is not None
                         and steps[f"service:{sv.id}/domain.renew@{r.term_expiry.isoformat()}"].state
                         == "done")
    assert renewed_names == paid_names
    restored = {c["name"] for c in sandbox.charges(op="restore")}
    assert restored <= {services[sv.id][0] for r, p, sv, order in rows if r.id in paid_on}
