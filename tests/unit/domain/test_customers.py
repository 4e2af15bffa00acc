from collections.abc import Mapping

import pytest

from provisioner.domain.customers import (
    COUNTRIES,
    REGISTRY_ROLES,
    Contact,
    ContactRole,
    Customer,
    contacts_for_domain,
    normalize_email,
    normalize_phone,
    normalize_vat_id,
    parse_customer,
    registry_contacts,
)
from provisioner.errors import InvalidInput

GOOD: dict[str, object] = {
    "name": "Ana Novak",
    "email": "ana.novak@example.si",
    "address": "Slovenska cesta 1",
    "postal_code": "1000",
    "city": "Ljubljana",
    "country": "SI",
    "phone": "+386.41123456",
}


def with_(**changes: object) -> Mapping[str, object]:
    data = dict(GOOD)
    data.update(changes)
    return data


def test_parse_customer_minimal() -> None:
    assert parse_customer(GOOD) == Customer(
        name="Ana Novak",
        email="ana.novak@example.si",
        address="Slovenska cesta 1",
        postal_code="1000",
        city="Ljubljana",
        country="SI",
        phone="+386.41123456",
    )


def test_parse_customer_full_and_normalized() -> None:
    c = parse_customer(
        with_(
            name="  Žiga Čeh ",
            email="Ziga@Žaba.SI",
            country="si",
            phone="+386 41 123 456",
            company="Žaba d.o.o.",
            vat_id="si 10000003",
            lang="EN",
            postal_code=1000,
            unrelated="ignored",
        )
    )
    assert c.name == "Žiga Čeh"
    assert c.email == "Ziga@xn--aba-b3a.si"
    assert c.country == "SI"
    assert c.phone == "+386.41123456"
    assert c.company == "Žaba d.o.o."
    assert c.vat_id == "SI10000003"
    assert c.lang == "en"
    assert c.postal_code == "1000"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"name": None}, "name is required"),
        ({"name": "   "}, "name is required"),
        ({"name": 42}, "name must be text"),
        ({"name": "x" * 201}, "too long"),
        ({"name": "Ana\x00Novak"}, "control character \\(U\\+0000\\)"),
        ({"address": "Line 1\nLine 2"}, "control character"),
        ({"city": "Ljubljana\u202e"}, "control character"),
        ({"email": "ana"}, "exactly one '@'"),
        ({"email": "a@b@example.si"}, "exactly one '@'"),
        ({"email": "@example.si"}, "before '@'"),
        ({"email": "a..b@example.si"}, "before '@'"),
        ({"email": "a b@example.si"}, "before '@'"),
        ({"email": "a|b@example.si"}, "before '@'"),
        ({"email": "`id`@example.si"}, "before '@'"),
        ({"email": "ana@localhost"}, "invalid domain"),
        ({"email": "ana@exa_mple.si"}, "invalid domain"),
        ({"email": "x" * 65 + "@example.si"}, "before '@'"),
        ({"country": "Slovenia"}, "ISO 3166"),
        ({"country": "XX"}, "ISO 3166"),
        ({"country": "UK"}, "ISO 3166"),
        ({"phone": "041 123 456", "country": "FR"}, "international form"),
        ({"phone": "+386.41"}, "not valid"),
        ({"phone": "+386.4112345678901234"}, "not valid"),
        ({"phone": "+386 41 abc"}, "only digits"),
        ({"phone": "+38641123456;reboot"}, "only digits"),
        ({"phone": "+0.1234567"}, "not a valid international number"),
        ({"phone": "+0386 41 123 456"}, "not a valid international number"),
        ({"phone": "+386.41.123"}, "not valid"),
        ({"vat_id": "12345678"}, "VAT id"),
        ({"vat_id": "SI1234567"}, "8 digits"),
        ({"vat_id": "SI12345678"}, "wrong check digit"),
        ({"lang": "de"}, "language 'de' is not supported"),
        ({"postal_code": "10;00"}, "postal code"),
        ({"company": "x" * 201}, "company is too long"),
    ],
)
def test_parse_customer_refuses(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_customer(with_(**changes))


def test_parse_customer_needs_a_mapping() -> None:
    with pytest.raises(InvalidInput, match="mapping"):
        parse_customer(["name"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("+386.41123456", None, "+386.41123456"),
        ("+38641123456", None, "+386.41123456"),
        ("+386 41 123 456", None, "+386.41123456"),
        ("+386 (0)41 123-456", None, "+386.41123456"),
        ("00386 41 123 456", None, "+386.41123456"),
        ("041 123 456", "SI", "+386.41123456"),
        ("01 234 56 78", "SI", "+386.12345678"),
        ("+43 1 234567", None, "+43.1234567"),
        ("+1 212 555 0100", None, "+1.2125550100"),
        ("+7 495 123 45 67", None, "+7.4951234567"),
        ("+385 1 2345 678", None, "+385.12345678"),
        ("+49 30 1234567", None, "+49.301234567"),
    ],
)
def test_normalize_phone(raw: str, country: str | None, expected: str) -> None:
    assert normalize_phone(raw, country) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ana@Example.SI", "Ana@example.si"), ("a+tag@sub.example.com", "a+tag@sub.example.com")],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("SI10000003", "SI10000003"),  # 1*8 = 8, 8 % 11 = 8, 11 - 8 = 3
        ("si-1000.0003", "SI10000003"),
        ("ATU12345678", "ATU12345678"),
        ("de 123 456 789", "DE123456789"),
    ],
)
def test_normalize_vat_id(raw: str | None, expected: str | None) -> None:
    assert normalize_vat_id(raw) == expected


def test_countries_table() -> None:
    assert len(COUNTRIES) == 249
    assert {"SI", "AT", "HR", "DE", "GB"} <= COUNTRIES


def test_contacts_for_domain_default_to_owner() -> None:
    customer = parse_customer(with_(company="Novak d.o.o."))
    contacts = contacts_for_domain(customer)
    assert set(contacts) == {ContactRole.OWNER, ContactRole.ADMIN, ContactRole.TECH}
    assert set(contacts) == REGISTRY_ROLES
    for role, contact in contacts.items():
        assert contact.role is role
        assert contact.company == "Novak d.o.o."
        assert contact.email == customer.email
        assert contact.phone == "+386.41123456"


def test_contacts_for_domain_with_own_tech() -> None:
    customer = parse_customer(GOOD)
    tech = Contact(
        ContactRole.TECH, "Ops", "ops@example.net", "Street 2", "2000", "Maribor", "SI",
        "+386.22345678",
    )
    contacts = contacts_for_domain(customer, tech=tech)
    assert contacts[ContactRole.TECH] is tech
    assert contacts[ContactRole.ADMIN].name == "Ana Novak"


def test_contacts_for_domain_refuses_wrong_role() -> None:
    customer = parse_customer(GOOD)
    billing = Contact.from_customer(ContactRole.BILLING, customer)
    with pytest.raises(InvalidInput, match="billing contact was given as the admin"):
        contacts_for_domain(customer, admin=billing)


def test_registry_never_gets_billing_or_manager() -> None:
    customer = parse_customer(GOOD)
    everything = {role: Contact.from_customer(role, customer) for role in ContactRole}
    assert set(registry_contacts(everything)) == REGISTRY_ROLES
