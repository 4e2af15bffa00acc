"""VPS hosts, the machines on them, and their addresses: allocation we own.

A VPS's id, its host and its address are reserved here, in one transaction under
UNIQUE constraints, before any driver is called:

- the VPS id is the ``vps_machines`` row's id, an AUTOINCREMENT (SQLite) or sequence
  (PostgreSQL) value: never handed out twice, never reused after a machine is deleted
  (a reused id is how a cleanup elsewhere deleted a new customer's VM);
- one machine per service (``service_id`` UNIQUE): a re-driven create finds the
  reservation it made before it crashed, never a second one;
- an address is leased from its host's pool; at most one live lease per address (a
  partial UNIQUE index over leases not released), so two concurrent creates cannot get
  the same address; a released address waits ``quarantine`` before anyone gets it again
  (ARP caches, DNS, a customer's firewall rules still point at it);
- every machine carries its tag, ``provisioner-service-<service id>``, and the drivers
  refuse to stop, suspend or delete a machine whose tag differs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from provisioner.errors import InvalidInput, TransientError
from provisioner.store.db import transaction
from provisioner.store.models import Base, UtcDateTime

_HOST_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
#: How long a released address waits before it is leased again.
ADDRESS_QUARANTINE = timedelta(days=7)
LIVE_STATES = ("reserved", "running", "suspended", "stopped")


def tag_for(service_id: int) -> str:
    """The tag every machine of ``service_id`` carries; drivers act only on a match."""
    return f"provisioner-service-{service_id}"


class VpsHost(Base):
    __tablename__ = "vps_hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(253))
    ssh_user: Mapped[str] = mapped_column(String(32), default="root")
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    throwaway: Mapped[bool] = mapped_column(Boolean, default=False)
    pool: Mapped[str] = mapped_column(String(64))  # the VPS addresses, CIDR, e.g. 10.220.0.0/24
    gateway: Mapped[str] = mapped_column(String(64))  # the host's own address in the pool
    capacity: Mapped[int] = mapped_column(Integer)  # most live machines
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | draining
    country: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class VpsMachine(Base):
    __tablename__ = "vps_machines"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), unique=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("vps_hosts.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(253))
    plan: Mapped[str] = mapped_column(String(40))
    image: Mapped[str] = mapped_column(String(40))
    address: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="reserved")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class VpsAddressLease(Base):
    __tablename__ = "vps_address_leases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("vps_hosts.id"))
    address: Mapped[str] = mapped_column(String(64))
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps_machines.id"))
    leased_at: Mapped[datetime] = mapped_column(UtcDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    __table_args__ = (
        # one live lease per address; a released one no longer counts
        Index("uq_vps_address_live", "host_id", "address", unique=True,
              sqlite_where=text("released_at IS NULL"), postgresql_where=text("released_at IS NULL")),
        Index("ix_vps_address_released", "host_id", "released_at"),
    )


@dataclass(frozen=True)
class Allocation:
    vps_id: int
    service_id: int
    host: str
    host_address: str
    address: str
    gateway: str
    tag: str
    created: bool  # False: the reservation existed (a re-driven create)


def add_host(s: Session, name: str, address: str, *, pool: str, capacity: int, now: datetime,
             ssh_user: str = "root", ssh_port: int = 22, throwaway: bool = False,
             country: str | None = None) -> VpsHost:
    """Register a VPS host and its address pool (the first address is the gateway)."""
    if not _HOST_NAME_RE.fullmatch(name):
        raise InvalidInput(f"VPS host name {name!r} must match [a-z][a-z0-9-]{{0,62}}")
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"address pool {pool!r}: {exc}") from None
    if net.num_addresses < 4 or capacity < 1:
        raise InvalidInput("an address pool needs room for a gateway and machines; capacity >= 1")
    host = VpsHost(name=name, address=address, pool=str(net), gateway=str(next(net.hosts())),
                   capacity=capacity, ssh_user=ssh_user, ssh_port=ssh_port, throwaway=throwaway,
                   country=country, created_at=now)
    s.add(host)
    s.flush()
    return host


def _existing(s: Session, service_id: int) -> Allocation | None:
    row = s.execute(select(VpsMachine, VpsHost).join(VpsHost, VpsHost.id == VpsMachine.host_id)
                    .where(VpsMachine.service_id == service_id)).first()
    if row is None:
        return None
    m, h = row
    return Allocation(m.id, service_id, h.name, h.address, m.address, h.gateway, m.tag, created=False)


def _choose_host(s: Session) -> VpsHost:
    live = (select(VpsMachine.host_id, func.count().label("n")).where(VpsMachine.state.in_(LIVE_STATES))
            .group_by(VpsMachine.host_id).subquery())
    rows = s.execute(select(VpsHost, func.coalesce(live.c.n, 0))
                     .outerjoin(live, live.c.host_id == VpsHost.id)
                     .where(VpsHost.state == "active").order_by(VpsHost.name)).all()
    free = [(h.capacity - n, h.name, h) for h, n in rows if n < h.capacity]
    if not free:
        raise TransientError("vps.allocate", "every VPS host is full or draining: add a host")
    return max(free, key=lambda t: (t[0], [-ord(c) for c in t[1]]))[2]


def _free_address(s: Session, host: VpsHost, now: datetime) -> str:
    taken = set(s.execute(select(VpsAddressLease.address).where(
        VpsAddressLease.host_id == host.id,
        (VpsAddressLease.released_at.is_(None))
        | (VpsAddressLease.released_at > now - ADDRESS_QUARANTINE))).scalars())
    for ip in ipaddress.ip_network(host.pool).hosts():
        address = str(ip)
        if address != host.gateway and address not in taken:
            return address
    raise TransientError("vps.allocate", f"host {host.name}: no free address in {host.pool} "
                         "(some may be in quarantine)")


def allocate(factory: sessionmaker[Session], service_id: int, *, hostname: str, plan: str,
             image: str, now: datetime, attempts: int = 20) -> Allocation:
    """Reserve a VPS id, a host and an address for ``service_id`` (or return the
    reservation it already has). Concurrent callers never share an id or an address:
    a lost race on an address's UNIQUE index retries with the next free one."""
    for _ in range(attempts):
        try:
            with transaction(factory) as s:
                found = _existing(s, service_id)
                if found is not None:
                    return found
                host = _choose_host(s)
                address = _free_address(s, host, now)
                m = VpsMachine(service_id=service_id, host_id=host.id, hostname=hostname, plan=plan,
                               image=image, address=address, tag=tag_for(service_id),
                               state="reserved", created_at=now)
                s.add(m)
                s.flush()
                s.add(VpsAddressLease(host_id=host.id, address=address, vps_id=m.id, leased_at=now))
                s.flush()
                return Allocation(m.id, service_id, host.name, host.address, address, host.gateway,
                                  m.tag, created=True)
        except IntegrityError:
            continue  # another create took this address (or this service) at the same moment
    raise TransientError("vps.allocate", f"service {service_id}: could not reserve an address")


def release(factory: sessionmaker[Session], vps_id: int, *, now: datetime) -> None:
    """The machine is gone: its address goes into quarantine; its id stays used forever."""
    with transaction(factory) as s:
        m = s.get(VpsMachine, vps_id)
        if m is None:
            raise InvalidInput(f"no VPS {vps_id}")
        m.state, m.deleted_at = "deleted", m.deleted_at or now
        for lease in s.execute(select(VpsAddressLease).where(VpsAddressLease.vps_id == vps_id,
                                                             VpsAddressLease.released_at.is_(None))).scalars():
            lease.released_at = now
