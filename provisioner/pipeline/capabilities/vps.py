"""VPS lines: a machine with the plan's limits on a VPS host, its access data, and what
the clock does to it (issue 14).

Steps of a new VPS line (``service:{id}/...``), then ``service.activate``:

* ``vps.create``: observe, act, verify. The VPS id, host and address are reserved in our
  database first (`store.vps.allocate`: a re-run finds its reservation, never a second
  one); the root password is made once per machine and kept sealed until its link holds
  it (`store.vps_access`); the driver adopts a machine that carries our tag, never makes
  one twice, and refuses one with another tag. The run that holds the step seals the
  access data in a one-time link (the hosting capability's, `hosting.hold_access_link`)
  and holds the e-mail that carries it, and wipes its own copy of the password, in one
  fenced transaction. A run killed anywhere in between is re-driven to the same machine,
  the same address and the same password. Once the link is held, a re-run only starts
  the machine it finds (never makes one whose password nobody has).
* ``notify.credentials``: the existing step: sends the held e-mail, once.

The clock (`capabilities.lifecycle.stages`) calls `shutdown`, `unsuspend` and `delete`:
the shutdown the day after an unpaid expiry suspends the machine on its host (stopped,
not started at boot, start refused), a late payment unsuspends it, the data-deletion
stage deletes it (unit, disk, state) and keeps the driver's record of what it removed in
the stage record; the address then waits in quarantine, the id is never reused.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.vps.driver import MachineInfo, MachineSpec, RootAccess, VpsDriver
from provisioner.adapters.vps.hosts import VpsTarget
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.lifecycle import ServiceState
from provisioner.errors import InvalidInput, NotFound, StepFailed, TransientError
from provisioner.pipeline.capabilities.hosting import hold_access_link
from provisioner.pipeline.engine.plan import (
    LinePlanner,
    OrderView,
    PlanOptions,
    ServiceView,
    StepSpec,
    service_step,
)
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.outbox import Outbox, step_outbox
from provisioner.store import vps as vps_store
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Service, Step
from provisioner.store.vps import VpsHost, VpsMachine
from provisioner.store.vps_access import mark_issued, root_password, vps_fernet

log = logging.getLogger("provisioner.vps")
SYSTEM = "system:pipeline"
VPS_CREATE = "vps.create"
NOTIFY_CREDENTIALS = "notify.credentials"
DEFAULT_IMAGE = "debian-12"
ROOT = "root"


def plan_vps_line(view: OrderView, service: ServiceView, options: PlanOptions) -> list[StepSpec]:
    """``vps.create -> notify.credentials`` for a new VPS; a renewal changes nothing on
    the host (``service.renew`` extends the term and unsuspends a machine shut down)."""
    if service.action != "new":
        return []
    create = service_step(service.id, VPS_CREATE)
    params = {"service_id": service.id, "plan": service.product, "hostname": service.name,
              "image": DEFAULT_IMAGE}
    return [
        StepSpec(create, VPS_CREATE, (), params, service.id),
        StepSpec(service_step(service.id, NOTIFY_CREDENTIALS), NOTIFY_CREDENTIALS, (create,),
                 {"service_id": service.id}, service.id),
    ]


# -- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """A VPS as the pipeline knows it: its record and its host's (plain values)."""

    vps_id: int
    service_id: int
    tag: str
    hostname: str
    address: str
    image: str
    plan: str
    state: str
    host: VpsTarget
    gateway: str
    prefixlen: int

    def spec(self) -> MachineSpec:
        return MachineSpec.for_plan(DEFAULT_CATALOG.vps_plan(self.plan), vps_id=self.vps_id,
                                    tag=self.tag, hostname=self.hostname, address=self.address,
                                    gateway=self.gateway, prefixlen=self.prefixlen)

    def driver(self, ctx: StepContext) -> VpsDriver:
        return need(ctx.adapters.vps, "VPS hosts (the setting vps_enabled)").driver(self.host, self.image)


