"""Payment references for Slovenian UPN transfers: models SI12, SI00 and ISO 11649 RF.

SI12 check digit (model 12, "(P1)K"): MOD 11 of the Slovenian rules for standardised
references ("Pravila za oblikovanje in uporabo standardiziranih referenc", Uradni list RS
34/2019, Priloga 1; we did not have the text itself). We followed two public checkers
that agree: mirosodja/upnqr-svelte ``calcControlNumber11`` (TypeScript) and
Anze Zitnik's ``paymentreferencecheck.SIReferenceChecker.controlNum`` (Java): the
digits of P1 are weighted 2, 3, 4, ... starting from the rightmost digit, the products are
summed, and ``K = 11 - (sum mod 11)``; a result of 10 or 11 (remainder 1 or 0) gives
``K = 0``. Hyphens are ignored for the check and dropped in the canonical form. The weights
keep growing (2..20) for the longest 19-digit P1, as in the Java checker (the TypeScript
one only handles the older 12-digit limit). Limits from the same Java checker: at most 20
digits and 22 characters (with '-') after the model. That checker allows no '-' in model
12; we accept it from payers who type one and drop it.

RF (ISO 11649): ``"RF" + 2 check digits + base`` (base 1..21 letters/digits); the check
digits are ``98 - (n mod 97)`` where n is base + "RF00" with letters A=10 .. Z=35
(ISO 7064 MOD 97-10), so a valid reference gives ``n mod 97 == 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioner.errors import InvalidInput

MODELS = ("SI00", "SI12", "RF")
SI12_MAX_DIGITS = 20  # P1 including the check digit
SI00_MAX_LENGTH = 22  # digits and '-'
RF_MAX_BASE = 21  # ISO 11649: at most 25 characters in all

_DIGITS_RE = re.compile(r"[0-9]+")
_SI00_RE = re.compile(r"[0-9]+(?:-[0-9]+){0,2}")
_RF_BASE_RE = re.compile(r"[A-Z0-9]{1,21}")
_SPACES_RE = re.compile(r"[ \t\u00a0]+")


def _mod11_digit(digits: str) -> str:
    total = sum(int(d) * w for w, d in enumerate(reversed(digits), start=2))
    control = 11 - total % 11
    return "0" if control >= 10 else str(control)


def _si12_digits(base: str, what: str) -> str:
    if not isinstance(base, str):
        raise InvalidInput(f"{what} must be text, not {type(base).__name__}")
    text = base.strip()
    if not text:
        raise InvalidInput(f"{what} is empty")
    if text.startswith("-") or text.endswith("-") or "--" in text:
        raise InvalidInput(f"{what} {base!r}: '-' may only separate groups of digits")
    digits = text.replace("-", "")
    if not _DIGITS_RE.fullmatch(digits):
        raise InvalidInput(f"{what} {base!r} may contain only digits and '-'")
    return digits


def si12_check_digit(digits: str) -> str:
    """The model 12 (MOD 11) check digit for the digits of P1 ('-' separators ignored)."""
    d = _si12_digits(digits, "SI12 reference")
    if len(d) > SI12_MAX_DIGITS - 1:
        raise InvalidInput(
            f"SI12 reference {digits!r} is too long ({len(d)} digits; at most "
            f"{SI12_MAX_DIGITS - 1} plus the check digit)"
        )
    return _mod11_digit(d)


def make_si12(base: str) -> str:
    """``"SI12 " + base + check digit``; hyphens in ``base`` are dropped."""
    d = _si12_digits(base, "SI12 reference")
    return f"SI12 {d}{si12_check_digit(d)}"


def _rf_number(text: str) -> int:
    return int("".join(str(int(ch, 36)) for ch in text))


def make_rf(base: str) -> str:
    """ISO 11649 creditor reference: ``"RF" + check digits + base`` (no spaces)."""
    if not isinstance(base, str):
        raise InvalidInput(f"RF reference must be text, not {type(base).__name__}")
    b = _SPACES_RE.sub("", base).upper()
    if not b:
        raise InvalidInput("RF reference base is empty")
    if not b.isascii() or not b.isalnum():
        raise InvalidInput(f"RF reference {base!r} may contain only letters and digits")
    if len(b) > RF_MAX_BASE:
        raise InvalidInput(
            f"RF reference {base!r} is too long ({len(b)} characters, at most {RF_MAX_BASE})"
        )
    check = 98 - _rf_number(b + "RF00") % 97
    return f"RF{check:02d}{b}"


@dataclass(frozen=True)
class PaymentReference:
    """A parsed, verified reference. ``body`` is everything after the model.

    SI12: P1 with its check digit, digits only. SI00: digits and '-'. RF: the two check
    digits followed by the base.
    """

    model: str
    body: str

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InvalidInput(f"unknown reference model {self.model!r}")

    def __str__(self) -> str:
        if self.model == "RF":
            return f"RF{self.body}"
        return f"{self.model} {self.body}"

    @property
    def base(self) -> str:
        """The body without check digits (SI12: without K; RF: without the 2 digits)."""
        if self.model == "SI12":
            return self.body[:-1]
        if self.model == "RF":
            return self.body[2:]
        return self.body


def parse_reference(text: str) -> PaymentReference:
    """Parse and verify a reference as a payer typed it.

    Accepts spacing and case variations: ``"si12 123-456-7"``, ``"SI12 1234567"``,
    ``"RF18 5390 0754 7034"``. InvalidInput says why a reference is refused: unknown model,
    bad characters, too long, wrong check digit.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"payment reference must be text, not {type(text).__name__}")
    if len(text) > 100:
        raise InvalidInput("payment reference is far too long")
    compact = _SPACES_RE.sub("", text.strip()).upper()
    if not compact:
        raise InvalidInput("payment reference is empty")
    if compact.startswith("RF"):
        return _parse_rf(compact, text)
    if compact.startswith("SI"):
        model = compact[:4]
        body = compact[4:]
        if model == "SI12":
            return _parse_si12(body, text)
        if model == "SI00":
            return _parse_si00(body, text)
        raise InvalidInput(
            f"unsupported reference model {model!r} in {text!r} (expected SI12, SI00 or RF)"
        )
    raise InvalidInput(f"unknown reference model in {text!r} (expected SI12, SI00 or RF)")


