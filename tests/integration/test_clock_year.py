"""A simulated year over 1,000 services with random payment behaviour, the clock moved
day by day (what ``provisioner sweep --now`` does): every renewal proforma sent once and
at least 30 days ahead; no paid service ever shut down; every unpaid one shut down
exactly the day after expiry; no stage before its day, none skipped; late payers
renewed from the original expiry. The node side of the stages (files and backups gone)
is checked on a throwaway node in tests/e2e/test_clock_node.py."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select, update

from provisioner.devstack.smtp_sink import SmtpSink
from provisioner.domain.lifecycle import add_period, renew_by
from provisioner.domain.policy import get_brand
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import Order, OutboxMail, Proforma, Service, Step
from provisioner.timeutil import iter_days
from tests.helpers import make_clock_world as make_world

START = date(2027, 1, 1)
SERVICES = 1000


def test_a_simulated_year_over_1000_services(sqlite_url: str, tmp_path: Path,
                                             smtp_sink: SmtpSink) -> None:
    rnd = random.Random(20271)
    world = make_world(sqlite_url, tmp_path, smtp_sink, START)
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
        for stage, days in (("delete_data", policy.data_retention_days),
                            ("purge_backups", max(policy.backup_retention_days,
                                                  policy.data_retention_days))):
            rec = stage_of.get((sid, term, stage))
            due = term + timedelta(days=days)
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

