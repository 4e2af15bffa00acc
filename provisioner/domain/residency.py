"""Data residency (GDPR; seed 003): where personal data may be kept.

``allowed_countries`` lists ISO 3166 alpha-2 codes; ``EU`` stands for every EU member
state and ``EEA`` for the EU plus Iceland, Liechtenstein and Norway (in the EU's sense of
"EU/EEA", ``EU`` admits the EEA as well: the GDPR applies there alike).
"""

from __future__ import annotations

import re

from provisioner.errors import InvalidInput

EU = frozenset({"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
                "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"})
EEA = EU | {"IS", "LI", "NO"}
_GROUPS = {"EU": EEA, "EEA": EEA}
_ALIASES = {"EL": "GR", "UK": "GB"}  # the EU's own codes for Greece and the United Kingdom
_CODE = re.compile(r"[A-Z]{2,3}")


def country_code(value: str) -> str:
    code = (value or "").strip().upper()
    code = _ALIASES.get(code, code)
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise InvalidInput(f"{value!r} is not an ISO 3166 alpha-2 country code")
    return code


def parse_allowed(spec: str) -> frozenset[str]:
    """``"SI,EU"`` -> the set of country codes it admits. InvalidInput on a bad entry or
    an empty list (nothing could be stored anywhere)."""
    allowed: set[str] = set()
    for raw in (spec or "").split(","):
        item = raw.strip().upper()
        if not item:
            continue
        if not _CODE.fullmatch(item):
            raise InvalidInput(f"allowed_countries: {raw.strip()!r} is not a country code, EU or EEA")
        allowed |= _GROUPS.get(item) or {country_code(item)}
    if not allowed:
        raise InvalidInput("allowed_countries is empty: personal data could be kept nowhere")
    return frozenset(allowed)


def is_allowed(country: str, allowed: frozenset[str]) -> bool:
    return country_code(country) in allowed
