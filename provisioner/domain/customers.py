"""Customers and domain contacts (RULES "Domains", seed 000 and 002 §10).

Registration needs owner, admin and tech contacts (name or company, postal address,
e-mail, phone). The owner is the person/company named on the order. The provider also
keeps, not public and never sent to a registry, the user who manages the domain
(MANAGER) and the payer (BILLING).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from provisioner.domain.names import normalize_domain
from provisioner.errors import InvalidInput

MAX_FIELD_LENGTH = 200
LANGS = ("sl", "en")

# ISO 3166-1 alpha-2 (officially assigned codes).
COUNTRIES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)

# Country calling codes are prefix-free: 1 and 7 are one digit, these are two digits,
# every other code has three.
_TWO_DIGIT_CALLING_CODES = frozenset(
    """
    20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62
    63 64 65 66 81 82 84 86 90 91 92 93 94 95 98
    """.split()
)
# National numbers written with a trunk '0' ("041 123 456") for these customer countries.
_NATIONAL_PREFIX = {"SI": "386", "HR": "385", "AT": "43", "DE": "49", "IT": "39"}

# Deliberately narrower than RFC 5322: no quotes, '|', '$', '`' ... in what may reach a
# mail command line or a template.
_EMAIL_LOCAL_RE = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")
_VAT_RE = re.compile(r"[A-Z]{2}[0-9A-Z]{2,13}")
_PHONE_EPP_RE = re.compile(r"\+([0-9]{1,3})\.([0-9]{4,14})")


class ContactRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    TECH = "tech"
    BILLING = "billing"  # the payer; kept by the provider, never sent to a registry
    MANAGER = "manager"  # the managing user; kept apart, never sent to a registry


#: The roles a registry gets.
REGISTRY_ROLES = frozenset({ContactRole.OWNER, ContactRole.ADMIN, ContactRole.TECH})


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    address: str
    postal_code: str
    city: str
    country: str  # ISO 3166-1 alpha-2, upper case
    phone: str  # EPP form "+386.41123456"
    company: str | None = None
    vat_id: str | None = None
    lang: str = "sl"


@dataclass(frozen=True)
class Contact:
    role: ContactRole
    name: str
    email: str
    address: str
    postal_code: str
    city: str
    country: str
    phone: str
    company: str | None = None

    @classmethod
    def from_customer(cls, role: ContactRole, customer: Customer) -> Contact:
        return cls(
            role=role,
            name=customer.name,
            email=customer.email,
            address=customer.address,
            postal_code=customer.postal_code,
            city=customer.city,
            country=customer.country,
            phone=customer.phone,
            company=customer.company,
        )


def clean_text(value: object, field: str, *, required: bool = True) -> str | None:
    """Stripped NFC text of at most 200 characters without control characters."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text, not {type(value).__name__}")
    text = unicodedata.normalize("NFC", value.strip())
    if len(text) > MAX_FIELD_LENGTH:
        raise InvalidInput(f"{field} is too long ({len(text)} characters, at most 200)")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidInput(f"{field} contains a control character (U+{ord(ch):04X})")
    return text


def _required(value: object, field: str) -> str:
    text = clean_text(value, field)
    assert text is not None
    return text


def normalize_email(value: object) -> str:
    """``local@domain`` with the domain normalized (IDN -> punycode, lower case)."""
    text = _required(value, "e-mail")
    if text.count("@") != 1:
        raise InvalidInput(f"e-mail {text!r} must contain exactly one '@'")
    local, domain = text.split("@")
    if not local or len(local) > 64 or not _EMAIL_LOCAL_RE.fullmatch(local):
        raise InvalidInput(f"e-mail {text!r} has an invalid part before '@'")
    try:
        host = normalize_domain(domain)
    except InvalidInput as exc:
        raise InvalidInput(f"e-mail {text!r} has an invalid domain: {exc}") from None
    result = f"{local}@{host}"
    if len(result) > 254:
        raise InvalidInput(f"e-mail {text!r} is too long")
    return result


def normalize_country(value: object) -> str:
    text = _required(value, "country").upper()
    if text not in COUNTRIES:
        raise InvalidInput(f"country {text!r} is not an ISO 3166 two-letter code (e.g. SI)")
    return text


