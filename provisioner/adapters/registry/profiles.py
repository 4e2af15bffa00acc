"""Per-TLD registry profiles: periods, extensions, renewal lead times, transfer rules.

A profile decides what goes on the wire for its TLD; the client stays generic.
* ``.si`` (Register.si): contacts carry the dnssi extension with the contact type
  (``person`` or ``org``); a domain is created with an *empty* authInfo (the registry
  makes the transfer code); a registration never activated (no name servers) may be
  deleted with a refund within the refund window; a transfer code lives 16 days.
* ``.eu`` (EURid): contacts carry the EURid contact extension (type, language); the
  transfer code is not in ``info`` but must be requested with the authInfo extension;
  renewed 5 days before expiry (house policy).
* ``.at`` (nic.at): a deletion can be scheduled at expiry (its extension), which is how
  the registry is told not to renew.
* everything else: a generic gTLD profile (RFC 5731 only).
What each registry does at expiry (auto-renew, cut-off, quarantine, restore fee) is in
``provisioner.domain.tld_profiles``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from provisioner.adapters.registry.protocol import (
    DNSSI_NS,
    EURID_AUTHINFO_NS,
    EURID_CONTACT_NS,
    q,
    sub,
)
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.policy import BrandPolicy
from provisioner.domain.tld_profiles import registry_profile
from provisioner.errors import InvalidInput


@dataclass(frozen=True)
class RegistryContact:
    """A contact as a registry sees it. ``privacy`` asks the registry not to publish
    name, address, phone and e-mail in WHOIS."""

    handle: str
    name: str
    email: str
    street: str
    city: str
    postal_code: str
    country: str
    phone: str
    org: str | None = None
    privacy: bool = False
    role: str = "owner"  # owner | admin | tech
    lang: str = "en"

    @property
    def is_org(self) -> bool:
        return bool(self.org)


@dataclass(frozen=True)
class TldProfile:
    tld: str
    periods_years: tuple[int, ...]
    #: days before expiry the provider renews (0: on or after the reminder cycle)
    early_renew_days: int = 0
    #: .si: send <domain:pw/> empty on create, the registry generates the code
    empty_auth_on_create: bool = False
    #: .eu: the transfer code must be requested with the authInfo extension
    auth_info_request: bool = False
    #: "dnssi" | "eurid" | "" (generic)
    contact_extension: str = ""
    #: .si: days after registration in which a never-activated domain is refunded
    refund_window_days: int | None = None
    #: how long a transfer code stays valid (days), if the registry limits it
    auth_code_valid_days: int | None = None
    #: .at: a deletion can be scheduled at expiry (the registry then does not renew)
    delete_at_expiry: bool = False

    def check_period(self, years: int) -> int:
        if isinstance(years, bool) or not isinstance(years, int) or years not in self.periods_years:
            allowed = ", ".join(f"{y}y" for y in self.periods_years)
            raise InvalidInput(f"period {years!r} years is not allowed for .{self.tld} ({allowed})")
        return years

    def contact_ext(self, contact: RegistryContact) -> etree._Element | None:
        """The <extension> child for contact:create, or None."""
        if self.contact_extension == "dnssi":
            ext = etree.Element(q(DNSSI_NS, "ext"), nsmap={"dnssi": DNSSI_NS})
            create = sub(ext, DNSSI_NS, "create")
            sub(create, DNSSI_NS, "contact", type="org" if contact.is_org else "person")
            return ext
        if self.contact_extension == "eurid":
            el = etree.Element(q(EURID_CONTACT_NS, "create"), nsmap={"contact-ext": EURID_CONTACT_NS})
            sub(el, EURID_CONTACT_NS, "type", "registrant" if contact.role == "owner" else "tech")
            sub(el, EURID_CONTACT_NS, "lang", contact.lang)
            return el
        return None

    def info_ext(self, want_auth: bool) -> etree._Element | None:
        if want_auth and self.auth_info_request:
            el = etree.Element(q(EURID_AUTHINFO_NS, "info"), nsmap={"authInfo": EURID_AUTHINFO_NS})
            sub(el, EURID_AUTHINFO_NS, "request")
            return el
        return None


def profile_for(tld: str, policy: BrandPolicy | None = None) -> TldProfile:
    """The profile of ``tld`` (without dot); unknown TLDs get the generic gTLD profile
    with 1-10 year periods."""
    tld = tld.lower().lstrip(".")
    known = DEFAULT_CATALOG.tlds.get(tld)
    periods = known.periods_years if known else tuple(range(1, 11))
    early = policy.early_renew_days(tld) if policy else {"eu": 5, "at": 5}.get(tld, 0)
    if tld == "si":
        window = policy.si_refund_window_days if policy else 15
        return TldProfile("si", periods, early, empty_auth_on_create=True,
                          contact_extension="dnssi", refund_window_days=window,
                          auth_code_valid_days=16)
    if tld == "eu":
        return TldProfile("eu", periods, early, auth_info_request=True, contact_extension="eurid")
    return TldProfile(tld, periods, early, delete_at_expiry=registry_profile(tld).do_not_renew)
