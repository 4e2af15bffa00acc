"""Accounts over their quota (RULES "Shared hosting limits"): "over disk/transfer quota:
warn; customer has 7 days to upgrade" and "over limits: no free backups of that account".

Run daily (the beat's ``provisioner.quota``, or ``provisioner quota``): each node's usage
report (``adapters/hosting/usage.py``) is read over SSH, and for every account the pure
``domain.lifecycle.quota_decision`` says what changes. The first day over, the customer
gets one e-mail with the deadline (the brand's ``over_quota_grace_days``); once the
deadline has passed and the account is still over, its free backups stop (on the node)
and ops are told; back under its limits, backups start again.

The same report says how many times the node's mail policy failed open (a message
passed unchecked); the count only grows on the node. When it grew since the last check
(the count kept on the node's record), ops get one alert naming the new failures.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.usage import NodeUsage
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import quota_decision
from provisioner.domain.policy import get_brand
from provisioner.errors import ProvisionerError
from provisioner.pipeline.capabilities.placement import target_of
from provisioner.pipeline.engine.ports import HostingBackups, OpsAlert, UsageReader
from provisioner.pipeline.outbox import Outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.models import Customer, Order, Service

log = logging.getLogger("provisioner.quota")
SYSTEM = "system:quota"
MB = 1024 * 1024


def check_quotas(factory: sessionmaker[Session], today: date, *, reader: UsageReader,
                 backups: HostingBackups, outbox: Outbox, alert: OpsAlert | None = None
                 ) -> dict[str, Any]:
    """Read every active node's usage and act on it. Returns what happened, per account."""
    report: dict[str, Any] = {"today": today.isoformat(), "nodes": {}, "warned": [],
                              "backups_stopped": [], "backups_restored": [], "errors": {},
                              "mail_policy_failures": {}}
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
        _mail_policy(factory, node, usage, alert, report)
        for name, u in usage.items():
            _account(factory, node, name, u, today, backups, outbox, alert, report)
    return report


def _mail_policy(factory: sessionmaker[Session], node: HostingNode, usage: NodeUsage,
                 alert: OpsAlert | None, report: dict[str, Any]) -> None:
    """Alert ops once when the node's mail policy failed open more often than the last
    check saw (the count is kept only once ops were told, so a failed alert is sent by
    the next check); a count that went down (the node's file was reset) is taken as is."""
    count = usage.mail_policy_failures
    if count is None:
        return
    with transaction(factory) as s:
        row = s.get(HostingNode, node.id)
        seen = (row.mail_policy_failures or 0) if row is not None else 0
    new = count - seen
    report["mail_policy_failures"][node.name] = {"count": count, "new": max(new, 0)}
    if new > 0:
        if alert is None:
            return
        detail = (f"node {node.name}: the mail sending policy failed open {new} more time(s) ({count} "
                  "in all): those messages passed without the plans' sending limits. Last error: "
                  f"{usage.mail_policy_last_error or 'unknown'}")
        log.warning("quota: %s", detail)
        try:
            alert(step_key=f"node:{node.name}/mail_policy@{count}", order_id=0, detail=detail, attempts=0)
        except Exception:  # noqa: BLE001 - the next check alerts again: the count is not kept
            log.exception("quota: could not alert ops about node %s's mail policy", node.name)
            return
    if new == 0:
        return
    with transaction(factory) as s:
        row = s.get(HostingNode, node.id)
        if row is not None:
            row.mail_policy_failures = count
            audit(s, SYSTEM, "hosting.mail_policy_failures", "node", node.name,
                  {"count": count, "new": new, "last_error": usage.mail_policy_last_error})


def _account(factory: sessionmaker[Session], node: HostingNode, name: str, u: Any,
             today: date, backups: HostingBackups, outbox: Outbox, alert: OpsAlert | None,
             report: dict[str, Any]) -> None:
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
        sender = policy.mail_from or None  # the customer's brand writes to them
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
        replace(outbox, sender=sender).send_once(f"hosting:{account_id}/over_quota@{d.over_since}",
                                                 email, "over_quota",
                         lang, {
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
