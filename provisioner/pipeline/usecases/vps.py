"""What ops ask about VPS machines (``provisioner vps``, ``GET /services/{id}``): our
records of each machine and its host; no secret (the root password is never here)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.errors import NotFound
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Service
from provisioner.store.vps import VpsAddressLease, VpsHost, VpsMachine
from provisioner.store.vps_access import VpsRootAccess

Factory = sessionmaker[Session]


def _view(m: VpsMachine, h: VpsHost, service: Service | None, access: VpsRootAccess | None,
          lease: VpsAddressLease | None) -> dict[str, Any]:
    return {
        "vps_id": m.id, "name": f"vps-{m.id}", "service_id": m.service_id,
        "service_state": service.state if service is not None else None,
        "expires_on": str(service.expires_on) if service is not None and service.expires_on else None,
        "hostname": m.hostname, "plan": m.plan, "image": m.image, "address": m.address,
        "tag": m.tag, "state": m.state, "host": h.name, "host_address": h.address,
        "created_at": m.created_at.isoformat(),
        "deleted_at": m.deleted_at.isoformat() if m.deleted_at else None,
        "address_released_at": lease.released_at.isoformat() if lease and lease.released_at else None,
        "access_data": ("issued" if access is not None and access.issued_at is not None
                        else "pending" if access is not None else "none"),
        "ssh": f"ssh root@{m.address}" if m.state not in ("reserved", "deleted") else None,
    }


def _rows(s: Session, *where: Any) -> list[dict[str, Any]]:
    q = (select(VpsMachine, VpsHost, Service, VpsRootAccess, VpsAddressLease)
         .join(VpsHost, VpsHost.id == VpsMachine.host_id)
         .outerjoin(Service, Service.id == VpsMachine.service_id)
         .outerjoin(VpsRootAccess, VpsRootAccess.vps_id == VpsMachine.id)
         .outerjoin(VpsAddressLease, VpsAddressLease.vps_id == VpsMachine.id)
         .where(*where).order_by(VpsMachine.id))
    return [_view(*row) for row in s.execute(q).all()]


def machine_view(s: Session, service_id: int) -> dict[str, Any] | None:
    """The VPS of ``service_id`` (in ``s``), or None: no machine was reserved for it."""
    rows = _rows(s, VpsMachine.service_id == service_id)
    return rows[0] if rows else None


def list_machines(factory: Factory, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        where = () if include_deleted else (VpsMachine.state != "deleted",)
        return _rows(s, *where)


def show_machine(factory: Factory, vps_id: int, actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        rows = _rows(s, VpsMachine.id == vps_id)
        if not rows:
            raise NotFound(f"no VPS {vps_id}")
        audit(s, actor, "service.read", "service", rows[0]["service_id"])
        return rows[0]
