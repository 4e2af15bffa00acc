"""Per-TLD profiles and the pure helpers of the domain steps."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from lxml import etree

from provisioner.adapters.registry import RegistryContact, profile_for
from provisioner.adapters.registry import protocol as p
from provisioner.domain import customers as dc
from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities import domains
from provisioner.pipeline.engine.plan import OrderView, PlanOptions, ServiceView
from provisioner.store.domains import DomainRecord

SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).resolve().parents[2] / "schemas" / "epp"
                                         / "all.xsd")))
PERSON = RegistryContact("PV1", "Ana Novak", "ana@example.si", "S 1", "Ljubljana", "1000", "SI",
                         "+386.41123456")
COMPANY = RegistryContact("PV2", "Ana Novak", "a@x.si", "S 1", "Ljubljana", "1000", "SI",
                          "+386.41123456", org="X d.o.o.")


@pytest.mark.parametrize(("tld", "periods", "early"),
                         [("si", (1, 2, 3, 4, 5), 0), ("eu", tuple(range(1, 11)), 5),
                          ("at", (1,), 5), ("com", tuple(range(1, 11)), 0),
                          ("xyz", tuple(range(1, 11)), 0)])
def test_periods_and_renewal_lead_times(tld: str, periods: tuple[int, ...], early: int) -> None:
    profile = profile_for(tld, get_brand("fcb"))
    assert profile.periods_years == periods and profile.early_renew_days == early
    with pytest.raises(InvalidInput):
        profile.check_period(max(periods) + 1)
    assert domains.renewal_due_on(tld, date(2027, 3, 10)) == date(2027, 3, 10 - early)


def _command_with(ext: etree._Element | None) -> etree._Element:
    root = p.epp_root()
    cmd = p.sub(root, p.EPP_NS, "command")
    info = p.sub(cmd, p.EPP_NS, "info")
    obj = etree.SubElement(info, p.q(p.DOMAIN_NS, "info"), nsmap={"domain": p.DOMAIN_NS})
    p.sub(obj, p.DOMAIN_NS, "name", "a.si")
    if ext is not None:
        p.sub(cmd, p.EPP_NS, "extension").append(ext)
    p.sub(cmd, p.EPP_NS, "clTRID", "ABC-1")
    return root


@pytest.mark.parametrize(("contact", "kind"), [(PERSON, "person"), (COMPANY, "org")])
def test_si_contact_type_extension(contact: RegistryContact, kind: str) -> None:
    ext = profile_for("si").contact_ext(contact)
    assert ext is not None and ext.find("dnssi:create/dnssi:contact", p.NSMAP).get("type") == kind  # type: ignore[union-attr]
    assert SCHEMA.validate(_command_with(ext)), SCHEMA.error_log.last_error


def test_eu_extensions_and_generic_profile() -> None:
    eu = profile_for("eu")
    ext = eu.contact_ext(PERSON)
    assert ext is not None and p.text(ext, "ce:type") == "registrant"
    assert SCHEMA.validate(_command_with(ext))
    assert eu.info_ext(True) is not None and SCHEMA.validate(_command_with(eu.info_ext(True)))
    assert eu.info_ext(False) is None
    com = profile_for("com")
    assert com.contact_ext(PERSON) is None and com.info_ext(True) is None
    assert profile_for("si").empty_auth_on_create and not com.empty_auth_on_create


def test_contacts_sent_to_the_registry_exclude_payer_and_manager() -> None:
    customer = dc.Customer("Ana Novak", "ana@example.si", "S 1", "1000", "Ljubljana", "SI",
                           "+386.41123456")
    contacts = dc.contacts_for_domain(customer)
    contacts[dc.ContactRole.BILLING] = dc.Contact.from_customer(dc.ContactRole.BILLING, customer)
    out = domains.registry_contacts(7, contacts, profile_for("si"), privacy_default=True)
    assert set(out) == {"owner", "admin", "tech"}
    assert all(c.privacy for c in out.values())
    again = domains.registry_contacts(7, contacts, profile_for("si"), privacy_default=True)
    assert {r: c.handle for r, c in out.items()} == {r: c.handle for r, c in again.items()}
    assert all(3 <= len(c.handle) <= 16 for c in out.values())
    eu = domains.registry_contacts(7, contacts, profile_for("eu"), privacy_default=True)
    assert eu["owner"].handle != out["owner"].handle  # .eu contacts carry other extensions
    company = dc.Customer("Ana Novak", "a@x.si", "S 1", "1000", "Ljubljana", "SI",
                          "+386.41123456", company="X d.o.o.")
    org = domains.registry_contacts(8, dc.contacts_for_domain(company), profile_for("si"), True)
    assert not org["owner"].privacy and org["owner"].org == "X d.o.o."


def test_plan_per_action() -> None:
    view = OrderView(1, 2, "PR-1", True)

    def kinds(action: str) -> list[tuple[str, tuple[str, ...]]]:
        sv = ServiceView(5, "domain", "si", "a.si", 12, "provisioning", action)
        return [(s.kind, s.deps) for s in domains.plan_domain(view, sv, PlanOptions())]

    assert kinds("register") == [("domain.register", ()),
                                 ("domain.nameservers", ("service:5/domain.register",))]
    assert kinds("transfer")[0][0] == "domain.transfer"
    assert kinds("renew") == [("domain.renew", ())]


def test_si_refund_window() -> None:
    now = datetime.now(UTC)
    record = DomainRecord(tld="si", registered_on=date(2026, 1, 1), nameservers=[], created_at=now,
                          updated_at=now)
    assert domains.si_refund_allowed(record, date(2026, 1, 16))
    assert not domains.si_refund_allowed(record, date(2026, 1, 17))
    record.nameservers = ["ns1.provider.example"]
    assert not domains.si_refund_allowed(record, date(2026, 1, 2))


def test_our_nameservers_are_normalized() -> None:
    from provisioner.config import Settings

    s = Settings().with_overrides(nameservers=" NS2.Provider.example , ns1.provider.example.")
    assert domains.our_nameservers(s) == ["ns1.provider.example", "ns2.provider.example"]
    with pytest.raises(Exception, match="two name servers"):
        domains.our_nameservers(s.with_overrides(nameservers="ns1.x.example"))


def test_idn_display_name() -> None:
    assert domains.display_name("xn--aba-b3a.si") == "žaba.si"
