"""The registry's cut-off for a domain's unpaid term (issue 17, ``domain.tld_profiles``).

On the profile's lapse day (the day after the cut-off), with the renewal proforma still
unpaid, the sweep writes ``clock.registry_cutoff`` (its handler is the domain
capability's): an auto-renewing domain is deleted or set not to renew before the
registry renews it at our cost; a lapsing one is recorded as lapsed. A restorable TLD's
restore fee goes on the open renewal proforma the same day, so a late payment restores
the domain with its fee. The lapse day is folded into ``services.clock_on`` (indexed), so
the sweep reads only the domains whose day has come.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.domain.policy import BrandPolicy
from provisioner.domain.tld_profiles import RESTORE_FEE_DESCRIPTION, registry_profile, tld_of
from provisioner.pipeline.capabilities.lifecycle.batch import Batch
from provisioner.pipeline.capabilities.lifecycle.renewals import add_fee_line, ensure_renewal
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.store.models import Service

#: the states in which a domain's term can still lapse unpaid
_STATES = frozenset({ServiceState.ACTIVE.value, ServiceState.SUSPENDED.value,
                     ServiceState.EXPIRED.value})


@dataclass(frozen=True)
class CutoffOutcome:
    event: str | None  # "registry_cutoff" when something was (or would be) done
    due_on: date | None  # the lapse day of the term
    detail: str = ""
    next_on: date | None = None  # a later day the sweep must look (the lapse day ahead)


def step_key(service_id: int, term: date) -> str:
    return f"service:{service_id}/clock.registry_cutoff@{term.isoformat()}"


def registry_cutoff(b: Batch, service: Service, policy: BrandPolicy) -> CutoffOutcome:
    """What the registry's cut-off asks of a domain service today."""
    expiry = service.expires_on
    if service.kind != "domain" or expiry is None or service.state not in _STATES:
        return CutoffOutcome(None, None)
    profile = registry_profile(tld_of(service.name))
    lapse = profile.lapse_on(expiry)
    if b.today < lapse:
        return CutoffOutcome(None, lapse, next_on=lapse)
    key = step_key(service.id, expiry)
    if key in b.keys:
        return CutoffOutcome(None, lapse)  # done for this term
    renewal = b.renewal(service.id, expiry)
    proforma = (b.proformas.get(renewal.proforma_id) or renewal.proforma) if renewal else None
    if proforma is not None and proforma.state == ProformaState.PAID.value:
        return CutoffOutcome(None, lapse)  # paid: the renewal steps renew it
    action = ("set not to renew" if profile.do_not_renew else "delete") if profile.auto_renews \
        else "record the lapse"
    fee = profile.restore_fee if profile.restorable and profile.restore_fee else None
    detail = f"{service.name}: {action}" + (f"; restore fee {fee} EUR on the proforma" if fee else "")
    if b.dry_run:
        return CutoffOutcome("registry_cutoff", lapse, detail)
    if proforma is None:  # no notice went out (a very short term)
        renewal = ensure_renewal(b.s, service, policy, b.today, b)
        proforma = renewal.proforma  # made in this batch: flushed with it, named by number
    if fee is not None and not add_fee_line(b.s, proforma, fee, RESTORE_FEE_DESCRIPTION, policy):
        return CutoffOutcome(None, lapse, next_on=None)  # paid this very moment
    b.record(service, StepSpec(key, "clock.registry_cutoff", (), {
        "service_id": service.id, "term_expiry": expiry.isoformat(), "due_on": lapse.isoformat(),
        "proforma": proforma.number}, service.id))
    return CutoffOutcome("registry_cutoff", lapse, detail)
