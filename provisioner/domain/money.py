"""Money: EUR amounts as ``Decimal``, VAT included in every price (RULES: "Prices in EUR, VAT
included", VAT 22 %).

Every amount that leaves this module is quantized to the cent with ROUND_HALF_UP.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from provisioner.errors import InvalidInput

VAT_RATE = Decimal("0.22")
CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000")

_AMOUNT_RE = re.compile(r"(?P<int>[0-9]{1,7})(?:[.,](?P<frac>[0-9]{1,2}))?")


def cents(x: Decimal) -> Decimal:
    """``x`` rounded to the cent, halves away from zero (ROUND_HALF_UP)."""
    if not isinstance(x, Decimal):
        raise InvalidInput(f"amount must be a Decimal, not {type(x).__name__}")
    if not x.is_finite():
        raise InvalidInput(f"amount is not a finite number: {x}")
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def split_gross(gross: Decimal, rate: Decimal = VAT_RATE) -> tuple[Decimal, Decimal]:
    """Split a VAT-inclusive amount into ``(net, vat)``, both to the cent.

    ``vat = cents(gross * rate / (1 + rate))`` and ``net = gross - vat``, so
    ``net + vat == gross`` exactly. 100.00 at 22 % -> (81.97, 18.03).
    """
    gross = cents(gross)
    if rate < 0 or not rate.is_finite():
        raise InvalidInput(f"VAT rate must be a finite number >= 0, not {rate}")
    vat = cents(gross * rate / (1 + rate))
    return gross - vat, vat


def add_vat(net: Decimal, rate: Decimal = VAT_RATE) -> Decimal:
    """The gross amount for a net amount (e.g. the paper-invoice fee, 5.00 + VAT = 6.10)."""
    return cents(cents(net) * (1 + rate))


def parse_amount(text: str | Decimal | int) -> Decimal:
    """A non-negative EUR amount with at most 2 decimals, at most 1,000,000.

    Accepts ``"12.34"``, ``"12,34"``, ``"12"``, ints and Decimals; anything else
    (negative, NaN/inf, 3 decimals, thousands separators, signs, junk) -> InvalidInput.
    """
    if isinstance(text, bool):
        raise InvalidInput("amount must be a number, not a boolean")
    if isinstance(text, int):
        value = Decimal(text)
    elif isinstance(text, Decimal):
        value = text
    elif isinstance(text, str):
        s = text.strip()
        m = _AMOUNT_RE.fullmatch(s)
        if m is None:
            raise InvalidInput(
                f"not an amount: {text!r} (expected digits with up to 2 decimals, e.g. 12.34)"
            )
        try:
            value = Decimal(m.group("int") + "." + (m.group("frac") or "0"))
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
            raise InvalidInput(f"not an amount: {text!r}") from exc
    else:
        raise InvalidInput(f"amount must be text or a number, not {type(text).__name__}")
    if not value.is_finite():
        raise InvalidInput(f"amount is not a finite number: {text!r}")
    if value < 0:
        raise InvalidInput(f"amount must not be negative: {text!r}")
    if value > MAX_AMOUNT:
        raise InvalidInput(f"amount is implausibly large (> {MAX_AMOUNT}): {text!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and value != value.quantize(CENT):
        raise InvalidInput(f"amount has more than 2 decimals: {text!r}")
    return value.quantize(CENT)


def format_eur(x: Decimal, lang: str = "sl") -> str:
    """``"1.234,56 EUR"`` (Slovenian) or ``"EUR 1,234.56"`` (English)."""
    amount = cents(x)
    sign = "-" if amount < 0 else ""
    text = f"{abs(amount):,.2f}"  # 1,234.56
    if lang == "sl":
        text = text.replace(",", " ").replace(".", ",").replace(" ", ".")
        return f"{sign}{text} EUR"
    if lang == "en":
        return f"EUR {sign}{text}"
    raise InvalidInput(f"unsupported language {lang!r} (expected 'sl' or 'en')")
