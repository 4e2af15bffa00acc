"""Hosting nodes, the accounts placed on them, and one-time credential links.

No password is ever stored: a credential link keeps only the SHA-256 of its token and
the access data encrypted with a key derived from that token (which only the
customer's e-mail holds), so the database alone reveals nothing.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Integer, LargeBinary, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from provisioner.domain.placement import NodeLoad, choose_node
from provisioner.errors import InvalidInput
from provisioner.store.models import Base, UtcDateTime
from provisioner.timeutil import utcnow

_NODE_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")


class HostingNode(Base):
    __tablename__ = "hosting_nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(253))
    ssh_user: Mapped[str] = mapped_column(String(32), default="root")
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    capacity_accounts: Mapped[int] = mapped_column(Integer)
    capacity_disk_mb: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | draining
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # A throwaway host of this machine's devstack (`provisioner hosts up`, the tests):
    # its SSH host key is not checked. Set when the node is registered, never inferred.
    throwaway: Mapped[bool] = mapped_column(Boolean, default=False)
    # How many times the node's mail policy failed open, as the last quota check read it
    # from the node's usage report (a count that grew since is an ops alert).
    mail_policy_failures: Mapped[int] = mapped_column(Integer, default=0)
    # ISO 3166 alpha-2 country the node's data sit in (data residency, `allowed_countries`)
    country: Mapped[str | None] = mapped_column(String(2))


class HostingAccount(Base):
    __tablename__ = "hosting_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("hosting_nodes.id"), index=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    domain: Mapped[str] = mapped_column(String(253))
    plan: Mapped[str] = mapped_column(String(16))
    disk_mb: Mapped[int] = mapped_column(Integer)  # reserved on the node (the plan's disk)
    state: Mapped[str] = mapped_column(String(16))  # creating | active | suspended | terminated
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # RULES "over disk/transfer quota: warn; customer has 7 days to upgrade" and "over
    # limits: no free backups of that account" (pipeline/quota.py)
    over_quota_since: Mapped[date | None] = mapped_column(Date)
    backups_excluded: Mapped[bool] = mapped_column(Boolean, default=False)


class CredentialLink(Base):
    __tablename__ = "credential_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)  # Fernet(key from the token)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- repository ---------------------------------------------------------------------------
def add_node(s: Session, name: str, address: str, *, capacity_accounts: int, capacity_disk_mb: int,
             ssh_user: str = "root", ssh_port: int = 22,
             throwaway: bool = False, country: str | None = None) -> tuple[HostingNode, bool]:
    """Register a node, or update the address/capacity of one with that name.
    ``throwaway`` only for a throwaway host of this machine (no host-key check);
    ``country`` (ISO 3166 alpha-2) where its data sit, None: left as it is."""
    if not _NODE_NAME_RE.fullmatch(name or ""):
        raise InvalidInput(f"node name {name!r} must match [a-z][a-z0-9-]{{0,62}}")
    if not _ADDRESS_RE.fullmatch(address or ""):
        raise InvalidInput(f"node address {address!r} must be a host name or an IP address")
    if capacity_accounts < 1 or capacity_disk_mb < 1:
        raise InvalidInput("a node's capacities must be positive")
    if not 1 <= ssh_port <= 65535:
        raise InvalidInput("bad SSH port")
    node = s.execute(select(HostingNode).where(HostingNode.name == name)).scalar_one_or_none()
    created = node is None
    if node is None:
        node = HostingNode(name=name, created_at=utcnow(), state="active")
        s.add(node)
    node.address = address
    node.capacity_accounts = capacity_accounts
    node.capacity_disk_mb = capacity_disk_mb
    node.ssh_user = ssh_user
    node.ssh_port = ssh_port
    node.throwaway = throwaway
    if country is not None:
        code = country.strip().upper()
        if not _COUNTRY_RE.fullmatch(code):
            raise InvalidInput(f"node country {country!r} must be an ISO 3166 alpha-2 code (e.g. SI)")
        node.country = code
    s.flush()
    return node, created


def node_loads(s: Session) -> list[tuple[HostingNode, NodeLoad]]:
    """Every node with what is placed on it (terminated accounts free their room)."""
    used = dict(
        (row[0], (int(row[1]), int(row[2] or 0)))
        for row in s.execute(
            select(HostingAccount.node_id, func.count(HostingAccount.id), func.sum(HostingAccount.disk_mb))
            .where(HostingAccount.state != "terminated")
            .group_by(HostingAccount.node_id)
        )
    )
    out = []
    for node in s.execute(select(HostingNode).order_by(HostingNode.name)).scalars():
        accounts, disk = used.get(node.id, (0, 0))
        out.append((node, NodeLoad(node.name, node.capacity_accounts, node.capacity_disk_mb, accounts, disk,
                                   node.state == "active")))
    return out


def unique_username(s: Session, base: str) -> str:
    """``base`` or ``base2``, ``base3``... whichever no account has yet."""
    taken = set(s.execute(select(HostingAccount.username)
                          .where(HostingAccount.username.like(f"{base[:28]}%"))).scalars())
    if base not in taken:
        return base
    for i in range(2, 10000):
        candidate = f"{base[: 32 - len(str(i))]}{i}"
        if candidate not in taken:
            return candidate
    raise InvalidInput(f"no free user name for {base!r}")


def account_for_service(s: Session, service_id: int) -> HostingAccount | None:
    q = select(HostingAccount).where(HostingAccount.service_id == service_id)
    return s.execute(q).scalar_one_or_none()


def place_account(s: Session, *, service_id: int, domain: str, plan: str, disk_mb: int,
                  username_base: str) -> tuple[HostingAccount, HostingNode, bool]:
    """The service's account (placed once): observe first, place only if there is none."""
    existing = account_for_service(s, service_id)
    if existing is not None:
        node = s.get(HostingNode, existing.node_id)
        assert node is not None
        return existing, node, False
    loads = node_loads(s)
    chosen = choose_node([load for _, load in loads], disk_mb)
    node = next(n for n, load in loads if load.name == chosen.name)
    now = utcnow()
    username = unique_username(s, username_base)
    account = HostingAccount(service_id=service_id, node_id=node.id, username=username,
                             domain=domain, plan=plan, disk_mb=disk_mb, state="creating",
                             created_at=now, updated_at=now)
    s.add(account)
    s.flush()
    return account, node, True