def _machine(m: VpsMachine, h: VpsHost) -> Machine:
    target = VpsTarget(h.name, h.address, user=h.ssh_user, port=h.ssh_port, throwaway=bool(h.throwaway))
    return Machine(m.id, m.service_id, m.tag, m.hostname, m.address, m.image, m.plan, m.state, target,
                   h.gateway, ipaddress.ip_network(h.pool).prefixlen)


def machine_of(factory: sessionmaker[Session], service_id: int) -> Machine | None:
    """The service's VPS and its host, or None (no machine was ever reserved for it)."""
    with transaction(factory) as s:
        row = s.execute(select(VpsMachine, VpsHost).join(VpsHost, VpsHost.id == VpsMachine.host_id)
                        .where(VpsMachine.service_id == service_id)).first()
        return None if row is None else _machine(row[0], row[1])


def _set_state(ctx: StepContext, vps_id: int, state: str, action: str, details: dict[str, Any]) -> None:
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = s.get(VpsMachine, vps_id)
        assert row is not None
        if row.state != state:
            row.state = state
            audit(s, SYSTEM, f"vps.{action}", "service", row.service_id, details)


# -- vps.create -------------------------------------------------------------------------------
def step_vps_create(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    plan = DEFAULT_CATALOG.vps_plan(str(step.params["plan"]))  # InvalidInput: no such plan
    image = str(step.params.get("image") or DEFAULT_IMAGE)
    if image not in plan.images:
        raise InvalidInput(f"plan {plan.code} offers no image {image!r}")
    hosts = need(ctx.adapters.vps, "VPS hosts (the setting vps_enabled)")
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        if service is None or service.kind != "vps":
            raise StepFailed(step.key, f"service {service_id} is not a VPS service")
        if s.execute(select(VpsHost.id)).first() is None:  # full or draining hosts: retried
            raise StepFailed(step.key, "no VPS host is registered here: add one (`provisioner vps host add`)")
    alloc = vps_store.allocate(ctx.factory, service_id, hostname=str(step.params["hostname"]),
                               plan=plan.code, image=image, now=ctx.now())
    machine = machine_of(ctx.factory, service_id)
    assert machine is not None
    if machine.state == "deleted":
        raise StepFailed(step.key, f"VPS {machine.vps_id} of service {service_id} was deleted; "
                                   "its id and address are not made again")
    notify_key = service_step(service_id, NOTIFY_CREDENTIALS)
    box = step_outbox(ctx)
    fernet = vps_fernet(ctx.settings)
    with transaction(ctx.factory) as s:
        held = box.state_of(s, notify_key) is not None
        password = None if held else root_password(s, machine.vps_id, fernet, ctx.now())
    if password is None and not held:
        raise StepFailed(step.key, f"VPS {machine.vps_id}: its root password was issued, but no "
                                   "access-data mail is held: reinstall it to issue new access data")
    driver = hosts.driver(machine.host, machine.image)
    ctx.heartbeat()  # the lease first: a run that lost its step makes nothing on the host
    try:
        if password is None:
            # The access data went out: the machine was made with them. Start what is there;
            # a machine made now would have a password nobody has.
            info = driver.start(machine.vps_id, machine.tag)
        else:
            info = driver.create(machine.spec(), RootAccess(password=password))
    except NotFound as exc:
        raise StepFailed(step.key, f"{exc}; its access data were issued already: reinstall it") from None
    if not info.running:
        raise TransientError(f"{step.key}: machine {info.name} on {machine.host.name} is not running")
    with transaction(ctx.factory) as s:
        ctx.fence(s)  # the access data are issued by the run that holds the step, once
        row = s.get(VpsMachine, machine.vps_id)
        assert row is not None
        if row.state == "reserved":
            row.state = "running"
            audit(s, SYSTEM, "vps.created", "service", service_id,
                  {"vps": info.name, "host": machine.host.name, "address": machine.address,
                   "adopted": not info.created})
        if password is not None:
            _hold_access_data(ctx, s, box, notify_key, machine, password)
            mark_issued(s, machine.vps_id, ctx.now())
    return StepResult(info.created or alloc.created or password is not None,
                      {"vps": info.name, "vps_id": machine.vps_id, "host": machine.host.name,
                       "address": machine.address, "hostname": machine.hostname, "plan": plan.code,
                       "image": image, "created": info.created, "running": info.running,
                       "access_data": "held" if password is not None else "issued before"})


def access_data(machine: Machine, password: str) -> dict[str, Any]:
    """What the customer logs in with (the one-time link's page shows each field)."""
    return {"domain": machine.hostname,
            "server": {"hostname": machine.hostname, "address": machine.address, "port": 22,
                       "user": ROOT, "password": password, "ssh": f"ssh {ROOT}@{machine.address}"}}


def _hold_access_data(ctx: StepContext, s: Session, box: Outbox, notify_key: str, machine: Machine,
                      password: str) -> None:
    context = {"hostname": machine.hostname, "address": machine.address, "user": ROOT,
               "plan": DEFAULT_CATALOG.vps_plan(machine.plan).name}
    hold_access_link(ctx, s, box, notify_key, machine.service_id, access_data(machine, password),
                     "vps_credentials", context)


# -- the clock ---------------------------------------------------------------------------------
def _info(machine: Machine, info: MachineInfo) -> dict[str, Any]:
    return {"vps": info.name, "host": machine.host.name, "address": machine.address,
            "running": info.running, "enabled": info.enabled, "suspended": info.suspended}


def shutdown(ctx: StepContext, service_id: int) -> dict[str, Any] | None:
    """Suspend the service's machine (the clock's shutdown of an unpaid expiry): stopped,
    not started when its host boots, start refused until `unsuspend`. A renewal paid while
    it was being suspended brings it back at once (``skipped`` in the answer). None: the
    service has no machine."""
    machine = machine_of(ctx.factory, service_id)
    if machine is None or machine.state in ("reserved", "deleted"):
        return None
    driver = machine.driver(ctx)
    ctx.heartbeat()
    info = driver.suspend(machine.vps_id, machine.tag)
    with transaction(ctx.factory) as s:
        service = s.get(Service, service_id)
        state = service.state if service is not None else None
    if state != ServiceState.EXPIRED.value:  # paid while we were suspending it
        driver.unsuspend(machine.vps_id, machine.tag)
        return {"skipped": "renewed during the shutdown; unsuspended", "vps": info.name}
    _set_state(ctx, machine.vps_id, "suspended", "suspended", {"vps": info.name})
    return _info(machine, info)


def unsuspend(ctx: StepContext, service_id: int) -> dict[str, Any] | None:
    """A late payment: the suspended machine runs again, its disk as it was."""
    machine = machine_of(ctx.factory, service_id)
    if machine is None or machine.state in ("reserved", "deleted"):
        return None
    ctx.heartbeat()
    info = machine.driver(ctx).unsuspend(machine.vps_id, machine.tag)
    _set_state(ctx, machine.vps_id, "running", "unsuspended", {"vps": info.name})
    return _info(machine, info)


def delete(ctx: StepContext, service_id: int) -> dict[str, Any] | None:
    """The data-deletion stage: the machine's unit, disk and state removed from its host;
    the driver's record of what it removed is returned (the stage record keeps it). The
    address goes into quarantine; the id stays used."""
    machine = machine_of(ctx.factory, service_id)
    if machine is None:
        return None
    removed: dict[str, Any]
    if machine.state == "deleted":
        return {"vps": f"vps-{machine.vps_id}", "note": "deleted before"}
    ctx.heartbeat()
    try:
        removed = dict(machine.driver(ctx).delete(machine.vps_id, machine.tag))
    except NotFound:
        removed = {"machine": f"vps-{machine.vps_id}", "tag": machine.tag,
                   "note": "not on its host any more (a run cut off after the delete)"}
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        audit(s, SYSTEM, "vps.deleted", "service", service_id, {**removed, "host": machine.host.name})
    vps_store.release(ctx.factory, machine.vps_id, now=ctx.now())
    return {**removed, "host": machine.host.name, "address": machine.address}


PLANNERS: dict[str, LinePlanner] = {"vps": plan_vps_line}
HANDLERS: dict[str, Handler] = {VPS_CREATE: step_vps_create}
