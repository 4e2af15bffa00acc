"""Accounts over their quota (RULES "Shared hosting limits"): "over disk/transfer quota:
warn; customer has 7 days to upgrade" and "over limits: no free backups of that account".

Run daily (the beat's ``provisioner.quota``, or ``provisioner quota``): each node's usage
report (``adapters/hosting/usage.py``) is read over SSH, and for every account the pure
``domain.lifecycle.quota_decision`` says what changes. The first day over, the customer
gets one e-mail with the deadline (the brand's ``over_quota_grace_days``); once the
deadline has passed and the account is still over, its free backups stop (on the node)
and ops are told; back under its limits, backups start again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.mail import Mailer, make_message_id, render_mail
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import quota_decision
from provisioner.domain.policy import get_brand
from provisioner.errors import ProvisionerError
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.models import Customer, Order, OutboxMail, Service

log = logging.getLogger("provisioner.quota")
SYSTEM = "system:quota"
MB = 1024 * 1024

UsageReader = Callable[[Any], Mapping[str, Any]]  # Target -> {account: AccountUsage}


def check_quotas(factory: sessionmaker[Session], settings: Any, today: date, *,
                 reader: UsageReader, backups: Any, mailer: Any | None = None,
                 alert: Callable[..., None] | None = None) -> dict[str, Any]:
    """Read every active node's usage and act on it. Returns what happened, per account."""
    from provisioner.pipeline.capabilities.hosting import target_of

    report: dict[str, Any] = {"today": today.isoformat(), "nodes": {}, "warned": [],
                              "backups_stopped": [], "backups_restored": [], "errors": {}}
    with transaction(factory) as s:
        nodes = list(s.execute(select(HostingNode).where(HostingNode.state == "active")).scalars())
        s.expunge_all()
    for node in nodes:
        try:
            usage = reader(target_of(node))
        except ProvisionerError as exc:  # one dead node does not stop the others
            report["errors"][node.name] = str(exc)
            log.warning("quota: node %s: %s", node.name, exc)
            continue
        report["nodes"][node.name] = len(usage)
        for name, u in usage.items():
            _account(factory, settings, node, name, u, today, backups, mailer, alert, report)
    return report


def _account(factory: sessionmaker[Session], settings: Any, node: HostingNode, name: str, u: Any,
             today: date, backups: Any, mailer: Any | None, alert: Callable[..., None] | None,
             report: dict[str, Any]) -> None:
    from provisioner.pipeline.capabilities.hosting import target_of

    with transaction(factory) as s:
        row = s.execute(select(HostingAccount).where(HostingAccount.username == name,
                                                     HostingAccount.node_id == node.id)
                        ).scalar_one_or_none()
        if row is None or row.state not in ("active", "suspended"):
            return  # not ours (or on its way out): nothing to decide
        service = s.get(Service, row.service_id)
        assert service is not None
        policy = get_brand(s.get(Order, service.order_id).brand)  # type: ignore[union-attr]
        d = quota_decision(bool(u.over_quota), row.over_quota_since, row.backups_excluded, today,
                           policy.over_quota_grace_days)
        before = (row.over_quota_since, row.backups_excluded)
        account_id, domain, plan = row.id, row.domain, row.plan
        grace = policy.over_quota_grace_days
        customer = s.get(Customer, service.customer_id)
        assert customer is not None
        email, lang = customer.email, customer.lang
    if d.backups_excluded != before[1]:
        backups.set_free_backups(target_of(node), name, not d.backups_excluded)
        report["backups_stopped" if d.backups_excluded else "backups_restored"].append(name)
    with transaction(factory) as s:
        row = s.get(HostingAccount, account_id)
        assert row is not None
        row.over_quota_since = d.over_since
        row.backups_excluded = d.backups_excluded
        if (d.over_since, d.backups_excluded) != before:
            audit(s, SYSTEM, "hosting.quota", "service", row.service_id,
                  {"over_since": d.over_since.isoformat() if d.over_since else None,
                   "backups_excluded": d.backups_excluded,
                   "used_mb": u.used_bytes // MB, "db_mb": (u.db_bytes or 0) // MB})
    if d.warn and d.over_since is not None:
        plan_row = DEFAULT_CATALOG.hosting_plan(plan)
        _mail_once(factory, settings, mailer, key=f"hosting:{account_id}/over_quota@{d.over_since}",
                   to=email, lang=lang, context={
                       "account": {"domain": domain, "plan": plan_row.name,
                                   "used_mb": u.used_bytes // MB,
                                   "quota_mb": int(u.limits.get("disk_mb", plan_row.disk_mb)),
                                   "database_over": bool(u.over_database),
                                   "database_max_mb": int(u.limits.get("database_max_mb", 1024))},
                       "deadline": d.over_since + timedelta(days=grace),
                   })
        report["warned"].append(name)
    if d.alert_ops and alert is not None:
        alert(step_key=f"hosting:{account_id}/over_quota", order_id=0,
              detail=f"{name} ({domain}) is still over its limits {d.over_since} + grace: free "
                     "backups stopped", attempts=0)


def _mail_once(factory: sessionmaker[Session], settings: Any, mailer: Any | None, *, key: str,
               to: str, lang: str, context: dict[str, Any]) -> None:
    """One e-mail per key through the outbox (the same rule as the pipeline's e-mails)."""
    with transaction(factory) as s:
        row = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one_or_none()
        if row is not None and row.state == "sent":
            return
        message_id = make_message_id(key, settings.mail_from.rsplit("@", 1)[-1].strip(">"))
        if row is None:
            row = OutboxMail(key=key, message_id=message_id, recipient=to, template="over_quota",
                             state="sending", attempts=0)
            s.add(row)
        row.attempts += 1
    rendered = render_mail("over_quota", lang, context)
    (mailer or Mailer(settings)).send(to=to, rendered=rendered, message_id=message_id,
                                      headers={"X-Provisioner-Step": key})
    with transaction(factory) as s:
        sent = s.execute(select(OutboxMail).where(OutboxMail.key == key)).scalar_one()
        sent.state = "sent"
        audit(s, SYSTEM, "mail.sent", "mail", message_id, {"template": "over_quota"})


def scheduled_check(settings: Any) -> dict[str, Any]:
    """The beat's daily check, with the real adapters."""
    from provisioner.adapters.hosting.usage import read_usage
    from provisioner.timeutil import utcnow
    from provisioner.pipeline.capabilities.lifecycle import make_backups_adapter
    from provisioner.pipeline.capabilities.hosting import default_ssh_key
    from provisioner.bootstrap import ops_alert
    from provisioner.store.db import session_factory

    extra = getattr(settings, "extra", {}) or {}
    key = extra.get("hosting_ssh_key")
    ssh_key = key or default_ssh_key()
    throwaway = bool(extra.get("hosting_throwaway", ssh_key is not None and key is None))

    def reader(target: Any) -> Mapping[str, Any]:
        return read_usage(target, ssh_key, throwaway=throwaway)  # type: ignore[arg-type]

    return check_quotas(session_factory(settings.effective_database_url), settings,
                        utcnow().date(), reader=reader, backups=make_backups_adapter(settings),
                        alert=ops_alert(settings))
