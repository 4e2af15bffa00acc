"""Error translation and challenge choice of the ACME adapter (no CA needed)."""

from __future__ import annotations

import pytest
import requests
from acme import errors, messages

from provisioner.adapters.acme import ChallengeRefused, solver_chooser, translate
from provisioner.errors import ConfigurationError, InvalidInput, TransientError


def _problem(code: str) -> messages.Error:
    return messages.Error(typ=f"urn:ietf:params:acme:error:{code}", detail=f"{code} detail")


@pytest.mark.parametrize(("exc", "expected"), [
    (_problem("rateLimited"), TransientError),
    (_problem("badNonce"), TransientError),
    (_problem("serverInternal"), TransientError),
    (_problem("externalAccountRequired"), ConfigurationError),
    (_problem("unauthorized"), ConfigurationError),
    (_problem("rejectedIdentifier"), InvalidInput),
    (_problem("caa"), InvalidInput),
    (requests.exceptions.ConnectionError("refused"), TransientError),
    (requests.exceptions.Timeout("slow"), TransientError),
    (errors.TimeoutError(), TransientError),
], ids=lambda v: getattr(v, "code", None) or type(v).__name__)
def test_library_errors_become_ours(exc: Exception, expected: type[Exception]) -> None:
    ours = translate(exc, "new order")
    assert type(ours) is expected
    assert "new order" in str(ours)


def test_challenge_refused_names_each_name_and_reason() -> None:
    err = ChallengeRefused([("example.si", "http-01", "connection: refused"),
                            ("www.example.si", "dns-01", "unauthorized: wrong TXT")])
    assert isinstance(err, InvalidInput)
    assert "example.si (http-01): connection: refused" in str(err)
    assert "www.example.si (dns-01): unauthorized: wrong TXT" in str(err)


class Solver:
    def __init__(self, kind: str) -> None:
        self.kind = kind


HTTP, DNS = Solver("http-01"), Solver("dns-01")


@pytest.mark.parametrize(("name", "hosted", "force", "expected"), [
    ("example.si", True, "auto", "dns-01"),
    ("example.si", False, "auto", "http-01"),
    ("example.si", True, "http-01", "http-01"),
    ("*.example.si", True, "http-01", "dns-01"),
])
def test_solver_choice(name: str, hosted: bool, force: str, expected: str) -> None:
    choose = solver_chooser(HTTP, DNS, lambda n: hosted, force)  # type: ignore[arg-type]
    assert choose(name).kind == expected


@pytest.mark.parametrize(("name", "force"), [("*.example.si", "auto"), ("example.si", "dns-01")])
def test_dns01_for_a_zone_we_do_not_host_is_refused(name: str, force: str) -> None:
    choose = solver_chooser(HTTP, DNS, lambda n: False, force)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="DNS-01"):
        choose(name)