def normalize_phone(value: object, country: str | None = None) -> str:
    """EPP form ``+CC.NUMBER``: accepts ``+386.41123456``, ``+386 41 123 456``,
    ``+38641123456``, ``00386 41 123456`` and, for a few countries, ``041 123 456``."""
    text = _required(value, "phone")
    compact = re.sub(r"[ \t/()\-]", "", text.replace("(0)", ""))
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if _PHONE_EPP_RE.fullmatch(compact):
        cc, number = compact[1:].split(".")
    else:
        if "." in compact:
            raise InvalidInput(f"phone {text!r} is not valid (expected e.g. +386.41123456)")
        if compact.startswith("+"):
            digits = compact[1:]
            if not digits.isdigit() or not digits.isascii():
                raise InvalidInput(f"phone {text!r} may contain only digits after '+'")
            if digits[0] in "17":
                size = 1
            elif digits[:2] in _TWO_DIGIT_CALLING_CODES:
                size = 2
            else:
                size = 3
            cc, number = digits[:size], digits[size:]
        elif (
            compact.startswith("0")
            and compact.isascii()
            and compact.isdigit()
            and country in _NATIONAL_PREFIX
        ):
            cc, number = _NATIONAL_PREFIX[country], compact[1:]
        else:
            raise InvalidInput(
                f"phone {text!r} must be in international form (e.g. +386.41123456)"
            )
    if cc.startswith("0") or not 4 <= len(number) <= 14 or len(cc) + len(number) > 15:
        raise InvalidInput(f"phone {text!r} is not a valid international number")
    return f"+{cc}.{number}"


def _si_vat_ok(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits[:7], range(8, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return False
    return (0 if check == 10 else check) == int(digits[7])


def normalize_vat_id(value: object) -> str | None:
    """Optional EU VAT id ``CC`` + 2..13 letters/digits; Slovenian ones are checked in full
    (``SI`` + 8 digits, MOD 11 check digit)."""
    text = clean_text(value, "VAT id", required=False)
    if text is None:
        return None
    compact = re.sub(r"[ .\-]", "", text).upper()
    if not _VAT_RE.fullmatch(compact):
        raise InvalidInput(f"VAT id {text!r} is not valid (expected e.g. SI12345678)")
    if compact.startswith("SI"):
        digits = compact[2:]
        if not (len(digits) == 8 and digits.isdigit() and digits[0] != "0"):
            raise InvalidInput(f"Slovenian VAT id {text!r} must be SI followed by 8 digits")
        if not _si_vat_ok(digits):
            raise InvalidInput(f"Slovenian VAT id {text!r} has a wrong check digit")
    return compact


def parse_customer(data: Mapping[str, object]) -> Customer:
    """Validate and normalize every field of a customer; keys not listed are ignored."""
    if not isinstance(data, Mapping):
        raise InvalidInput("customer data must be a mapping")
    country = normalize_country(data.get("country"))
    lang_value = data.get("lang")
    lang = "sl" if lang_value is None else _required(lang_value, "language").lower()
    if lang not in LANGS:
        raise InvalidInput(f"language {lang!r} is not supported (expected sl or en)")
    return Customer(
        name=_required(data.get("name"), "name"),
        email=normalize_email(data.get("email")),
        address=_required(data.get("address"), "address"),
        postal_code=_postal_code(data.get("postal_code")),
        city=_required(data.get("city"), "city"),
        country=country,
        phone=normalize_phone(data.get("phone"), country),
        company=clean_text(data.get("company"), "company", required=False),
        vat_id=normalize_vat_id(data.get("vat_id")),
        lang=lang,
    )


def _postal_code(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _required(value, "postal code")
    if len(text) > 16 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 -]*", text):
        raise InvalidInput(f"postal code {text!r} is not valid")
    return text.upper()


def contacts_for_domain(
    customer: Customer,
    *,
    admin: Contact | None = None,
    tech: Contact | None = None,
) -> dict[ContactRole, Contact]:
    """The registry contacts of a domain: OWNER is the customer on the order; ADMIN and
    TECH default to the owner. BILLING and MANAGER are never part of this (they are not
    sent to a registry)."""
    owner = Contact.from_customer(ContactRole.OWNER, customer)
    return {
        ContactRole.OWNER: owner,
        ContactRole.ADMIN: _with_role(admin, ContactRole.ADMIN, customer),
        ContactRole.TECH: _with_role(tech, ContactRole.TECH, customer),
    }


def _with_role(contact: Contact | None, role: ContactRole, customer: Customer) -> Contact:
    if contact is None:
        return Contact.from_customer(role, customer)
    if contact.role != role:
        raise InvalidInput(
            f"a {contact.role.value} contact was given as the {role.value} contact"
        )
    return contact


def registry_contacts(contacts: Mapping[ContactRole, Contact]) -> dict[ContactRole, Contact]:
    """Only the contacts a registry may see (drops BILLING and MANAGER)."""
    return {role: c for role, c in contacts.items() if role in REGISTRY_ROLES}
