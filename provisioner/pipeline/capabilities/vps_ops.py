"""Ops work on a running VPS (issue 14, item 4): a plan change (resize) and a reinstall.

Both are journal steps of the service's order, like ``hosting.change_plan``: the journal
gives them retries, a lease, a fence and the outbox that holds and sends the one-time
link mail, which a reinstall needs exactly as ``vps.create`` does. They are journaled by
`usecases.vps_ops` (``provisioner vps resize`` / ``reinstall``), never planned from an
order line.

* ``vps.resize#N``: disruptive (a growing disk stops and starts the machine), so the
  runner runs it only in the maintenance window or forced with a reason. The driver
  grows the disk and sets the new plan's limits; then our records (the machine's plan, the
  service's product, which its next renewal is billed by) carry the new plan.
  A shrinking disk is refused (InvalidInput) before anything changes.
* ``vps.reinstall#N`` then ``notify.credentials#N``: the machine gets a fresh disk from
  its image with the new root password that the use case sealed (`store.vps_access`)
  when it journaled the step; the run that holds the step seals it into a new one-time
  link (earlier unused links stop working), holds the mail and wipes its own copy, in
  one fenced transaction. A re-run after that sends nothing new and leaves the disk.
"""

from __future__ import annotations

import dataclasses

from provisioner.adapters.vps.driver import RootAccess
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.errors import StepFailed, TransientError
from provisioner.pipeline.capabilities.hosting import hold_access_link
from provisioner.pipeline.capabilities.vps import (
    NOTIFY_CREDENTIALS,
    ROOT,
    SYSTEM,
    access_data,
    machine_of,
)
from provisioner.pipeline.engine.plan import LinePlanner
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult, disruptive
from provisioner.pipeline.outbox import step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Service, Step
from provisioner.store.vps import VpsMachine
from provisioner.store.vps_access import mark_issued, root_password, vps_fernet

VPS_RESIZE = "vps.resize"
VPS_REINSTALL = "vps.reinstall"
LIVE = ("running", "stopped")


def notify_key_of(reinstall_key: str) -> str:
    """``service:7/vps.reinstall#2`` -> ``service:7/notify.credentials#2``: the step that
    sends the mail the reinstall held."""
    prefix, _, n = reinstall_key.rpartition("#")
    return f"{prefix.rpartition('/')[0]}/{NOTIFY_CREDENTIALS}#{n}"


# -- vps.resize ---------------------------------------------------------------------------------
@disruptive
def step_vps_resize(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    plan = DEFAULT_CATALOG.vps_plan(str(step.params["plan"]))  # InvalidInput: no such plan
    machine = machine_of(ctx.factory, service_id)
    if machine is None or machine.state not in LIVE:
        raise StepFailed(step.key, f"service {service_id} has no live VPS to resize")
    if machine.plan == plan.code:
        return StepResult(False, {"vps_id": machine.vps_id, "plan": plan.code, "note": "on it already"})
    old = DEFAULT_CATALOG.vps_plan(machine.plan)
    ctx.heartbeat()
    info = machine.driver(ctx).resize(dataclasses.replace(machine, plan=plan.code).spec())
    if not info.running and machine.state == "running":
        raise TransientError(f"{step.key}: machine {info.name} is not running after the resize")
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = s.get(VpsMachine, machine.vps_id)
        assert row is not None
        row.plan = plan.code
        service = s.get(Service, service_id)
        assert service is not None
        service.product = plan.code  # the next renewal is billed for the plan it runs on
        audit(s, SYSTEM, "vps.resized", "service", service_id,
              {"vps": info.name, "from": old.code, "to": plan.code,
               "disk_gb": [old.disk_gb, plan.disk_gb]})
    return StepResult(True, {"vps": info.name, "vps_id": machine.vps_id, "from": old.code,
                             "to": plan.code, "disk_gb": plan.disk_gb, "running": info.running})


# -- vps.reinstall --------------------------------------------------------------------------------
def step_vps_reinstall(ctx: StepContext, step: Step) -> StepResult:
    service_id = int(step.params["service_id"])
    machine = machine_of(ctx.factory, service_id)
    if machine is None or machine.state not in LIVE:
        raise StepFailed(step.key, f"service {service_id} has no live VPS to reinstall")
    notify_key = notify_key_of(step.key)
    box = step_outbox(ctx)
    with transaction(ctx.factory) as s:
        if box.state_of(s, notify_key) is not None:  # a run before this one finished it
            return StepResult(False, {"vps_id": machine.vps_id, "access_data": "held before"})
        password = root_password(s, machine.vps_id, vps_fernet(ctx.settings), ctx.now())
    if password is None:
        raise StepFailed(step.key, f"VPS {machine.vps_id}: no new root password is sealed for this "
                                   "reinstall (ask for it again: `provisioner vps reinstall`)")
    ctx.heartbeat()
    info = machine.driver(ctx).reinstall(machine.vps_id, machine.tag, RootAccess(password=password))
    if not info.running:
        raise TransientError(f"{step.key}: machine {info.name} is not running after the reinstall")
    with transaction(ctx.factory) as s:
        ctx.fence(s)
        row = s.get(VpsMachine, machine.vps_id)
        assert row is not None
        row.state = "running"
        context = {"hostname": machine.hostname, "address": machine.address, "user": ROOT,
                   "plan": DEFAULT_CATALOG.vps_plan(machine.plan).name}
        hold_access_link(ctx, s, box, notify_key, service_id, access_data(machine, password),
                         "vps_credentials", context)
        mark_issued(s, machine.vps_id, ctx.now())
        audit(s, SYSTEM, "vps.reinstalled", "service", service_id,
              {"vps": info.name, "image": machine.image})
    return StepResult(True, {"vps": info.name, "vps_id": machine.vps_id, "image": machine.image,
                             "running": info.running, "access_data": "held"})


PLANNERS: dict[str, LinePlanner] = {}
HANDLERS: dict[str, Handler] = {VPS_RESIZE: step_vps_resize, VPS_REINSTALL: step_vps_reinstall}