def _parse_si12(body: str, text: str) -> PaymentReference:
    if len(body) > SI00_MAX_LENGTH:
        raise InvalidInput(
            f"SI12 reference {text!r} is too long ({len(body)} characters, at most "
            f"{SI00_MAX_LENGTH})"
        )
    digits = _si12_digits(body, "SI12 reference") if body else ""
    if not digits:
        raise InvalidInput(f"SI12 reference {text!r} has no digits")
    if len(digits) < 2:
        raise InvalidInput(f"SI12 reference {text!r} is too short (digits + check digit)")
    if len(digits) > SI12_MAX_DIGITS:
        raise InvalidInput(
            f"SI12 reference {text!r} is too long ({len(digits)} digits, at most "
            f"{SI12_MAX_DIGITS})"
        )
    expected = _mod11_digit(digits[:-1])
    if digits[-1] != expected:
        raise InvalidInput(
            f"SI12 reference {text!r} has a wrong check digit ({digits[-1]}, expected {expected})"
        )
    return PaymentReference("SI12", digits)


def _parse_si00(body: str, text: str) -> PaymentReference:
    if not body:
        raise InvalidInput(f"SI00 reference {text!r} has no digits")
    if len(body) > SI00_MAX_LENGTH:
        raise InvalidInput(
            f"SI00 reference {text!r} is too long ({len(body)} characters, at most "
            f"{SI00_MAX_LENGTH})"
        )
    if not _SI00_RE.fullmatch(body):
        raise InvalidInput(
            f"SI00 reference {text!r} may contain only digits in up to 3 groups separated by '-'"
        )
    if len(body.replace("-", "")) > SI12_MAX_DIGITS:
        raise InvalidInput(
            f"SI00 reference {text!r} is too long (more than {SI12_MAX_DIGITS} digits)"
        )
    return PaymentReference("SI00", body)


def _parse_rf(compact: str, text: str) -> PaymentReference:
    check, base = compact[2:4], compact[4:]
    if len(check) < 2 or not check.isdigit():
        raise InvalidInput(f"RF reference {text!r} must have 2 check digits after 'RF'")
    if not base:
        raise InvalidInput(f"RF reference {text!r} has no reference after the check digits")
    if not _RF_BASE_RE.fullmatch(base):
        if len(base) > RF_MAX_BASE and base.isascii() and base.isalnum():
            raise InvalidInput(
                f"RF reference {text!r} is too long ({len(base)} characters after the check "
                f"digits, at most {RF_MAX_BASE})"
            )
        raise InvalidInput(f"RF reference {text!r} may contain only letters and digits")
    if _rf_number(base + "RF" + check) % 97 != 1:
        raise InvalidInput(f"RF reference {text!r} has wrong check digits")
    return PaymentReference("RF", check + base)


def proforma_reference(proforma_id: int, year: int) -> str:
    """The SI12 reference printed on a proforma: ``make_si12(f"{year}{proforma_id:06d}")``.

    ``proforma_reference(123, 2026) == "SI12 20260001236"``.
    """
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 9999:
        raise InvalidInput(f"year must be a four-digit year, not {year!r}")
    if (
        isinstance(proforma_id, bool)
        or not isinstance(proforma_id, int)
        or not 1 <= proforma_id < 10**15
    ):
        raise InvalidInput(f"proforma id must be a positive integer, not {proforma_id!r}")
    return make_si12(f"{year}{proforma_id:06d}")


def parse_proforma_reference(text: str) -> tuple[int, int]:
    """``(year, proforma_id)`` from a reference made by ``proforma_reference``.

    InvalidInput if it is not a valid SI12 reference of that shape.
    """
    ref = parse_reference(text)
    if ref.model != "SI12":
        raise InvalidInput(f"{text!r} is not one of our proforma references (model SI12)")
    base = ref.base
    if len(base) < 10:
        raise InvalidInput(f"{text!r} is not one of our proforma references (too short)")
    year, proforma_id = int(base[:4]), int(base[4:])
    if not 2000 <= year <= 9999 or proforma_id < 1:
        raise InvalidInput(f"{text!r} is not one of our proforma references")
    return year, proforma_id
