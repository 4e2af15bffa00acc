"""The capabilities: one module per kind of line (and the clock), each listing its step
handlers (``HANDLERS``) and line planners (``PLANNERS``). Importing this package
registers nothing: the composition root (`provisioner.bootstrap`) asks for the lists.

* billing: invoice issuance, the proforma/payment/invoice e-mails, activation
* hosting: accounts on hosting nodes, the access-data link
* dns_tls: DNS zones (RFC 2136) and certificates (ACME)
* domains: registration, transfer, renewal and name servers at the registry (EPP)
* lifecycle: the clock's steps: reminders, shutdown, staged deletion, renewal
* quota (no steps: a daily check) and placement (shared by hosting, DNS and the clock)
"""

from __future__ import annotations

from collections.abc import Mapping

from provisioner.pipeline.capabilities import billing, dns_tls, domains, hosting, lifecycle
from provisioner.pipeline.engine.plan import LinePlanner
from provisioner.pipeline.engine.runner import Handler

_MODULES = (billing, hosting, dns_tls, domains, lifecycle)


def handlers() -> dict[str, Handler]:
    """Every step kind of every capability, with its handler."""
    out: dict[str, Handler] = {}
    for module in _MODULES:
        table: Mapping[str, Handler] = module.HANDLERS
        clash = set(out) & set(table)
        if clash:
            raise AssertionError(f"step kinds handled twice: {sorted(clash)}")
        out.update(table)
    return out


def line_planners() -> dict[str, LinePlanner]:
    """Every line kind that plans steps, with its planner."""
    out: dict[str, LinePlanner] = {}
    for module in (hosting, dns_tls, domains):
        out.update(module.PLANNERS)
    return out
