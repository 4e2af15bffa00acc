"""What each registry does at a domain's expiry, and what we must do before it (issue 17,
item 4; RULES "Domains" and "Renewal and expiry").

A registry either renews an expiring domain by itself and bills the registrar (.at and the
gTLDs), or lets it lapse into a quarantine / redemption period from which the sponsor can
restore it for a fee (.eu 40 days, .si 30 days). So for an unpaid domain:

* an auto-renewing TLD must be acted on by the registry's cut-off: deleted, or where the
  registry supports it set not to renew (.at: a deletion scheduled at expiry), else the
  registry renews it at our cost;
* a lapsing TLD needs nothing; a payment that comes while the domain is restorable
  restores it, and the restore fee goes on the renewal proforma.

A renewal after the cut-off is refused unless the domain can still be restored. The .si
registry deletes a never-activated registration with a refund within 16 days; the brand
lets the customer withdraw within ``BrandPolicy.si_refund_window_days`` (15), and a domain
that has name servers (ours or anyone's) counts as activated.

Pure: frozen dataclasses and functions of dates, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from types import MappingProxyType

from provisioner.domain.policy import BrandPolicy

#: the proforma line of a restore (a late payment of a domain in its redemption period)
RESTORE_FEE_DESCRIPTION = "Domain restore fee / Pristojbina za obnovitev domene"


@dataclass(frozen=True)
class TldRegistryProfile:
    tld: str
    #: the registry renews the domain by itself at expiry and bills the registrar
    auto_renews: bool
    #: the last day a plain renewal is done is this many days before expiry; the next day
    #: (``lapse_on``) the sweep acts on an unpaid auto-renewing domain, before the registry
    #: renews it, and a late payment needs a restore (or is refused)
    cutoff_days: int
    #: the registry can be told not to renew (instead of deleting at once)
    do_not_renew: bool
    #: days a lapsed or deleted domain stays restorable (quarantine / redemption)
    redemption_days: int
    #: gross EUR the customer pays for a restore; None: not restorable by us
    restore_fee: Decimal | None
    #: the registry deletes a never-activated registration with a refund within this many
    #: days of its creation (None: no such rule)
    refund_delete_days: int | None = None
    note: str = ""

    def cutoff_on(self, expiry: date) -> date:
        """The last day a plain renewal is done at the registry."""
        return expiry - timedelta(days=self.cutoff_days)

    def lapse_on(self, expiry: date) -> date:
        """The day after the cut-off: an unpaid auto-renewing domain is deleted (or set not
        to renew) that day; a lapsing one falls into its quarantine; from this day a late
        payment restores (the restore fee on the proforma) or is refused."""
        return self.cutoff_on(expiry) + timedelta(days=1)

    @property
    def restorable(self) -> bool:
        return self.restore_fee is not None and self.redemption_days > 0

    def restorable_until(self, expiry: date) -> date | None:
        """The last day a late payment can still restore the domain (None: never)."""
        if not self.restorable:
            return None
        return self.lapse_on(expiry) + timedelta(days=self.redemption_days - 1)


_GTLD_NOTE = ("The registry renews the domain at expiry and bills the registrar; we delete "
              "an unpaid one the day before expiry. A deleted domain is in redemption for 30 days "
              "(restore fee).")

PROFILES = MappingProxyType({
    "si": TldRegistryProfile(
        "si", auto_renews=False, cutoff_days=1, do_not_renew=False, redemption_days=30,
        restore_fee=Decimal("0.00"), refund_delete_days=16,
        note="An unrenewed .si sits 30 days in quarantine, reactivatable by its registrar; a "
             "registration never activated (no name servers) is deleted with a refund within "
             "16 days."),
    "eu": TldRegistryProfile(
        "eu", auto_renews=False, cutoff_days=1, do_not_renew=False, redemption_days=40,
        restore_fee=Decimal("15.00"),
        note="An unrenewed .eu goes into a 40-day quarantine, reactivatable for a fee."),
    "at": TldRegistryProfile(
        "at", auto_renews=True, cutoff_days=5, do_not_renew=True, redemption_days=0,
        restore_fee=None,
        note="The registry renews .at unless the registrar acts by the cut-off (5 days "
             "before expiry); we schedule the deletion of an unpaid one at expiry the day "
             "after, so it keeps working until it expires."),
    "com": TldRegistryProfile("com", auto_renews=True, cutoff_days=2, do_not_renew=False,
                              redemption_days=30, restore_fee=Decimal("90.00"), note=_GTLD_NOTE),
    "net": TldRegistryProfile("net", auto_renews=True, cutoff_days=2, do_not_renew=False,
                              redemption_days=30, restore_fee=Decimal("90.00"), note=_GTLD_NOTE),
    "org": TldRegistryProfile("org", auto_renews=True, cutoff_days=2, do_not_renew=False,
                              redemption_days=30, restore_fee=Decimal("90.00"), note=_GTLD_NOTE),
})


def registry_profile(tld: str) -> TldRegistryProfile:
    """The profile of ``tld`` (without dot); a TLD we know nothing of is treated as an
    auto-renewing gTLD with no restore (the safe side: act before expiry)."""
    key = tld.lower().lstrip(".")
    return PROFILES.get(key) or TldRegistryProfile(key, auto_renews=True, cutoff_days=2,
                                                   do_not_renew=False, redemption_days=0,
                                                   restore_fee=None, note=_GTLD_NOTE)


def tld_of(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


@dataclass(frozen=True)
class Withdrawable:
    """Whether a domain registration may be withdrawn with a refund, and why (not)."""

    allowed: bool
    reason: str
    last_day: date | None = None


def domain_withdrawable(name: str, registered_on: date | None, activated: bool, today: date,
                        policy: BrandPolicy) -> Withdrawable:
    """RULES ".si registration can be refunded if nameservers were not set": within the
    brand's window (15 days) and never past the registry's own (16 days); a domain with
    name servers counts as activated. Other TLDs have no such rule."""
    profile = registry_profile(tld_of(name))
    if profile.refund_delete_days is None:
        return Withdrawable(False, f".{profile.tld} registrations cannot be withdrawn with a refund")
    if registered_on is None:
        return Withdrawable(False, f"{name} is not registered (yet)")
    window = min(policy.si_refund_window_days, profile.refund_delete_days)
    last_day = registered_on + timedelta(days=window)
    if activated:
        return Withdrawable(False, f"{name} has name servers set, so it counts as activated",
                            last_day)
    if today > last_day:
        return Withdrawable(False, f"the {window}-day window for withdrawing {name} ended on "
                                   f"{last_day.isoformat()}", last_day)
    return Withdrawable(True, f"never activated, within {window} days of registration", last_day)
