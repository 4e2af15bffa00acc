from decimal import Decimal as D

import pytest

from provisioner.domain.payments import MatchStatus, match_payment
from provisioner.errors import InvalidInput


@pytest.mark.parametrize(
    ("amount", "currency", "total", "paid", "state", "status", "settles", "outstanding",
     "excess"),
    [
        ("100.00", "EUR", "100.00", "0", "open", MatchStatus.MATCHED, True, "0", "0"),
        ("100.00", "eur ", "100.00", "0", None, MatchStatus.MATCHED, True, "0", "0"),
        ("40.00", "EUR", "100.00", "0", "open", MatchStatus.UNDERPAID, False, "60.00", "0"),
        ("60.00", "EUR", "100.00", "40.00", "open", MatchStatus.MATCHED, True, "0", "0"),
        ("30.00", "EUR", "100.00", "40.00", "open", MatchStatus.UNDERPAID, False, "30.00", "0"),
        ("70.00", "EUR", "100.00", "40.00", "open", MatchStatus.OVERPAID, True, "0", "10.00"),
        ("100.01", "EUR", "100.00", "0", "open", MatchStatus.OVERPAID, True, "0", "0.01"),
        ("99.99", "EUR", "100.00", "0", "open", MatchStatus.UNDERPAID, False, "0.01", "0"),
        ("0", "EUR", "100.00", "0", "open", MatchStatus.UNDERPAID, False, "100.00", "0"),
        ("100.00", "USD", "100.00", "0", "open", MatchStatus.WRONG_CURRENCY, False, "100.00",
         "0"),
        ("100.00", "", "100.00", "0", "open", MatchStatus.WRONG_CURRENCY, False, "100.00", "0"),
        ("100.00", "EUR", None, "0", None, MatchStatus.UNKNOWN_REFERENCE, False, "0", "0"),
        ("100.00", "EUR", "100.00", "100.00", "paid", MatchStatus.ALREADY_PAID, False, "0",
         "100.00"),
        ("100.00", "EUR", "100.00", "0", "PAID", MatchStatus.ALREADY_PAID, False, "0", "100.00"),
        ("100.00", "EUR", "100.00", "0", "cancelled", MatchStatus.PROFORMA_CANCELLED, False,
         "100.00", "0"),
        ("-100.00", "EUR", "100.00", "100.00", "paid", MatchStatus.REVERSAL, False, "0", "0"),
        ("-5.00", "EUR", None, "0", None, MatchStatus.REVERSAL, False, "0", "0"),
    ],
)
def test_match_payment(
    amount: str,
    currency: str,
    total: str | None,
    paid: str,
    state: str | None,
    status: MatchStatus,
    settles: bool,
    outstanding: str,
    excess: str,
) -> None:
    outcome = match_payment(
        amount=D(amount),
        currency=currency,
        proforma_total=D(total) if total is not None else None,
        paid_so_far=D(paid),
        proforma_state=state,
    )
    assert outcome.status is status
    assert outcome.settles is settles
    assert outcome.outstanding == D(outstanding)
    assert outcome.excess == D(excess)
    assert outcome.detail
    assert outcome.needs_attention is (
        status not in (MatchStatus.MATCHED, MatchStatus.UNDERPAID)
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"amount": D("NaN")}, "finite"),
        ({"amount": 100}, "finite Decimal"),
        ({"paid_so_far": D("-1")}, "paid_so_far"),
        ({"proforma_state": "lost"}, "unknown proforma state"),
    ],
)
def test_match_payment_refuses(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {
        "amount": D("1.00"),
        "currency": "EUR",
        "proforma_total": D("1.00"),
        "paid_so_far": D("0"),
        "proforma_state": "open",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInput, match=reason):
        match_payment(**args)  # type: ignore[arg-type]


def test_status_values_are_strings() -> None:
    assert MatchStatus.MATCHED == "matched"
    assert {s.name for s in MatchStatus} == {
        "MATCHED", "UNDERPAID", "OVERPAID", "WRONG_CURRENCY", "UNKNOWN_REFERENCE",
        "ALREADY_PAID", "PROFORMA_CANCELLED", "REVERSAL",
    }
