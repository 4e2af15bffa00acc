import pytest

from provisioner.domain.references import (
    PaymentReference,
    make_rf,
    make_si12,
    parse_proforma_reference,
    parse_reference,
    proforma_reference,
    si12_check_digit,
)
from provisioner.errors import InvalidInput

# Hand-computed MOD 11 vectors (weights 2, 3, 4, ... from the rightmost digit):
#   "2026000123": 3*2 + 2*3 + 1*4 + 6*8 + 2*9 + 2*11 = 104, 104 % 11 = 5, 11 - 5 = 6
#   "123456":     6*2 + 5*3 + 4*4 + 3*5 + 2*6 + 1*7 = 77, 77 % 11 = 0 -> 11 -> 0
#   "6":          6*2 = 12, 12 % 11 = 1 -> 10 -> 0
#   "5":          5*2 = 10, 10 % 11 = 10 -> 1
#   "1":          1*2 = 2 -> 9
#   "12345":      5*2 + 4*3 + 3*4 + 2*5 + 1*6 = 50, 50 % 11 = 6 -> 5


@pytest.mark.parametrize(
    ("digits", "check"),
    [
        ("2026000123", "6"),
        ("123456", "0"),
        ("123-456", "0"),
        ("6", "0"),
        ("5", "1"),
        ("1", "9"),
        ("12345", "5"),
        ("0000012345", "5"),
    ],
)
def test_si12_check_digit(digits: str, check: str) -> None:
    assert si12_check_digit(digits) == check


@pytest.mark.parametrize(
    ("digits", "reason"),
    [
        ("", "empty"),
        ("12a4", "only digits"),
        ("-123", "'-' may only separate"),
        ("12--3", "'-' may only separate"),
        ("1" * 20, "too long"),
    ],
)
def test_si12_check_digit_refuses(digits: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        si12_check_digit(digits)


@pytest.mark.parametrize(
    ("base", "ref"),
    [("2026000123", "SI12 20260001236"), ("123-456", "SI12 1234560"), ("1" * 19, None)],
)
def test_make_si12(base: str, ref: str | None) -> None:
    made = make_si12(base)
    if ref is not None:
        assert made == ref
    assert str(parse_reference(made)) == made


@pytest.mark.parametrize(
    ("base", "ref"),
    [
        ("539007547034", "RF18539007547034"),  # ISO 11649 example
        ("2348231", "RF712348231"),
        ("5390 0754 7034", "RF18539007547034"),
        ("abc123", "RF47ABC123"),
    ],
)
def test_make_rf(base: str, ref: str) -> None:
    assert make_rf(base) == ref


@pytest.mark.parametrize(
    ("base", "reason"),
    [("", "empty"), ("ab-12", "only letters and digits"), ("1" * 22, "too long"), ("č1", "only")],
)
def test_make_rf_refuses(base: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        make_rf(base)


@pytest.mark.parametrize(
    ("text", "model", "body", "canonical"),
    [
        ("SI12 20260001236", "SI12", "20260001236", "SI12 20260001236"),
        ("si12 20260001236", "SI12", "20260001236", "SI12 20260001236"),
        ("SI1220260001236", "SI12", "20260001236", "SI12 20260001236"),
        ("  SI 12 2026 0001 236 ", "SI12", "20260001236", "SI12 20260001236"),
        ("si12 123-456-0", "SI12", "1234560", "SI12 1234560"),
        ("RF18539007547034", "RF", "18539007547034", "RF18539007547034"),
        ("RF18 5390 0754 7034", "RF", "18539007547034", "RF18539007547034"),
        ("rf18 5390 0754 7034", "RF", "18539007547034", "RF18539007547034"),
        ("RF47ABC123", "RF", "47ABC123", "RF47ABC123"),
        ("rf47 abc123", "RF", "47ABC123", "RF47ABC123"),
        ("SI00 123-456-789", "SI00", "123-456-789", "SI00 123-456-789"),
        ("si00 12345", "SI00", "12345", "SI00 12345"),
    ],
)
def test_parse_reference(text: str, model: str, body: str, canonical: str) -> None:
    ref = parse_reference(text)
    assert ref == PaymentReference(model, body)
    assert str(ref) == canonical


def test_reference_base() -> None:
    assert parse_reference("SI12 20260001236").base == "2026000123"
    assert parse_reference("RF18539007547034").base == "539007547034"
    assert parse_reference("SI00 1-2").base == "1-2"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("SI12 20260001235", "wrong check digit \\(5, expected 6\\)"),
        ("SI12 1234567", "wrong check digit"),
        ("SI12 123-456-7", "wrong check digit"),
        ("SI12", "no digits"),
        ("SI12 5", "too short"),
        ("SI12 12A4", "only digits"),
        ("SI12 " + "1" * 21, "too long"),
        ("SI12 " + "1-" * 11 + "1", "too long"),
        ("SI01 1234", "unsupported reference model 'SI01'"),
        ("SI99", "unsupported reference model"),
        ("HR01 1234", "unknown reference model"),
        ("NRC invoice 12", "unknown reference model"),
        ("12345", "unknown reference model"),
        ("RF19539007547034", "wrong check digits"),
        ("RF18539007547035", "wrong check digits"),
        ("RF1", "2 check digits"),
        ("RFAB1234", "2 check digits"),
        ("RF18", "no reference"),
        ("RF18 5390-0754", "only letters and digits"),
        ("RF18" + "1" * 22, "too long"),
        ("SI00 1-2-3-4", "up to 3 groups"),
        ("SI00 12;3", "up to 3 groups"),
        ("SI00 " + "1" * 23, "too long"),
        ("SI00 " + "1" * 21, "more than 20 digits"),
        ("SI00", "no digits"),
        ("x" * 101, "far too long"),
    ],
)
def test_parse_reference_refuses(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_reference(text)


@pytest.mark.parametrize(
    ("proforma_id", "year", "ref"),
    [
        (123, 2026, "SI12 20260001236"),
        (1, 2026, "SI12 2026000001" + si12_check_digit("2026000001")),
        (1234567, 2027, "SI12 20271234567" + si12_check_digit("20271234567")),
    ],
)
def test_proforma_reference_round_trip(proforma_id: int, year: int, ref: str) -> None:
    assert proforma_reference(proforma_id, year) == ref
    assert parse_proforma_reference(ref) == (year, proforma_id)
    assert parse_proforma_reference(ref.lower().replace(" ", "  ")) == (year, proforma_id)


@pytest.mark.parametrize(
    ("proforma_id", "year"), [(0, 2026), (-1, 2026), (1, 26), (1, 12026), (True, 2026)]
)
def test_proforma_reference_refuses(proforma_id: int, year: int) -> None:
    with pytest.raises(InvalidInput):
        proforma_reference(proforma_id, year)


@pytest.mark.parametrize(
    "text", ["RF18539007547034", "SI00 2026000123", "SI12 1234560", "SI12 20260000000"]
)
def test_parse_proforma_reference_refuses(text: str) -> None:
    if text == "SI12 20260000000":
        text = make_si12("2026000000")
    with pytest.raises(InvalidInput, match="not one of our proforma references"):
        parse_proforma_reference(text)


def test_payment_reference_unknown_model() -> None:
    with pytest.raises(InvalidInput, match="unknown reference model"):
        PaymentReference("SI01", "123")
