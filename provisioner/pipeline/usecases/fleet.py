"""Fleet rollout of the hosting nodes (``provisioner nodes rollout``) and the drift check
(``provisioner nodes drift``), for ops and their CI.

A rollout converges the active nodes in batches with the hosting_node playbook: first
the canary batch (``canary`` nodes), then batches of ``serial`` nodes. A failed canary
stops the rollout; so does any batch that brings the failures over ``max_fail``; every
node after the stop is left untouched and reported as such.

A converge restarts the daemons it changes (nginx, php-fpm, Postfix, Dovecot): the
customer-facing disruption RULES keep to the maintenance window (23:00-05:00
Europe/Ljubljana). Outside the window a rollout first checks (Ansible's check mode,
nothing changes): a fleet without drift has nothing to do; one with drift is refused
(exit status 4) unless ops force the window with a reason, which is audited.

``drift`` is the check alone, over every node (it never stops early): exit status 3
when a node would change. Both write a JUnit file on request, one test case per node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.hosting.ansible import RunResult, Target, run_playbook
from provisioner.config import Settings
from provisioner.errors import InvalidInput, NotFound
from provisioner.pipeline.capabilities.placement import target_of
from provisioner.pipeline.usecases.junit import Case, junit_xml
from provisioner.pipeline.usecases.maintenance import (
    EXIT_OUTSIDE_WINDOW,
    NODE_PLAYBOOK,
    WindowCheck,
    check_window,
)
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode
from provisioner.timeutil import utcnow

Factory = sessionmaker[Session]
Run = Callable[..., RunResult]

#: Exit statuses of the fleet commands (README, "Ops from CI").
EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DRIFT = 0, 1, 2, 3

CONVERGED, UNCHANGED, DRIFT, FAILED, UNTOUCHED = "converged", "unchanged", "drift", "failed", "untouched"


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    status: str  # converged | unchanged | drift | failed | untouched
    changes: tuple[str, ...] = ()  # the tasks that changed (or would change) the node
    error: str = ""
    batch: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "status": self.status, "changes": list(self.changes),
                "error": self.error, "batch": self.batch, "seconds": self.seconds}


@dataclass(frozen=True)
class FleetReport:
    mode: str  # rollout | drift
    window: WindowCheck
    outcomes: tuple[NodeOutcome, ...]
    stopped: str = ""  # why a rollout stopped before the last batch
    refused: bool = False  # outside the window, with changes to make
    batches: tuple[tuple[str, ...], ...] = field(default=())

    def _with(self, status: str) -> list[str]:
        return [o.node for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_OUTSIDE_WINDOW
        if self._with(FAILED):
            return EXIT_FAILED
        if self.mode == "drift" and self._with(DRIFT):
            return EXIT_DRIFT
        return EXIT_DONE

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "exit_code": self.exit_code, "refused": self.refused,
                "stopped": self.stopped, "window": self.window.as_dict(),
                "batches": [list(b) for b in self.batches],
                "nodes": [o.as_dict() for o in self.outcomes]}

    def junit(self) -> str:
        """JUnit XML: one test case per node; a failure (or drift) is a <failure>, a node
        the rollout did not reach is <skipped>."""
        cases = []
        for o in self.outcomes:
            failure = (f"{o.node} failed: {o.error}" if o.status == FAILED
                       else f"{o.node} has drifted: {len(o.changes)} task(s)" if o.status == DRIFT else None)
            cases.append(Case(o.node, f"nodes.{self.mode}", failure,
                              o.error if o.status == FAILED else "\n".join(o.changes),
                              (self.stopped or "not reached") if o.status == UNTOUCHED else None, o.seconds))
        return junit_xml(f"provisioner nodes {self.mode}", cases)


def _nodes(factory: Factory, names: Sequence[str]) -> list[HostingNode]:
    with transaction(factory) as s:
        q = select(HostingNode).where(HostingNode.state == "active").order_by(HostingNode.name)
        nodes = list(s.execute(q).scalars())
        s.expunge_all()
    if names:
        known = {n.name: n for n in nodes}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFound(f"no active node {', '.join(missing)}")
        nodes = [known[n] for n in names]
    return nodes


def batches_of(names: Sequence[str], *, canary: int, serial: int) -> list[tuple[str, ...]]:
    """The canary batch first (if ``canary``), then batches of ``serial``."""
    if serial < 1 or canary < 0:
        raise InvalidInput("--serial must be at least 1 and --canary at least 0")
    head, rest = list(names[:canary]), list(names[canary:])
    out = [tuple(head)] if head else []
    out += [tuple(rest[i:i + serial]) for i in range(0, len(rest), serial)]
    return out


def _outcomes(result: RunResult, targets: list[Target], batch: int, *, check: bool) -> list[NodeOutcome]:
    failed = set(result.failed_hosts())
    if not result.ok and not failed:  # the run failed as a whole (timeout, bad playbook)
        failed = {t.name for t in targets}
    share = round(result.duration_s, 2)
    out = []
    for t in targets:
        changes = tuple(result.changes.get(t.name, ()))
        if t.name in failed:
            out.append(NodeOutcome(t.name, FAILED, changes, result.errors.get(t.name, result.status),
                                   batch, share))
        elif changes or (result.stats.get(t.name) or {}).get("changed", 0):
            out.append(NodeOutcome(t.name, DRIFT if check else CONVERGED, changes, "", batch, share))
        else:
            out.append(NodeOutcome(t.name, UNCHANGED, (), "", batch, share))
    return out


def _run(settings: Settings, run: Run, targets: list[Target], *, check: bool) -> RunResult:
    return run(NODE_PLAYBOOK, targets, {}, ssh_key=settings.node_ssh_key_path,
               known_hosts=settings.node_known_hosts_path, check=check)


def drift(settings: Settings, factory: Factory, *, names: Sequence[str] = (), serial: int = 5,
          now: datetime | None = None, run: Run = run_playbook) -> FleetReport:
    """Check every node (check mode, nothing changes): what a rollout would change."""
    nodes = _nodes(factory, names)
    gate = check_window(settings, now or utcnow())
    plan = batches_of([n.name for n in nodes], canary=0, serial=serial)
    by_name = {n.name: target_of(n) for n in nodes}
    outcomes: list[NodeOutcome] = []
    for i, batch in enumerate(plan):
        targets = [by_name[n] for n in batch]
        outcomes += _outcomes(_run(settings, run, targets, check=True), targets, i, check=True)
    return FleetReport("drift", gate, tuple(outcomes), batches=tuple(plan))


def rollout(settings: Settings, factory: Factory, *, actor: str, names: Sequence[str] = (),
            serial: int = 1, canary: int = 1, max_fail: int = 0, force_reason: str | None = None,
            now: datetime | None = None, run: Run = run_playbook) -> FleetReport:
    """Converge the nodes in batches, the canary first; stop at the first failure past
    ``max_fail`` (or a failed canary), leaving the rest untouched. Outside the window,
    only a fleet without drift passes; with drift it is refused unless forced."""
    if max_fail < 0:
        raise InvalidInput("--max-fail must be at least 0")
    nodes = _nodes(factory, names)
    plan = batches_of([n.name for n in nodes], canary=canary, serial=serial)
    gate = check_window(settings, now or utcnow(), force_reason)
    if not gate.allowed:
        report = drift(settings, factory, names=[n.name for n in nodes], serial=max(serial, 1),
                       now=now, run=run)
        drifted = [o for o in report.outcomes if o.status in (DRIFT, FAILED)]
        return FleetReport("rollout", gate, report.outcomes, refused=bool(drifted),
                           stopped=("outside the maintenance window " + gate.window
                                    + ": nothing changed" if drifted else ""), batches=tuple(plan))
    with transaction(factory) as s:
        if gate.forced:
            audit(s, actor, "nodes.window_forced", "nodes", "rollout",
                  {"reason": force_reason, "window": gate.window, "nodes": [n.name for n in nodes]})
        audit(s, actor, "nodes.rollout", "nodes", "rollout",
              {"batches": [list(b) for b in plan], "max_fail": max_fail})
    by_name = {n.name: target_of(n) for n in nodes}
    outcomes: list[NodeOutcome] = []
    failures, stopped = 0, ""
    for i, batch in enumerate(plan):
        targets = [by_name[n] for n in batch]
        done = _outcomes(_run(settings, run, targets, check=False), targets, i, check=False)
        outcomes += done
        failures += sum(1 for o in done if o.status == FAILED)
        is_canary = i == 0 and canary > 0
        if (is_canary and failures) or failures > max_fail:
            rest = [n for b in plan[i + 1:] for n in b]
            stopped = (f"the canary {', '.join(batch)} failed" if is_canary
                       else f"{failures} node(s) failed (--max-fail {max_fail})")
            outcomes += [NodeOutcome(n, UNTOUCHED, batch=i + 1) for n in rest]
            break
    report = FleetReport("rollout", gate, tuple(outcomes), stopped=stopped, batches=tuple(plan))
    with transaction(factory) as s:
        audit(s, actor, "nodes.rollout_done", "nodes", "rollout",
              {"exit_code": report.exit_code, "stopped": stopped,
               "nodes": {o.node: o.status for o in outcomes}})
    return report
