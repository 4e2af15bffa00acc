"""Where a hosting account lives: placement on the least-full node (once per service),
and the plain values the node adapters take (`Target`, `AccountSpec`).

One module that the hosting, DNS, lifecycle and quota capabilities all call, so none of
them reaches into another (`dns.zone` places the account before `hosting.account` when
it runs first: the zone's records must point at the node that will serve the site).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.adapters.hosting.accounts import AccountSpec, BrandPage
from provisioner.adapters.hosting.ansible import Target
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.names import normalize_domain, username_for_domain
from provisioner.domain.placement import NoCapacity
from provisioner.domain.policy import BrandPolicy
from provisioner.errors import StepFailed
from provisioner.store.audit import audit
from provisioner.store.hosting import HostingAccount, HostingNode, place_account
from provisioner.store.models import Service

SYSTEM = "system:pipeline"
MAILBOXES = ("info",)


def place(s: Session, service_id: int, step_key: str) -> tuple[HostingAccount, HostingNode, bool] | None:
    """Place a hosting service's account on the least-full node, once (a re-run finds the
    recorded placement): (account, node, placed now). None for a non-hosting service;
    StepFailed when no node has room (ops must add one: alert, refund flag)."""
    service = s.get(Service, service_id)
    if service is None or service.kind != "hosting":
        return None
    plan = DEFAULT_CATALOG.hosting_plan(service.product)
    domain = normalize_domain(service.name)
    try:
        account, node, placed = place_account(
            s, service_id=service_id, domain=domain, plan=plan.code, disk_mb=plan.disk_mb,
            username_base=username_base(domain))
    except NoCapacity as exc:
        raise StepFailed(step_key, str(exc)) from exc
    if placed:
        audit(s, SYSTEM, "hosting.placed", "service", service_id,
              {"node": node.name, "account": account.username, "by": step_key})
    return account, node, placed


def username_base(domain: str) -> str:
    """The first part of an account's user name, from its domain (the placement adds a
    number when it is taken)."""
    base = username_for_domain(domain, max_length=16)
    base = "".join(ch for ch in base if ch.isalnum())
    if not base or not base[0].isalpha():
        base = "u" + base
    return base[:16]


def target_of(node: HostingNode) -> Target:
    """The node as the adapters reach it; its record says whether it is throwaway."""
    return Target(node.name, node.address, user=node.ssh_user, port=node.ssh_port,
                  throwaway=bool(node.throwaway))


def brand_page(brand: BrandPolicy) -> BrandPage:
    """The "site disabled" page of the brand's customers: its name, web site, support."""
    return BrandPage(brand.code, brand.display_name or brand.name, brand.website_url,
                     brand.support_email)


def spec_of(account: HostingAccount, brand: BrandPolicy | None = None) -> AccountSpec:
    """The account as the adapter converges it; with ``brand`` (the customer's), a
    suspended account shows that brand's page."""
    return AccountSpec(account.username, (account.domain,), DEFAULT_CATALOG.hosting_plan(account.plan),
                       mailboxes=MAILBOXES, page=brand_page(brand) if brand is not None else None)


def account_and_node(s: Session, service_id: int) -> tuple[HostingAccount | None, HostingNode | None]:
    """The service's hosting account and its node (detached), or (None, None)."""
    account = s.execute(select(HostingAccount).where(HostingAccount.service_id == service_id)
                        ).scalar_one_or_none()
    node = s.get(HostingNode, account.node_id) if account is not None else None
    for row in (account, node):
        if row is not None:
            s.expunge(row)
    return account, node
